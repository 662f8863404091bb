"""Reading the configuration's YAML into settings (``agent/config/settings.py``): each value checked against its
key's type and rule, unknown keys with a suggestion, outputs that would overwrite an input; every
problem one ``ConfigError`` line, ``<file>:<line>: <section.key>: <what is wrong>``.
"""


from __future__ import annotations

import difflib
import re
from typing import Any, Dict, List, NoReturn, Optional, Tuple, Union, get_type_hints

from agent.base.errors import ConfigError
from agent.base.text import shorten
from agent.base.yamlsafe import CONSTRUCTOR_ERRORS, constructor_problem
from agent.config.rules import Rule
from agent.config.settings import CHECKS, DEFAULT_CONFIG_PATH, MAPPING_SECTIONS, SECTIONS, AgentConfig

MAX_CONFIG_NODES = 10_000  # YAML nodes, aliases counted each time they are used (an alias bomb)
# Files the agent reads or manages, and the outputs that may never be one of them (nor hold one)
_MANAGED = ("containerd.config_path", "nvidia_runtime.config_path", "report.kubeconfig")
_OUTPUTS = ("report.status_file", "report.metrics_file", "efa.cache_dir")


def parse_yaml(layers: List[Tuple[str, str]], source: str, files: Tuple[str, ...] = ()) -> AgentConfig:
    """``layers``: (text, file), each merged over the ones before it (``agent/config/layers.py``)."""
    import yaml  # only paid for when a configuration file sets something

    from agent.base.yamlsafe import marked_yaml_error, yaml_too_big
    from agent.config.layers import Merged, merge_layer

    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loaders: List[Any] = []
    merged = Merged()
    texts = dict((name, text) for text, name in layers)
    builder: Optional[_Builder] = None
    current = source
    try:
        for text, name in layers:
            current = name
            loader = loader_cls(text)
            loaders.append(loader)
            try:
                root = loader.get_single_node()
            except yaml.YAMLError as exc:
                raise ConfigError(marked_yaml_error(exc, name, text, column=True)) from None
            builder = _Builder(name, loader, merged.where)
            if root is None or _is_null(root):
                continue
            problem = yaml_too_big(root, MAX_CONFIG_NODES)
            if problem:
                raise ConfigError(f"{name}:{root.start_mark.line + 1}: {problem}")
            merge_layer(merged, root, name, builder)
        if builder is None:
            return AgentConfig(source=source, files=files)
        kwargs: Dict[str, Any] = {}
        for key, entry in merged.sections.items():
            current = merged.where[id(entry.key)]
            if key not in SECTIONS:
                builder.fail(entry.key, key, f"unknown section{_suggest(key, SECTIONS)}")
            if key in MAPPING_SECTIONS:
                kwargs[key] = builder.mapping_section(key, entry)
            else:
                kwargs[key] = builder.section(SECTIONS[key], entry.children or {}, key)
        config = AgentConfig(source=source, files=files, origins=dict(merged.origins), **kwargs)
        _check_outputs(config, builder)
        return config
    except yaml.YAMLError as exc:  # a value PyYAML cannot construct (an unknown tag), as the kubeconfig does
        name = getattr(exc, "gna_source", current)
        raise ConfigError(marked_yaml_error(exc, name, texts.get(name, ""), column=True)) from None
    finally:
        for loader in loaders:
            loader.dispose()


def check_name_problem(name: str) -> Optional[str]:
    """Why ``checks.<name>`` is not a check (with a suggestion), or None."""
    if name in CHECKS:
        return None
    close = difflib.get_close_matches(name, CHECKS, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; the checks are {', '.join(CHECKS)}"
    return f"unknown check{hint}"


def xid_problem(name: str) -> Optional[str]:
    """Why ``xid.<name>`` is not an XID number, or None."""
    if name.isdigit() and 0 < int(name) < 1000:
        return None
    return f"expected an XID number (1 to 999), got {name!r}"


def _is_null(node: Any) -> bool:
    return bool(node.tag == "tag:yaml.org,2002:null")


def _suggest(key: str, valid: Any) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


class _Builder:
    def __init__(self, source: str, loader: Any, where: Optional[Dict[int, str]] = None) -> None:
        self.source = source
        self.loader = loader
        self.where: Dict[int, str] = where if where is not None else {}  # id(node) -> its file
        self.nodes: Dict[str, Any] = {}  # section.key -> its YAML key node, for later cross-key checks

    def fail(self, node: Any, key: str, problem: str) -> NoReturn:
        line = node.start_mark.line + 1
        raise ConfigError(f"{self.where.get(id(node), self.source)}:{line}: {key}: {problem}")

    def construct(self, node: Any) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except Exception as exc:
            exc.gna_source = self.where.get(id(node), self.source)  # type: ignore[attr-defined]
            raise

    def mapping(self, node: Any, key: str) -> Dict[str, Tuple[Any, Any]]:
        if node.id != "mapping":
            self.fail(node, key or "(top level)", "expected a mapping of keys to values")
        out: Dict[str, Tuple[Any, Any]] = {}
        for key_node, value_node in node.value:
            name = self.construct(key_node)
            dotted = f"{key}.{name}" if key else str(name)
            if key == "xid" and isinstance(name, int) and not isinstance(name, bool):
                name = str(name)  # XIDs are numbers; kept as their digits until validated
            if not isinstance(name, str):
                self.fail(key_node, dotted, "keys must be strings")
            if name in out:
                self.fail(key_node, dotted, "duplicate key")
            out[name] = (key_node, value_node)
        return out

    def section(self, cls: Any, items: Dict[str, Any], section: str) -> Any:
        hints = get_type_hints(cls, include_extras=True)  # each key's type, and its Rule (agent/config/settings.py)
        kwargs: Dict[str, Any] = {}
        for name, entry in items.items():
            dotted = f"{section}.{name}"
            field = f"{name}_" if f"{name}_" in cls._fields else name  # ``class`` is ``class_``
            if field not in cls._fields or field.startswith("_"):
                self.fail(entry.key, dotted, f"unknown key{_suggest(name, [f.rstrip('_') for f in cls._fields])}")
            self.nodes[dotted] = entry.key
            try:
                value = self.construct(entry.value)
            except CONSTRUCTOR_ERRORS as exc:  # PyYAML's own constructors: ``!!float abc``, ``!!int x``
                problem = constructor_problem(exc, entry.value.tag)
                self.fail(entry.value, dotted, f"invalid YAML value: {shorten(problem)}")
            kwargs[field] = self.value(hints[field], value, entry.value, dotted)
        return cls(**kwargs)

    def mapping_section(self, section: str, entry: Any) -> Dict[Any, Any]:
        """``checks`` (by check name) and ``xid`` (by XID number): each entry a section of its own."""
        out: Dict[Any, Any] = {}
        for name, item in entry.children.items():
            dotted = f"{section}.{name}"
            problem = check_name_problem(name) if section == "checks" else xid_problem(name)
            if problem:
                self.fail(item.key, dotted, problem)
            if item.children is None:
                self.fail(item.value, dotted, "expected a mapping of keys to values")
            key = int(name) if section == "xid" else name
            out[key] = self.section(SECTIONS[section], item.children, dotted)
        return out

    def value(self, hint: Any, value: Any, node: Any, dotted: str) -> Any:
        rule = next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Rule)), Rule(_no_rule))
        if hasattr(hint, "__metadata__"):  # Annotated[type, Rule(...)]
            hint = hint.__origin__
        check, hint_msg = rule
        optional = False
        if getattr(hint, "__origin__", None) is Union:
            args = [a for a in hint.__args__ if a is not type(None)]
            optional, hint = True, args[0]
        if value is None:
            if optional:
                return None
            self.fail(node, dotted, "must not be null")
        if hint is bool:
            if not isinstance(value, bool):
                self.fail(node, dotted, f"expected true or false, got {_type_name(value)} {shorten(value)}")
        elif hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(node, dotted, f"expected a whole number, got {_type_name(value)} {shorten(value)}")
        elif hint is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                unit = "minutes" if dotted.endswith("_minutes") else "seconds"
                self.fail(node, dotted, f"expected a number of {unit}, got {_type_name(value)} {shorten(value)}")
            value = float(value)
        elif hint is str:
            if not isinstance(value, str):
                extra = f"; {hint_msg}" if hint_msg else ""
                self.fail(node, dotted, f"expected a string, got {_type_name(value)} {shorten(value)}{extra}")
        elif getattr(hint, "__origin__", None) in (tuple, Tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                self.fail(node, dotted, f"expected a list of strings, got {_type_name(value)} {shorten(value)}")
            value = tuple(value)
        problem = check(value)
        if problem:
            self.fail(node, dotted, problem)
        return value


def _no_rule(value: Any) -> Optional[str]:
    """The rule of a key whose type says it all (a boolean)."""
    return None


# The agent's own small state files (the modules that keep them name the same paths; a test holds
# both lists together): no output may overwrite them. The settings sit below those modules.
OWN_STATE_FILES = {
    "the agent's GPU error state": "/run/gpu-node-agent/gpu-errors.json",  # agent/gpu/xid.py
    "the agent's record of what it published": "/run/gpu-node-agent/published.json",  # agent/report/published.py
    "the agent's Event state": "/run/gpu-node-agent/events.json",  # agent/report/events.py
    "the EFA installer's pid file": "/run/gpu-node-agent/efa-installer.pid",  # agent/efa/install.py
    "the agent's instance-type cache": "/run/gpu-node-agent/instance-type",  # agent/gpu/inventory.py
    "the fabric manager version cache": "/run/gpu-node-agent/fabricmanager-version.json",  # agent/gpu/fabric.py
    "the status file's lock": "/run/gpu-node-agent/status.lock",  # agent/report/status.py
}


def _check_outputs(config: AgentConfig, builder: _Builder) -> None:
    """A status, metrics or cache path may not be (or hold) a file the agent reads or manages."""
    from agent.toml.cache import VALUES_CACHE

    def value(dotted: str) -> Optional[str]:
        section, key = dotted.split(".")
        v = getattr(getattr(config, section), key)
        return re.sub(r"/+", "/", v).rstrip("/") if isinstance(v, str) else None

    inputs = {k: value(k) for k in _MANAGED}
    inputs["the run lock"] = "/run/gpu-node-agent/lock"
    inputs["the agent's state"] = VALUES_CACHE
    inputs.update(OWN_STATE_FILES)
    inputs["the agent's configuration"] = DEFAULT_CONFIG_PATH
    seen: Dict[str, str] = {}
    for out in _OUTPUTS:
        path = value(out)
        if path is None:
            continue
        for name, managed in inputs.items():
            if managed and (path == managed or managed.startswith(path + "/")):
                where = out if out in builder.nodes or name not in builder.nodes else name
                if where in builder.nodes:
                    builder.fail(builder.nodes[where], where, f"{path} is (or holds) {name if where == out else out}"
                                 "; an output must never overwrite what the agent reads")
        for other, other_path in seen.items():
            if path == other_path or other_path.startswith(path + "/") or path.startswith(other_path + "/"):
                where = out if out in builder.nodes else other
                if where in builder.nodes:
                    builder.fail(builder.nodes[where], where, f"{path} clashes with {other}")
        seen[out] = path
