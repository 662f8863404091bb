"""Per-check policy: ``checks.<name>.enabled: false`` is a ``skip`` "disabled by configuration" that
never counts toward health; ``checks.<name>.max_status: warn`` never fails. On the check results, and
through the real `check` on a simulated node."""

import json
from pathlib import Path
from typing import Dict, List

import pytest

from agent.cli import main
from agent.config.load import parse_config
from agent.pipeline import policy
from agent.pipeline import resources as pipeline
from agent.pipeline.health import FAIL, HEALTHY, PASS, SKIP, WARN, CheckResult, overall_health
from tests.support.gpu_node import healthy_gpu_node, write

RESULTS = [
    CheckResult("containerd-config", PASS, "ok"),
    CheckResult("nvidia-driver", FAIL, "driver not loaded", {"event_reason": "NVIDIADriverNotLoaded"}),
    CheckResult("gpu-allocatable", WARN, "nvidia.com/gpu not yet advertised"),
]


def test_a_disabled_check_is_skip_with_its_reason_and_never_counts() -> None:
    config = parse_config("checks:\n  nvidia-driver: {enabled: false}\n  gpu-allocatable: {enabled: false}\n", "c")
    out = policy.apply(RESULTS, config)
    assert [(r.status, r.message) for r in out[1:]] == [
        (SKIP, "disabled by configuration (checks.nvidia-driver.enabled: false)"),
        (SKIP, "disabled by configuration (checks.gpu-allocatable.enabled: false)"),
    ]
    assert out[1].details == {"policy": "disabled", "event_reason": "CheckDisabled"}
    assert overall_health(out) == HEALTHY  # a fail and a warn, switched off: neither counts


def test_a_capped_check_never_fails() -> None:
    config = parse_config("checks:\n  nvidia-driver: {max_status: warn}\n  gpu-allocatable: {max_status: warn}\n", "c")
    out = policy.apply(RESULTS, config)
    assert (out[1].status, out[1].message) == (WARN, "driver not loaded (capped at warn by checks.nvidia-driver."
                                                     "max_status)")
    assert out[1].details == {"event_reason": "NVIDIADriverNotLoaded", "policy": {"max_status": WARN, "status": FAIL}}
    assert out[2] == RESULTS[2]  # a warning stays as it was
    assert policy.apply(out, config) == out  # applied again (after a run's pending restarts): unchanged
    assert overall_health(out) != "unhealthy"


def test_a_disabled_unit_check_stays_skip_when_a_restart_is_pending() -> None:
    config = parse_config("checks:\n  containerd-running: {enabled: false}\n", "c")
    results = policy.apply([CheckResult("containerd-running", PASS, "active")], config)
    pending = {"containerd.service": (FAIL, "restart needed but restart.policy is never")}
    (r,) = pipeline.with_pending_restarts(results, pending, config)
    assert (r.status, r.message) == (SKIP, "disabled by configuration (checks.containerd-running.enabled: false)")


def test_the_checks_section_names_the_real_checks_in_their_order() -> None:
    from agent.config.settings import CHECKS

    assert CHECKS == pipeline.CHECK_NAMES  # a new check is accepted by checks.<name> once listed there too


@pytest.mark.parametrize(("text", "problem"), [
    ("checks:\n  gpu-allocatble:\n    enabled: false\n", "c:2: checks.gpu-allocatble: unknown check (did you mean "
                                                       "'gpu-allocatable'?)"),
    ("checks:\n  xid:\n    enabled: false\n", "c:2: checks.xid: unknown check; the checks are containerd-config, "),
    ("checks:\n  efa:\n    max_status: pass\n", "c:3: checks.efa.max_status: must be one of warn, fail; got 'pass'"),
    ("checks:\n  efa:\n    enabled: nope\n", "c:3: checks.efa.enabled: expected true or false"),
    ("checks:\n  efa:\n    enable: false\n", "c:3: checks.efa.enable: unknown key (did you mean 'enabled'?)"),
    ("checks:\n  efa: false\n", "c:2: checks.efa: expected a mapping of keys to values"),
])
def test_check_names_and_values_are_validated(text: str, problem: str) -> None:
    from agent.base.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c")
    assert str(caught.value).startswith(problem)


def test_the_real_check_with_a_disabled_and_a_capped_check(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    root = healthy_gpu_node(tmp_path / "node")
    (root / "proc/driver/nvidia/version").unlink()  # the driver is not loaded: nvidia-driver fails
    config = "checks:\n  nvidia-driver:\n    max_status: warn\n  compatibility:\n    enabled: false\n"

    def statuses(config_text: str) -> Dict[str, List[str]]:
        write(root, "/etc/gpu-node-agent/config.yaml", config_text)
        main(["--root", str(root), "check", "--format", "json"])
        doc = json.loads(capsys.readouterr().out)
        return {c["name"]: [c["status"], c["message"]] for c in doc["checks"]}

    before = statuses("")
    assert before["nvidia-driver"][0] == FAIL and before["compatibility"][0] == WARN
    after = statuses(config)
    assert after["nvidia-driver"] == [WARN, before["nvidia-driver"][1] + " (capped at warn by "
                                                                      "checks.nvidia-driver.max_status)"]
    assert after["compatibility"] == [SKIP, "disabled by configuration (checks.compatibility.enabled: false)"]
