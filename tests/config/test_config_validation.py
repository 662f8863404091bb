"""Validation that matches the run: what `run` would refuse, or what would harm the node, is refused
when the configuration is loaded (every command, and `config validate`), as one file:line:key line.
And every key of the README's configuration table is validated."""

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import yaml

from agent.base.errors import ConfigError
from agent.cli import main
from agent.config.load import parse_config
from agent.config.rules import KUBELET_CONDITIONS, NODE_MONITORING_AGENT_CONDITIONS
from agent.config.settings import AgentConfig, config_keys
from tests.support.paths import REPO


def refused(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    assert caught.value.exit_code == 64 and "\n" not in str(caught.value)
    return str(caught.value)


@pytest.mark.parametrize("arg", ["--minimal", "-m", "--skip-limit-conf", "-l", "-u", "--uninstall"])
def test_installer_args_that_break_the_node_are_refused(arg: str) -> None:
    message = refused(f'efa:\n  version: "1.48.0"\n  installer_args: ["-y", "{arg}"]\n')
    assert message.startswith(f"c.yaml:3: efa.installer_args: {arg} not allowed: ")


def test_other_installer_args_are_accepted() -> None:
    config = parse_config('efa:\n  installer_args: ["-y", "--skip-kmod", "--no-verify", "--enable-gdr"]\n', "c")
    assert config.efa.installer_args[-1] == "--enable-gdr"


@pytest.mark.parametrize("units", ["[kubelet.service, containerd.service]", "[kubelet.service]",
                                   "[docker.service, kubelet.service]"])
def test_restart_units_must_start_with_containerd(units: str) -> None:
    message = refused(f"restart:\n  policy: never\n  units: {units}\n")
    assert message.startswith("c.yaml:3: restart.units: the first unit must be containerd.service")


@pytest.mark.parametrize("condition", [*KUBELET_CONDITIONS, *NODE_MONITORING_AGENT_CONDITIONS])
def test_conditions_with_another_owner_are_refused(condition: str) -> None:
    message = refused(f"report:\n  condition: {condition}\n")
    assert message.startswith(f"c.yaml:2: report.condition: {condition} is ")
    owner = "kubelet" if condition in KUBELET_CONDITIONS else "EKS node monitoring agent"
    assert owner in message


@pytest.mark.parametrize("condition", ["GPUNodeAgentReady", "example.com/Ready", "ReadyForGPUs"])
def test_own_conditions_are_accepted(condition: str) -> None:
    assert parse_config(f"report:\n  condition: {condition}\n", "c").report.condition == condition


@pytest.mark.parametrize(("argv", "code"), [(["config", "validate"], 64), (["plan"], 64), (["check"], 64),
                                            (["run"], 64), (["efa", "fetch"], 64), (["config", "show"], 64)])
def test_every_command_refuses_what_a_run_would_refuse(tmp_path: Path, argv: List[str], code: int,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "etc/gpu-node-agent/config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("report:\n  publish: false\n  condition: Ready\n")
    assert main(["--root", str(tmp_path), *argv]) == code
    err = capsys.readouterr().err.strip()
    assert err == (f"gpu-node-agent: {config}:3: report.condition: Ready is kubelet's own condition; "
                   "choose another type, e.g. GPUNodeAgentReady")


# --- the README's configuration table: every key documented, with its default, and validated ----------


def documented_keys() -> Dict[str, str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+\.[a-z_0-9]+)` \| `([^|]*)` \|", section, re.MULTILINE)
    return dict(rows)


# A value of the right shape that is still wrong, per key; booleans can only be wrong by type.
BAD_VALUES: Dict[str, Tuple[Any, str]] = {
    "containerd.config_path": ("etc/containerd/config.toml", "must be an absolute path"),
    "containerd.runtime": ("nvidia runtime", "must be a runtime name"),
    "containerd.binary_name": ("nvidia-container-runtime", "must be an absolute path"),
    "containerd.systemd_cgroup": ("yes", "expected true or false"),
    "containerd.enable_cdi": (1, "expected true or false"),
    "containerd.default_runtime": ("true", "expected true or false"),
    "nvidia_runtime.config_path": ("config.toml", "must be an absolute path"),
    "nvidia_runtime.repair": ("no", "expected true or false"),
    "restart.policy": ("sometimes", "must be one of"),
    "restart.units": (["kubelet.service"], "the first unit must be containerd.service"),
    "restart.timeout_seconds": (-1, "must be greater than 0"),
    "efa.install": ("maybe", "must be one of"),
    "efa.before_kubelet": ("yes", "expected true or false"),
    "efa.version": ("latest", "must be a version X.Y.Z"),
    "efa.sha256": ("abc", "must be 64 hexadecimal characters"),
    "efa.gpg_fingerprint": ("1234 ABCD", "must be the signing key's full fingerprint"),
    "efa.base_url": ("ftp://mirror/efa", "must be an http:// or https:// URL"),
    "efa.cache_dir": ("cache", "must be an absolute path"),
    "efa.installer_args": (["-y", "--minimal"], "--minimal not allowed"),
    "efa.timeout_seconds": (0, "must be greater than 0"),
    "report.publish": ("false", "expected true or false"),
    "report.annotation_prefix": ("GPU_Agent", "must be a DNS subdomain"),
    "report.condition": ("Ready", "kubelet's own condition"),
    "report.kubeconfig": ("kubeconfig", "must be an absolute path"),
    "report.node_name": ("Node_1", "must be a node name"),
    "report.status_file": ("status.json", "must be an absolute path"),
    "report.metrics_file": ("x.prom", "must be an absolute path"),
    "report.timeout_seconds": (0, "must be greater than 0"),
    "report.heartbeat_minutes": (-1, "must be 0 or more"),
    "report.gpu_ready_budget_seconds": (0, "must be greater than 0"),
    "imds.endpoint": ("169.254.169.254", "must be an http:// or https:// URL"),
    "imds.timeout_seconds": (-2, "must be greater than 0"),
    "gpu.instance_type": ("P5.48XLarge", "must be an EC2 instance type"),
    "gpu.expected_count": (0, "must be greater than 0"),
    "gpu.allocatable": ("off", "expected true or false"),
    "gpu.resource_name": ("nvidia.com/gpu/", "must be an extended resource name"),
    "gpu.resource_per_gpu": (2.5, "expected a whole number"),
    "gpu.efa_resource_name": ("vpc amazonaws/efa", "must be an extended resource name"),
    "gpu.allocatable_grace_seconds": (-1, "must be 0 or more"),
    "gpu.fabricmanager_unit": ("nvidia-fabricmanager", "must be a systemd service unit name"),
    "compatibility.unknown": ("maybe", "must be one of pass, warn, fail"),
}


def test_the_readme_documents_every_key_and_no_other() -> None:
    assert list(documented_keys()) == config_keys()


def test_the_readme_documents_the_keys_of_the_mapping_sections() -> None:
    from agent.config.settings import mapping_keys

    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^\| `((?:checks|xid)\.<[a-z]+>\.[a-z_]+)` \|", section, re.MULTILINE) == mapping_keys()


@pytest.mark.parametrize("key", config_keys())
def test_each_documented_default_is_the_default(key: str) -> None:
    documented = yaml.safe_load(documented_keys()[key])
    section, name = key.split(".")
    actual = getattr(getattr(AgentConfig(), section), name)
    assert (list(actual) if isinstance(actual, tuple) else actual) == documented


@pytest.mark.parametrize("key", list(documented_keys()))
def test_each_documented_key_is_validated(key: str) -> None:
    section, name = key.split(".")
    value, problem = BAD_VALUES[key]
    message = refused(f"# the node's config\n{section}:\n  {name}: {json.dumps(value)}\n")
    assert message.startswith(f"c.yaml:3: {key}: ") and problem in message, message
    assert refused(f"{section}:\n  {name}: {{x: 1}}\n").startswith(f"c.yaml:2: {key}: ")  # wrong type


def test_each_key_carries_its_rule_in_its_definition() -> None:
    from typing import get_type_hints

    from agent.config.rules import Rule
    from agent.config.settings import SECTIONS

    for section, cls in SECTIONS.items():
        for name, hint in get_type_hints(cls, include_extras=True).items():
            rules = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Rule)]
            assert len(rules) == (0 if hint is bool else 1), f"{section}.{name}: {hint}"


def test_every_key_the_validation_names_by_string_is_a_real_key() -> None:
    from agent.config import parse as config_parse
    from agent.config.rules import OUTPUT_DIRS

    named = [*OUTPUT_DIRS, *config_parse._MANAGED, *config_parse._OUTPUTS]
    assert set(named) <= set(config_keys()), set(named) - set(config_keys())
    assert set(config_parse._OUTPUTS) == set(OUTPUT_DIRS)
