"""The parsed-TOML cache: a side effect of `check` and `plan` (and of ``run``'s and ``prepare``'s discovery).

Parsing with tomlkit (and importing it) is most of what `check` costs, and containerd's and the
toolkit's files rarely change; so discovery keeps their plain values in the agent's own state,
``/run/gpu-node-agent/toml-values.json`` (tmpfs: gone at boot). It is never a node file: nothing
but this module reads it, and a missing, corrupt or unwritable cache only costs a parse. README
"Confinement" says how the file is trusted; ``run`` removes temp files a killed writer left.
"""


from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict

from agent.base.errors import NodeFileError

if TYPE_CHECKING:
    from agent.base.noderoot import NodeRoot

VALUES_CACHE = "/run/gpu-node-agent/toml-values.json"
_CACHE_ENTRIES = 32


def toml_values(root: NodeRoot, path: object, text: str) -> Dict[str, Any]:
    """The plain values of a TOML file's ``text``, as ``parse_toml(text).unwrap()`` gives them.

    Side effect: after a parse, the values are written to ``VALUES_CACHE`` (under ``root``), keyed
    by this agent's version and the SHA-256 of the exact text they came from, and reused only for
    byte-identical text read by the same agent version. Best effort: unreadable, corrupt, not a
    regular file of ours, too big or unwritable means parsing as usual.
    """
    import json

    from agent import __version__
    from agent.base.fs import MAX_NODE_FILE, read_bytes

    cache_path = root.path(VALUES_CACHE)
    digest = _sha256()(text.encode("utf-8", "surrogatepass")).hexdigest()
    cache: Any = None
    try:
        if os.lstat(cache_path).st_uid == os.geteuid():
            cache = json.loads(read_bytes(cache_path, limit=MAX_NODE_FILE, allow_symlink=False))
        if not (isinstance(cache, dict) and cache.get("v") == 2 and cache.get("agent") == __version__
                and isinstance(cache.get("files"), dict)):
            cache = None
        entry = cache["files"].get(str(path)) if cache is not None else None
        if isinstance(entry, dict) and entry.get("sha256") == digest and isinstance(entry.get("values"), dict):
            return dict(entry["values"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, NodeFileError):
        cache = None
    from agent.toml.edit import parse_values

    values = parse_values(text, path)
    try:
        json.dumps(values, allow_nan=True)  # TOML dates and times have no JSON form: not cached
    except (TypeError, ValueError):
        return values
    files = dict(cache["files"]) if cache is not None else {}
    files.pop(str(path), None)
    files[str(path)] = {"sha256": digest, "values": values}
    kept = dict(list(files.items())[-_CACHE_ENTRIES:])
    data = json.dumps({"v": 2, "agent": __version__, "files": kept}).encode("utf-8")
    if len(data) > MAX_NODE_FILE:  # never more state than a node file may be
        data = json.dumps({"v": 2, "agent": __version__, "files": {str(path): files[str(path)]}}).encode()
        if len(data) > MAX_NODE_FILE:
            return values
    try:
        from agent.base.fs import atomic_write

        cache_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(cache_path, data)
    except (OSError, NodeFileError):
        pass
    return values


def _sha256() -> Any:
    """SHA-256 without ``hashlib``'s OpenSSL import (most of a cache hit's cost): CPython's own
    implementation, ``_sha256`` (3.9-3.11) or ``_sha2`` (3.12+); ``hashlib`` where neither exists."""
    for name in ("_sha256", "_sha2", "hashlib"):
        try:
            return __import__(name).sha256
        except (ImportError, AttributeError):
            continue
    raise ImportError("no SHA-256")
