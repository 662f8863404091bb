"""What the device plugins advertised on the Node against what is there. Owns ``gpu-allocatable``.

The NVIDIA device plugin advertises ``status.allocatable["nvidia.com/gpu"]`` (time-slicing
multiplies it by its replicas; MIG's "mixed" strategy renames it, e.g. ``nvidia.com/mig-1g.10gb``),
the EFA device plugin ``vpc.amazonaws.com/efa``, one per EFA device. Both appear some time after
kubelet registers the Node: within ``gpu.allocatable_grace_seconds`` of kubelet's start (its unit's
``ActiveEnterTimestamp``) a missing or short resource is ``warn`` ("not yet advertised"), later
``fail``. More than expected is ``warn``; its hint follows ``gpu-inventory``: GPUs missing (fewer seen
than the instance type has) means a count advertised before they fell off, none missing means
time-slicing or MIG (``gpu.resource_per_gpu``).

Expected: GPUs seen (``agent.nvidia.driver.gpus_seen``) x ``gpu.resource_per_gpu`` of ``gpu.resource_name``;
EFA devices present (``agent.efa``) of ``gpu.efa_resource_name``, when there is EFA hardware.
``gpu.allocatable: false`` turns the check off (``skip``).

The Node is read (one GET with ``resourceVersion=0``, from the API server's cache, with the
kubelet's credentials through ``agent.kube``) whenever a kubeconfig exists: in ``run`` and plain
``check`` every time; in ``check --report`` (the heartbeat timer) at most once per
``report.heartbeat_minutes``: the allocatable and instance-type label of the last read
(``agent.kube.node.READ_CACHE``) are reused while they are younger than that, for the same node and
API server, and the last report's ``gpu-allocatable`` passed (``passed_last``). A heartbeat reads
afresh when that check did not pass (the device plugin has not advertised the GPUs yet on a booting
node, or they went missing, or the Node was unreadable): the condition turns ``True`` at the first
heartbeat that sees them. No kubeconfig (the node has not joined a cluster, e.g. an AMI bake) or
``report.publish: false``: ``skip``, no API call. A kubeconfig that does not work: ``warn`` with why.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from agent.config.settings import AgentConfig
from agent.kube.node import NodeRead
from agent.pipeline.contract import Resource
from agent.pipeline.health import FAIL, PASS, SKIP, WARN, CheckResult
from agent.systemd.errors import SystemdError
from agent.systemd.state import UnitStates

if TYPE_CHECKING:
    from agent.pipeline.contract import NodeFacts

CHECK = "gpu-allocatable"


def passed_last(root: Any, config: AgentConfig) -> bool:
    """Whether ``gpu-allocatable`` passed in the last report (the status file): then a heartbeat may
    reuse the last Node read."""
    import json

    from agent.base.errors import AgentError
    from agent.base.fs import read_text

    try:
        last = json.loads(read_text(root.path(config.report.status_file)))
        return any(isinstance(c, dict) and c.get("name") == CHECK and c.get("status") == PASS
                   for c in last.get("checks", []))
    except (AgentError, ValueError, AttributeError):
        return False


def _quantity(value: Any) -> Optional[int]:
    text = str(value).strip()
    return int(text) if text.isdigit() else None


def _kubelet_age(units: Union[UnitStates, SystemdError, None], unit: str, now: float) -> Optional[float]:
    state = units.get(unit) if isinstance(units, UnitStates) else None
    since = state.active_since if state is not None and state.active_state == "active" else None
    return now - since if since is not None else None


def _more_hint(gpus: Optional[int], gpus_expected: Optional[int]) -> str:
    """Why the GPU resource is above the GPUs seen: time-slicing or MIG only when none is missing.

    A GPU that fell off the bus (``gpu-inventory``: fewer seen than the instance type has) stays in
    the count the device plugin advertised until it notices; time-slicing does not explain that.
    """
    if gpus is not None and gpus_expected is not None and gpus < gpus_expected:
        missing = gpus_expected - gpus
        return (f": advertised before {missing} GPU{'' if missing == 1 else 's'} fell off "
                f"(gpu-inventory: {gpus} of {gpus_expected} visible)")
    if gpus_expected is None:
        return " (time-slicing or MIG: set gpu.resource_per_gpu; or GPUs that fell off since: see gpu-inventory)"
    return " (time-slicing or MIG? set gpu.resource_per_gpu)"


def check(
    read: Optional[NodeRead],
    config: AgentConfig,
    *,
    gpus: Optional[int],
    efa_devices: int,
    units: Union[UnitStates, SystemdError, None],
    kubelet_unit: str,
    now: Optional[float] = None,
    gpus_expected: Optional[int] = None,
) -> CheckResult:
    settings = config.gpu
    if read is None:
        return CheckResult(CHECK, SKIP, "the Node was not read", {"event_reason": "NodeNotRead"})
    if read.skipped:
        return CheckResult(CHECK, SKIP, read.skipped, {"event_reason": "AllocatableNotChecked"})
    if read.problem or read.node is None:
        return CheckResult(CHECK, WARN, f"cannot read the Node's allocatable: {read.problem}",
                           {"node": read.name, "node_source": read.name_source, "event_reason": "NodeUnreadable"})
    alloc = read.allocatable
    age = _kubelet_age(units, kubelet_unit, time.time() if now is None else now)
    grace = settings.allocatable_grace_seconds
    within = age is not None and age < grace
    details: Dict[str, Any] = {"node": read.name, "node_source": read.name_source, "reused": read.reused,
                               "kubelet_started_seconds_ago": None if age is None else round(age),
                               "grace_seconds": grace, "resources": {}}
    wanted: List[Tuple[str, Optional[int], str]] = []
    if gpus is not None:
        factor = settings.resource_per_gpu
        what = f"{gpus} GPUs x {factor}" if factor != 1 else f"{gpus} GPUs"
        wanted.append((settings.resource_name, gpus * factor, what))
    else:
        wanted.append((settings.resource_name, None, "GPUs not counted"))
    if settings.efa_resource_name and efa_devices:
        wanted.append((settings.efa_resource_name, efa_devices, f"{efa_devices} EFA devices"))
    short: List[str] = []
    odd: List[str] = []
    good: List[str] = []
    for resource, expected, what in wanted:
        raw = alloc.get(resource)
        have = _quantity(raw) if raw is not None else None
        details["resources"][resource] = {"allocatable": raw, "expected": expected}
        if raw is not None and have is None:
            odd.append(f"{resource}: allocatable {raw!r} is not a whole number")
        elif expected is None:
            odd.append(f"{resource}: {have if have is not None else 'not advertised'}, not compared ({what})")
        elif (have or 0) < expected:
            if not have:
                short.append(f"{resource} {'not yet' if within else 'not'} advertised (expected {expected}: {what})")
            else:
                short.append(f"{resource}: {have} allocatable, expected {expected} ({what})")
        elif (have or 0) > expected:
            hint = _more_hint(gpus, gpus_expected) if resource == settings.resource_name else ""
            odd.append(f"{resource}: {have} allocatable, more than {expected} ({what}){hint}")
        else:
            good.append(f"{resource}: {have or 0} = {what}")
    if short:
        since = (f"kubelet started {round(age)}s ago, grace {grace:g}s" if age is not None
                 else "kubelet's start time unknown")
        status = WARN if within else FAIL
        reason = "GPUNotYetAdvertised" if within else "GPUNotAdvertised"
        if not any(r.startswith(settings.resource_name) for r in short):
            reason = "EFANotYetAdvertised" if within else "EFANotAdvertised"
        return CheckResult(CHECK, status, f"{'; '.join(short)} ({since})", {**details, "event_reason": reason})
    if odd:
        return CheckResult(CHECK, WARN, "; ".join(odd + good), {**details, "event_reason": "AllocatableUnexpected"})
    return CheckResult(CHECK, PASS, "; ".join(good), {**details, "event_reason": "AllocatableAsExpected"})


class Allocatable(Resource):
    """``gpu-allocatable``, from the Node ``agent/gpu/inventory.py``'s resource read (``kube_node``)."""

    checks = ("gpu-allocatable",)

    def check(self, facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
        from agent.nvidia.driver import gpus_seen
        from agent.systemd.state import kubelet_unit

        efa_devices = len(facts.efa.devices) if facts.efa is not None else 0
        expected = facts.instance.expected if facts.instance is not None else None
        return [check(facts.kube_node, config, gpus=gpus_seen(facts.driver), efa_devices=efa_devices,
                      units=facts.units, kubelet_unit=kubelet_unit(config.restart.units),
                      gpus_expected=expected)]


RESOURCE = Allocatable()
