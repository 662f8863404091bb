"""Simulated EKS AL2023 NVIDIA nodes under a directory (the agent's ``--root``).

``healthy_gpu_node(root)`` lays out what the runbook's known-good AMI (v20260512) has: the node
files from tests/samples, the EKS version files, the driver's ``/proc`` entry and device nodes, and
small stand-ins for ``nvidia-smi`` and ``nvidia-ctk`` that print what the real tools print.
Each failure test then breaks one thing.
"""

import shlex
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from tests.support.kube_helpers import NODE

SAMPLES = Path(__file__).resolve().parent.parent / "samples"

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
NODE_NAME = NODE  # the Node that tests/conftest.py's API server holds


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


# PCI bus ids as the instances have them: g5.12xlarge-like (4 GPUs) and p5.48xlarge (8 GPUs).
BUS_IDS_4 = ("00000000:00:1B.0", "00000000:00:1C.0", "00000000:00:1D.0", "00000000:00:1E.0")
BUS_IDS_8 = ("00000000:53:00.0", "00000000:64:00.0", "00000000:75:00.0", "00000000:86:00.0",
             "00000000:97:00.0", "00000000:A8:00.0", "00000000:B9:00.0", "00000000:CA:00.0")


def gpu_rows(
    gpus: int = 4,
    version: str = DRIVER,
    *,
    ecc: bool = True,
    remap: bool = True,
    fabric: Optional[str] = None,
) -> List[Dict[str, str]]:
    """One dict per GPU, field -> the cell nvidia-smi prints for it (agent/nvidia/smi.py names the fields).

    ``ecc=False``: a GPU without ECC reporting (``[N/A]``); ``remap=False``: a GPU before row
    remapping (V100, T4: ``[N/A]``, retired pages instead); ``fabric``: ``"Completed"`` on NVSwitch
    systems (status ``Success``), else the bare ``N/A`` nvidia-smi prints without a fabric.
    """
    bus_ids = BUS_IDS_8 if gpus > 4 else BUS_IDS_4
    rows = []
    for i in range(gpus):
        bus = bus_ids[i] if i < len(bus_ids) else f"00000000:{0xD0 + i:02X}:00.0"
        rows.append({
            "index": str(i),
            "pci.bus_id": bus,
            "uuid": f"GPU-{i:08x}-5f1e-4c2a-9b3d-0123456789ab",
            "driver_version": version,
            "ecc.errors.uncorrected.volatile.total": "0" if ecc else "[N/A]",
            "retired_pages.pending": "[N/A]" if remap else ("No" if ecc else "[N/A]"),
            "remapped_rows.pending": "No" if remap else "[N/A]",
            "remapped_rows.failure": "No" if remap else "[N/A]",
            "fabric.state": fabric or "N/A",
            "fabric.status": ("Success" if fabric == "Completed" else "N/A") if fabric else "N/A",
        })
    return rows


def csv_rows(rows: List[Dict[str, str]], fields: Sequence[str]) -> str:
    return "".join(", ".join(r[f] for f in fields) + "\n" for r in rows)


def smi_output(versions: str = DRIVER, gpus: int = 4) -> str:
    """What the agent's query prints on a healthy node (for stand-ins that ignore their arguments)."""
    from agent.nvidia import smi

    return csv_rows(gpu_rows(gpus, versions), smi.FIELDS)


def nvidia_smi(
    root: Path,
    rows: List[Dict[str, str]],
    *,
    known_fields: Optional[Sequence[str]] = None,
    extra: str = "",
    exit_code: int = 0,
    sleep: Optional[float] = None,
) -> Path:
    """A stand-in ``nvidia-smi`` that answers ``--query-gpu=F1,F2,... --format=csv,noheader[,nounits]``
    for the fields it knows (``known_fields``, default all of ``rows``'), one line per GPU, and refuses
    a query with an unknown field the way nvidia-smi does (``Field "x" is not a valid field to
    query.``, exit 2). ``extra`` is printed after the rows (e.g. a GPU NVML cannot open)."""
    from agent.nvidia import smi

    known = list(known_fields) if known_fields is not None else list(rows[0]) if rows else list(smi.FIELDS)
    lines = ["#!/bin/sh"]
    if sleep is not None:
        lines.append(f"sleep {sleep}")
    lines += ['case "$2" in --format=csv,noheader|--format=csv,noheader,nounits) ;; *) echo "bad format $2" >&2; '
              'exit 2;; esac', 'case "$1" in']
    queries = {smi.FIELDS, smi.BASE_FIELDS, ("driver_version",)}  # the agent's, its fallback, the older agent's
    for fields in sorted(queries):
        pattern = shlex.quote(f"--query-gpu={','.join(fields)}")
        unknown = [f for f in fields if f not in known]
        if unknown:
            message = f'Field "{unknown[0]}" is not a valid field to query.\n\n'
            lines.append(f"  {pattern}) printf '%s' {shlex.quote(message)}; exit 2;;")
        else:
            out = csv_rows(rows, fields) + extra
            lines.append(f"  {pattern}) printf '%s' {shlex.quote(out)}; exit {exit_code};;")
    lines += ["  *) echo \"unexpected query: $1\" >&2; exit 2;;", "esac"]
    return write(root, "/usr/bin/nvidia-smi", "\n".join(lines) + "\n", 0o755)


def kmsg_record(seq: int, usec: int, message: str, level: int = 6, facility: int = 0) -> str:
    """One /dev/kmsg record: ``PRI,SEQ,USEC,FLAGS;MESSAGE``."""
    return f"{facility * 8 + level},{seq},{usec},-;{message}\n"


BOOT_KMSG = (
    kmsg_record(0, 0, "Linux version 6.12.79-101.147.amzn2023.x86_64 (mockbuild@ip-10-0-43-22) (gcc (GCC) 11.5.0)")
    + kmsg_record(1, 0, "Command line: BOOT_IMAGE=(hd0,gpt1)/boot/vmlinuz-6.12.79 root=UUID=5c8b "
                  "nvme_core.io_timeout=4294967295")
    + " SUBSYSTEM=cpu\n"  # a continuation (dictionary) line, as /dev/kmsg prints them
    + kmsg_record(412, 5204113, "nvidia: loading out-of-tree module taints kernel.", level=4)
    + kmsg_record(418, 5391020, "NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  580.159.03  Release Build")
)


def ctk_output(version: str = TOOLKIT) -> str:
    return (
        f"NVIDIA Container Toolkit CLI version {version}\ncommit: 09ceee5dde66ba9ce25c7cc69b1ebd5e6e3266fa\n"
    )


def healthy_gpu_node(root: Path, *, gpus: int = 4, extra: Optional[Dict[str, str]] = None,
                     instance_type: str = "g5.12xlarge") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write(root, "/etc/containerd/config.toml", (SAMPLES / "containerd-v3-nodeadm-nvidia.toml").read_text())
    write(
        root,
        "/etc/nvidia-container-runtime/config.toml",
        (SAMPLES / "nvidia-container-runtime-default.toml").read_text(),
    )
    gpu_side(root, gpus=gpus, instance_type=instance_type)
    for node_path, text in (extra or {}).items():
        write(root, node_path, text)
    return root


def gpu_side(root: Path, *, gpus: int = 4, instance_type: Optional[str] = "g5.12xlarge") -> Path:
    """Everything but the containerd and toolkit config files: versions, kubelet's environment,
    the loaded driver, the GPUs, the kernel log and the tool stand-ins (for tests that bring their
    own config). ``instance_type`` is what the agent's first IMDS lookup leaves in
    /run/gpu-node-agent/instance-type (None: no lookup yet); g5.12xlarge has 4 GPUs, p5.48xlarge 8."""
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
    nvidia_smi(root, gpu_rows(gpus, fabric="Completed" if instance_type in NVSWITCH_TYPES else None))
    tool(root, "/usr/bin/nvidia-ctk", ctk_output())
    write(root, "/dev/kmsg", BOOT_KMSG)
    if instance_type:
        write(root, "/run/gpu-node-agent/instance-type", f"{instance_type}\n")
    if instance_type in NVSWITCH_TYPES:
        nvswitch_side(root)
    return root


NVSWITCH_TYPES = ("p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "p5e.48xlarge", "p5en.48xlarge",
                  "p6-b200.48xlarge")
# The NVSwitches of an HGX H100 board as the driver lists them (PCI addresses of the four switches).
NVSWITCH_DEVICES = ("0000:05:00.0", "0000:06:00.0", "0000:07:00.0", "0000:08:00.0")


def nvswitch_side(root: Path, version: str = DRIVER) -> None:
    """An NVSwitch system: the driver's NVSwitch devices and the fabric manager binary."""
    for pci in NVSWITCH_DEVICES:
        write(root, f"/proc/driver/nvidia-nvswitch/devices/{pci}", "")
    for i in range(len(NVSWITCH_DEVICES)):
        write(root, f"/dev/nvidia-nvswitch{i}", "")
    write(root, "/dev/nvidia-nvswitchctl", "")
    tool(root, "/usr/bin/nv-fabricmanager", f"Fabric Manager version is : {version}\n")


def known_good_facts() -> "tuple":
    """(DriverFacts, NodeVersions) of the known-good row, for tests whose node cannot run programs
    (pyfakefs): the driver and the version discovery themselves are tested on real files."""
    from agent.compat.versions import NodeVersions
    from agent.nvidia import smi
    from agent.nvidia.driver import DriverFacts, SmiResult

    devices = tuple(f"/dev/nvidia{i}" for i in range(4))
    driver = DriverFacts(True, DRIVER, None, devices, SmiResult((DRIVER,) * 4, None, table=smi.parse(smi_output())))
    versions = NodeVersions(kubernetes="1.35.2", containerd="2.2.3", toolkit=TOOLKIT, driver=DRIVER)
    return driver, versions
