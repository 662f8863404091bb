"""``nvidia-fabricmanager`` against a real systemd (tests/support/systemd_harness.py) with a stand-in unit.

The real unit runs ``nv-fabricmanager -c /usr/share/nvidia/nvswitch/fabricmanager.cfg``; what the
check reads is only the unit's state over D-Bus (the same discovery as containerd's) and the
binary's ``--version``, so the stand-in is a long-running unit and a ``nv-fabricmanager`` script
that prints the version line. The node side (NVSwitch devices, the fabric state nvidia-smi
reports) is the simulated p5 of tests/support/gpu_node.py.
"""

import json
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from agent import cli
from agent.base.noderoot import NodeRoot
from agent.gpu import fabric
from agent.nvidia import driver
from agent.pipeline.health import FAIL, PASS, SKIP, WARN
from agent.systemd import client as systemd
from tests.support.gpu_node import DRIVER, gpu_rows, healthy_gpu_node, nvidia_smi, tool, write
from tests.support.systemd_harness import BootedSystemd

UNIT = "nvidia-fabricmanager.service"
FM_UNITS = {
    UNIT: "[Unit]\nDescription=NVIDIA fabric manager (stand-in)\n[Service]\nExecStart=/bin/sleep infinity\n",
    "fm-broken.service": "[Unit]\nDescription=fabric manager that fails at start\n[Service]\nExecStart=/bin/false\n",
}


@pytest.fixture
def sd(boot_systemd: Callable[..., BootedSystemd]) -> BootedSystemd:
    instance = boot_systemd(FM_UNITS, wants=list(FM_UNITS))
    instance.wait_until(UNIT, "active")
    instance.wait_until("fm-broken.service", "failed")
    return instance


@pytest.fixture
def p5(tmp_path: Path) -> Path:
    return healthy_gpu_node(tmp_path / "node", gpus=8, instance_type="p5.48xlarge")


def judge(root: Path, sd: BootedSystemd, unit: str = UNIT) -> Any:
    node = NodeRoot(str(root))
    units = systemd.discover([unit], address=sd.bus_address)
    facts = driver.discover(node)
    switches = fabric.discover(node, instance_type="p5.48xlarge", type_has_nvswitch=True)
    rows = facts.smi.table.rows if facts.smi is not None and facts.smi.table is not None else None
    return fabric.check(switches, units, unit, facts.version, rows)


def test_active_at_the_drivers_version_with_the_fabric_trained(p5: Path, sd: BootedSystemd) -> None:
    r = judge(p5, sd)
    assert r.status == PASS
    assert r.message == f"{UNIT} active, {DRIVER} = driver; fabric Completed/Success on 8 GPUs"
    assert r.details["switches"] == ["0000:05:00.0", "0000:06:00.0", "0000:07:00.0", "0000:08:00.0"]


def test_stopped_fails(p5: Path, sd: BootedSystemd) -> None:
    sd.systemctl("stop", UNIT)
    r = judge(p5, sd)
    assert r.status == FAIL and r.details["event_reason"] == "FabricManagerNotRunning"
    assert r.message.startswith(f"{UNIT} inactive (dead), expected active: CUDA cannot initialise (error 802)")


def test_failed_at_start_fails(p5: Path, sd: BootedSystemd) -> None:
    r = judge(p5, sd, "fm-broken.service")
    assert r.status == FAIL and r.message.startswith("fm-broken.service failed (failed), expected active")


def test_not_installed_fails(p5: Path, sd: BootedSystemd) -> None:
    r = judge(p5, sd, "nvidia-fabricmanager-absent.service")
    assert r.status == FAIL and r.details["event_reason"] == "FabricManagerMissing"
    assert "nvidia-fabricmanager-absent.service is not loaded (not-found)" in r.message


def test_a_p5_whose_driver_lists_no_nvswitch_still_needs_its_fabric_manager(p5: Path, sd: BootedSystemd) -> None:
    """The instance type says NVSwitch even when the driver shows none (its NVSwitch module not
    loaded): a missing fabric manager fails, it is not skipped."""
    import shutil

    shutil.rmtree(p5 / "proc/driver/nvidia-nvswitch")
    for dev in (p5 / "dev").glob("nvidia-nvswitch*"):
        dev.unlink()
    r = judge(p5, sd, "nvidia-fabricmanager-absent.service")
    assert r.status == FAIL and r.details["event_reason"] == "FabricManagerMissing"
    assert r.details["switches"] == [] and "p5.48xlarge has NVSwitch (instance data)" in r.details["nvswitch"]


def test_another_version_than_the_driver_fails(p5: Path, sd: BootedSystemd) -> None:
    tool(p5, "/usr/bin/nv-fabricmanager", "Fabric Manager version is : 580.95.05\n")
    r = judge(p5, sd)
    assert r.status == FAIL
    assert r.message == f"fabric manager 580.95.05 but driver {DRIVER}: they must be the same version"


def test_fabric_still_training_warns_and_a_failed_registration_fails(p5: Path, sd: BootedSystemd) -> None:
    rows = gpu_rows(8, fabric="Completed")
    rows[3]["fabric.state"] = "In Progress"
    rows[3]["fabric.status"] = "N/A"
    nvidia_smi(p5, rows)
    r = judge(p5, sd)
    assert r.status == WARN
    assert r.message == "GPU 3 (00000000:86:00.0): fabric state 'In Progress', expected 'Completed'"
    rows[3]["fabric.state"] = "Completed"
    rows[3]["fabric.status"] = "NVML_ERROR_NOT_READY"
    nvidia_smi(p5, rows)
    r = judge(p5, sd)
    assert r.status == FAIL and r.details["event_reason"] == "GPUFabricFailed"


def test_check_on_the_node(p5: Path, sd: BootedSystemd, capsys: pytest.CaptureFixture,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", sd.bus_address)
    write(p5, "/etc/gpu-node-agent/config.yaml", "report:\n  publish: false\n")
    cli.main(["--root", str(p5), "check", "--format", "json"])
    checks: Dict[str, Any] = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["nvidia-fabricmanager"]["status"] == PASS
    sd.systemctl("stop", UNIT)
    cli.main(["--root", str(p5), "check", "--format", "json"])
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["nvidia-fabricmanager"]["status"] == FAIL


def test_skipped_without_nvswitch(tmp_path: Path) -> None:
    root = healthy_gpu_node(tmp_path / "node", gpus=4, instance_type="g5.12xlarge")
    facts = fabric.discover(NodeRoot(str(root)), instance_type="g5.12xlarge", type_has_nvswitch=False)
    r = fabric.check(facts, None, UNIT, DRIVER, None)
    assert r.status == SKIP
    assert r.message == "not an NVSwitch system: no NVSwitch device in the driver (g5.12xlarge has none)"


def test_nvswitch_from_the_driver_alone(tmp_path: Path) -> None:
    root = healthy_gpu_node(tmp_path / "node", gpus=8, instance_type="p5.48xlarge")
    facts = fabric.discover(NodeRoot(str(root)), instance_type=None, type_has_nvswitch=False)
    assert facts.nvswitch and facts.why == "4 NVSwitch devices in the driver" and facts.version == DRIVER


def test_the_version_is_asked_once_per_binary(tmp_path: Path) -> None:
    root = healthy_gpu_node(tmp_path / "node", gpus=8, instance_type="p5.48xlarge")
    calls = root / "fm-calls"
    write(root, "/usr/bin/nv-fabricmanager",
          f"#!/bin/sh\necho run >> {calls}\necho 'Fabric Manager version is : {DRIVER}'\n", 0o755)
    node = NodeRoot(str(root))
    assert fabric.fabricmanager_version(node) == (DRIVER, "/usr/bin/nv-fabricmanager --version")
    assert fabric.fabricmanager_version(node)[0] == DRIVER
    assert calls.read_text() == "run\n"
    write(root, "/usr/bin/nv-fabricmanager",  # the package was upgraded: another file
          f"#!/bin/sh\necho run >> {calls}\necho 'Fabric Manager version is : 580.200.01'\n", 0o755)
    assert fabric.fabricmanager_version(node)[0] == "580.200.01"
    assert calls.read_text() == "run\nrun\n"
