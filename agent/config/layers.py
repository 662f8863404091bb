"""Merging the configuration's files: ``config.yaml``, then ``config.d/*.yaml`` in lexical order.

Mappings merge key by key and the later file wins; any other value (a list included) replaces the
earlier one whole. The merge works on YAML nodes, so every value keeps its file and line: an error
names the file that set the bad key, and ``config show --origins`` the file each value came from.
Sections are mappings of keys (``efa.sha256``); the mapping sections (``checks``, ``xid``) are
mappings of entries that are mappings themselves (``checks.efa.enabled``), merged one level deeper.
"""


from __future__ import annotations

from typing import Any, Dict, Optional

from agent.config.settings import MAPPING_SECTIONS


class Entry:
    """A key as the merge left it: its key and value nodes (of the last file that set it) and, for a
    mapping merged key by key, its entries (None for a value that replaces)."""

    __slots__ = ("children", "key", "value")

    def __init__(self, key: Any, value: Any, children: Optional[Dict[str, Entry]]) -> None:
        self.key = key
        self.value = value
        self.children = children


class Merged:
    def __init__(self) -> None:
        self.sections: Dict[str, Entry] = {}
        self.where: Dict[int, str] = {}  # id(node) -> the file it was read from
        self.origins: Dict[str, str] = {}  # section.key -> the file whose value is in effect


def merge_layer(merged: Merged, root: Any, source: str, builder: Any) -> None:
    """Merge one file's document (``root``, a YAML node) over what ``merged`` holds.

    ``builder`` is the file's ``_Builder`` (``agent/config/parse.py``): it reads keys and reports errors."""
    for section, (key_node, value_node) in builder.mapping(root, "").items():
        _mark(merged, source, key_node, value_node)
        entry = merged.sections.get(section)
        if entry is None or entry.children is None:
            entry = merged.sections[section] = Entry(key_node, value_node, {})
        else:
            entry.key, entry.value = key_node, value_node
        if value_node.tag == "tag:yaml.org,2002:null":
            continue  # ``efa:`` alone sets nothing
        assert entry.children is not None
        for name, (k, v) in builder.mapping(value_node, section).items():
            _mark(merged, source, k, v)
            dotted = f"{section}.{name}"
            if section in MAPPING_SECTIONS and v.id == "mapping":
                item = entry.children.get(name)
                if item is None or item.children is None:
                    item = entry.children[name] = Entry(k, v, {})
                else:
                    item.key, item.value = k, v
                assert item.children is not None
                for field, (fk, fv) in builder.mapping(v, dotted).items():
                    _mark(merged, source, fk, fv)
                    item.children[field] = Entry(fk, fv, None)
                    merged.origins[f"{dotted}.{field}"] = source
            else:
                entry.children[name] = Entry(k, v, None)
                merged.origins[dotted] = source


def _mark(merged: Merged, source: str, *nodes: Any) -> None:
    for node in nodes:
        merged.where[id(node)] = source
