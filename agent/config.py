"""The agent's own configuration: YAML file -> frozen, typed settings with the contract's defaults.

Every problem is one ``ConfigError`` line, ``<file>:<line>: <section.key>: <what is wrong>``, with a
suggestion for a misspelled key. Validation happens here, once, so the rest of the agent can trust
its settings (annotation keys, unit names, checksums, paths).
"""

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union, get_type_hints

from agent.errors import ConfigError

DEFAULT_CONFIG_PATH = "/etc/gpu-node-agent/config.yaml"

Validator = Callable[[Any], Optional[str]]  # returns a problem description, or None when fine


def _absolute_path(value: Any) -> Optional[str]:
    if not value.startswith("/"):
        return f"must be an absolute path, got {value!r}"
    if "\0" in value:
        return "must not contain NUL"
    return None


def _one_of(*choices: str) -> Validator:
    def check(value: Any) -> Optional[str]:
        if value not in choices:
            return f"must be one of {', '.join(choices)}; got {value!r}"
        return None

    return check


def _positive(value: Any) -> Optional[str]:
    if value <= 0:
        return f"must be greater than 0, got {value!r}"
    return None


def _regex(pattern: str, what: str) -> Validator:
    compiled = re.compile(pattern)

    def check(value: Any) -> Optional[str]:
        if value is not None and not compiled.fullmatch(value):
            return f"must be {what}, got {value!r}"
        return None

    return check


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = rf"(?=.{{1,253}}$){_DNS_LABEL}(\.{_DNS_LABEL})*"
_QUALIFIED_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"


def _url(value: Any) -> Optional[str]:
    if value is None:
        return None
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s]*)?", value):
        return f"must be an http:// or https:// URL, got {value!r}"
    return None


def _unit_names(value: Any) -> Optional[str]:
    if not value:
        return "must name at least one unit (containerd first)"
    for unit in value:
        if not re.fullmatch(r"[A-Za-z0-9:_.\\@-]+\.service", unit):
            return f"{unit!r} is not a systemd service unit name (e.g. containerd.service)"
    if len(set(value)) != len(value):
        return "lists a unit twice"
    return None


def _condition_type(value: Any) -> Optional[str]:
    if value is None:
        return None
    prefix, _, name = value.rpartition("/")
    if prefix and not re.fullmatch(DNS_SUBDOMAIN, prefix):
        return f"prefix {prefix!r} is not a DNS subdomain"
    if not re.fullmatch(_QUALIFIED_NAME, name):
        return f"must be a condition type such as GPUNodeAgentReady, got {value!r}"
    return None


def _meta(check: Optional[Validator] = None, hint: str = "") -> Dict[str, Any]:
    return {"check": check, "hint": hint}


@dataclass(frozen=True)
class ContainerdSettings:
    config_path: str = field(default="/etc/containerd/config.toml", metadata=_meta(_absolute_path))
    runtime: str = field(
        default="nvidia", metadata=_meta(_regex(r"[A-Za-z0-9_-]+", "a runtime name such as nvidia"))
    )
    binary_name: str = field(default="/usr/bin/nvidia-container-runtime", metadata=_meta(_absolute_path))
    systemd_cgroup: bool = True
    enable_cdi: bool = True
    default_runtime: bool = True


@dataclass(frozen=True)
class NvidiaRuntimeSettings:
    config_path: str = field(
        default="/etc/nvidia-container-runtime/config.toml", metadata=_meta(_absolute_path)
    )
    repair: bool = True


@dataclass(frozen=True)
class RestartSettings:
    policy: str = field(default="when-needed", metadata=_meta(_one_of("when-needed", "never", "always")))
    units: Tuple[str, ...] = field(
        default=("containerd.service", "kubelet.service"), metadata=_meta(_unit_names)
    )
    timeout_seconds: float = field(default=120.0, metadata=_meta(_positive))


@dataclass(frozen=True)
class EfaSettings:
    install: str = field(default="auto", metadata=_meta(_one_of("auto", "always", "never")))
    version: str = field(
        default="1.48.0",
        metadata=_meta(_regex(r"\d+\.\d+\.\d+", "a version X.Y.Z"), hint='quote it: "1.48.0"'),
    )
    sha256: Optional[str] = field(
        default=None, metadata=_meta(_regex(r"[0-9a-fA-F]{64}", "64 hexadecimal characters"))
    )
    base_url: str = field(default="https://efa-installer.amazonaws.com", metadata=_meta(_url))
    cache_dir: str = field(default="/var/cache/gpu-node-agent", metadata=_meta(_absolute_path))
    installer_args: Tuple[str, ...] = ("-y", "--skip-kmod", "--no-verify")
    timeout_seconds: float = field(default=1200.0, metadata=_meta(_positive))


@dataclass(frozen=True)
class ReportSettings:
    publish: bool = True
    annotation_prefix: str = field(
        default="gpu-node-agent",
        metadata=_meta(_regex(DNS_SUBDOMAIN, "a DNS subdomain (lowercase, e.g. gpu.example.com)")),
    )
    condition: Optional[str] = field(default="GPUNodeAgentReady", metadata=_meta(_condition_type))
    kubeconfig: str = field(default="/var/lib/kubelet/kubeconfig", metadata=_meta(_absolute_path))
    node_name: Optional[str] = field(
        default=None, metadata=_meta(_regex(DNS_SUBDOMAIN, "a node name (DNS subdomain)"))
    )
    status_file: str = field(default="/run/gpu-node-agent/status.json", metadata=_meta(_absolute_path))
    metrics_file: Optional[str] = field(default=None, metadata=_meta(lambda v: v and _absolute_path(v)))
    timeout_seconds: float = field(default=30.0, metadata=_meta(_positive))


@dataclass(frozen=True)
class ImdsSettings:
    endpoint: Optional[str] = field(default=None, metadata=_meta(_url))
    timeout_seconds: float = field(default=2.0, metadata=_meta(_positive))


@dataclass(frozen=True)
class AgentConfig:
    containerd: ContainerdSettings = ContainerdSettings()
    nvidia_runtime: NvidiaRuntimeSettings = NvidiaRuntimeSettings()
    restart: RestartSettings = RestartSettings()
    efa: EfaSettings = EfaSettings()
    report: ReportSettings = ReportSettings()
    imds: ImdsSettings = ImdsSettings()
    source: str = field(default="<defaults>", compare=False)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "source":
                continue
            section = dataclasses.asdict(getattr(self, f.name))
            out[f.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
        return out


SECTIONS = {f.name: f.type for f in dataclasses.fields(AgentConfig) if f.name != "source"}


# --- loading ------------------------------------------------------------------------------------


def load_config(path: Optional[str], *, default_path: Path) -> AgentConfig:
    """Load ``path`` (explicit: must exist) or ``default_path`` (missing: all defaults)."""
    if path is None:
        target = default_path
        if not target.exists():
            return AgentConfig(source="<defaults>")
    else:
        target = Path(path)
    try:
        text = target.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{target}: configuration file does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{target}: is a directory, expected a YAML file") from None
    except PermissionError:
        raise ConfigError(f"{target}: permission denied") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{target}: not UTF-8 (byte offset {exc.start})") from None
    return parse_config(text, str(target))


def parse_config(text: str, source: str) -> AgentConfig:
    import yaml  # only paid for when a configuration file exists

    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader = loader_cls(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    builder = _Builder(source, loader)
    try:
        if root is None or _is_null(root):
            return AgentConfig(source=source)
        sections = builder.mapping(root, "")
        kwargs: Dict[str, Any] = {}
        for key, (key_node, value_node) in sections.items():
            if key not in SECTIONS:
                builder.fail(key_node, key, f"unknown section{_suggest(key, SECTIONS)}")
            kwargs[key] = builder.section(SECTIONS[key], value_node, key)
        return AgentConfig(source=source, **kwargs)
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

    def fail(self, node: Any, key: str, problem: str) -> "None":
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
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = get_type_hints(cls)
        kwargs: Dict[str, Any] = {}
        for name, (key_node, value_node) in items.items():
            dotted = f"{section}.{name}"
            if name not in fields:
                self.fail(key_node, dotted, f"unknown key{_suggest(name, fields)}")
            value = self.loader.construct_object(value_node, deep=True)
            kwargs[name] = self.value(hints[name], fields[name], value, value_node, dotted)
        return cls(**kwargs)

    def value(self, hint: Any, f: "dataclasses.Field[Any]", value: Any, node: Any, dotted: str) -> Any:
        optional = False
        if getattr(hint, "__origin__", None) is Union:
            args = [a for a in hint.__args__ if a is not type(None)]
            optional, hint = True, args[0]
        hint_msg = f.metadata.get("hint", "")
        if value is None:
            if optional:
                return None
            self.fail(node, dotted, "must not be null")
        if hint is bool:
            if not isinstance(value, bool):
                self.fail(node, dotted, f"expected true or false, got {_type_name(value)} {value!r}")
        elif hint is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(node, dotted, f"expected a number of seconds, got {_type_name(value)} {value!r}")
            value = float(value)
        elif hint is str:
            if not isinstance(value, str):
                extra = f"; {hint_msg}" if hint_msg else ""
                self.fail(node, dotted, f"expected a string, got {_type_name(value)} {value!r}{extra}")
        elif getattr(hint, "__origin__", None) in (tuple, Tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                self.fail(node, dotted, f"expected a list of strings, got {_type_name(value)} {value!r}")
            value = tuple(value)
        check = f.metadata.get("check")
        if check is not None:
            problem = check(value)
            if problem:
                self.fail(node, dotted, problem)
        return value


def dump_config(config: AgentConfig) -> str:
    import yaml

    header = f"# effective configuration (source: {config.source})\n"
    body: str = yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
    return header + body


def config_keys() -> List[str]:
    """Every valid ``section.key``, for documentation and tests."""
    keys = []
    for section, cls in SECTIONS.items():
        keys.extend(f"{section}.{f.name}" for f in dataclasses.fields(cls))
    return keys
