"""Where a new line goes in a TOML file, and how it looks: ``insert`` adds one key line, or one table
with its first key, imitating what ``agent/toml/layout.py``'s ``Layout`` learnt from the file
(``agent.toml.edit.edit_value`` decides when a new line is needed and verifies the result).
"""


from __future__ import annotations

import json
from collections import Counter
from typing import Iterator, Optional, Sequence, Tuple

from agent.toml.layout import BARE_KEY, KeyLine, Layout, could_be_literal


def insert(layout: Layout, key: Sequence[str], depth: int, value: str, after: Tuple[str, ...]) -> Iterator[str]:
    """The text with ``key = value`` added (``depth`` tables of its path exist) as a new key line, or
    as a new table holding it: the rules' place first; for a table, then the other places between
    tables nearest to it (tomlkit cannot read some valid orders of tables, the caller checks)."""
    key = tuple(key)
    # the deepest table on the path that has its own [header]; the root table when none has
    owner = max(n for n in range(depth + 1) if layout.header(key[:n]) != -2)
    table = layout.header(key[:owner])
    rel = key[owner:]
    dotted = depth > owner and any(len(k.key) > 1 and k.key[0] == rel[0] for k in layout.keys_of(table))
    if len(rel) == 1 or dotted:  # a key line of an existing table (``options.SystemdCgroup`` if dotted)
        yield _add_key(layout, table, rel, depth - owner, value, after)
        return
    path, leaf = key[:-1], key[-1]
    index, lead, trail, near = _table_place(layout, path)
    yield _add_table(layout, path, leaf, value, index, lead, trail, near)
    others = sorted(range(-1, len(layout.headers)), key=lambda t: abs(layout.content_end(t) + 1 - index))
    for t in others:  # right after table t's content
        end = layout.content_end(t)
        if end + 1 != index:
            after_empty = t >= 0 and end == layout.headers[t].line
            lead = layout.blank_lines_before_header(after_empty) if end >= 0 else 0
            yield _add_table(layout, path, leaf, value, end + 1, lead, 0, t)


def _add_key(layout: Layout, table: int, key: Tuple[str, ...], existing: int, value: str,
             after: Tuple[str, ...]) -> str:
    keys = layout.keys_of(table)
    prefix = key[:existing]  # the dotted part that already exists (``options`` of ``options.X``)
    siblings = [k for k in keys if len(k.key) > len(prefix) and k.key[: len(prefix)] == prefix]
    anchor: Optional[KeyLine] = None
    before = False
    if len(siblings) >= 2 and [k.key for k in siblings] == sorted(k.key for k in siblings):
        later = next((k for k in siblings if k.key > key), None)  # a sorted table stays sorted
        anchor, before = (later, True) if later is not None else (siblings[-1], False)
    else:
        related = [k for k in siblings if k.key[:-1] == key[:-1] and k.key[-1] in after]
        pool = related or siblings or keys
        anchor = pool[-1] if pool else None
    if anchor is None:  # an empty table: the file's indentation step below the header
        header = layout.headers[table] if table >= 0 else None
        index = header.line + 1 if header is not None else 0
        indent = header.indent + layout.key_step() if header is not None else ""
        text = _key_text(key, (), layout.key_quote()) + layout.key_sep() + value
    else:
        index = anchor.line if before else anchor.end + 1
        while before and index > 0 and layout.kinds[index - 1] == "comment":
            index -= 1  # a comment above the key it describes stays there
        indent = anchor.indent
        shared = _shared(key, anchor.key)
        text = _key_text(key, anchor.raw[:shared], layout.key_quote()) + anchor.sep + value
    return _splice(layout, index, [indent + text])


def _table_place(layout: Layout, path: Tuple[str, ...]) -> Tuple[int, int, int, int]:
    """Where the rules put a new ``[path]`` table: (line index, blank lines before it, blank lines
    after it, the table it is placed next to)."""
    headers = layout.headers
    descendants = [i for i, h in enumerate(headers) if len(h.path) > len(path) and h.path[: len(path)] == path]
    if descendants:  # [a.b] missing but [a.b.c] present: the new header goes right above its sub-tables
        return layout.leading_start(descendants[0]), 0, layout.blank_lines_before_header(False), descendants[0]
    if headers:  # after the last existing sub-table of its nearest existing ancestor
        parent = max(n for n in range(len(path)) if any(h.path[:n] == path[:n] for h in headers))
        near = max(i for i, h in enumerate(headers) if h.path[:parent] == path[:parent])
        end = layout.content_end(near)
        return end + 1, layout.blank_lines_before_header(end == headers[near].line), 0, near
    end = layout.content_end(-1)  # no table at all: at the end of the file
    return end + 1, (layout.blank_lines_before_header(False) if end >= 0 else 0), 0, -1


def _add_table(layout: Layout, path: Tuple[str, ...], leaf: str, value: str, index: int, lead: int, trail: int,
               near: int) -> str:
    headers = layout.headers
    indent = _header_indent(layout, path)
    quote = layout.key_quote()
    like = max(range(len(headers)), key=lambda i: (_shared(path, headers[i].path), i == near), default=None)
    raw = headers[like].raw[: _shared(path, headers[like].path)] if like is not None else ()
    header = indent + "[" + _key_text(path, raw, quote) + "]"
    line = indent + layout.key_step() + _key_text((leaf,), (), quote) + layout.key_sep() + value
    return _splice(layout, index, [""] * lead + [header, line] + [""] * trail)


def _header_indent(layout: Layout, path: Tuple[str, ...]) -> str:
    """Like its siblings' headers; else like the headers at its depth; else its nearest ancestor's
    header plus the file's step per level; else none."""
    siblings = [h.indent for h in layout.headers if len(h.path) == len(path) and h.path[:-1] == path[:-1]]
    if siblings:
        return siblings[-1]
    same_depth = Counter(h.indent for h in layout.headers if len(h.path) == len(path)).most_common(1)
    if same_depth:
        return same_depth[0][0]
    ancestor = layout.nearest_ancestor(path)
    if ancestor is None:
        return ""
    return ancestor.indent + layout.header_step() * (len(path) - len(ancestor.path))


def _shared(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _key_text(key: Sequence[str], raw: Sequence[str], quote: Optional[str]) -> str:
    """A dotted key: the first parts as the file writes them (``raw``), the others bare when they
    can be, else quoted the way the file quotes keys."""
    parts = list(raw)
    for name in key[len(raw):]:
        if BARE_KEY.fullmatch(name):
            parts.append(name)
        elif quote == "'" and could_be_literal(name):
            parts.append(f"'{name}'")
        else:
            parts.append(json.dumps(name))
    return ".".join(parts)


def _splice(layout: Layout, index: int, new_lines: Sequence[str]) -> str:
    """The layout's text with ``new_lines`` inserted before line ``index``, in the file's line endings."""
    nl = layout.newline
    lines = list(layout.lines)
    block = "".join(line + nl for line in new_lines)
    if index > 0 and not lines[index - 1].endswith("\n"):  # the file's last line has no newline: keep it so
        lines[index - 1] += nl
        block = block[: -len(nl)]
    lines.insert(index, block)
    return "".join(lines)
