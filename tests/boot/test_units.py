"""The systemd units as the RPM installs them: `systemd-analyze verify` finds nothing to say, the
preset enables what it should, and the ordering and hardening are what the node needs."""

import os
import re
import shutil
from pathlib import Path
from typing import List, Tuple

import pytest

from tests.support.boot_helpers import (
    AGENT,
    CHECK,
    INSTALLED_UNIT_DIR,
    NODEADM_CONFIG,
    NODEADM_CONFIG_UNIT,
    NODEADM_RUN,
    NODEADM_RUN_UNIT,
    PREPARE,
    TIMER,
)
from tests.support.packaging_helpers import built_rpm, install, run, scratch_dir
from tests.support.paths import REPO, which

UNIT_DIR = INSTALLED_UNIT_DIR

# What the agent's units are ordered against on an EKS AL2023 node: the nodeadm units of the boot
# tests (tests/support/boot_helpers.py: shaped like amazon-eks-ami's, with their command lines; the programs
# are stand-ins in the scratch root, so verify can check they are executable).
STAND_INS = {
    NODEADM_CONFIG: NODEADM_CONFIG_UNIT,
    NODEADM_RUN: NODEADM_RUN_UNIT,
    "nvidia-kmod-load.service": "[Service]\nType=oneshot\nExecStart=/bin/true\n",
    "containerd.service": "[Service]\nExecStart=/bin/sleep infinity\n",
    "kubelet.service": "[Unit]\nAfter=containerd.service\nWants=containerd.service\n"
                       "[Service]\nExecStart=/bin/sleep infinity\n",
}


@pytest.fixture(scope="module")
def node() -> Path:
    """A scratch root with the RPM installed and the EKS units the agent's units refer to."""
    root = install(built_rpm(), scratch_dir("units") / "node")
    for name, text in STAND_INS.items():
        unit = root / "etc/systemd/system" / name
        unit.parent.mkdir(parents=True, exist_ok=True)
        unit.write_text(text)
    nodeadm = root / "usr/bin/nodeadm"
    nodeadm.write_text("#!/bin/sh\n")
    nodeadm.chmod(0o755)
    return root


def verify(root: Path, unit: Path) -> Tuple[int, str]:
    which("systemd-analyze")
    command = ["systemd-analyze", "verify", "--man=no", "--recursive-errors=no", f"--root={root}", str(unit)]
    proc = run(command, check=False, env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    return proc.returncode, proc.stderr


def directives(text: str) -> List[Tuple[str, str, str, bool]]:
    """(section, key, value, commented) for every directive; commented: a comment line right above."""
    out = []
    section = ""
    previous = ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.append((section, key, value, previous.startswith("#")))
        previous = line
    return out


def values(text: str, key: str) -> List[str]:
    return [word for _, k, v, _ in directives(text) if k == key for word in v.split()]


def unit_text(name: str) -> str:
    return (REPO / "systemd" / name).read_text()


@pytest.mark.parametrize("name", [PREPARE, AGENT, CHECK, TIMER, "nodeadm-config.service", "nodeadm-run.service"])
def test_systemd_analyze_verify_has_nothing_to_say(node: Path, name: str) -> None:
    unit = node / UNIT_DIR / name
    assert verify(node, unit if unit.exists() else node / "etc/systemd/system" / name) == (0, "")


def test_verify_would_catch_a_misspelled_key(node: Path, tmp_path: Path) -> None:
    # The check above can fail: a typo is only a warning (exit status 0 or not), but never silent.
    unit = node / "etc/systemd/system/gpu-node-agent-typo.service"
    unit.write_text(unit_text(AGENT).replace("RemainAfterExit=yes", "RemainAfterExt=yes"))
    try:
        _, stderr = verify(node, unit)
    finally:
        unit.unlink()
    assert "Unknown key 'RemainAfterExt'" in stderr


def test_installed_units_are_the_repository_units(node: Path) -> None:
    for name in (PREPARE, AGENT, CHECK, TIMER):
        assert (node / UNIT_DIR / name).read_text() == unit_text(name)


def test_preset_enables_the_boot_run_and_the_heartbeat_timer(node: Path, tmp_path: Path) -> None:
    which("systemctl")
    root = tmp_path / "node"
    shutil.copytree(node, root, symlinks=True)
    # What %post does on first install (systemctl --no-reload preset), offline, in the image.
    run(["systemctl", f"--root={root}", "preset", PREPARE, AGENT, CHECK, TIMER])
    wants = root / "etc/systemd/system"
    assert os.readlink(wants / "multi-user.target.wants" / AGENT) == f"/{UNIT_DIR}/{AGENT}"
    assert os.readlink(wants / "multi-user.target.wants" / PREPARE) == f"/{UNIT_DIR}/{PREPARE}"
    assert os.readlink(wants / "timers.target.wants" / TIMER) == f"/{UNIT_DIR}/{TIMER}"
    states = run(["systemctl", f"--root={root}", "is-enabled", AGENT, TIMER, CHECK], check=False).stdout
    assert states.split() == ["enabled", "enabled", "static"]


def test_prepare_pass_sits_between_nodeadm_config_and_the_daemons_and_pulls_in_nothing() -> None:
    text = unit_text(PREPARE)
    assert values(text, "Type") == ["oneshot"]
    assert values(text, "RemainAfterExit") == ["yes"]
    assert values(text, "ExecStart") == ["/usr/bin/gpu-node-agent", "prepare"]
    assert set(values(text, "After")) == {"nodeadm-config.service", "nvidia-kmod-load.service"}
    assert set(values(text, "Before")) == {"nodeadm-run.service", "containerd.service", "kubelet.service"}
    for pull in ("Wants", "Requires", "Requisite", "BindsTo", "PartOf", "Upholds"):
        assert values(text, pull) == [], f"{pull}= would start a oneshot of nodeadm again"
    # Not ordered against cloud-init: nodeadm-config is Before=cloud-init.service and nodeadm-run
    # After=cloud-final.service, so no cycle either way, and the pass runs while user data does.
    assert not {"cloud-init.service", "cloud-final.service", "cloud-config.service"} & set(
        values(text, "After") + values(text, "Before"))
    assert values(text, "ConditionPathExists") == ["!/etc/gpu-node-agent/disabled"]
    assert values(text, "SuccessExitStatus") == ["2"]
    assert values(text, "WantedBy") == ["multi-user.target"]


def test_boot_run_is_ordered_after_nodeadm_and_the_driver_and_pulls_in_nothing() -> None:
    text = unit_text(AGENT)
    assert values(text, "Type") == ["oneshot"]
    assert values(text, "RemainAfterExit") == ["yes"]
    assert values(text, "ExecStart") == ["/usr/bin/gpu-node-agent", "run"]
    assert {"nodeadm-run.service", "nvidia-kmod-load.service", PREPARE} <= set(values(text, "After"))
    for hard in ("Requires", "Requisite", "BindsTo", "PartOf", "Upholds"):
        assert values(text, hard) == [], f"{hard}= would stop the agent from reporting a failed nodeadm"
    # Ordering only: a Wants= on nodeadm's oneshots would re-run them on `systemctl restart`.
    assert values(text, "Wants") == []
    # The agent restarts containerd and kubelet and waits for the jobs: ordering them after the
    # agent would make those jobs wait for the agent, a deadlock.
    assert not {"containerd.service", "kubelet.service"} & set(values(text, "Before"))
    assert values(text, "ConditionPathExists") == ["!/etc/gpu-node-agent/disabled"]
    assert values(text, "StandardOutput") == ["journal+console"]
    assert values(text, "SuccessExitStatus") == ["2"]
    assert values(text, "WantedBy") == ["multi-user.target"]


@pytest.mark.parametrize("name", [PREPARE, AGENT])
def test_hardening_leaves_the_efa_installer_and_the_gpus_alone(name: str) -> None:
    text = unit_text(name)
    keys = {k for _, k, _, _ in directives(text)}
    # The EFA installer installs RPMs into /usr, /etc, /opt: the root file system stays writable.
    assert "ProtectSystem" not in keys
    assert not keys & {"ReadOnlyPaths", "CapabilityBoundingSet", "NoNewPrivileges", "DynamicUser", "User"}
    # Each of these restricts device access (nvidia-smi, fi_info) or the network (IMDS, API server).
    assert not keys & {"PrivateDevices", "ProtectClock", "DeviceAllow", "DevicePolicy",
                       "PrivateNetwork", "RestrictAddressFamilies", "IPAddressDeny"}
    assert {"PrivateTmp", "ProtectHome", "ProtectControlGroups"} <= keys


def test_every_ordering_dependency_and_hardening_line_says_why() -> None:
    explained = {"After", "Before", "Wants", "Requires", "ConditionPathExists", "SuccessExitStatus",
                 "TimeoutStartSec", "RemainAfterExit", "StandardOutput", "WantedBy", "OnBootSec",
                 "OnUnitActiveSec", "RandomizedDelaySec", "PrivateTmp", "ProtectHome", "ProtectSystem",
                 "ProtectControlGroups", "ProtectHostname", "ProtectKernelTunables", "NoNewPrivileges",
                 "RestrictRealtime", "LockPersonality", "SystemCallArchitectures"}
    for name in (PREPARE, AGENT, CHECK, TIMER):
        silent = [f"{k}={v}" for _, k, v, commented in directives(unit_text(name))
                  if k in explained and not commented]
        # A directive may share the comment of the one right above it (ProtectKernelModules after
        # ProtectKernelTunables); these lists are the ones that must have their own.
        assert silent == [], f"{name}: no comment above {silent}"


def test_heartbeat_publishes_and_is_not_failed_by_a_degraded_node() -> None:
    service = unit_text(CHECK)
    assert values(service, "Type") == ["oneshot"]
    assert values(service, "ExecStart") == ["/usr/bin/gpu-node-agent", "check", "--report"]
    assert values(service, "SuccessExitStatus") == ["2"]
    assert "gpu-node-agent.service" in values(service, "After")
    assert values(service, "Wants") == values(service, "Requires") == []
    assert "Install" not in re.findall(r"^\[(\w+)\]", service, re.MULTILINE)  # started by its timer


def _seconds(span: str) -> int:
    value, unit = re.fullmatch(r"(\d+)(s|min|h)?", span).groups()  # type: ignore[union-attr]
    return int(value) * {"s": 1, "min": 60, "h": 3600, None: 1}[unit]


def test_heartbeat_timer_spreads_a_fleet_over_time() -> None:
    timer = unit_text(TIMER)
    on_boot, = values(timer, "OnBootSec")
    every, = values(timer, "OnUnitActiveSec")
    spread, = values(timer, "RandomizedDelaySec")
    assert _seconds(on_boot) >= 60
    assert 60 <= _seconds(every) <= 15 * 60
    assert 60 <= _seconds(spread) <= _seconds(every)
    assert values(timer, "WantedBy") == ["timers.target"]
    assert "Unit" not in {k for _, k, _, _ in directives(timer)}  # triggers the same-named service
