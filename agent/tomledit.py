"""Minimal, format-preserving TOML edits with tomlkit, shared by the modules that own TOML files.

Only the lines that must change do: a value is replaced in place (its key, quoting style, comment
and indentation kept), a missing key is added to the table that should hold it, a missing table is
created right after its parent with the file's indentation, and a line is commented out in place.
"""


from __future__ import annotations

import difflib
import os
import re
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from agent.errors import NodeFileError

if TYPE_CHECKING:
    from agent.fs import NodeRoot


class NotFixable(Exception):
    """The file's structure does not allow a safe minimal edit (e.g. a key holds a non-table)."""


def parse_toml(text: str, path: object) -> Any:
    """Parse with tomlkit; a syntax error becomes one line with the line and column."""
    import tomlkit
    from tomlkit.exceptions import ParseError, TOMLKitError

    try:
        return tomlkit.parse(text)
    except ParseError as exc:
        message = str(exc).split(" at line ")[0]
        column = exc.col + 1  # tomlkit counts columns from 0; editors and users from 1
        if exc.__cause__ is not None and not isinstance(exc.__cause__, TOMLKitError):
            # tomlkit failed on its own account (a layout it cannot represent), not on a syntax error
            raise NodeFileError(path, f"the agent's TOML parser (tomlkit) cannot handle this layout at line "
                                f"{exc.line}, column {column} ({message}); nothing changed") from None
        raise NodeFileError(path, f"invalid TOML at line {exc.line}, column {column}: {message}") from None
    except TOMLKitError as exc:
        raise NodeFileError(path, f"invalid TOML: {exc}") from None
    except Exception as exc:  # tomlkit's own failure on a layout it cannot represent
        raise NodeFileError(path, f"the agent's TOML parser (tomlkit) cannot handle this layout "
                            f"({type(exc).__name__}: {exc}); nothing changed") from None


VALUES_CACHE = "/run/gpu-node-agent/toml-values.json"
_CACHE_ENTRIES = 32


def toml_values(root: NodeRoot, path: object, text: str) -> Dict[str, Any]:
    """The plain values of a TOML file's ``text``, as ``parse_toml(text).unwrap()`` gives them.

    Parsing with tomlkit (and importing it) is most of what `check` costs, and the files rarely
    change; so the values are kept in the agent's own state (``/run/gpu-node-agent``, gone at boot)
    keyed by this agent's version and the SHA-256 of the exact text they came from, and reused only
    for byte-identical text read by the same agent version. The cache is best effort: unreadable,
    corrupt, not a regular file of ours, too big or unwritable means parsing as usual.
    """
    import json

    from agent import __version__
    from agent.fs import MAX_NODE_FILE, read_bytes

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
    try:
        values: Dict[str, Any] = parse_toml(text, path).unwrap()
    except NodeFileError as exc:
        raise _with_duplicate_line(exc, text) from None
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
        from agent.fs import atomic_write

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


def _with_duplicate_line(exc: NodeFileError, text: str) -> NodeFileError:
    """tomlkit names a key defined twice in one table without its line: find the second definition."""
    m = re.fullmatch(r'invalid TOML: Key "(.+)" already exists\.?', exc.problem)
    if not m:
        return exc
    key = m.group(1)
    seen = set()
    table = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.match(r"\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$", stripped)
        if header:
            table = header.group(1)
            continue
        d = re.match(r"""(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*=""", stripped)
        if d and next(g for g in d.groups() if g is not None) == key:
            if (table, key) in seen:
                return NodeFileError(exc.path, f"invalid TOML at line {number}: key {key!r} is defined twice "
                                     "in the same table")
            seen.add((table, key))
    return exc


def set_value(doc: Any, key: Sequence[str], value: Any) -> None:
    """Set ``key`` to ``value`` in the tomlkit document with the smallest change that does it."""
    from tomlkit.items import AoT, InlineTable

    container = doc
    for i, part in enumerate(key[:-1]):
        child = container.get(part)
        if child is None:
            _create(container, key[i:], value)
            return
        if isinstance(child, AoT) or not isinstance(child, Mapping):
            raise NotFixable(f"{'.'.join(key[: i + 1])} is not a table ({type(child).__name__})")
        container = child
    leaf = key[-1]
    old = container.get(leaf)
    if isinstance(old, Mapping):
        raise NotFixable(f"{'.'.join(key)} is a table, expected a value")
    new = _styled(value, _prefers_literal(old, container))
    if isinstance(container, InlineTable) and old is None:
        _append_inline(container, leaf, new)
        return
    sibling_indent = _indentation(container)[1] if old is None else None
    container[leaf] = new
    if sibling_indent is not None and _has_values(container):
        new.trivia.indent = " " * sibling_indent


def _append_inline(table: Any, key: str, item: Any) -> None:
    """Append to an inline table before the space that precedes its closing brace: ``{ a = 1, b = 2 }``."""
    from tomlkit.items import Whitespace

    body = table.value.body
    trailing = None
    if body and body[-1][0] is None and isinstance(body[-1][1], Whitespace) and "," not in body[-1][1].s:
        trailing = body.pop()[1]
    table.append(key, item)
    if trailing is not None:
        table.value.append(None, trailing)


def _has_values(container: Any) -> bool:
    return any(not isinstance(v, Mapping) for v in container.values())


def _styled(value: Any, literal: bool) -> Any:
    """A tomlkit item for ``value``; strings as 'literal' when the surrounding file uses them."""
    import tomlkit

    if isinstance(value, str):
        return tomlkit.string(value, literal=literal and "'" not in value and "\n" not in value)
    return tomlkit.item(value)


def _prefers_literal(old: Any, container: Any) -> bool:
    from tomlkit.items import String, StringType

    if isinstance(old, String):
        return old.type == StringType.SLL
    siblings = [v for v in container.values() if isinstance(v, String)]
    return bool(siblings) and all(s.type == StringType.SLL for s in siblings)


def _create(container: Any, key: Sequence[str], value: Any) -> None:
    """Create the missing tables ``key[:-1]`` under ``container`` and set the leaf."""
    import tomlkit
    from tomlkit.items import InlineTable

    value = _styled(value, _prefers_literal(None, container))
    if isinstance(container, InlineTable):
        nested: Any = value
        for part in reversed(key[1:]):
            t = tomlkit.inline_table()
            t.append(part, nested)
            nested = t
        _append_inline(container, key[0], nested)
        return
    header_indent, key_indent = _indentation(container)
    tables = [tomlkit.table(is_super_table=True) for _ in key[:-2]] + [tomlkit.table()]
    leaf_table = tables[-1]
    leaf_table.add(key[-1], value)
    leaf_table.add(tomlkit.nl())
    for parent, child, name in zip(tables, tables[1:], key[1:-1]):
        parent.append(name, child)
    top = tables[0]
    step = key_indent - header_indent
    leaf_table.trivia.indent = " " * (key_indent + step * (len(tables) - 1))
    for k, item in leaf_table.value.body:
        if k is not None:
            item.trivia.indent = " " * (key_indent + step * len(tables))
    container[key[0]] = top  # item assignment also works on tomlkit's out-of-order table proxies


def _indentation(container: Any) -> Tuple[int, int]:
    """(header indent, key indent) of an existing table, so new sub-tables line up in indented files."""
    from tomlkit.items import Table

    if not isinstance(container, Table):
        return 0, 0
    header = len(container.trivia.indent)
    for k, item in container.value.body:
        if k is not None and not isinstance(item, Mapping):
            return header, len(item.trivia.indent)
    return header, header


_KEY = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_KEY_LINE = re.compile(rf"^(\s*){_KEY}(?:\s*\.\s*{_KEY})*\s*=")


def tidy(old_text: str, new_text: str) -> str:
    """Undo tomlkit's incidental whitespace changes after an edit.

    A line whose only change is its leading whitespace gets its original back (tomlkit sometimes
    shifts the indentation of a neighbouring header when it appends a key), and an added key line
    takes the indentation of the key line right above it.
    """
    old_lines = old_text.splitlines(True)
    new_lines = new_text.splitlines(True)
    out: List[str] = []
    matcher = difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            out.extend(old_lines[i1:i2])
            continue
        olds, news = old_lines[i1:i2], list(new_lines[j1:j2])
        for k, line in enumerate(news):
            same = next((o for o in olds if o.lstrip() == line.lstrip()), None)
            if same is not None:
                news[k] = same
            elif _KEY_LINE.match(line):
                above = next((x for x in reversed(out + news[:k]) if x.strip()), "")
                match = _KEY_LINE.match(above)
                if match:
                    news[k] = match.group(1) + line.lstrip()
        out.extend(news)
    return "".join(out)


def comment_out(text: str, key: Sequence[str], replacement: Optional[str] = None) -> str:
    """Comment out the line(s) of ``key`` in place. ``replacement`` replaces a one-line key with,
    e.g., the commented default the package ships; otherwise each line gets a leading ``#``."""
    doc = parse_toml(text, "<edit>")
    container: Any = doc
    for part in key[:-1]:
        container = container.get(part)
        if not isinstance(container, Mapping):
            raise NotFixable(f"{'.'.join(key)} is not in a table")
    if key[-1] not in container:
        return text
    container.remove(key[-1])
    old_lines = text.splitlines(True)
    new_lines = doc.as_string().splitlines(True)
    out = []
    for op, i1, i2, _, _ in difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False).get_opcodes():
        if op == "equal":
            out.extend(old_lines[i1:i2])
        elif op == "delete":
            removed = old_lines[i1:i2]
            if replacement is not None and len(removed) == 1:
                out.append(replacement + ("\n" if removed[0].endswith("\n") else ""))
            else:
                out.extend("#" + line for line in removed)
        else:
            raise NotFixable(f"removing {'.'.join(key)} changed more than its own line")
    return "".join(out)
