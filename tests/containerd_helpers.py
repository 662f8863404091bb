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
