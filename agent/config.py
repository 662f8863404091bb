"""The agent's own configuration: YAML file -> frozen, typed settings with the defaults of README "Configuration".

Every problem is one ``ConfigError`` line, ``<file>:<line>: <section.key>: <what is wrong>``, with a
suggestion for a misspelled key. Validation happens here, once, so the rest of the agent can trust
its settings (annotation keys, unit names, checksums, paths).
"""


from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, NoReturn, Optional, Tuple, Union, get_type_hints

from agent.errors import ConfigError
from agent.text import shorten

DEFAULT_CONFIG_PATH = "/etc/gpu-node-agent/config.yaml"

Validator = Callable[[Any], Optional[str]]  # returns a problem description, or None when fine


def _absolute_path(value: Any) -> Optional[str]:
    if not value.startswith("/"):
        return f"must be an absolute path, got {shorten(value)}"
    if "\0" in value:
        return "must not contain NUL"
    return _confined_path(value)


def _one_of(*choices: str) -> Validator:
    def check(value: Any) -> Optional[str]:
        if value not in choices:
            return f"must be one of {', '.join(choices)}; got {shorten(value)}"
        return None

    return check


def _positive(value: Any) -> Optional[str]:
    if not math.isfinite(value):
        return f"must be a finite number of seconds, got {value!r}"
    if value <= 0:
        return f"must be greater than 0, got {value!r}"
    return None


def _not_negative(value: Any) -> Optional[str]:
    if value < 0:
        return f"must be 0 or more, got {value!r}"
    return None


def _regex(pattern: str, what: str) -> Validator:
    def check(value: Any) -> Optional[str]:
        if value is not None and not re.fullmatch(pattern, value):
            return f"must be {what}, got {shorten(value)}"
        return None

    return check


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = rf"(?=.{{1,253}}$){_DNS_LABEL}(\.{_DNS_LABEL})*"
_QUALIFIED_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"


def _url(value: Any) -> Optional[str]:
    if value is None:
        return None
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s]*)?", value):
        return f"must be an http:// or https:// URL, got {shorten(value)}"
    return None


def _unit_names(value: Any) -> Optional[str]:
    if not value:
        return "must name at least one unit (containerd first)"
    for unit in value:
        if not re.fullmatch(r"[A-Za-z0-9:_.\\@-]+\.service", unit):
            return f"{shorten(unit)} is not a systemd service unit name (e.g. containerd.service)"
    if len(set(value)) != len(value):
        return "lists a unit twice"
    if value[0] != CONTAINERD_UNIT:
        # the plan restarts the first unit as containerd (stale-daemon check, rollback of its edit)
        return f"the first unit must be {CONTAINERD_UNIT} (restarted first, then the rest), got {value[0]!r}"
    return None


# --- what a run would refuse, refused at load time -------------------------------------------------

CONTAINERD_UNIT = "containerd.service"
# --minimal installs no libfabric (fi_info would never appear, so every run would reinstall);
# --skip-limit-conf removes the AMI's efa-config; -u uninstalls. (The short forms are taken from
# the installer's --help as documented by AWS; unverified against every installer version.)
FORBIDDEN_INSTALLER_ARGS = ("--minimal", "-m", "--skip-limit-conf", "-l", "-u", "--uninstall")
# Condition types with another owner: kubelet's own, and the EKS node monitoring agent's. A strategic
# merge patch of one of them would fight its owner (and a wrong Ready takes pods off the node).
KUBELET_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable")
NODE_MONITORING_AGENT_CONDITIONS = ("AcceleratedHardwareReady", "ContainerRuntimeReady", "KernelReady",
                                    "NetworkingReady", "StorageReady")


def _installer_args(value: Any) -> Optional[str]:
    found = [a for a in value if a in FORBIDDEN_INSTALLER_ARGS]
    if found:
        return (f"{' '.join(found)} not allowed: --minimal installs no libfabric, --skip-limit-conf removes "
                "the AMI's efa-config, -u uninstalls")
    return None


def _owned_condition(value: Any) -> Optional[str]:
    if value in KUBELET_CONDITIONS:
        return f"{value} is kubelet's own condition; choose another type, e.g. GPUNodeAgentReady"
    if value in NODE_MONITORING_AGENT_CONDITIONS:
        return (f"{value} is published by the EKS node monitoring agent; choose another type, "
                "e.g. GPUNodeAgentReady")
    return None


def gpg_fingerprint(value: str) -> str:
    """A fingerprint as written (spaces allowed, as gpg prints it), normalized: upper-case hex."""
    return "".join(value.split()).upper()


def _fingerprint(value: Any) -> Optional[str]:
    if value is not None and not re.fullmatch(r"[0-9A-F]{40}|[0-9A-F]{64}", gpg_fingerprint(value)):
        return ("must be the signing key's full fingerprint (40 hexadecimal characters, spaces allowed), "
                f"got {value!r}")
    return None


def _condition_type(value: Any) -> Optional[str]:
    if value is None:
        return None
    prefix, _, name = value.rpartition("/")
    if prefix and not re.fullmatch(DNS_SUBDOMAIN, prefix):
        return f"prefix {shorten(prefix)} is not a DNS subdomain"
    if not re.fullmatch(_QUALIFIED_NAME, name):
        return f"must be a condition type such as GPUNodeAgentReady, got {shorten(value)}"
    return _owned_condition(value)


class ContainerdSettings(NamedTuple):
    config_path: str = "/etc/containerd/config.toml"
    runtime: str = "nvidia"
    binary_name: str = "/usr/bin/nvidia-container-runtime"
    systemd_cgroup: bool = True
    enable_cdi: bool = True
    default_runtime: bool = True


class NvidiaRuntimeSettings(NamedTuple):
    config_path: str = "/etc/nvidia-container-runtime/config.toml"
    repair: bool = True


class RestartSettings(NamedTuple):
    policy: str = "when-needed"
    units: Tuple[str, ...] = ("containerd.service", "kubelet.service")
    timeout_seconds: float = 120.0


class EfaSettings(NamedTuple):
    install: str = "auto"
    version: str = "1.48.0"
    sha256: Optional[str] = None
    gpg_fingerprint: Optional[str] = None  # the signing key's fingerprint: the .sig is checked with gpgv
    base_url: str = "https://efa-installer.amazonaws.com"
    cache_dir: str = "/var/cache/gpu-node-agent"
    installer_args: Tuple[str, ...] = ("-y", "--skip-kmod", "--no-verify")
    timeout_seconds: float = 1200.0
    before_kubelet: bool = True  # install in the prepare pass, before nodeadm-run starts kubelet


class ReportSettings(NamedTuple):
    publish: bool = True
    annotation_prefix: str = "gpu-node-agent"
    condition: Optional[str] = "GPUNodeAgentReady"
    kubeconfig: str = "/var/lib/kubelet/kubeconfig"
    node_name: Optional[str] = None
    status_file: str = "/run/gpu-node-agent/status.json"
    metrics_file: Optional[str] = None
    timeout_seconds: float = 30.0
    heartbeat_minutes: float = 30.0  # refresh the condition's lastHeartbeatTime at most this often


class ImdsSettings(NamedTuple):
    endpoint: Optional[str] = None
    timeout_seconds: float = 2.0


class GpuSettings(NamedTuple):
    instance_type: Optional[str] = None  # default: /run cache, the Node's label, IMDS (run, check --report)
    expected_count: Optional[int] = None  # GPUs the instance should have (default: the instance type's)
    allocatable: bool = True  # check the Node's status.allocatable (false: gpu-allocatable skips)
    resource_name: str = "nvidia.com/gpu"
    resource_per_gpu: int = 1  # time-slicing replicas, or MIG instances of resource_name per GPU
    efa_resource_name: Optional[str] = "vpc.amazonaws.com/efa"  # null: EFA not compared
    allocatable_grace_seconds: float = 300.0  # after kubelet's start: "not yet advertised" is a warning
    fabricmanager_unit: str = "nvidia-fabricmanager.service"


class AgentConfig(NamedTuple):
    containerd: ContainerdSettings = ContainerdSettings()
    nvidia_runtime: NvidiaRuntimeSettings = NvidiaRuntimeSettings()
    restart: RestartSettings = RestartSettings()
    efa: EfaSettings = EfaSettings()
    report: ReportSettings = ReportSettings()
    imds: ImdsSettings = ImdsSettings()
    gpu: GpuSettings = GpuSettings()
    source: str = "<defaults>"  # the file it came from

    def settings(self) -> Tuple[Any, ...]:
        """The sections alone, for comparing configurations regardless of where they came from."""
        return tuple(self[:-1])

    def to_dict(self) -> Dict[str, Any]:
        return {
            name: {k: list(v) if isinstance(v, tuple) else v for k, v in section._asdict().items()}
            for name, section in zip(self._fields, self.settings())
        }


# What a value must be beyond its type, per key: (validator, hint shown with a type error).
RULES: Dict[str, Tuple[Validator, str]] = {
    "containerd.config_path": (_absolute_path, ""),
    "containerd.runtime": (_regex(r"[A-Za-z0-9_-]+", "a runtime name such as nvidia"), ""),
    "containerd.binary_name": (_absolute_path, ""),
    "nvidia_runtime.config_path": (_absolute_path, ""),
    "restart.policy": (_one_of("when-needed", "never", "always"), ""),
    "restart.units": (_unit_names, ""),
    "restart.timeout_seconds": (_positive, ""),
    "efa.install": (_one_of("auto", "always", "never"), ""),
    "efa.version": (_regex(r"\d+\.\d+\.\d+", "a version X.Y.Z"), 'quote it: "1.48.0"'),
    "efa.sha256": (_regex(r"[0-9a-fA-F]{64}", "64 hexadecimal characters"), ""),
    "efa.gpg_fingerprint": (_fingerprint, ""),
    "efa.installer_args": (_installer_args, ""),
    "efa.base_url": (_url, ""),
    "efa.cache_dir": (lambda v: _absolute_path(v) or _output_path(v, "efa.cache_dir"), ""),
    "efa.timeout_seconds": (_positive, ""),
    "report.annotation_prefix": (_regex(DNS_SUBDOMAIN, "a DNS subdomain (lowercase, e.g. gpu.example.com)"),
                                 ""),
    "report.condition": (_condition_type, ""),
    "report.kubeconfig": (_absolute_path, ""),
    "report.node_name": (_regex(DNS_SUBDOMAIN, "a node name (DNS subdomain)"), ""),
    "report.status_file": (lambda v: _absolute_path(v) or _output_path(v, "report.status_file"), ""),
    "report.metrics_file": (lambda v: v and (_absolute_path(v) or _output_path(v, "report.metrics_file")), ""),
    "report.timeout_seconds": (_positive, ""),
    "report.heartbeat_minutes": (_not_negative, ""),
    "imds.endpoint": (_url, ""),
    "imds.timeout_seconds": (_positive, ""),
    "gpu.instance_type": (_regex(r"[a-z0-9]+(-[a-z0-9]+)*\.[a-z0-9]+", "an EC2 instance type such as p5.48xlarge"),
                          ""),
    "gpu.expected_count": (lambda v: (v is not None and _positive(v)) or None, ""),
    "gpu.resource_name": (_regex(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?",
                                 "an extended resource name such as nvidia.com/gpu"), ""),
    "gpu.resource_per_gpu": (_positive, ""),
    "gpu.efa_resource_name": (_regex(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?",
                                     "an extended resource name such as vpc.amazonaws.com/efa"), ""),
    "gpu.allocatable_grace_seconds": (_not_negative, ""),
    "gpu.fabricmanager_unit": (_regex(r"[A-Za-z0-9:_.\\@-]+\.service", "a systemd service unit name such as "
                                      "nvidia-fabricmanager.service"), ""),
}


SECTIONS: Dict[str, Any] = {
    "containerd": ContainerdSettings,
    "nvidia_runtime": NvidiaRuntimeSettings,
    "restart": RestartSettings,
    "efa": EfaSettings,
    "report": ReportSettings,
    "imds": ImdsSettings,
    "gpu": GpuSettings,
}


# --- loading ------------------------------------------------------------------------------------


def load_config(path: Optional[str], *, default_path: Path) -> AgentConfig:
    """Load ``path`` (explicit: must exist) or ``default_path`` (missing: all defaults)."""
    from agent.errors import NodeFileError, NodeFileMissing
    from agent.fs import MAX_CONFIG_FILE, read_bytes

    if path is None:
        target = default_path
        if not target.exists():
            return AgentConfig(source="<defaults>")
    else:
        target = Path(path)
    try:
        text = read_bytes(target, limit=MAX_CONFIG_FILE).decode("utf-8")
    except NodeFileMissing:
        raise ConfigError(f"{target}: configuration file does not exist") from None
    except NodeFileError as exc:
        if exc.problem.startswith("is a directory"):
            raise ConfigError(f"{target}: is a directory, expected a YAML file") from None
        raise ConfigError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{target}: not UTF-8 (byte offset {exc.start})") from None
    return parse_config(text, str(target))


def _only_comments(text: str) -> bool:
    """True for a file with nothing but comments, blank lines and document markers (the packaged one)."""
    return all(not line.strip() or line.lstrip().startswith("#") or line.rstrip() in ("---", "...")
               for line in text.splitlines())


def parse_config(text: str, source: str) -> AgentConfig:
    if _only_comments(text):
        return AgentConfig(source=source)  # as YAML would say, without paying for its import
    import yaml  # only paid for when a configuration file sets something

    from agent.yamlsafe import marked_yaml_error, yaml_too_big

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
        hints = get_type_hints(cls)
        kwargs: Dict[str, Any] = {}
        for name, (key_node, value_node) in items.items():
            dotted = f"{section}.{name}"
            if name not in cls._fields:
                self.fail(key_node, dotted, f"unknown key{_suggest(name, cls._fields)}")
            self.nodes[dotted] = key_node
            value = self.loader.construct_object(value_node, deep=True)
            kwargs[name] = self.value(hints[name], value, value_node, dotted)
        return cls(**kwargs)

    def value(self, hint: Any, value: Any, node: Any, dotted: str) -> Any:
        optional = False
        if getattr(hint, "__origin__", None) is Union:
            args = [a for a in hint.__args__ if a is not type(None)]
            optional, hint = True, args[0]
        check, hint_msg = RULES.get(dotted, (None, ""))
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
    return [f"{section}.{name}" for section, cls in SECTIONS.items() for name in cls._fields]


# --- limits and confinement ----------------------------------------------------------------------
# Output paths live in the directories documented for them (README, "Confinement"), never on a file
# the agent manages or reads; node paths never contain "..".

MAX_CONFIG_NODES = 10_000  # YAML nodes, aliases counted each time they are used (an alias bomb)
OUTPUT_DIRS: Dict[str, Tuple[str, ...]] = {
    "report.status_file": ("/run/gpu-node-agent/", "/var/lib/gpu-node-agent/"),
    "report.metrics_file": ("/var/lib/node_exporter/", "/run/node_exporter/",
                            "/var/lib/prometheus/node-exporter/", "/run/gpu-node-agent/",
                            "/var/lib/gpu-node-agent/"),
    "efa.cache_dir": ("/var/cache/", "/var/lib/gpu-node-agent/", "/opt/gpu-node-agent/"),
}
_MANAGED = ("containerd.config_path", "nvidia_runtime.config_path", "report.kubeconfig")
_OUTPUTS = ("report.status_file", "report.metrics_file", "efa.cache_dir")


def _confined_path(value: str) -> Optional[str]:
    if any(part == ".." for part in value.split("/")):
        return f"must not contain '..' (node paths resolve under --root), got {shorten(value)}"
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in value):
        return "must not contain control characters"
    return None


def _output_path(value: str, key: str) -> Optional[str]:
    dirs = OUTPUT_DIRS[key]
    normal = re.sub(r"/+", "/", value).rstrip("/") + ("/" if key == "efa.cache_dir" else "")
    if not any(normal.startswith(d) and len(normal) > len(d) for d in dirs):
        return f"must be inside {' or '.join(dirs)}, got {shorten(value)}"
    if key == "report.metrics_file" and not value.endswith(".prom"):
        return f"must end in .prom (what the node_exporter textfile collector reads), got {shorten(value)}"
    return None


def _check_outputs(config: AgentConfig, builder: _Builder) -> None:
    """A status, metrics or cache path may not be (or hold) a file the agent reads or manages."""
    def value(dotted: str) -> Optional[str]:
        section, key = dotted.split(".")
        v = getattr(getattr(config, section), key)
        return re.sub(r"/+", "/", v).rstrip("/") if isinstance(v, str) else None

    inputs = {k: value(k) for k in _MANAGED}
    inputs["the run lock"] = "/run/gpu-node-agent/lock"
    inputs["the agent's state"] = "/run/gpu-node-agent/toml-values.json"
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
