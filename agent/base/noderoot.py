"""Node paths under ``--root``, resolved as ``chroot`` would (``NodeRoot``).

Every node path the agent touches goes through ``NodeRoot.path`` so that ``--root DIR`` works like
``rpm --root`` / ``chroot``: the agent can inspect and repair a mounted image, and tests use a
simulated node. The path is resolved inside the tree component by component: a symlink with an
absolute target is read as the tree's own path (the image's ``/etc/x -> /opt/x`` never lands on the
build host's ``/opt/x``), ``..`` never climbs above the root, and a node path whose own ``..``
would climb above it is refused. Reading and writing the files: ``agent/base/fs.py``.
"""


from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import Dict, List

from agent.base.errors import NodeFileError
from agent.base.text import shorten

MAX_SYMLINKS = 40  # as Linux's path walk


# Every non-host root in use, by its directory: a read of a path inside one follows a symlink in the
# last component inside that tree (``confined``). Plain ``Path`` objects, so that any ``Path`` a
# caller derives keeps working (and a test's fake filesystem sees them).
_ROOTS: Dict[str, NodeRoot] = {}


def confined(path: Path) -> Path:
    """``path`` with a symlink in its last component followed inside the ``--root`` tree it is in."""
    if not _ROOTS:
        return path
    text = str(path)
    # A copy: another thread may be creating a NodeRoot meanwhile (one process, many roots: tests)
    owner = max((r for prefix, r in list(_ROOTS.items()) if text.startswith(prefix + "/")),
                key=lambda r: len(str(r.root)), default=None)
    if owner is None or not path.is_symlink():
        return path
    return owner.resolve(owner.node_path(path))


class NodeRoot:
    """Resolves absolute node paths (``/etc/...``) under the root directory, as ``chroot`` would."""

    def __init__(self, root: str = "/") -> None:
        self.root = Path(root)
        self.is_host = os.path.normpath(str(root)) == "/" or str(root) == "//"
        if not self.is_host:
            _ROOTS.setdefault(str(self.root).rstrip("/"), self)

    def path(self, node_path: str) -> Path:
        """Where ``node_path`` is: its directories resolved in the tree, its last name as given."""
        parts = self._parts(node_path)
        if self.is_host:
            return Path(node_path)
        *dirs, last = parts or [""]
        base = self._walk(dirs)
        if last == "..":  # ends in "..": that is a directory walk too
            base, last = self._walk([*dirs, ".."]), ""
        return Path(base, last) if last else Path(base)

    def supplied(self, value: str, what: str) -> Path:
        """``path(value)`` for a path the node itself supplies (a daemon's config value or flag):
        anything but an absolute path that stays under the root is one ``NodeFileError`` line
        naming ``what`` (``[grpc] address in /etc/containerd/config.toml``), for its check alone."""
        if not isinstance(value, str) or not value.startswith("/"):
            raise NodeFileError(what, f"{shorten(value)} is not an absolute path; not used")
        try:
            return self.path(value)
        except NodeFileError as exc:  # climbs above the root, NUL, a symlink loop
            raise NodeFileError(what, f"{shorten(value)}: {exc.problem}") from None

    def resolve(self, node_path: str) -> Path:
        """``node_path`` with every symlink, the last one included, followed inside the tree."""
        parts = self._parts(node_path)
        if self.is_host:
            return Path(os.path.realpath(node_path))
        return Path(self._walk(parts))

    def executable(self, node_path: str) -> Path:
        """A program of the node (``/usr/bin/nvidia-smi``): a symlink, the last component's included, is
        followed inside the tree, so a mounted image's absolute link never runs the host's program."""
        return Path(node_path) if self.is_host else self.resolve(node_path)

    def _parts(self, node_path: str) -> List[str]:
        pure = PurePosixPath(node_path)
        if not pure.is_absolute():
            raise ValueError(f"node path must be absolute: {node_path!r}")
        if "\0" in node_path:
            raise NodeFileError(shorten(node_path), "a path must not contain NUL")
        parts = [p for p in node_path.split("/") if p not in ("", ".")]
        depth = 0
        for part in parts:
            depth += -1 if part == ".." else 1
            if depth < 0:
                raise NodeFileError(self.root.joinpath(*pure.parts[1:]),
                                    f"{node_path} climbs above --root {self.root} with '..'; refusing")
        return parts

    def _walk(self, parts: List[str]) -> str:
        """Host path of ``parts`` under the root: symlinks followed inside the tree, ``..`` kept in it."""
        base = str(self.root).rstrip("/")
        done: List[str] = []
        todo = list(reversed(parts))
        links = 0
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if done:
                    done.pop()
                continue
            here = "/".join([base, *done, name])
            try:
                st = os.lstat(here)
            except OSError:
                done.append(name)  # missing (or unreadable): the rest is taken as named
                continue
            if not stat.S_ISLNK(st.st_mode):
                done.append(name)
                continue
            links += 1
            if links > MAX_SYMLINKS:
                raise NodeFileError(here, "too many levels of symbolic links")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []  # an absolute link means the tree's own root
            todo.extend(reversed(target.split("/")))
        return "/".join([base, *done]) or "/"

    def node_path(self, host_path: Path) -> str:
        """The inverse of ``path``: how the node itself names ``host_path``."""
        try:
            rel = Path(host_path).relative_to(self.root)
        except ValueError:
            return str(host_path)
        return "/" + rel.as_posix() if str(rel) != "." else "/"

    def __repr__(self) -> str:
        return f"NodeRoot({str(self.root)!r})"
