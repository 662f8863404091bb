"""The node resources, listed once, and what each offers the pipeline: discover, check, plan, restart needs.

Every command runs the same pipeline: ``node.discover`` asks each resource in ``RESOURCES`` for its
facts, ``plan.make_plan`` for its edits and problems (and for why containerd must restart), and
``checks.evaluate`` for its checks, all in the order of this list (which is also the order of the
checks in ``check``'s output and of their Events). A resource is a module with a ``RESOURCE``
object, a ``Resource`` with only the parts it has. Adding a check is one module and one entry here.

Modules are imported when the pipeline first reaches them, so a command imports only what it runs;
the GPU readiness entries (``gpu_health``) are discovered and checked only by ``check`` and
``run``'s final checks (``node.discover(..., gpu_health=True)``), never by ``plan`` or ``prepare``.
"""

from __future__ import annotations

import importlib
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    cast,
)

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.efa import EfaAction
    from agent.errors import NodeFileError
    from agent.fs import FileEdit, NodeRoot
    from agent.health import CheckResult
    from agent.node import NodeFacts

T = TypeVar("T")


class Discovery(NamedTuple):
    """What a resource's ``discover`` is given."""

    root: NodeRoot
    config: AgentConfig
    facts: Mapping[str, Any]  # what the resources before it in ``RESOURCES`` found, by name
    gpu_health: bool  # check and run's final checks (the GPU readiness entries are discovered too)
    imds: bool  # the instance type may come from IMDS (run, check --report)
    heartbeat: bool = False  # check --report (the timer): the Node read may be reused (agent/allocatable.py)


class Planned(NamedTuple):
    """A resource's part of the plan (``agent/plan.py``): file edits, problems it must not fix, EFA."""

    edits: Tuple[FileEdit, ...] = ()
    problems: Tuple[str, ...] = ()
    efa: Optional[EfaAction] = None


class RestartNeed(NamedTuple):
    """Why containerd (``restart.units[0]``) must restart, and the units after it."""

    reason: str
    # This run's own edit is the reason: if containerd does not come back, the edit is rolled back.
    from_edit: bool = False


class Resource:
    """One node resource. Every part is optional: the defaults find nothing, check nothing, plan nothing.

    ``discover`` reads the node (the only part that may do I/O) and returns its facts by name, which
    ``NodeFacts`` then holds (``facts.get(name)``; the built-in ones also as attributes); a file that
    cannot be read is kept as the ``NodeFileError`` it raised. ``check``, ``plan`` and
    ``restart_needs`` are pure: they read ``NodeFacts`` and the configuration only.
    """

    def discover(self, node: Discovery) -> Mapping[str, Any]:
        return {}

    def check(self, facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
        return []

    def plan(self, facts: NodeFacts, config: AgentConfig) -> Planned:
        return Planned()

    def restart_needs(self, facts: NodeFacts, edits: Sequence[FileEdit], config: AgentConfig) -> List[RestartNeed]:
        """Why containerd must restart, given every edit of this run (all resources')."""
        return []


class Entry(NamedTuple):
    module: str  # imported when first used; its ``RESOURCE`` is the resource
    gpu_health: bool = False  # only in check and run's final checks


# The order of discovery, of the plan's edits and problems, and of the checks.
RESOURCES: Tuple[Entry, ...] = (
    Entry("agent.containerd"),  # containerd-config; the edits; containerd's restart needs
    Entry("agent.units"),  # containerd-running, kubelet-running (systemd, the daemons' own word)
    Entry("agent.nvidia"),  # nvidia-runtime-config; the toolkit config's edit
    Entry("agent.driver"),  # nvidia-driver (and the one nvidia-smi query the GPU checks read)
    Entry("agent.compat"),  # compatibility (component versions)
    Entry("agent.efa.resource"),  # efa; the EFA userspace action
    Entry("agent.gpu", gpu_health=True),  # gpu-inventory (and the Node read)
    Entry("agent.allocatable", gpu_health=True),  # gpu-allocatable
    Entry("agent.fabric", gpu_health=True),  # nvidia-fabricmanager
    Entry("agent.xid", gpu_health=True),  # gpu-errors
)

_loaded: Dict[str, Resource] = {}


def resources(*, gpu_health: bool) -> Iterator[Resource]:
    """The resources in order; the GPU readiness ones only with ``gpu_health``."""
    for entry in RESOURCES:
        if entry.gpu_health and not gpu_health:
            continue
        resource = _loaded.get(entry.module)
        if resource is None:
            resource = _loaded[entry.module] = cast(Resource, importlib.import_module(entry.module).RESOURCE)
        yield resource


def read_or_error(read: Callable[[], T]) -> Union[T, NodeFileError]:
    """``read()``, or the ``NodeFileError`` it raised: a file that cannot be read is a fact too."""
    from agent.errors import NodeFileError

    try:
        return read()
    except NodeFileError as exc:
        return exc
