"""Reading the configuration's YAML into settings (``agent/config/settings.py``): each value checked against its
key's type and rule, unknown keys with a suggestion, outputs that would overwrite an input; every
problem one ``ConfigError`` line, ``<file>:<line>: <section.key>: <what is wrong>``.
"""


from __future__ import annotations

import difflib
import re
from typing import Any, Dict, NoReturn, Optional, Tuple, Union, get_type_hints

from agent.base.errors import ConfigError
from agent.base.text import shorten
from agent.base.yamlsafe import CONSTRUCTOR_ERRORS, constructor_problem
from agent.config.rules import Rule
from agent.config.settings import DEFAULT_CONFIG_PATH, SECTIONS, AgentConfig

MAX_CONFIG_NODES = 10_000  # YAML nodes, aliases counted each time they are used (an alias bomb)
# Files the agent reads or manages, and the outputs that may never be one of them (nor hold one)
_MANAGED = ("containerd.config_path", "nvidia_runtime.config_path", "report.kubeconfig")
_OUTPUTS = ("report.status_file", "report.metrics_file", "efa.cache_dir")


def parse_yaml(text: str, source: str) -> AgentConfig:
    import yaml  # only paid for when a configuration file sets something

    from agent.base.yamlsafe import marked_yaml_error, yaml_too_big

    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader = loader_cls(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        raise ConfigError(marked_yaml_error(exc, source, text, column=True)) from None
    builder = _Builder(source, loader)
    try:
        if root is None or _is_null(root):
            return AgentConfig(source=source)
        problem = yaml_too_big(root, MAX_CONFIG_NODES)
        if problem:
            raise ConfigError(f"{source}:{root.start_mark.line + 1}: {problem}")
        sections = builder.mapping(root, "")
        kwargs: Dict[str, Any] = {}
        for key, (key_node, value_node) in sections.items():
            if key not in SECTIONS:
                builder.fail(key_node, key, f"unknown section{_suggest(key, SECTIONS)}")
            kwargs[key] = builder.section(SECTIONS[key], value_node, key)
        config = AgentConfig(source=source, **kwargs)
        _check_outputs(config, builder)
        return config
    except yaml.YAMLError as exc:  # a value PyYAML cannot construct (an unknown tag), as the kubeconfig does
        raise ConfigError(marked_yaml_error(exc, source, text, column=True)) from None
    finally:
        loader.dispose()


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
    def __init__(self, source: str, loader: Any) -> None:
        self.source = source
        self.loader = loader
        self.nodes: Dict[str, Any] = {}  # section.key -> its YAML key node, for later cross-key checks

    def fail(self, node: Any, key: str, problem: str) -> NoReturn:
        line = node.start_mark.line + 1
        raise ConfigError(f"{self.source}:{line}: {key}: {problem}")

    def mapping(self, node: Any, key: str) -> Dict[str, Tuple[Any, Any]]:
        if node.id != "mapping":
            self.fail(node, key or "(top level)", "expected a mapping of keys to values")
        out: Dict[str, Tuple[Any, Any]] = {}
        for key_node, value_node in node.value:
            name = self.loader.construct_object(key_node, deep=True)
            dotted = f"{key}.{name}" if key else str(name)
            if not isinstance(name, str):
                self.fail(key_node, dotted, "keys must be strings")
            if name in out:
                self.fail(key_node, dotted, "duplicate key")
            out[name] = (key_node, value_node)
        return out

    def section(self, cls: Any, node: Any, section: str) -> Any:
        if _is_null(node):
            return cls()
        items = self.mapping(node, section)
        hints = get_type_hints(cls, include_extras=True)  # each key's type, and its Rule (agent/config/settings.py)
        kwargs: Dict[str, Any] = {}
        for name, (key_node, value_node) in items.items():
            dotted = f"{section}.{name}"
            if name not in cls._fields:
                self.fail(key_node, dotted, f"unknown key{_suggest(name, cls._fields)}")
            self.nodes[dotted] = key_node
            try:
                value = self.loader.construct_object(value_node, deep=True)
            except CONSTRUCTOR_ERRORS as exc:  # PyYAML's own constructors: ``!!float abc``, ``!!int x``
                problem = constructor_problem(exc, value_node.tag)
                self.fail(value_node, dotted, f"invalid YAML value: {shorten(problem)}")
            kwargs[name] = self.value(hints[name], value, value_node, dotted)
        return cls(**kwargs)

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
