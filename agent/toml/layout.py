"""What a TOML file looks like, line by line.

``Layout`` reads valid TOML text (tomlkit has already accepted it) into lines, table headers and key
lines, and learns what an edit should imitate: the indentation of keys under their header, of a
header under its parent, the blank lines before a header, how keys are quoted, ``=`` spacing and
line endings. ``agent/toml/insert.py`` adds lines that follow them.
"""


from __future__ import annotations

import json
import re
from collections import Counter
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class Header(NamedTuple):
    line: int
    path: Tuple[str, ...]
    raw: Tuple[str, ...]  # each key part as written, quotes included
    indent: str
    aot: bool  # ``[[array of tables]]``


class KeyLine(NamedTuple):
    line: int
    end: int  # the last line of its value (multi-line strings and arrays)
    table: int  # index into ``Layout.headers``; -1: the root table
    key: Tuple[str, ...]  # dotted keys relative to the table
    raw: Tuple[str, ...]
    indent: str
    sep: str  # between the key and its value, e.g. " = "


class LayoutError(ValueError):
    """A line the scanner cannot read (it only reads what tomlkit has accepted)."""


def split_lines(text: str) -> List[str]:
    """Lines with their endings, split on ``\\n`` only (TOML's newline; ``str.splitlines`` knows more)."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _body(line: str) -> str:
    line = line[:-1] if line.endswith("\n") else line
    return line[:-1] if line.endswith("\r") else line


def _parse_key(s: str, pos: int) -> Tuple[Tuple[str, ...], Tuple[str, ...], int, int]:
    """The dotted key at ``s[pos:]``: (parts, parts as written, end of its text, end of the spaces after)."""
    parts: List[str] = []
    raws: List[str] = []
    while True:
        while pos < len(s) and s[pos] in " \t":
            pos += 1
        start = pos
        if s.startswith('"', pos):
            pos += 1
            while pos < len(s) and s[pos] != '"':
                pos += 2 if s[pos] == "\\" else 1
            raw = s[start:pos + 1]
            try:
                parts.append(json.loads(raw))
            except ValueError:
                raise LayoutError(f"cannot read the key {raw}") from None
            pos += 1
        elif s.startswith("'", pos):
            end = s.index("'", pos + 1)
            raw = s[start:end + 1]
            parts.append(raw[1:-1])
            pos = end + 1
        else:
            m = BARE_KEY.match(s, pos)
            if not m:
                raise LayoutError(f"cannot read a key in {s!r}")
            raw = m.group(0)
            parts.append(raw)
            pos = m.end()
        raws.append(raw)
        key_end = pos
        while pos < len(s) and s[pos] in " \t":
            pos += 1
        if not s.startswith(".", pos):
            return tuple(parts), tuple(raws), key_end, pos
        pos += 1


def _scan_value(s: str, pos: int, ml: Optional[str], depth: int) -> Tuple[Optional[str], int]:
    """Scan a value's text to the end of the line; returns the open multi-line string and bracket depth."""
    i, n = pos, len(s)
    while i < n:
        c = s[i]
        if ml is not None:
            if ml == '"""' and c == "\\":
                i += 2
            elif s.startswith(ml, i):
                run = len(s[i:]) - len(s[i:].lstrip(ml[0]))  # up to two quotes may end the content
                i += run
                ml = None
            else:
                i += 1
            continue
        if c == "#":
            break
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c in "\"'":
            if s.startswith(c * 3, i):
                ml = c * 3
                i += 3
                continue
            i += 1
            while i < n and s[i] != c:
                i += 2 if c == '"' and s[i] == "\\" else 1
        i += 1
    return ml, depth


def _most_common(values: Iterable[str], default: str) -> str:
    """The most frequent value; on a tie the one seen first."""
    counts = Counter(values).most_common(1)
    return counts[0][0] if counts else default


def _most_common_count(values: Iterable[int], default: int) -> int:
    """The most frequent count; on a tie the larger (a blank line too many reads better than one too few)."""
    counts = Counter(values).most_common()
    if not counts:
        return default
    return max(v for v, n in counts if n == counts[0][1])


class Layout:
    """The lines of a TOML text, its tables and key lines, and its conventions."""

    def __init__(self, text: str) -> None:
        self.lines = split_lines(text)
        self.headers: List[Header] = []
        self.keys: List[KeyLine] = []
        self.kinds: List[str] = []  # per line: blank, comment, header, key, value (a value's later lines)
        ml: Optional[str] = None
        depth = 0
        for n, line in enumerate(self.lines):
            s = _body(line)
            if ml is not None or depth > 0:
                self.kinds.append("value")
                ml, depth = _scan_value(s, 0, ml, depth)
                self.keys[-1] = self.keys[-1]._replace(end=n)
                continue
            stripped = s.lstrip(" \t")
            indent = s[: len(s) - len(stripped)]
            if not stripped or stripped.startswith("#"):
                self.kinds.append("comment" if stripped else "blank")
            elif stripped.startswith("["):
                aot = stripped.startswith("[[")
                path, raw, _, end = _parse_key(stripped, 2 if aot else 1)
                if not stripped.startswith("]]" if aot else "]", end):
                    raise LayoutError(f"cannot read the table header {stripped!r}")
                self.headers.append(Header(n, path, raw, indent, aot))
                self.kinds.append("header")
            else:
                key, raw, key_end, end = _parse_key(stripped, 0)
                if not stripped.startswith("=", end):
                    raise LayoutError(f"cannot read the key line {stripped!r}")
                value = end + 1
                while value < len(stripped) and stripped[value] in " \t":
                    value += 1
                self.keys.append(KeyLine(n, n, len(self.headers) - 1, key, raw, indent, stripped[key_end:value]))
                self.kinds.append("key")
                ml, depth = _scan_value(stripped, value, None, 0)
        first = next((line for line in self.lines if line.endswith("\n")), "\n")
        self.newline = "\r\n" if first.endswith("\r\n") else "\n"

    # --- structure ---------------------------------------------------------------------------------

    def header(self, path: Sequence[str]) -> int:
        """The index of the ``[path]`` table header; -1 for the root table (``()``); -2 if none."""
        if not path:
            return -1
        return next((i for i, h in enumerate(self.headers) if h.path == tuple(path) and not h.aot), -2)

    def keys_of(self, table: int) -> List[KeyLine]:
        return [k for k in self.keys if k.table == table]

    def leading_start(self, header: int) -> int:
        """The first line of the comment lines right above header ``header`` (its own comments)."""
        n = self.headers[header].line
        while n > 0 and self.kinds[n - 1] == "comment":
            n -= 1
        return n

    def content_end(self, table: int) -> int:
        """The last line of table ``table``'s content: not its trailing blank lines, not the comments
        that belong to the next header. The header line itself for an empty table; -1 for an empty root."""
        start = self.headers[table].line if table >= 0 else -1
        stop = self.leading_start(table + 1) if table + 1 < len(self.headers) else len(self.lines)
        return next((n for n in range(stop - 1, start, -1) if self.kinds[n] != "blank"), start)

    # --- conventions -------------------------------------------------------------------------------

    def key_step(self) -> str:
        """The indentation of a table's keys beyond its header's, as most tables in the file have it."""
        steps = []
        for i, h in enumerate(self.headers):
            first = next((k for k in self.keys if k.table == i), None)
            if first is not None and first.indent.startswith(h.indent):
                steps.append(first.indent[len(h.indent):])
        return _most_common(steps, "")

    def header_step(self) -> str:
        """The indentation a header gains per nesting level below its nearest ancestor header; when
        the file shows none, its key step (one indentation unit, as go-toml writes both)."""
        steps = []
        for h in self.headers:
            ancestor = self.nearest_ancestor(h.path)
            if ancestor is None or not h.indent.startswith(ancestor.indent):
                continue
            extra, levels = h.indent[len(ancestor.indent):], len(h.path) - len(ancestor.path)
            unit = extra[: len(extra) // levels]
            if unit * levels == extra:
                steps.append(unit)
        return _most_common(steps, "") if steps else self.key_step()

    def nearest_ancestor(self, path: Sequence[str]) -> Optional[Header]:
        path = tuple(path)
        ancestors = [h for h in self.headers if not h.aot and len(h.path) < len(path) and path[: len(h.path)] == h.path]
        return max(ancestors, key=lambda h: len(h.path), default=None)

    def blank_lines_before_header(self, after_empty_table: bool) -> int:
        """How many blank lines the file puts before a header (most often), after a table with keys
        or, separately, right after an empty table's header (``[plugins]`` then ``[plugins.x]``)."""
        counts: List[int] = []
        after_empty: List[int] = []
        for i in range(len(self.headers)):
            n = self.leading_start(i) - 1
            blanks = 0
            while n >= 0 and self.kinds[n] == "blank":
                blanks += 1
                n -= 1
            if n < 0:
                continue
            (after_empty if self.kinds[n] == "header" else counts).append(blanks)
        general = _most_common_count(counts, 1)
        return _most_common_count(after_empty, general) if after_empty_table else general

    def key_sep(self) -> str:
        return _most_common((k.sep for k in self.keys), " = ")

    def key_quote(self) -> Optional[str]:
        """The quote character the file uses for keys that need quoting, if it quotes any."""
        raws = [r for h in self.headers for r in h.raw] + [r for k in self.keys for r in k.raw]
        quotes = [r[0] for r in raws if r[0] in "\"'"]
        return _most_common(quotes, "") or None


def could_be_literal(value: str) -> bool:
    """Whether ``value`` can be written as a 'literal string' (no quote, no control character)."""
    return "'" not in value and not any(ord(c) < 32 or ord(c) == 127 for c in value)
