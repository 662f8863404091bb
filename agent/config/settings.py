"""The agent's own configuration: YAML file -> frozen, typed settings with the defaults of README "Configuration".

Each key is defined once, here: its type, its default and (``Annotated[..., Rule(...)]``) what its value
must be beyond its type (``agent/config/rules.py``). Every problem is one ``ConfigError`` line,
``<file>:<line>: <section.key>: <what is wrong>``, with a suggestion for a misspelled key
(``agent/config/parse.py``). Validation happens once, at load, so the rest of the agent can trust its
settings (annotation keys, unit names, checksums, paths).
"""


from __future__ import annotations

from typing import Annotated, Any, Dict, List, NamedTuple, Optional, Tuple

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


SECTIONS: Dict[str, Any] = {
    "containerd": ContainerdSettings,
    "nvidia_runtime": NvidiaRuntimeSettings,
    "restart": RestartSettings,
    "efa": EfaSettings,
    "report": ReportSettings,
    "imds": ImdsSettings,
    "gpu": GpuSettings,
}


def dump_config(config: AgentConfig) -> str:
    import yaml

    header = f"# effective configuration (source: {config.source})\n"
    body: str = yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
    return header + body


def config_keys() -> List[str]:
    """Every valid ``section.key``, for documentation and tests."""
    return [f"{section}.{name}" for section, cls in SECTIONS.items() for name in cls._fields]
