"""The resource contract: what a node resource offers the pipeline, and the facts it is given.

A resource (listed once, in order, in ``agent/pipeline/resources.py``) is an object with the parts
of ``Resource`` it has: ``discover`` reads the node into facts by name, ``check`` turns facts into
health checks, ``plan`` into file edits, problems and the EFA action, ``restart_needs`` into why
containerd must restart, ``reported`` does what follows a report. ``NodeFacts`` holds what every
resource discovered. This module imports no resource: every resource imports it.
"""

from __future__ import annotations

from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Generic,
    List,
    Mapping,
    NamedTuple,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    cast,
)

from agent.base.noderoot import NodeRoot

if TYPE_CHECKING:
    from agent.base.errors import NodeFileError
    from agent.base.fs import FileEdit
    from agent.config.settings import AgentConfig
    from agent.pipeline.health import CheckResult

T = TypeVar("T")


class Discovery(NamedTuple):
    """What a resource's ``discover`` is given."""

    root: NodeRoot
    config: AgentConfig
    facts: Mapping[str, Any]  # what the resources before it in the list found, by name
    gpu_health: bool  # check and run's final checks (the GPU readiness entries are discovered too)
    imds: bool  # the instance type may come from IMDS (run, check --report)
    heartbeat: bool = False  # check --report (the timer): the Node read may be reused (agent/kube/node.py)


class Planned(NamedTuple):
    """A resource's part of the plan (``agent/plan.py``): file edits, problems it must not fix, EFA."""

    edits: Tuple[FileEdit, ...] = ()
    problems: Tuple[str, ...] = ()
    efa: Any = None  # Optional[agent.efa.decision.EfaAction]: install the EFA userspace or not, and why


class RestartNeed(NamedTuple):
    """Why containerd (``restart.units[0]``) must restart, and the units after it."""

    reason: str
    # This run's own edit is the reason: if containerd does not come back, the edit is rolled back.
    from_edit: bool = False


class Resource:
    """One node resource. Every part is optional: the defaults find nothing, check nothing, plan nothing.

    ``checks``: the names of the checks ``check`` returns, in their order (the list's resources'
    ``checks`` together are the order of ``check``'s output and of the Events).

    ``discover`` reads the node (the only part that may do I/O) and returns its facts by name, which
    ``NodeFacts`` then holds (``facts.get(name)``; the built-in ones also as attributes); a file that
    cannot be read is kept as the ``NodeFileError`` it raised. ``check``, ``plan`` and
    ``restart_needs`` are pure: they read ``NodeFacts`` and the configuration only.
    """

    checks: Tuple[str, ...] = ()

    def discover(self, node: Discovery) -> Mapping[str, Any]:
        return {}

    def check(self, facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
        return []

    def plan(self, facts: NodeFacts, config: AgentConfig) -> Planned:
        return Planned()

    def restart_needs(self, facts: NodeFacts, edits: Sequence[FileEdit], config: AgentConfig) -> List[RestartNeed]:
        """Why containerd must restart, given every edit of this run (all resources')."""
        return []

    def reported(self, facts: NodeFacts, delivered: bool) -> None:
        """After the report of ``check --report`` or ``run`` went out: ``delivered`` when it was published,
        or publishing is off (e.g. what the report carried is no longer new)."""


class _Fact(Generic[T]):
    """``NodeFacts.<name>``: the facts a built-in resource discovered under that name, typed."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, facts: Any, owner: Any = None) -> T:
        return cast(T, facts.get(self.name))


class NodeFacts:
    """What the resources discovered, by name (``get``); the built-in resources' facts also as attributes
    (each typed by the resource that discovers it: the comment names the type).

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

    containerd: _Fact[Any] = _Fact()  # Union[ContainerdConfigSet, NodeFileError]
    nvidia_runtime: _Fact[Any] = _Fact()  # Union[NvidiaRuntimeConfig, NodeFileError, None]
    # containerd/kubelet as systemd sees them; no bus is kept as the error (None: not discovered).
    units: _Fact[Any] = _Fact()  # Union[UnitStates, SystemdError, None]
    # How to ask containerd and kubelet whether they serve (by unit), and their answers, asked only
    # of units that are active: systemd's "active" alone does not say they serve.
    probes: _Fact[Any] = _Fact()  # Mapping[str, ServingProbe]
    serving: _Fact[Any] = _Fact()  # Mapping[str, Serving]
    driver: _Fact[Any] = _Fact()  # Optional[DriverFacts]
    versions: _Fact[Any] = _Fact()  # Optional[NodeVersions]
    efa: _Fact[Any] = _Fact()  # Optional[EfaFacts]
    # GPU readiness (discover(..., gpu_health=True): check and run's final checks; None otherwise)
    instance: _Fact[Any] = _Fact()  # Optional[InstanceFacts]
    kube_node: _Fact[Any] = _Fact()  # Optional[NodeRead]
    fabric: _Fact[Any] = _Fact()  # Optional[FabricFacts]
    xid: _Fact[Any] = _Fact()  # Optional[XidFacts]


def read_or_error(read: Callable[[], T]) -> Union[T, NodeFileError]:
    """``read()``, or the ``NodeFileError`` it raised: a file that cannot be read is a fact too."""
    from agent.base.errors import NodeFileError

    try:
        return read()
    except NodeFileError as exc:
        return exc
