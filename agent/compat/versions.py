"""Where the stack's component versions live on a node, and how they are read (README, "Health checks").

* Kubernetes: ``/etc/eks/kubelet-version.txt``, the raw ``kubelet --version`` output
  (``Kubernetes v1.35.2-eks-1a2b3c4``);
* containerd: ``/etc/eks/containerd-version.txt``, the raw ``containerd --version`` output
  (``containerd github.com/containerd/containerd/v2 2.2.3 <commit>``);
* NVIDIA Container Toolkit: ``nvidia-ctk --version`` (``NVIDIA Container Toolkit CLI version 1.19.0``);
* driver: ``/proc/driver/nvidia/version`` (read by ``agent.nvidia.driver``);
* the AMI release (``v20260512``) is **not recorded on the node**: ``/etc/eks/release`` holds the
  *base* AL2023 AMI id, build time and kernel, and IMDS ``ami-id`` is an id, not a release name
  (naming it needs ec2:DescribeImages, which the node's role does not have). So the release, and
  with it whether nodeadm carries awslabs/amazon-eks-ami#2705, stay unknown, and the report says so.

``nvidia-ctk --version`` runs through ``agent.base.process.run_tool`` (bounded; a hung tool must not hang
``check``).
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, NamedTuple, Optional, Tuple

from agent.base.errors import NodeFileError
from agent.base.fs import read_text
from agent.base.noderoot import NodeRoot
from agent.base.process import TOOL_TIMEOUT_SECONDS, run_tool

KUBELET_VERSION_FILE = "/etc/eks/kubelet-version.txt"
CONTAINERD_VERSION_FILE = "/etc/eks/containerd-version.txt"
EKS_RELEASE_FILE = "/etc/eks/release"
NVIDIA_CTK = "/usr/bin/nvidia-ctk"


# --- parsing ------------------------------------------------------------------------------------

# Patterns as strings: ``re`` compiles and caches them on first use, so ``check`` pays only for those it uses.
_SEMVER = r"(?:^|[\s/])v?(\d+\.\d+\.\d+)(?:[-+.~\s]|$)"  # "~": Debian's 1.6.20~ds1


def parse_kubelet_version(text: str) -> Optional[str]:
    """``Kubernetes v1.35.2-eks-1a2b3c4`` -> ``1.35.2``."""
    m = re.search(r"\bKubernetes\s+v?(\d+\.\d+(?:\.\d+)?)", text) or re.search(_SEMVER, text)
    return m.group(1) if m else None


def parse_containerd_version(text: str) -> Optional[str]:
    """``containerd github.com/containerd/containerd/v2 2.2.3 <commit>`` -> ``2.2.3``.

    The module path's ``/v2`` is not a version: only a full ``X.Y.Z`` counts.
    """
    m = re.search(_SEMVER, text)
    return m.group(1) if m else None


def parse_toolkit_version(text: str) -> Optional[str]:
    """``NVIDIA Container Toolkit CLI version 1.19.0`` (then ``commit: <hex>``) -> ``1.19.0``."""
    m = re.search(r"\bversion\s+v?(\d+\.\d+\.\d+(?:[-~][0-9A-Za-z.]+)?)", text)
    return m.group(1) if m else None


def minor(version: Optional[str]) -> Optional[str]:
    """``1.35.2`` -> ``1.35`` (the matrix pins Kubernetes by minor version)."""
    if not version:
        return None
    parts = version.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else None


# --- discovery ----------------------------------------------------------------------------------


class NodeVersions(NamedTuple):
    """Component versions found on the node; None where the node does not tell (see ``notes``)."""

    kubernetes: Optional[str] = None
    containerd: Optional[str] = None
    toolkit: Optional[str] = None
    driver: Optional[str] = None
    ami_release: Optional[str] = None
    nodeadm: Optional[str] = None  # "pre-#2705" | "#2705"; known only through the AMI release
    notes: Mapping[str, str] = {}  # component -> where it came from / why unknown; never mutated


def _version_file(
    root: NodeRoot, node_path: str, parse: Callable[[str], Optional[str]]
) -> Tuple[Optional[str], str]:
    try:
        text = read_text(root.path(node_path))
    except NodeFileError as exc:
        return None, f"{node_path}: {exc.problem}"
    value = parse(text)
    if value is None:
        return None, f"{node_path}: no version in {text.strip()[:80]!r}"
    return value, node_path


def toolkit_version(root: NodeRoot, timeout: float = TOOL_TIMEOUT_SECONDS) -> Tuple[Optional[str], str]:
    binary = root.executable(NVIDIA_CTK)
    if not binary.exists():
        return None, f"{NVIDIA_CTK} not found"
    out = run_tool([str(binary), "--version"], timeout)
    if out is None:
        return None, f"{NVIDIA_CTK} cannot be executed"
    if not out.ok:
        return None, out.problem(timeout)
    value = parse_toolkit_version(out.stdout)
    if value is None:
        return None, f"{NVIDIA_CTK} --version printed no version"
    return value, f"{NVIDIA_CTK} --version"


def discover(root: NodeRoot, driver_version: Optional[str], driver_note: str) -> NodeVersions:
    kubernetes, k_note = _version_file(root, KUBELET_VERSION_FILE, parse_kubelet_version)
    containerd, c_note = _version_file(root, CONTAINERD_VERSION_FILE, parse_containerd_version)
    toolkit, t_note = toolkit_version(root)
    return NodeVersions(
        kubernetes=kubernetes,
        containerd=containerd,
        toolkit=toolkit,
        driver=driver_version,
        ami_release=None,
        nodeadm=None,
        notes={
            "kubernetes": k_note,
            "containerd": c_note,
            "toolkit": t_note,
            "driver": driver_note,
            "ami_release": f"not recorded on the node ({EKS_RELEASE_FILE} names only the base AMI)",
            "nodeadm": "follows the AMI release, which is unknown",
        },
    )
