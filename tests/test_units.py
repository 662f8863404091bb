"""The systemd units as the RPM installs them: `systemd-analyze verify` finds nothing to say, the
preset enables what it should, and the ordering and hardening are what the node needs."""

import os
import re
import shutil
from pathlib import Path
from typing import List, Tuple

import pytest

from tests.conftest import REPO, which
from tests.packaging_helpers import built_rpm, install, run, scratch_dir

UNIT_DIR = "usr/lib/systemd/system"
AGENT = "gpu-node-agent.service"
CHECK = "gpu-node-agent-check.service"
TIMER = "gpu-node-agent-check.timer"

# What the agent's units are ordered against on an EKS AL2023 node, as plain stand-ins.
STAND_INS = {
    "nodeadm-config.service": (
        "[Unit]\nBefore=cloud-init.service\n[Service]\nType=oneshot\nExecStart=/bin/true\n"
    ),
    "nodeadm-run.service": (
        "[Unit]\nAfter=nodeadm-config.service cloud-final.service\n"
        "[Service]\nType=oneshot\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
    ),
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


@pytest.mark.parametrize("name", [AGENT, CHECK, TIMER])
def test_systemd_analyze_verify_has_nothing_to_say(node: Path, name: str) -> None:
    assert verify(node, node / UNIT_DIR / name) == (0, "")


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
    for name in (AGENT, CHECK, TIMER):
        assert (node / UNIT_DIR / name).read_text() == unit_text(name)


def test_preset_enables_the_boot_run_and_the_heartbeat_timer(node: Path, tmp_path: Path) -> None:
    which("systemctl")
    root = tmp_path / "node"
    shutil.copytree(node, root, symlinks=True)
    # What %post does on first install (systemctl --no-reload preset), offline, in the image.
    run(["systemctl", f"--root={root}", "preset", AGENT, CHECK, TIMER])
    wants = root / "etc/systemd/system"
    assert os.readlink(wants / "multi-user.target.wants" / AGENT) == f"/{UNIT_DIR}/{AGENT}"
    assert os.readlink(wants / "timers.target.wants" / TIMER) == f"/{UNIT_DIR}/{TIMER}"
    states = run(["systemctl", f"--root={root}", "is-enabled", AGENT, TIMER, CHECK], check=False).stdout
    assert states.split() == ["enabled", "enabled", "static"]


def test_boot_run_is_ordered_after_nodeadm_and_the_driver_and_wants_them_without_requiring_them() -> None:
    text = unit_text(AGENT)
    assert values(text, "Type") == ["oneshot"]
    assert values(text, "RemainAfterExit") == ["yes"]
    assert values(text, "ExecStart") == ["/usr/bin/gpu-node-agent", "run"]
    assert {"nodeadm-run.service", "nvidia-kmod-load.service"} <= set(values(text, "After"))
    for hard in ("Requires", "Requisite", "BindsTo", "PartOf", "Upholds"):
        assert values(text, hard) == [], f"{hard}= would stop the agent from reporting a failed nodeadm"
    # Pulled in softly: in the same transaction at boot, never a reason not to run.
    assert set(values(text, "Wants")) == {"nodeadm-run.service", "nvidia-kmod-load.service"}
    # The agent restarts containerd and kubelet and waits for the jobs: ordering them after the
    # agent would make those jobs wait for the agent, a deadlock.
    assert not {"containerd.service", "kubelet.service"} & set(values(text, "Before"))
    assert values(text, "ConditionPathExists") == ["!/etc/gpu-node-agent/disabled"]
    assert values(text, "StandardOutput") == ["journal+console"]
    assert values(text, "SuccessExitStatus") == ["2"]
    assert values(text, "WantedBy") == ["multi-user.target"]


def test_hardening_leaves_the_efa_installer_and_the_gpus_alone() -> None:
    text = unit_text(AGENT)
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
    for name in (AGENT, CHECK, TIMER):
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
