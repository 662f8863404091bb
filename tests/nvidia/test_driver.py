"""The ``nvidia-driver`` check and version discovery on simulated nodes (healthy, then each failure)."""

import time
from pathlib import Path

import pytest

from agent.base import process
from agent.base.noderoot import NodeRoot
from agent.compat import versions
from agent.nvidia import driver
from agent.pipeline.health import FAIL, PASS, WARN
from tests.support.gpu_node import DRIVER, PROC_VERSION_TEXT, healthy_gpu_node, smi_output, tool, write

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return healthy_gpu_node(tmp_path / "node")


def check(root: Path, **kw: float) -> driver.CheckResult:
    return driver.check(driver.discover(NodeRoot(str(root)), **kw))


def test_healthy(root: Path) -> None:
    r = check(root)
    assert r.status == PASS
    assert r.message == f"driver {DRIVER}, 4 GPUs (/dev/nvidia0..nvidia3), visible to nvidia-smi"
    assert r.details["devices"] == ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia2", "/dev/nvidia3"]


def test_device_nodes_sorted_numerically(tmp_path: Path) -> None:
    root = healthy_gpu_node(tmp_path / "node", gpus=12)
    facts = driver.discover(NodeRoot(str(root)))
    assert facts.devices[-2:] == ("/dev/nvidia10", "/dev/nvidia11")
    assert "/dev/nvidiactl" not in facts.devices


def test_without_nvidia_smi_passes_and_says_so(root: Path) -> None:
    (root / "usr/bin/nvidia-smi").unlink()
    r = check(root)
    assert r.status == PASS and "nvidia-smi not found" in r.message


def test_driver_not_loaded(root: Path) -> None:
    (root / "proc/driver/nvidia/version").unlink()
    r = check(root)
    assert r.status == FAIL and r.message.startswith(
        "driver not loaded: /proc/driver/nvidia/version does not exist"
    )


def test_no_device_nodes(root: Path) -> None:
    for p in (root / "dev").glob("nvidia[0-9]*"):
        p.unlink()
    r = check(root)
    assert r.status == FAIL and "no GPU device nodes /dev/nvidia[0-9]*" in r.message


def test_nvml_cannot_talk_to_the_driver(root: Path) -> None:
    tool(
        root,
        "/usr/bin/nvidia-smi",
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
        "driver. Make sure that the latest NVIDIA driver is installed and running.\n",
        exit_code=9,
    )
    r = check(root)
    assert r.status == FAIL
    assert "NVML does not answer: nvidia-smi exited with 9: NVIDIA-SMI has failed" in r.message


def test_driver_library_mismatch(root: Path) -> None:
    tool(root, "/usr/bin/nvidia-smi", smi_output("580.95.05"))
    r = check(root)
    assert r.status == FAIL
    assert (
        r.message == f"driver/library version mismatch: kernel module {DRIVER}, nvidia-smi reports 580.95.05"
    )


def test_nvidia_smi_hang_is_a_warning_and_bounded(root: Path) -> None:
    tool(root, "/usr/bin/nvidia-smi", smi_output(), sleep=30)
    started = time.monotonic()
    r = check(root, smi_timeout=0.3)
    assert time.monotonic() - started < 5
    assert r.status == WARN and "nvidia-smi did not finish within 0.3s" in r.message


def test_fewer_gpus_than_device_nodes(root: Path) -> None:
    tool(root, "/usr/bin/nvidia-smi", smi_output(gpus=3))
    r = check(root)
    assert r.status == WARN and r.message == f"driver {DRIVER}: 4 device nodes but nvidia-smi sees 3 GPUs"


def test_unreadable_version_text(root: Path) -> None:
    write(root, "/proc/driver/nvidia/version", "garbage\n")
    (root / "usr/bin/nvidia-smi").unlink()
    r = check(root)
    assert r.status == WARN and "version unknown" in r.message


@pytest.mark.parametrize(
    "text, version",
    [
        (PROC_VERSION_TEXT, DRIVER),
        ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15  Wed Jan 22 2025\n", "570.86.15"),
        ("NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  580.65.06  Release Build\n", "580.65.06"),
        (
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.135  Fri Jan 10 20:00:00 UTC 2025\n",
            "550.135",
        ),
        ("GCC version: 11\n", None),
    ],
)
def test_parse_proc_version(text: str, version: str) -> None:
    assert driver.parse_proc_version(text) == version


def test_driver_versions_come_from_the_query_rows(root: Path) -> None:
    facts = driver.discover(NodeRoot(str(root)))
    assert facts.smi is not None and facts.smi.versions == (DRIVER,) * 4
    assert [r.gpu_index for r in facts.smi.table.rows] == [0, 1, 2, 3]  # type: ignore[union-attr]


# --- versions -----------------------------------------------------------------------------------


def test_versions_on_the_known_good_node(root: Path) -> None:
    facts = driver.discover(NodeRoot(str(root)))
    v = versions.discover(NodeRoot(str(root)), facts.version, facts.version_note)
    assert (v.kubernetes, v.containerd, v.toolkit, v.driver) == ("1.35.2", "2.2.3", "1.19.0", DRIVER)
    assert v.ami_release is None and "not recorded on the node" in v.notes["ami_release"]
    assert v.nodeadm is None


def test_versions_missing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    v = versions.discover(NodeRoot(str(tmp_path / "empty")), None, "driver not loaded")
    assert (v.kubernetes, v.containerd, v.toolkit, v.driver) == (None, None, None, None)
    assert v.notes["kubernetes"] == "/etc/eks/kubelet-version.txt: does not exist"
    assert v.notes["toolkit"] == "/usr/bin/nvidia-ctk not found"


def test_toolkit_version_when_nvidia_ctk_fails(root: Path) -> None:
    tool(root, "/usr/bin/nvidia-ctk", "", exit_code=2, stderr="flag provided but not defined\n")
    value, note = versions.toolkit_version(NodeRoot(str(root)))
    assert value is None and note == "nvidia-ctk exited with 2: flag provided but not defined"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Kubernetes v1.35.2-eks-b1e2c3d\n", "1.35.2"),
        ("Kubernetes v1.30.14\n", "1.30.14"),
        ("nonsense\n", None),
    ],
)
def test_parse_kubelet_version(text: str, expected: str) -> None:
    assert versions.parse_kubelet_version(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("containerd github.com/containerd/containerd/v2 2.2.3 1b3c3d9a2fd4\n", "2.2.3"),
        ("containerd github.com/containerd/containerd v1.7.27 05044ec0a9a7\n", "1.7.27"),
        ("containerd containerd.io 1.7.27 05044ec0a9a7\n", "1.7.27"),
        ("containerd github.com/containerd/containerd/v2\n", None),
    ],
)
def test_parse_containerd_version(text: str, expected: str) -> None:
    assert versions.parse_containerd_version(text) == expected


def test_parse_toolkit_versions_from_the_sample() -> None:
    text = (SAMPLES / "version-outputs.txt").read_text()
    blocks = text.split("===== nvidia-ctk --version")[1:]
    assert [versions.parse_toolkit_version(b) for b in blocks] == ["1.19.1", "1.18.2"]


def test_run_tool_kills_the_whole_group(tmp_path: Path) -> None:
    # A shell that starts a child keeping stdout open: the timeout must still return promptly.
    script = write(tmp_path, "/hang.sh", "#!/bin/sh\nsleep 30 &\nsleep 30\n", 0o755)
    started = time.monotonic()
    out = process.run_tool([str(script)], 0.3)
    assert out is not None and out.returncode is None
    assert time.monotonic() - started < 5
    assert process.run_tool([str(tmp_path / "missing")], 1) is None
