"""Simulated EKS AL2023 NVIDIA nodes under a directory (the agent's ``--root``).

``healthy_gpu_node(root)`` lays out what the runbook's known-good AMI (v20260512) has: the node
files from tests/samples, the EKS version files, the driver's ``/proc`` entry and device nodes, and
small stand-ins for ``nvidia-smi`` and ``nvidia-ctk`` that print what the real tools print.
Each failure test then breaks one thing.
"""

import shlex
from pathlib import Path
from typing import Dict, Optional

SAMPLES = Path(__file__).resolve().parent / "samples"

DRIVER = "580.159.03"
PROC_VERSION_TEXT = (
    f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {DRIVER}  Release Build  "
    "(dvs-builder@U22-I3-B17-02-5)  Tue Apr 14 09:55:41 UTC 2026\n"
    "GCC version:  gcc version 11.5.0 20240719 (Red Hat 11.5.0-5) (GCC) \n"
)
KUBELET_VERSION_TEXT = "Kubernetes v1.35.2-eks-b1e2c3d\n"
CONTAINERD_VERSION_TEXT = (
    "containerd github.com/containerd/containerd/v2 2.2.3 1b3c3d9a2fd4d4a4b4c4d4e4f4a4b4c4d4e4f4a4\n"
)
TOOLKIT = "1.19.0"
NODE_NAME = "ip-10-0-0-12.us-west-2.compute.internal"


def write(root: Path, node_path: str, text: str, mode: int = 0o644) -> Path:
    path = root / node_path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def tool(
    root: Path,
    node_path: str,
    stdout: str,
    exit_code: int = 0,
    stderr: str = "",
    sleep: Optional[float] = None,
) -> Path:
    """A stand-in executable: prints ``stdout``/``stderr``, optionally hangs, exits ``exit_code``."""
    lines = ["#!/bin/sh"]
    if sleep is not None:
        lines.append(f"sleep {sleep}")
    lines.append(f"printf '%s' {shlex.quote(stdout)}")
    if stderr:
        lines.append(f"printf '%s' {shlex.quote(stderr)} >&2")
    lines.append(f"exit {exit_code}")
    return write(root, node_path, "\n".join(lines) + "\n", 0o755)


def smi_output(versions: str = DRIVER, gpus: int = 4) -> str:
    return "".join(f"{versions}\n" for _ in range(gpus))


def ctk_output(version: str = TOOLKIT) -> str:
    return (
        f"NVIDIA Container Toolkit CLI version {version}\ncommit: 09ceee5dde66ba9ce25c7cc69b1ebd5e6e3266fa\n"
    )


def healthy_gpu_node(root: Path, *, gpus: int = 4, extra: Optional[Dict[str, str]] = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write(root, "/etc/containerd/config.toml", (SAMPLES / "containerd-v3-nodeadm-nvidia.toml").read_text())
    write(
        root,
        "/etc/nvidia-container-runtime/config.toml",
        (SAMPLES / "nvidia-container-runtime-default.toml").read_text(),
    )
    gpu_side(root, gpus=gpus)
    for node_path, text in (extra or {}).items():
        write(root, node_path, text)
    return root


def gpu_side(root: Path, *, gpus: int = 4) -> Path:
    """Everything but the containerd and toolkit config files: versions, kubelet's environment,
    the loaded driver, the GPUs and the tool stand-ins (for tests that bring their own config)."""
    write(root, "/etc/eks/kubelet-version.txt", KUBELET_VERSION_TEXT)
    write(root, "/etc/eks/containerd-version.txt", CONTAINERD_VERSION_TEXT)
    write(
        root,
        "/etc/eks/release",
        'BASE_AMI_ID="ami-0a1b2c3d4e5f60718"\nBUILD_TIME="Tue May 12 08:01:02 UTC 2026"\n'
        'BUILD_KERNEL="6.12.79-101.147.amzn2023.x86_64"\nARCH="x86_64"\n',
    )
    write(
        root,
        "/etc/eks/kubelet/environment",
        f"NODEADM_KUBELET_ARGS=--node-ip=10.0.0.12 --hostname-override={NODE_NAME} "
        "--cloud-provider=external --node-labels=nvidia.com/gpu.present=true\n",
    )
    write(root, "/proc/driver/nvidia/version", PROC_VERSION_TEXT)
    for i in range(gpus):
        write(root, f"/dev/nvidia{i}", "")
    write(root, "/dev/nvidiactl", "")
    write(root, "/dev/nvidia-uvm", "")
    tool(root, "/usr/bin/nvidia-smi", smi_output(gpus=gpus))
    tool(root, "/usr/bin/nvidia-ctk", ctk_output())
    return root


def known_good_facts() -> "tuple":
    """(DriverFacts, NodeVersions) of the known-good row, for tests whose node cannot run programs
    (pyfakefs): the driver and the version discovery themselves are tested on real files."""
    from agent.driver import DriverFacts, SmiResult
    from agent.versions import NodeVersions

    devices = tuple(f"/dev/nvidia{i}" for i in range(4))
    driver = DriverFacts(True, DRIVER, None, devices, SmiResult((DRIVER,) * 4, None))
    versions = NodeVersions(kubernetes="1.35.2", containerd="2.2.3", toolkit=TOOLKIT, driver=DRIVER)
    return driver, versions
