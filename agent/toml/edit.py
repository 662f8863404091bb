"""Minimal, format-preserving TOML edits, shared by the modules that own TOML files.

Only the lines that must change do (``edit_value``, ``comment_out``), and new lines look like the
file's own (``agent.toml.layout`` learns its conventions):

* a value is replaced in place by tomlkit (its key, quoting style, comment and indentation kept), a
  key of an inline table is added inside it, and a line is commented out in place;
* a missing key gets a line in its table's block, before the table's trailing blank lines: at its
  sorted place in a sorted table, else after its related siblings (``after``), else at the table's
  end; indented like the table's keys, or (empty table) the file's key step below the header;
* a missing table gets a header right after the last existing sub-table of its nearest existing
  parent (or right above its own sub-tables), indented like its siblings, with the blank lines the
  file puts before a header, its key parts spelled like the file's headers;
* strings take the quotes of their table, else of the file; line endings stay the file's.
"""


from __future__ import annotations

import difflib
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

from agent.base.errors import NodeFileError
from agent.toml.insert import insert
from agent.toml.layout import Layout, LayoutError, could_be_literal


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


def parse_values(text: str, path: object) -> Dict[str, Any]:
    """The plain values of ``text`` (``parse_toml(text).unwrap()``), a key defined twice named with its
    line. ``agent.toml.cache.toml_values`` is the cached form discovery uses."""
    try:
        values: Dict[str, Any] = parse_toml(text, path).unwrap()
    except NodeFileError as exc:
        raise _with_duplicate_line(exc, text) from None
    return values


def edit_value(text: str, key: Sequence[str], value: Any, *, after: Sequence[str] = (), path: object = "<edit>") -> str:
    """``text`` with ``key`` set to ``value``, changed the way a careful person would change it.

    An existing value is replaced in place and a key of an inline table is added inside it (tomlkit
    edits that one line). Any other missing key gets a new line, and a missing table a new header,
    placed and formatted as the file does it (see the module docstring). ``after`` names sibling
    keys the new key belongs right after (``SystemdCgroup`` after ``BinaryName``). The result must
    hold exactly the old values plus this one, or nothing changes (``NotFixable``).
    """
    from tomlkit.items import AoT, InlineTable

    doc = parse_toml(text, path)
    container: Any = doc
    depth = 0  # how many tables of the path exist
    for part in key[:-1]:
        child = container.get(part)
        if child is None:
            break
        if isinstance(child, AoT) or not isinstance(child, Mapping):
            raise NotFixable(f"{'.'.join(key[: depth + 1])} is not a table ({type(child).__name__})")
        container, depth = child, depth + 1
    if (depth == len(key) - 1 and key[-1] in container) or isinstance(container, InlineTable):
        set_value(doc, key, value)
        return tidy(text, doc.as_string())
    wanted = doc.unwrap()
    own = container if depth == len(key) - 1 else None
    rendered = _styled(value, _prefers_literal(None, own, doc)).as_string()
    node = wanted
    for part in key[:-1]:
        node = node.setdefault(part, {})
    node[key[-1]] = value
    first_problem = None
    try:
        for new_text in insert(Layout(text), key, depth, rendered, tuple(after)):
            try:
                if _same(wanted, parse_toml(new_text, path).unwrap()):
                    return new_text
                problem = "would change other values"
            except NodeFileError as exc:
                problem = f"would not give TOML the agent can read ({exc})"
            first_problem = first_problem or problem
    except LayoutError as exc:
        raise NotFixable(f"cannot place {'.'.join(key)} in this layout ({exc})") from None
    raise NotFixable(f"adding {'.'.join(key)} {first_problem}")


def _with_duplicate_line(exc: NodeFileError, text: str) -> NodeFileError:
    """A key defined twice in one table, named with the line of its second definition in the agent's own
    words (tomlkit 0.15.2 gives no line for it, 0.15.3 its own wording with one)."""
    m = re.fullmatch(r'invalid TOML(?: at line \d+, column \d+)?: Key "(.+)" already exists\.?', exc.problem)
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
    """Replace ``key``'s value in the tomlkit document in place (key, quoting style, comment and
    indentation kept), or add it inside the inline table that should hold it. A key that needs a
    line of its own is ``edit_value``'s job."""
    from tomlkit.items import AoT, InlineTable

    container = doc
    for i, part in enumerate(key[:-1]):
        child = container.get(part)
        if child is None:
            if not isinstance(container, InlineTable):
                raise NotFixable(f"{'.'.join(key[: i + 1])} does not exist (edit_value adds tables)")
            nested: Any = _styled(value, _prefers_literal(None, container, doc))
            for name in reversed(key[i + 1:]):
                inner = _inline_table()
                inner.append(name, nested)
                nested = inner
            _append_inline(container, part, nested)
            return
        if isinstance(child, AoT) or not isinstance(child, Mapping):
            raise NotFixable(f"{'.'.join(key[: i + 1])} is not a table ({type(child).__name__})")
        container = child
    leaf = key[-1]
    old = container.get(leaf)
    if isinstance(old, Mapping):
        raise NotFixable(f"{'.'.join(key)} is a table, expected a value")
    new = _styled(value, _prefers_literal(old, container, doc))
    if old is None:
        if not isinstance(container, InlineTable):
            raise NotFixable(f"{'.'.join(key)} is not set (edit_value adds keys)")
        _append_inline(container, leaf, new)
        return
    container[leaf] = new


def _inline_table() -> Any:
    import tomlkit

    return tomlkit.inline_table()


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


def _styled(value: Any, literal: bool) -> Any:
    """A tomlkit item for ``value``; a string as a 'literal string' when ``literal`` and it can be one."""
    import tomlkit

    if isinstance(value, str):
        return tomlkit.string(value, literal=literal and could_be_literal(value))
    return tomlkit.item(value)


def _prefers_literal(old: Any, table: Any, doc: Any) -> bool:
    """Single quotes or double: the replaced string's own; else what most strings of the table use;
    else what most strings of the file use (double on a tie or when there are none)."""
    from tomlkit.items import String, StringType

    if isinstance(old, String):
        return bool(old.type == StringType.SLL)
    for scope in (_strings(table, deep=False), _strings(doc, deep=True)):
        literal = sum(1 for s in scope if s.type == StringType.SLL)
        # a "double-quoted" string that could not be a literal one ("it's") is no choice of style
        basic = sum(1 for s in scope if s.type == StringType.SLB and could_be_literal(str(s)))
        if literal or basic:
            return literal > basic
    return False



def _strings(node: Any, *, deep: bool) -> List[Any]:
    from tomlkit.items import Array, String

    if node is None:
        return []
    items = list(node.values()) if isinstance(node, Mapping) else list(node)
    out = []
    for item in items:
        if isinstance(item, String):
            out.append(item)
        elif isinstance(item, Array) or (deep and isinstance(item, (Mapping, list))):
            out.extend(_strings(item, deep=deep))
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal values of equal types (``True`` is not ``1``), recursively."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def tidy(old_text: str, new_text: str) -> str:
    """Undo tomlkit's incidental whitespace changes after an in-place edit: a line whose only change
    is its leading whitespace gets its original back."""
    old_lines = old_text.splitlines(True)
    new_lines = new_text.splitlines(True)
    out: List[str] = []
    matcher = difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            out.extend(old_lines[i1:i2])
            continue
        olds = old_lines[i1:i2]
        out.extend(next((o for o in olds if o.lstrip() == line.lstrip()), line) for line in new_lines[j1:j2])
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
