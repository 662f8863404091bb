"""The files containerd loads: ``config.toml`` and its ``imports``, read the way containerd reads them.

``load`` follows containerd's import rules (breadth-first; relative paths against the importing
file's directory; only paths with ``*`` globbed, sorted, no match silent; repeats skipped; a missing
plain import is fatal) and reads the installed daemon's major version, which decides how the files
merge (``agent/containerd/config.py``).
"""


from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from agent.base.errors import NodeFileError, NodeFileMissing
from agent.base.fs import read_text
from agent.base.noderoot import NodeRoot
from agent.compat.versions import CONTAINERD_VERSION_FILE, parse_containerd_version
from agent.config.settings import ContainerdSettings
from agent.toml.cache import toml_values

MAX_IMPORTED_FILES = 256


class ConfigFile(NamedTuple):
    """One file containerd loads, as read from the node."""

    path: Path  # where the agent reads it (under --root)
    node_path: str  # how containerd names it
    text: str
    version: int  # the file's ``version`` key; 0 when absent
    imports: Tuple[str, ...]
    mtime: float
    is_symlink: bool
    data: Mapping[str, Any]  # plain parsed content

    def cri_table(self, plugin_id: str) -> Optional[Mapping[str, Any]]:
        plugins = self.data.get("plugins")
        table = plugins.get(plugin_id) if isinstance(plugins, Mapping) else None
        return table if isinstance(table, Mapping) else None

    @property
    def has_plugins(self) -> bool:
        return isinstance(self.data.get("plugins"), Mapping) and bool(self.data["plugins"])


class DaemonVersion(NamedTuple):
    major: int  # 1 or 2: decides how imports merge
    version: Optional[str]  # e.g. "2.2.3"
    source: str  # where ``major`` came from


class ContainerdConfigSet(NamedTuple):
    """``config.toml`` and every file it imports, in the order containerd loads them."""

    files: Tuple[ConfigFile, ...]
    daemon: DaemonVersion

    @property
    def main(self) -> ConfigFile:
        return self.files[0]


def _read_config_file(root: NodeRoot, node_path: str, *, main: bool) -> ConfigFile:
    path = root.path(node_path)
    is_symlink = path.is_symlink()
    if main and is_symlink:
        raise NodeFileError(path, "is a symlink; nodeadm writes a regular file here, refusing to manage it")
    try:
        text = read_text(path, allow_empty=not main)
    except NodeFileMissing:
        if main:
            raise NodeFileMissing(path, "does not exist (has nodeadm run?)") from None
        raise NodeFileMissing(path, "is imported but does not exist; containerd refuses to start") from None
    data = toml_values(root, path, text)
    version = data.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise NodeFileError(path, f"'version' must be an integer, got {version!r}")
    imports = data.get("imports", [])
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        raise NodeFileError(path, "'imports' must be an array of strings")
    return ConfigFile(
        path=path,
        node_path=node_path,
        text=text,
        version=version,
        imports=tuple(imports),
        mtime=path.stat().st_mtime,
        is_symlink=is_symlink,
        data=data,
    )


def resolve_imports(root: NodeRoot, parent: str, imports: Sequence[str]) -> List[str]:
    """containerd's ``resolveImports``: clean, join relative to the parent's dir, glob only ``*``."""
    out: List[str] = []
    for raw in imports:
        cleaned = _clean(raw)
        if not cleaned.startswith("/"):
            cleaned = _clean(str(PurePosixPath(parent).parent / cleaned))
        if "*" in cleaned:
            out.extend(_glob(root, cleaned))
        else:
            out.append(cleaned)
    return out


def _clean(path: str) -> str:
    """Go's ``filepath.Clean`` for the paths containerd sees."""
    absolute = path.startswith("/")
    parts: List[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not absolute:
                parts.append(part)
            continue
        parts.append(part)
    cleaned = "/".join(parts)
    return ("/" + cleaned) if absolute else (cleaned or ".")


def _glob(root: NodeRoot, pattern: str) -> List[str]:
    """Go's ``filepath.Glob`` on node paths: per-segment matching, dotfiles included, sorted."""
    import fnmatch

    candidates = ["/"]
    for segment in pattern.strip("/").split("/"):
        nxt: List[str] = []
        for base in candidates:
            host = root.path(base)
            if not any(ch in segment for ch in "*?["):
                if (host / segment).exists() or (host / segment).is_symlink():
                    nxt.append(str(PurePosixPath(base) / segment))
                continue
            try:
                names = sorted(p.name for p in host.iterdir())
            except OSError:
                continue
            regex = re.compile(fnmatch.translate(segment.replace("[^", "[!")))
            nxt.extend(str(PurePosixPath(base) / n) for n in names if regex.match(n))
        candidates = nxt
    return candidates


def daemon_version(version_text: Optional[str], main: ConfigFile) -> DaemonVersion:
    """containerd's major version from ``/etc/eks/containerd-version.txt``, else the file's layout."""
    version = parse_containerd_version(version_text) if version_text else None
    if version is not None and version.split(".")[0] in ("1", "2"):
        return DaemonVersion(int(version.split(".")[0]), version, CONTAINERD_VERSION_FILE)
    major = 2 if main.version >= 3 else 1
    return DaemonVersion(major, None, f"'version = {main.version}' in {main.node_path}")


def load(root: NodeRoot, settings: ContainerdSettings) -> ContainerdConfigSet:
    """Read the main file and every import, in containerd's order. Raises ``NodeFileError``."""
    main = _read_config_file(root, settings.config_path, main=True)
    files = [main]
    loaded = {main.node_path}
    pending: List[Tuple[str, Tuple[str, ...]]] = [
        (p, (main.node_path,)) for p in resolve_imports(root, main.node_path, main.imports)
    ]
    while pending:
        node_path, chain = pending.pop(0)
        if node_path in chain:
            cycle = " -> ".join((*chain, node_path))
            raise NodeFileError(root.path(chain[-1]), f"import cycle: {cycle}")
        if node_path in loaded:
            continue  # containerd skips files it already loaded
        if len(files) >= MAX_IMPORTED_FILES:
            raise NodeFileError(main.path, f"imports more than {MAX_IMPORTED_FILES} files")
        f = _read_config_file(root, node_path, main=False)
        loaded.add(node_path)
        files.append(f)
        pending.extend((p, (*chain, node_path)) for p in resolve_imports(root, node_path, f.imports))
    version_path = root.path(CONTAINERD_VERSION_FILE)
    version_text = read_text(version_path) if version_path.is_file() else None
    return ContainerdConfigSet(tuple(files), daemon_version(version_text, main))
