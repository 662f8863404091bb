"""The node resources, listed once, and the pipeline that runs them: discover, evaluate (and plan).

Every command runs the same pipeline: ``discover`` asks each resource in ``RESOURCES`` for its facts,
``agent/pipeline/plan.py``'s ``make_plan`` for its edits and problems (and for why containerd must
restart), and ``evaluate`` for its checks, all in the order of this list, which is also the order of
the checks in ``check``'s output and of their Events (``CHECK_NAMES``, from the resources' ``checks``).
A resource is an object with the parts of ``agent/pipeline/contract.py``'s ``Resource`` it has.
Adding a check is one module and one entry here.

The GPU readiness entries (``gpu_health``) are discovered and checked only by ``check`` and ``run``'s
final checks (``discover(..., gpu_health=True)``), never by ``plan`` or ``prepare``. Importing a
resource module is cheap: each imports what its work needs when it runs.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Tuple

from agent.base.noderoot import NodeRoot
from agent.compat.matrix import RESOURCE as COMPATIBILITY
from agent.config.settings import AgentConfig
from agent.containerd.config import RESOURCE as CONTAINERD_CONFIG
from agent.daemons.units import RESOURCE as DAEMONS
from agent.efa.resource import RESOURCE as EFA
from agent.gpu.allocatable import RESOURCE as GPU_ALLOCATABLE
from agent.gpu.fabric import RESOURCE as FABRIC
from agent.gpu.inventory import RESOURCE as GPU_INVENTORY
from agent.gpu.xid import RESOURCE as GPU_ERRORS
from agent.nvidia.driver import RESOURCE as DRIVER
from agent.nvidia.toolkit import RESOURCE as NVIDIA_RUNTIME
from agent.pipeline.contract import Discovery, NodeFacts, Resource
from agent.pipeline.health import RANK, CheckResult
from agent.pipeline.policy import apply as apply_policy
from agent.systemd.state import kubelet_unit


class Entry(NamedTuple):
    resource: Resource
    gpu_health: bool = False  # only in check and run's final checks


# The order of discovery, of the plan's edits and problems, and of the checks.
RESOURCES: Tuple[Entry, ...] = (
    Entry(CONTAINERD_CONFIG),  # containerd-config; the edits; containerd's restart needs
    Entry(DAEMONS),  # containerd-running, kubelet-running (systemd, the daemons' own word)
    Entry(NVIDIA_RUNTIME),  # nvidia-runtime-config; the toolkit config's edit
    Entry(DRIVER),  # nvidia-driver (and the one nvidia-smi query the GPU checks read)
    Entry(EFA),  # efa; the EFA userspace action
    Entry(COMPATIBILITY),  # compatibility (component versions)
    Entry(GPU_INVENTORY, gpu_health=True),  # gpu-inventory (and the Node read)
    Entry(GPU_ALLOCATABLE, gpu_health=True),  # gpu-allocatable
    Entry(FABRIC, gpu_health=True),  # nvidia-fabricmanager
    Entry(GPU_ERRORS, gpu_health=True),  # gpu-errors
)

# Stable check names, in the order they are shown (README, "Health checks").
CHECK_NAMES: Tuple[str, ...] = tuple(name for entry in RESOURCES for name in entry.resource.checks)


def resources(*, gpu_health: bool) -> Iterator[Resource]:
    """The resources in order; the GPU readiness ones only with ``gpu_health``."""
    return (entry.resource for entry in RESOURCES if gpu_health or not entry.gpu_health)


def discover(root: NodeRoot, config: AgentConfig, *, gpu_health: bool = False, imds: bool = False,
             heartbeat: bool = False) -> NodeFacts:
    """``gpu_health``: also what the GPU readiness checks need (the Node's allocatable, the instance
    type, NVSwitch, the kernel log); ``imds``: the instance type may come from IMDS; ``heartbeat``:
    ``check --report``, which may reuse a recent Node read (``agent/gpu/allocatable.py``)."""
    found: Dict[str, Any] = {}
    for resource in resources(gpu_health=gpu_health):
        found.update(resource.discover(Discovery(root, config, found, gpu_health, imds, heartbeat)))
    return NodeFacts(root, gpu_health=gpu_health, **found)


def evaluate(facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
    """Every resource's checks, in order; the GPU readiness checks only when their facts were discovered
    (``discover(..., gpu_health=True)``); the operator's policy (``checks.<name>``,
    ``agent/pipeline/policy.py``) applied."""
    results: List[CheckResult] = []
    for resource in resources(gpu_health=facts.gpu_health):
        results.extend(resource.check(facts, config))
    return apply_policy(results, config)


def with_pending_restarts(
    results: List[CheckResult], pending: Mapping[str, Tuple[str, str]], config: AgentConfig
) -> List[CheckResult]:
    """A run's restarts that were needed but not done, shown in their unit's check.

    Without them a node whose systemd could not be reached (unit checks: ``skip``) would be reported
    healthy while containerd still runs its old configuration.
    """
    check_for_unit = {config.restart.units[0]: "containerd-running",
                      kubelet_unit(config.restart.units): "kubelet-running"}
    out = []
    for r in results:
        unit = next((u for u, name in check_for_unit.items() if name == r.name), None)
        held = pending.get(unit) if unit is not None else None
        if held is not None and RANK[held[0]] > RANK[r.status]:
            status, why = held
            out.append(CheckResult(r.name, status, f"{unit}: {why}", {**r.details, "restart_pending": True}))
        else:
            out.append(r)
    return apply_policy(out, config)  # a disabled check stays skip, a capped one capped


def reported(facts: NodeFacts, delivered: bool) -> None:
    """The report went out: each resource that was discovered does what follows (``Resource.reported``)."""
    for resource in resources(gpu_health=facts.gpu_health):
        resource.reported(facts, delivered)
