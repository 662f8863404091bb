"""Building simulated nodes for containerd config tests and running the reconcile on them."""

from pathlib import Path
from typing import Dict, Optional

from agent.base.noderoot import NodeRoot
from agent.compat.versions import CONTAINERD_VERSION_FILE
from agent.config.settings import ContainerdSettings
from agent.containerd import config as containerd

VERSION_TEXT = {
    1: "containerd github.com/containerd/containerd 1.7.27 05044ec0a9a75232cad458027ca83437aae3f4da\n",
    2: "containerd github.com/containerd/containerd/v2 2.2.3 6f5b9e7ba9d5a5b26a4d2b1d4ba33ac3b2f39e25\n",
}


def make_node(base: Path, files: Dict[str, str], daemon_major: Optional[int] = 2) -> NodeRoot:
    """A node root under ``base`` with ``files`` (node path -> text) and the containerd version file."""
    base.mkdir(parents=True, exist_ok=True)
    if daemon_major is not None:
        files = {CONTAINERD_VERSION_FILE: VERSION_TEXT[daemon_major], **files}
    for node_path, text in files.items():
        p = base / node_path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode())
    return NodeRoot(str(base))


def reconcile(root: NodeRoot, settings: ContainerdSettings = ContainerdSettings()) -> containerd.ContainerdReconcile:
    return containerd.reconcile(containerd.load(root, settings), settings)


def apply_all(result: containerd.ContainerdReconcile) -> None:
    for edit in result.edits:
        assert edit.path.read_bytes().decode() == edit.old_text  # bytes: CRLF stays CRLF
        edit.path.write_bytes(edit.new_text.encode())


def converge(root: NodeRoot, settings: ContainerdSettings = ContainerdSettings()) -> containerd.ContainerdReconcile:
    """Reconcile, write the edits, and assert a second reconcile changes nothing."""
    first = reconcile(root, settings)
    assert not first.problems, first.problems
    apply_all(first)
    second = reconcile(root, settings)
    assert second.edits == () and second.problems == ()
    assert all(v.ok for v in second.effective.values)
    return first


def changed_lines(old: str, new: str) -> "tuple[list[str], list[str]]":
    """(removed, added) lines between two texts."""
    import difflib

    removed, added = [], []
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0):
        if line.startswith(("---", "+++", "@@")):
            continue
        (removed if line.startswith("-") else added).append(line[1:])
    return removed, added


# The golden edits (tests/samples/golden): the file on the node -> what the agent must make of it.
GOLDEN_CASES = {
    # name: (the file on the node, what the agent must make of it)
    "v2, enable_cdi false": ("containerd-v2-nodeadm-nvidia.toml", "golden/v2.value-wrong.toml"),
    "v2, runtime absent": ("golden/v2.runtime-absent.input.toml", "golden/v2.runtime-absent.toml"),
    "v3, SystemdCgroup missing": ("containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml",
                                  "containerd-v3-nodeadm-nvidia.toml"),
    "v3, runtime absent": ("golden/v3.runtime-absent.input.toml", "golden/v3.runtime-absent.toml"),
    "merged, three values wrong": ("containerd-v3-nodeadm-merged.toml", "golden/merged.value-wrong.toml"),
    "merged, runtime absent": ("golden/merged.runtime-absent.input.toml", "golden/merged.runtime-absent.toml"),
    "migrated, SystemdCgroup missing": ("containerd-v3-migrated.toml", "golden/migrated.value-wrong.toml"),
    "migrated, runtime absent": ("golden/migrated.runtime-absent.input.toml", "golden/migrated.runtime-absent.toml"),
    "nvidia-ctk, default runtime and SystemdCgroup missing": ("containerd-conf.d-99-nvidia.toml",
                                                              "golden/nvidia-ctk.value-wrong.toml"),
    "nvidia-ctk, runtime absent": ("golden/nvidia-ctk.runtime-absent.input.toml",
                                   "golden/nvidia-ctk.runtime-absent.toml"),
}
