"""Discovery: read the node (under ``--root``) into plain, frozen facts. No decisions here.

A file that cannot be read is kept as the ``NodeFileError`` it raised, so ``check`` can report it
as one failing check while the other checks still run.
"""


from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Mapping, NamedTuple, Optional, Tuple, Union

from agent.config import AgentConfig
from agent.containerd import ContainerdConfigSet
from agent.errors import NodeFileError
from agent.fs import NodeRoot
from agent.nvidia import NvidiaRuntimeConfig
from agent.systemd import SystemdError, UnitState, UnitStates

if TYPE_CHECKING:
    from agent.allocatable import NodeRead
    from agent.driver import DriverFacts
    from agent.efa import EfaFacts
    from agent.fabric import FabricFacts
    from agent.gpu import InstanceFacts
    from agent.serving import Serving, ServingProbe
    from agent.versions import NodeVersions
    from agent.xid import XidFacts


class NodeFacts(NamedTuple):
    root: NodeRoot
    containerd: Union[ContainerdConfigSet, NodeFileError]
    nvidia_runtime: Union[NvidiaRuntimeConfig, NodeFileError, None]
    # containerd/kubelet as systemd sees them; no bus is kept as the error (None: not discovered).
    units: Union[UnitStates, SystemdError, None] = None
    driver: Optional[DriverFacts] = None  # None only in facts built by hand (tests)
    versions: Optional[NodeVersions] = None
    efa: Optional[EfaFacts] = None  # None only in facts built by hand (tests)
    # How to ask containerd and kubelet whether they serve (by unit), and their answers, asked only
    # of units that are active: systemd's "active" alone does not say they serve.
    probes: Mapping[str, ServingProbe] = {}
    serving: Mapping[str, Serving] = {}
    # GPU readiness (discover(..., gpu_health=True): check and run's final checks; None otherwise)
    instance: Optional[InstanceFacts] = None
    kube_node: Optional[NodeRead] = None
    fabric: Optional[FabricFacts] = None
    xid: Optional[XidFacts] = None


def discover(root: NodeRoot, config: AgentConfig, *, gpu_health: bool = False, imds: bool = False) -> NodeFacts:
    """``gpu_health``: also what the GPU readiness checks need (the Node's allocatable, the instance
    type, NVSwitch, the kernel log); ``imds``: the instance type may come from IMDS."""
    from agent import containerd, efa, nvidia, systemd

    containerd_facts: Union[ContainerdConfigSet, NodeFileError]
    try:
        containerd_facts = containerd.load(root, config.containerd)
    except NodeFileError as exc:
        containerd_facts = exc
    nvidia_facts: Optional[Union[NvidiaRuntimeConfig, NodeFileError]]
    try:
        nvidia_facts = nvidia.load(root, config.nvidia_runtime)
    except NodeFileError as exc:
        nvidia_facts = exc
    unit_names = systemd.units_to_discover(config.restart.units)
    if gpu_health and config.gpu.fabricmanager_unit not in unit_names:
        unit_names.append(config.gpu.fabricmanager_unit)
    units = systemd.discover(unit_names, timeout=min(config.restart.timeout_seconds, systemd.DISCOVERY_TIMEOUT))
    probes, serving = _serving(root, config, containerd_facts, units)
    from agent import driver, versions

    driver_facts = driver.discover(root)
    node_versions = versions.discover(root, driver_facts.version, driver_facts.version_note)
    facts = NodeFacts(root=root, containerd=containerd_facts, nvidia_runtime=nvidia_facts, units=units,
                      driver=driver_facts, versions=node_versions, efa=efa.discover(root, config.efa),
                      probes=probes, serving=serving)
    return _with_gpu_health(facts, config, imds=imds) if gpu_health else facts


def _with_gpu_health(facts: NodeFacts, config: AgentConfig, *, imds: bool) -> NodeFacts:
    from agent import allocatable, fabric, gpu, xid

    node_read = allocatable.read_node(facts.root, config)
    instance = gpu.discover_instance(facts.root, config, node_label=node_read.label(gpu.INSTANCE_TYPE_LABEL),
                                     imds=imds)
    switches = fabric.discover(facts.root, instance_type=instance.instance_type, type_has_nvswitch=instance.nvswitch)
    return facts._replace(instance=instance, kube_node=node_read, fabric=switches, xid=xid.discover(facts.root))


def _serving(
    root: NodeRoot, config: AgentConfig, containerd_facts: Union[ContainerdConfigSet, NodeFileError],
    units: Union[UnitStates, SystemdError],
) -> Tuple[Dict[str, ServingProbe], Dict[str, Serving]]:
    from agent import cri, kubelet, systemd

    probes: Dict[str, ServingProbe] = {}
    cri_probe = cri.probe(root, None if isinstance(containerd_facts, NodeFileError) else containerd_facts)
    if cri_probe is not None:
        probes[config.restart.units[0]] = cri_probe
    probes[systemd.kubelet_unit(config.restart.units)] = kubelet.probe(root)
    serving: Dict[str, Serving] = {}
    if isinstance(units, UnitStates):
        for unit, probe in probes.items():
            state = units.get(unit)
            if state is not None and state.active_state == "active":
                serving[unit] = _ask(probe, state)
    return probes, serving


# A daemon that systemd started moments ago may not serve yet (kubelet is active before its healthz
# listens): the answer is awaited until it has been active this long, then taken as it is.
STARTING_GRACE_SECONDS = 10.0
PROBE_TIMEOUT = 5.0  # one reading of a daemon's own word (ctr, healthz)


def _ask(probe: ServingProbe, state: UnitState) -> Serving:
    import time

    from agent import serving

    answer = probe.read(PROBE_TIMEOUT)
    since = state.active_since
    if answer.ok or answer.final or since is None:
        return answer
    remaining = since + STARTING_GRACE_SECONDS - time.time()
    if remaining <= 0:
        return answer
    return serving.wait(probe, time.monotonic() + min(remaining, STARTING_GRACE_SECONDS))
