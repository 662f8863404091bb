"""Discovery: read the node (under ``--root``) into plain, frozen facts. No decisions here.

Each resource in ``agent/pipeline.py`` reads its part. A file that cannot be read is kept as the
``NodeFileError`` it raised, so ``check`` can report it as one failing check while the other checks
still run.
"""


from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Generic, Mapping, Optional, TypeVar, Union, cast

from agent.config import AgentConfig
from agent.fs import NodeRoot

if TYPE_CHECKING:
    from agent.allocatable import NodeRead
    from agent.containerd import ContainerdConfigSet
    from agent.driver import DriverFacts
    from agent.efa import EfaFacts
    from agent.errors import NodeFileError
    from agent.fabric import FabricFacts
    from agent.gpu import InstanceFacts
    from agent.nvidia import NvidiaRuntimeConfig
    from agent.serving import Serving, ServingProbe
    from agent.systemd import SystemdError
    from agent.units import UnitStates
    from agent.versions import NodeVersions
    from agent.xid import XidFacts

T = TypeVar("T")


class _Fact(Generic[T]):
    """``NodeFacts.<name>``: the facts a built-in resource discovered under that name, typed."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, facts: Any, owner: Any = None) -> T:
        return cast(T, facts.get(self.name))


class NodeFacts:
    """What the resources discovered, by name (``get``); the built-in resources' facts also as attributes.

    Built by ``discover``, or by hand (tests: ``NodeFacts(root=..., containerd=..., nvidia_runtime=None)``);
    a fact not given is None (``probes`` and ``serving``: empty).
    """

    __slots__ = ("_facts", "gpu_health", "root")

    def __init__(self, root: NodeRoot, *, gpu_health: bool = False, **facts: Any) -> None:
        self.root = root
        self.gpu_health = gpu_health  # discovered with the GPU readiness resources
        self._facts: Dict[str, Any] = {"probes": {}, "serving": {}, **facts}

    def get(self, name: str) -> Any:
        return self._facts.get(name)

    def __repr__(self) -> str:
        return f"NodeFacts(root={self.root!r}, {', '.join(sorted(self._facts))})"

    containerd: _Fact[Union[ContainerdConfigSet, NodeFileError]] = _Fact()
    nvidia_runtime: _Fact[Union[NvidiaRuntimeConfig, NodeFileError, None]] = _Fact()
    # containerd/kubelet as systemd sees them; no bus is kept as the error (None: not discovered).
    units: _Fact[Union[UnitStates, SystemdError, None]] = _Fact()
    # How to ask containerd and kubelet whether they serve (by unit), and their answers, asked only
    # of units that are active: systemd's "active" alone does not say they serve.
    probes: _Fact[Mapping[str, ServingProbe]] = _Fact()
    serving: _Fact[Mapping[str, Serving]] = _Fact()
    driver: _Fact[Optional[DriverFacts]] = _Fact()
    versions: _Fact[Optional[NodeVersions]] = _Fact()
    efa: _Fact[Optional[EfaFacts]] = _Fact()
    # GPU readiness (discover(..., gpu_health=True): check and run's final checks; None otherwise)
    instance: _Fact[Optional[InstanceFacts]] = _Fact()
    kube_node: _Fact[Optional[NodeRead]] = _Fact()
    fabric: _Fact[Optional[FabricFacts]] = _Fact()
    xid: _Fact[Optional[XidFacts]] = _Fact()


def discover(root: NodeRoot, config: AgentConfig, *, gpu_health: bool = False, imds: bool = False,
             heartbeat: bool = False) -> NodeFacts:
    """``gpu_health``: also what the GPU readiness checks need (the Node's allocatable, the instance
    type, NVSwitch, the kernel log); ``imds``: the instance type may come from IMDS; ``heartbeat``:
    ``check --report``, which may reuse a recent Node read (``agent/allocatable.py``)."""
    from agent import pipeline

    found: Dict[str, Any] = {}
    for resource in pipeline.resources(gpu_health=gpu_health):
        found.update(resource.discover(pipeline.Discovery(root, config, found, gpu_health, imds, heartbeat)))
    return NodeFacts(root, gpu_health=gpu_health, **found)
