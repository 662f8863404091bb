"""The boot timeline: when each step between kernel start and "a GPU pod can run here" happened.

Each milestone comes from the source that knows it (README "Time to GPU-ready", the table of
milestones in docs/reporting.md):

* systemd, over D-Bus (``agent/systemd/client.py``): its own timestamps of nodeadm-config, the prepare
  pass, nvidia-kmod-load, nodeadm-run, containerd's and kubelet's starts, the fabric manager, and
  the Manager's kernel, userspace and boot-finished times (monotonic and realtime µs);
* the Node, as the agent read it: ``creationTimestamp`` (registration) and ``Ready``'s
  ``lastTransitionTime`` (the API server's clock, converted to the node's monotonic clock);
* the agent itself: EFA installed, the first healthy report, the first report whose Node carried
  every expected GPU in ``status.allocatable`` ("GPUs advertised"), and GPU-ready (GPUs advertised
  and health not unhealthy).

A milestone is ``{"seconds", "utc", "source"}``: seconds since boot (``CLOCK_MONOTONIC``, the clock
systemd's ``*TimestampMonotonic`` use: since kernel start; where systemd runs in a container and
has no kernel timestamp, since systemd's own start, and ``boot.anchor`` says so). A milestone the
node does not have is absent, never zero. Every report merges what it sees into the status file's
``timeline`` and keeps what an earlier report of the same boot recorded: a first start stays the
first start after a restart, GPU-ready stays the first time it was reached.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from agent.base.log import get_logger
from agent.base.timestamps import parse_rfc3339, rfc3339

log = get_logger("timeline")

SYSTEMD_TIMEOUT = 2.0  # the whole read: a wedged systemd must not hold up a report

# (milestone, unit, property without "Monotonic"), in boot order; a unit systemd does not know, or
# a timestamp of 0 (not reached), gives no milestone.
UNIT_MILESTONES: Tuple[Tuple[str, str, str], ...] = (
    ("nodeadm-config-started", "nodeadm-config.service", "InactiveExitTimestamp"),
    ("nodeadm-config-finished", "nodeadm-config.service", "ExecMainExitTimestamp"),
    ("prepare-started", "gpu-node-agent-prepare.service", "InactiveExitTimestamp"),
    ("prepare-finished", "gpu-node-agent-prepare.service", "ExecMainExitTimestamp"),
    ("nvidia-kmod-loaded", "nvidia-kmod-load.service", "ActiveEnterTimestamp"),
    ("cloud-final-finished", "cloud-final.service", "ExecMainExitTimestamp"),
    ("nodeadm-run-started", "nodeadm-run.service", "InactiveExitTimestamp"),
    ("containerd-started", "containerd.service", "ActiveEnterTimestamp"),
    ("kubelet-started", "kubelet.service", "ActiveEnterTimestamp"),
    ("nodeadm-run-finished", "nodeadm-run.service", "ExecMainExitTimestamp"),
    ("fabricmanager-started", "nvidia-fabricmanager.service", "ActiveEnterTimestamp"),
)
RESTARTED = {"containerd-started": "containerd-restarted", "kubelet-started": "kubelet-restarted"}
DAEMONS = ("containerd.service", "kubelet.service")

# Every milestone, in the order of a typical boot (the status table's order).
MILESTONES = (
    "kernel", "systemd", "nodeadm-config-started", "nodeadm-config-finished", "prepare-started",
    "efa-installed", "prepare-finished", "nvidia-kmod-loaded", "cloud-final-finished", "nodeadm-run-started",
    "containerd-started", "kubelet-started", "nodeadm-run-finished", "containerd-restarted",
    "kubelet-restarted", "fabricmanager-started", "node-registered", "node-ready", "boot-finished",
    "first-healthy-report", "gpus-advertised", "gpu-ready",
)
GPU_READY_EVENT = "GPUReady"
GPU_READY_LATE_EVENT = "GPUReadyLate"


class Clocks(NamedTuple):
    """The two clocks read at (nearly) one instant: CLOCK_MONOTONIC and the epoch, in seconds."""

    monotonic: float
    realtime: float

    @classmethod
    def now(cls) -> Clocks:
        return cls(time.monotonic(), time.time())

    def to_monotonic(self, epoch: float) -> float:
        return epoch - (self.realtime - self.monotonic)


class Observation(NamedTuple):
    """What one read of systemd saw: milestones by CLOCK_MONOTONIC seconds, and restart counts."""

    points: Dict[str, Tuple[float, float, str]]  # name -> (monotonic s, epoch s, source)
    anchor: Optional[Tuple[str, float, float]] = None  # ("kernel"|"systemd", monotonic s, epoch s)
    nrestarts: Optional[Dict[str, int]] = None


# --- reading the sources ---------------------------------------------------------------------------


def observe_systemd(address: Optional[str] = None, timeout: float = SYSTEMD_TIMEOUT) -> Observation:
    """systemd's timestamps of the boot's units; an unreachable systemd gives an empty observation."""
    from agent.systemd.client import SERVICE_IFACE, UNIT_IFACE, SystemdClient
    from agent.systemd.errors import SystemdError

    points: Dict[str, Tuple[float, float, str]] = {}
    nrestarts: Dict[str, int] = {}
    anchor = None
    try:
        with SystemdClient(address, timeout=timeout) as client:
            deadline = client.clock() + timeout
            manager = client.manager_properties(deadline=deadline)
            if int(manager.get("KernelTimestamp", 0)):
                anchor = ("kernel", 0.0, int(manager["KernelTimestamp"]) / 1e6)
            elif int(manager.get("UserspaceTimestampMonotonic", 0)):  # in a container: no kernel of its own
                anchor = ("systemd", int(manager["UserspaceTimestampMonotonic"]) / 1e6,
                          int(manager["UserspaceTimestamp"]) / 1e6)
            _point(points, "systemd", manager, "UserspaceTimestamp", "systemd Manager")
            _point(points, "boot-finished", manager, "FinishTimestamp", "systemd Manager")
            units: Dict[str, Dict[str, Any]] = {}
            for name, unit, prop in UNIT_MILESTONES:
                if unit not in units:
                    units[unit] = client.properties(unit, (UNIT_IFACE, SERVICE_IFACE), deadline=deadline)
                if units[unit].get("LoadState") == "loaded":
                    _point(points, name, units[unit], prop, unit)
            for unit in DAEMONS:
                if units[unit].get("LoadState") == "loaded":
                    nrestarts[unit] = int(units[unit].get("NRestarts", 0))
    except SystemdError as exc:
        log.debug("boot timeline: systemd not read", error=str(exc))
    return Observation(points, anchor, nrestarts)


def _point(points: Dict[str, Tuple[float, float, str]], name: str, props: Mapping[str, Any], prop: str,
           source: str) -> None:
    mono, real = int(props.get(f"{prop}Monotonic", 0) or 0), int(props.get(prop, 0) or 0)
    if mono and real:
        points[name] = (mono / 1e6, real / 1e6, f"{source} {prop}")


def node_points(node: Optional[Mapping[str, Any]], clocks: Clocks) -> Dict[str, Tuple[float, float, str]]:
    """Registration and Ready from the Node (the API server's clock, converted with the node's)."""
    points: Dict[str, Tuple[float, float, str]] = {}
    if not isinstance(node, Mapping):
        return points
    meta, status = node.get("metadata"), node.get("status")
    created = meta.get("creationTimestamp") if isinstance(meta, Mapping) else None
    stamps = [("node-registered", created, "Node creationTimestamp")]
    for cond in (status.get("conditions") or []) if isinstance(status, Mapping) else []:
        if isinstance(cond, Mapping) and cond.get("type") == "Ready" and cond.get("status") == "True":
            stamps.append(("node-ready", cond.get("lastTransitionTime"), "Node Ready lastTransitionTime"))
    for name, stamp, source in stamps:
        try:
            epoch = parse_rfc3339(stamp) if isinstance(stamp, str) else None
        except ValueError:
            epoch = None
        if epoch is not None:
            points[name] = (clocks.to_monotonic(epoch), epoch, source)
    return points


def gpus_advertised(results: Sequence[Any], resource: str) -> bool:
    """The Node this report read carries every expected GPU (the ``gpu-allocatable`` check's view)."""
    for r in results:
        if r.name != "gpu-allocatable" or not isinstance(r.details, Mapping):
            continue
        seen = (r.details.get("resources") or {}).get(resource) or {}
        raw, expected = seen.get("allocatable"), seen.get("expected")
        return isinstance(expected, int) and expected > 0 and str(raw).strip().isdigit() and int(str(raw)) >= expected
    return False


def agent_points(results: Sequence[Any], health: str, actions: Sequence[str], resource: str,
                 clocks: Clocks) -> Dict[str, Tuple[float, float, str]]:
    here = (clocks.monotonic, clocks.realtime, "gpu-node-agent report")
    points: Dict[str, Tuple[float, float, str]] = {}
    if any(a.startswith("EFA userspace ") and " installed" in a for a in actions):
        points["efa-installed"] = here
    if health == "healthy":
        points["first-healthy-report"] = here
    if gpus_advertised(results, resource):
        points["gpus-advertised"] = here
        if health != "unhealthy":
            points["gpu-ready"] = here
    return points


# --- the timeline in the status file --------------------------------------------------------------


def merge(previous: Optional[Mapping[str, Any]], boot_id: Optional[str], observations: Sequence[Observation],
          clocks: Clocks, restarts_total: Mapping[str, int]) -> Dict[str, Any]:
    """The timeline after this report: ``previous`` (kept when it is this boot's) plus what is new."""
    prev = dict(previous) if isinstance(previous, Mapping) and previous.get("boot_id") == boot_id else {}
    boot = prev.get("boot") if isinstance(prev.get("boot"), Mapping) else None
    if boot is None:
        anchor = next((o.anchor for o in observations if o.anchor), None)
        anchor = anchor or ("kernel", 0.0, clocks.realtime - clocks.monotonic)
        boot = {"anchor": anchor[0], "monotonic": round(anchor[1], 6), "utc": rfc3339(anchor[2], millis=True)}
    base = float(boot["monotonic"])
    kept = prev.get("milestones")
    milestones: Dict[str, Any] = {k: v for k, v in kept.items() if isinstance(v, Mapping)} \
        if isinstance(kept, Mapping) else {}
    if "kernel" not in milestones and boot["anchor"] == "kernel":
        milestones["kernel"] = {"seconds": 0.0, "utc": boot["utc"], "source": "kernel (CLOCK_MONOTONIC 0)"}
    for obs in observations:
        for name, (mono, epoch, source) in obs.points.items():
            if name in RESTARTED and name in milestones:  # a later start is a restart
                if round(mono - base, 3) > float(milestones[name]["seconds"]):
                    name = RESTARTED[name]
                else:
                    continue
            milestones.setdefault(name, {"seconds": round(mono - base, 3), "utc": rfc3339(epoch, millis=True),
                                         "source": source})
    nrestarts: Dict[str, int] = {}
    for obs in observations:
        nrestarts.update(obs.nrestarts or {})
    restarts = {unit: {"by_agent": int(restarts_total.get(unit, 0)), "by_systemd": nrestarts.get(unit, 0)}
                for unit in DAEMONS}
    timeline = {"boot_id": boot_id, "boot": boot,
                "milestones": {n: milestones[n] for n in MILESTONES if n in milestones},
                "restarts": restarts, **derived(milestones)}
    if prev.get("announced"):
        timeline["announced"] = prev["announced"]
    return timeline


def _seconds(milestones: Mapping[str, Any], name: str) -> Optional[float]:
    point = milestones.get(name)
    return float(point["seconds"]) if isinstance(point, Mapping) else None


def derived(milestones: Mapping[str, Any]) -> Dict[str, Any]:
    """``time_to_gpu_ready_seconds``: boot to GPU-ready. ``agent_share_seconds``: how long
    nodeadm-run waited for the prepare pass alone (its end past the later of its own start and
    cloud-final's end, the other unit nodeadm-run waits for); EFA installed before kubelet is part of
    it. Absent when the milestones it needs are."""
    out: Dict[str, Any] = {}
    ready = _seconds(milestones, "gpu-ready")
    if ready is not None:
        out["time_to_gpu_ready_seconds"] = round(ready, 3)
    start, end = _seconds(milestones, "prepare-started"), _seconds(milestones, "prepare-finished")
    if start is not None and end is not None:
        other = _seconds(milestones, "cloud-final-finished")
        out["agent_share_seconds"] = round(max(0.0, end - max(start, other if other is not None else start)), 3)
        out["prepare_seconds"] = round(max(0.0, end - start), 3)
    return out


def update(boot_id: Optional[str], config: Any, results: Sequence[Any], health: str, actions: Sequence[str],
           previous: Optional[Mapping[str, Any]], restarts_total: Mapping[str, int], *,
           node: Optional[Mapping[str, Any]] = None, early: Optional[Observation] = None,
           systemd: bool = True) -> Dict[str, Any]:
    """This report's timeline (see ``merge``) for the boot ``boot_id`` (``status.boot_id``);
    ``early``: systemd as seen before the run's restarts."""
    clocks = Clocks.now()
    observations = [early] if early is not None else []
    if systemd:
        observations.append(observe_systemd())
    resource = config.gpu.resource_name
    observations.append(Observation(node_points(node, clocks)))
    observations.append(Observation(agent_points(results, health, actions, resource, clocks)))
    return merge(previous, boot_id, observations, clocks, restarts_total)


# --- the GPUReady Event -----------------------------------------------------------------------------


def announcement(timeline: Mapping[str, Any], budget: Optional[float]) -> Optional[Any]:
    """The Event for GPU-ready, once per boot: ``GPUReady``, or ``GPUReadyLate`` over ``budget``."""
    from agent.report.events import NORMAL, WARNING, EventSpec

    seconds = timeline.get("time_to_gpu_ready_seconds")
    if seconds is None or timeline.get("announced"):
        return None
    since = "kernel start" if timeline.get("boot", {}).get("anchor") == "kernel" else "systemd start"
    message = f"GPUs advertised and health not unhealthy {seconds:.1f}s after {since}"
    if budget is not None and seconds > budget:
        return EventSpec(WARNING, GPU_READY_LATE_EVENT, f"{message}, over the {budget:g}s budget")
    return EventSpec(NORMAL, GPU_READY_EVENT, message)


def announced(timeline: Dict[str, Any], spec: Any, sent: Optional[Mapping[str, Any]]) -> None:
    """Remember the Event as sent when it was (it goes first: any Event sent means it was)."""
    if spec is not None and sent and (int(sent.get("created", 0)) + int(sent.get("repeated", 0))) > 0:
        timeline["announced"] = {"reason": spec.reason, "utc": rfc3339(datetime.now(timezone.utc), millis=True)}


# --- showing it ---------------------------------------------------------------------------------------


def render_table(timeline: Optional[Mapping[str, Any]]) -> str:
    if not timeline or not timeline.get("milestones"):
        return "boot timeline: nothing recorded\n"
    boot = timeline.get("boot", {})
    lines = [f"boot timeline (seconds since {boot.get('anchor', 'kernel')} start, {boot.get('utc', '?')}):"]
    rows = [("MILESTONE", "SECONDS", "UTC", "SOURCE")]
    rows += [(name, f"{float(p['seconds']):.3f}", str(p.get("utc", "")), str(p.get("source", "")))
             for name, p in timeline["milestones"].items()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += ["  " + "  ".join(c.rjust(w) if i == 1 else c.ljust(w) for i, (c, w) in
                               enumerate(zip(row, widths))).rstrip() for row in rows]
    ready = timeline.get("time_to_gpu_ready_seconds")
    lines.append(f"time to GPU-ready: {f'{ready:.1f}s' if ready is not None else 'not reached'}")
    if timeline.get("agent_share_seconds") is not None:
        lines.append(f"agent's share: {timeline['agent_share_seconds']:.3f}s "
                     f"(prepare pass {timeline.get('prepare_seconds', 0):.3f}s)")
    restarts = timeline.get("restarts") or {}
    if restarts:
        lines.append("restarts: " + ", ".join(f"{u} {r.get('by_agent', 0)} by the agent, "
                                              f"{r.get('by_systemd', 0)} by systemd" for u, r in restarts.items()))
    return "\n".join(lines) + "\n"


def metric_families(document: Mapping[str, Any]) -> List[Any]:
    """The metrics file's timeline families (``agent.report.metrics.SOURCES``): one gauge series per
    milestone reached, and the two derived figures, from the report document's ``timeline``."""
    from agent.report.metrics import Family

    boot = document.get("timeline")
    if not isinstance(boot, Mapping):
        return []
    milestones = boot.get("milestones") or {}
    families = [Family("gpu_node_agent_boot_milestone_seconds", "gauge",
                       "Seconds from boot (kernel start) to the milestone.",
                       [({"milestone": str(n)}, float(p["seconds"])) for n, p in milestones.items()])]
    for key, name, what in (("time_to_gpu_ready_seconds", "gpu_node_agent_time_to_gpu_ready_seconds",
                             "Seconds from boot to GPUs advertised with health not unhealthy."),
                            ("agent_share_seconds", "gpu_node_agent_boot_share_seconds",
                             "Seconds nodeadm-run waited for the agent's prepare pass alone.")):
        if boot.get(key) is not None:
            families.append(Family(name, "gauge", what, [({}, float(boot[key]))]))
    return families
