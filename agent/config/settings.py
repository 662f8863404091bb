"""The agent's own configuration: YAML file -> frozen, typed settings with the defaults of README "Configuration".

Each key is defined once, here: its type, its default and (``Annotated[..., Rule(...)]``) what its value
must be beyond its type (``agent/config/rules.py``). Every problem is one ``ConfigError`` line,
``<file>:<line>: <section.key>: <what is wrong>``, with a suggestion for a misspelled key
(``agent/config/parse.py``). Validation happens once, at load, so the rest of the agent can trust its
settings (annotation keys, unit names, checksums, paths).
"""


from __future__ import annotations

from typing import Annotated, Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

from agent.config.rules import (
    DNS_SUBDOMAIN,
    Rule,
    absolute_path,
    condition_type,
    fingerprint,
    installer_args,
    not_negative,
    one_of,
    output_path,
    positive,
    regex,
    unit_names,
    url,
)

DEFAULT_CONFIG_PATH = "/etc/gpu-node-agent/config.yaml"
DEFAULT_DROP_IN_DIR = "/etc/gpu-node-agent/config.d"
_RESOURCE_NAME = r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_UNIT_NAME = r"[A-Za-z0-9:_.\\@-]+\.service"


class ContainerdSettings(NamedTuple):
    config_path: Annotated[str, Rule(absolute_path)] = "/etc/containerd/config.toml"
    runtime: Annotated[str, Rule(regex(r"[A-Za-z0-9_-]+", "a runtime name such as nvidia"))] = "nvidia"
    binary_name: Annotated[str, Rule(absolute_path)] = "/usr/bin/nvidia-container-runtime"
    systemd_cgroup: bool = True
    enable_cdi: bool = True
    default_runtime: bool = True


class NvidiaRuntimeSettings(NamedTuple):
    config_path: Annotated[str, Rule(absolute_path)] = "/etc/nvidia-container-runtime/config.toml"
    repair: bool = True


class RestartSettings(NamedTuple):
    policy: Annotated[str, Rule(one_of("when-needed", "never", "always"))] = "when-needed"
    units: Annotated[Tuple[str, ...], Rule(unit_names)] = ("containerd.service", "kubelet.service")
    timeout_seconds: Annotated[float, Rule(positive)] = 120.0


class EfaSettings(NamedTuple):
    install: Annotated[str, Rule(one_of("auto", "always", "never"))] = "auto"
    version: Annotated[str, Rule(regex(r"\d+\.\d+\.\d+", "a version X.Y.Z"), 'quote it: "1.48.0"')] = "1.48.0"
    sha256: Annotated[Optional[str], Rule(regex(r"[0-9a-fA-F]{64}", "64 hexadecimal characters"))] = None
    # the signing key's fingerprint: the .sig is checked with gpgv
    gpg_fingerprint: Annotated[Optional[str], Rule(fingerprint)] = None
    base_url: Annotated[str, Rule(url)] = "https://efa-installer.amazonaws.com"
    cache_dir: Annotated[str, Rule(output_path("efa.cache_dir"))] = "/var/cache/gpu-node-agent"
    installer_args: Annotated[Tuple[str, ...], Rule(installer_args)] = ("-y", "--skip-kmod", "--no-verify")
    timeout_seconds: Annotated[float, Rule(positive)] = 1200.0
    before_kubelet: bool = True  # install in the prepare pass, before nodeadm-run starts kubelet


class ReportSettings(NamedTuple):
    publish: bool = True
    annotation_prefix: Annotated[str, Rule(regex(DNS_SUBDOMAIN, "a DNS subdomain (lowercase, e.g. gpu.example.com)"))
                                 ] = "gpu-node-agent"
    condition: Annotated[Optional[str], Rule(condition_type)] = "GPUNodeAgentReady"
    kubeconfig: Annotated[str, Rule(absolute_path)] = "/var/lib/kubelet/kubeconfig"
    node_name: Annotated[Optional[str], Rule(regex(DNS_SUBDOMAIN, "a node name (DNS subdomain)"))] = None
    status_file: Annotated[str, Rule(output_path("report.status_file"))] = "/run/gpu-node-agent/status.json"
    metrics_file: Annotated[Optional[str], Rule(output_path("report.metrics_file", optional=True))] = None
    timeout_seconds: Annotated[float, Rule(positive)] = 30.0
    # refresh the condition's lastHeartbeatTime at most this often
    heartbeat_minutes: Annotated[float, Rule(not_negative)] = 30.0
    # time to GPU-ready over this: the Event is GPUReadyLate (Warning) instead of GPUReady; null: no budget
    gpu_ready_budget_seconds: Annotated[Optional[float], Rule(positive)] = 600.0


class ImdsSettings(NamedTuple):
    endpoint: Annotated[Optional[str], Rule(url)] = None
    timeout_seconds: Annotated[float, Rule(positive)] = 2.0


class GpuSettings(NamedTuple):
    # default: /run cache, the Node's label, IMDS (run, check --report)
    instance_type: Annotated[Optional[str], Rule(regex(r"[a-z0-9]+(-[a-z0-9]+)*\.[a-z0-9]+",
                                                       "an EC2 instance type such as p5.48xlarge"))] = None
    # GPUs the instance should have (default: the instance type's)
    expected_count: Annotated[Optional[int], Rule(positive)] = None
    allocatable: bool = True  # check the Node's status.allocatable (false: gpu-allocatable skips)
    resource_name: Annotated[str, Rule(regex(_RESOURCE_NAME, "an extended resource name such as nvidia.com/gpu"))
                             ] = "nvidia.com/gpu"
    # time-slicing replicas, or MIG instances of resource_name per GPU
    resource_per_gpu: Annotated[int, Rule(positive)] = 1
    efa_resource_name: Annotated[Optional[str], Rule(regex(  # null: EFA not compared
        _RESOURCE_NAME, "an extended resource name such as vpc.amazonaws.com/efa"))] = "vpc.amazonaws.com/efa"
    # after kubelet's start: "not yet advertised" is a warning
    allocatable_grace_seconds: Annotated[float, Rule(not_negative)] = 300.0
    fabricmanager_unit: Annotated[str, Rule(regex(_UNIT_NAME, "a systemd service unit name such as "
                                                  "nvidia-fabricmanager.service"))] = "nvidia-fabricmanager.service"


# --- operator policy: per-check switches (agent/pipeline/policy.py), the compatibility verdict, the XID catalog ---


class CheckPolicy(NamedTuple):
    """``checks.<name>``: one check's switch and severity cap."""

    enabled: bool = True  # false: the check is ``skip``, "disabled by configuration"
    max_status: Annotated[str, Rule(one_of("warn", "fail"))] = "fail"  # warn: never fails


# The checks ``checks.<name>`` may name, in the order ``check`` shows them. The same names as the
# resources' own (``agent/pipeline/resources.py``'s ``CHECK_NAMES``; tests/test_policy.py holds them
# equal): the settings sit below the resources, so they cannot ask them.
CHECKS: Tuple[str, ...] = (
    "containerd-config", "containerd-running", "kubelet-running", "nvidia-runtime-config", "nvidia-driver", "efa",
    "compatibility", "gpu-inventory", "gpu-allocatable", "nvidia-fabricmanager", "gpu-errors",
)


class CompatibilitySettings(NamedTuple):
    unknown: Annotated[str, Rule(one_of("pass", "warn", "fail"))] = "warn"  # a combination no row lists


class XidPolicy(NamedTuple):
    """``xid.<number>``: the XID's class (``class`` in YAML) and how often it must repeat before it counts."""

    class_: Annotated[Optional[str], Rule(one_of("fatal", "reset", "application", "ignore"))] = None
    repeat: Annotated[int, Rule(positive)] = 1  # events on one GPU ...
    window_minutes: Annotated[float, Rule(positive)] = 60.0  # ... within this many minutes


class AgentConfig(NamedTuple):
    containerd: ContainerdSettings = ContainerdSettings()
    nvidia_runtime: NvidiaRuntimeSettings = NvidiaRuntimeSettings()
    restart: RestartSettings = RestartSettings()
    efa: EfaSettings = EfaSettings()
    report: ReportSettings = ReportSettings()
    imds: ImdsSettings = ImdsSettings()
    gpu: GpuSettings = GpuSettings()
    checks: Mapping[str, CheckPolicy] = {}  # by check name; never mutated
    compatibility: CompatibilitySettings = CompatibilitySettings()
    xid: Mapping[int, XidPolicy] = {}  # by XID; never mutated
    source: str = "<defaults>"  # the base file it came from
    files: Tuple[str, ...] = ()  # every file merged, in order: the base, then config.d/*.yaml
    origins: Mapping[str, str] = {}  # section.key -> the file that set it (the rest are defaults)

    def settings(self) -> Tuple[Any, ...]:
        """The sections alone, for comparing configurations regardless of where they came from."""
        return tuple(getattr(self, name) for name in SECTIONS)

    def to_dict(self) -> Dict[str, Any]:
        return {name: _plain(section) for name, section in zip(SECTIONS, self.settings())}


def _plain(value: Any) -> Any:
    """Settings as YAML/JSON values: tuples as lists, ``class_`` as ``class``, mapping sections by key."""
    if hasattr(value, "_asdict"):
        return {k.rstrip("_"): _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return list(value) if isinstance(value, tuple) else value


SECTIONS: Dict[str, Any] = {
    "containerd": ContainerdSettings,
    "nvidia_runtime": NvidiaRuntimeSettings,
    "restart": RestartSettings,
    "efa": EfaSettings,
    "report": ReportSettings,
    "imds": ImdsSettings,
    "gpu": GpuSettings,
    "checks": CheckPolicy,  # a mapping: check name -> CheckPolicy
    "compatibility": CompatibilitySettings,
    "xid": XidPolicy,  # a mapping: XID -> XidPolicy
}
MAPPING_SECTIONS = ("checks", "xid")  # keyed by check name / XID, each value a section of its own
DROP_IN_DIR = "config.d"  # beside the base file: *.yaml merged over it in lexical order


def dump_config(config: AgentConfig, *, origins: bool = False) -> str:
    """YAML that loads back as a configuration file; with ``origins``, each value followed by a comment
    naming the file that set it (``# default`` for the rest)."""
    import yaml

    header = f"# effective configuration (source: {', '.join(config.files) or config.source})\n"
    if not origins:
        return header + yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
    lines = [header.rstrip("\n")]

    def emit(value: Dict[str, Any], path: str, indent: str) -> None:
        for key, v in value.items():
            dotted = f"{path}.{key}" if path else str(key)
            if isinstance(v, dict) and v:
                lines.append(f"{indent}{yaml.safe_dump({key: None}).split(':')[0]}:")
                emit(v, dotted, indent + "  ")
            else:
                text = yaml.safe_dump({key: v}, default_flow_style=True, width=1 << 16).strip()[1:-1]
                lines.append(f"{indent}{text}  # {config.origins.get(dotted, 'default')}")

    emit(config.to_dict(), "", "")
    return "\n".join(lines) + "\n"


def config_keys() -> List[str]:
    """Every valid ``section.key`` of the fixed sections, for documentation and tests."""
    return [f"{section}.{name}" for section, cls in SECTIONS.items() if section not in MAPPING_SECTIONS
            for name in cls._fields]


def mapping_keys() -> List[str]:
    """The keys of the mapping sections: ``checks.<name>.enabled``, ``xid.<number>.class``, ..."""
    entry = {"checks": "<name>", "xid": "<number>"}
    return [f"{section}.{entry[section]}.{name.rstrip('_')}" for section in MAPPING_SECTIONS
            for name in SECTIONS[section]._fields]
