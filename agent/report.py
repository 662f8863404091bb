"""Reporting: check results -> the Node's annotations and condition, the status file, the metrics file.

What the cluster sees (README "What the cluster sees", docs/reporting.md):
* annotations ``<prefix>/health`` (``healthy|degraded|unhealthy``) and ``<prefix>/report`` (compact
  JSON, at most 4 KiB: messages are shortened, the structure never), set with a JSON merge patch;
* the condition (``report.condition``, default ``GPUNodeAgentReady``): ``True`` when healthy or
  degraded, ``False`` when unhealthy, set with a *strategic* merge patch on ``nodes/{name}/status``
  so kubelet's own conditions stay; ``lastTransitionTime`` is kept while the status is unchanged;
* only what changed is written (``agent/published.py``): an unchanged heartbeat sends nothing, and
  ``lastHeartbeatTime`` is refreshed every ``report.heartbeat_minutes``;
* Events of the run's actions and of check transitions (``agent/events.py``).

On the node: the status file (the report with details, and how publishing went) and, when
configured, a Prometheus textfile, both written atomically. Publishing (``agent/publish.py``)
failures are reported, never raised: ``run`` has already changed the node, and a report cannot undo
that.

The node name: ``report.node_name``, else kubelet's ``--hostname-override`` from
``/etc/eks/kubelet/environment``, else IMDS ``local-hostname``, else the hostname (lowercased, as
kubelet does).
"""

from __future__ import annotations

import json
import socket
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from agent.config import AgentConfig
from agent.errors import NodeFileError, NodeFileMissing
from agent.fs import NodeRoot, atomic_write, read_text
from agent.health import (
    DEGRADED,
    FAIL,
    HEALTHY,
    PASS,
    SKIP,
    UNHEALTHY,
    WARN,
    CheckResult,
    ordered,
    overall_health,
    report_document,
)
from agent.kubelet import KUBELET_ENVIRONMENT, kubelet_flag
from agent.log import get_logger
from agent.publish import PublishResult, publish
from agent.timestamps import rfc3339

ANNOTATION_LIMIT = 4096  # bytes of the <prefix>/report value
CONDITION_MESSAGE_LIMIT = 1024
READABLE_MESSAGE = 80  # characters a message keeps before actions start folding into "+N more"
REASONS = {HEALTHY: "AllChecksPassed", DEGRADED: "ChecksWarned", UNHEALTHY: "CheckFailed"}
_ELLIPSIS = "\u2026"

log = get_logger("report")


# --- the annotation ------------------------------------------------------------------------------


def _clip(text: str, limit: Optional[int]) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + _ELLIPSIS if limit > 0 else ""


def _encode(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def compact_report(document: Mapping[str, Any], limit: int = ANNOTATION_LIMIT, *,
                   since: Optional[str] = None) -> str:
    """The ``<prefix>/report`` value: the report without details, at most ``limit`` bytes.

    Nothing in it changes on its own: its ``time`` is ``since``, when its content last changed
    (default: the report's time), so an unchanged heartbeat has nothing to write.

    Every check keeps its name and status. When the whole does not fit, every message and action
    is cut to the same, largest possible length, so short messages stay whole. Rather than cut
    everything below ``READABLE_MESSAGE`` characters, trailing actions fold into one ``+N more``.
    """
    checks = [{"name": c["name"], "status": c["status"], "message": c.get("message", "")}
              for c in document["checks"]]
    actions = [str(a) for a in document.get("actions", [])]
    head = {"v": document["v"], "agent": document["agent"], "time": since or document["time"],
            "health": document["health"]}
    if document.get("gpu_ready_seconds") is not None:  # the boot's time to GPU-ready (agent/timeline.py)
        head["gpu_ready_seconds"] = document["gpu_ready_seconds"]
    longest = max([len(c["message"]) for c in checks] + [len(a) for a in actions] + [0])

    def render(cap: Optional[int], kept: int) -> bytes:
        acts = [_clip(a, cap) for a in actions[:kept]]
        if kept < len(actions):
            acts.append(f"+{len(actions) - kept} more")
        return _encode({**head, "checks": [{**c, "message": _clip(c["message"], cap)} for c in checks],
                        "actions": acts})

    def fits(cap: Optional[int], kept: int) -> bool:
        return len(render(cap, kept)) <= limit

    def best_cap(kept: int) -> int:  # the largest cap that fits (fits(0, kept) holds)
        lo, hi = 0, longest
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid, kept) else (lo, mid - 1)
        return lo

    kept = len(actions)
    if fits(None, kept):
        return render(None, kept).decode()
    floor = min(READABLE_MESSAGE, longest)
    if not fits(floor, kept):
        while kept > 0 and not fits(floor, kept):  # fold actions until messages stay readable
            kept -= 1
        if not fits(floor, kept) and not fits(0, kept):
            raise ValueError(f"{len(checks)} checks do not fit in {limit} bytes even without messages")
    return render(best_cap(kept), kept).decode()


# --- the condition -------------------------------------------------------------------------------


def condition_message(results: Sequence[CheckResult]) -> str:
    """The first failing check, else the first warning one, else a summary."""
    results = ordered(results)
    for status in (FAIL, WARN):
        for r in results:
            if r.status == status:
                return _clip(f"{r.name}: {r.message}", CONDITION_MESSAGE_LIMIT)
    passed = sum(1 for r in results if r.status == PASS)
    skipped = sum(1 for r in results if r.status == SKIP)
    return f"{passed} checks passed" + (f", {skipped} skipped" if skipped else "")


def node_condition(
    condition_type: str,
    results: Sequence[CheckResult],
    now: datetime,
    previous: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The condition as of ``now``; ``lastTransitionTime`` is ``previous``'s while the status stays."""
    health = overall_health(results)
    status = "False" if health == UNHEALTHY else "True"
    stamp = rfc3339(now)
    kept = previous.get("lastTransitionTime") if previous and previous.get("status") == status else None
    return {
        "type": condition_type,
        "status": status,
        "reason": REASONS[health],
        "message": condition_message(results),
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": kept or stamp,
    }


# --- the node name -------------------------------------------------------------------------------


class NodeName(NamedTuple):
    name: str
    source: str


def resolve_node_name(
    root: NodeRoot,
    config: AgentConfig,
    *,
    imds: Optional[Callable[[], Any]] = None,
    hostname: Callable[[], str] = socket.gethostname,
) -> NodeName:
    if config.report.node_name:
        return NodeName(config.report.node_name, "report.node_name")
    try:
        override = kubelet_flag(read_text(root.path(KUBELET_ENVIRONMENT)), "--hostname-override")
    except NodeFileMissing:
        override = None
    except NodeFileError as exc:
        log.warning("cannot read kubelet environment", error=str(exc))
        override = None
    if override:
        return NodeName(override.lower(), f"--hostname-override in {KUBELET_ENVIRONMENT}")
    from agent.imds import ImdsClient, ImdsError

    client = imds() if imds is not None else ImdsClient.from_settings(config.imds)
    try:
        if not client.disabled:
            local = client.get("local-hostname")
            if local and local.strip():
                return NodeName(local.strip().split()[0].lower(), "IMDS local-hostname")
    except ImdsError as exc:
        log.info("IMDS did not give the node name", error=str(exc))
    finally:
        client.close()
    return NodeName(hostname().strip().lower(), "hostname")


# --- local state ---------------------------------------------------------------------------------


class ReportOutcome(NamedTuple):
    document: Dict[str, Any]  # what the status file holds
    published: Optional[PublishResult]  # None: publishing not asked for
    problems: Tuple[str, ...] = ()  # local files that could not be written

    @property
    def ok(self) -> bool:
        return not self.problems and (self.published is None or self.published.ok)


def _previous_restarts(path: Any) -> Dict[str, int]:
    try:
        doc = json.loads(read_text(path))
        counts = doc.get("restarts_total", {}) if isinstance(doc, dict) else {}
        return {str(k): int(v) for k, v in counts.items() if isinstance(v, int) and v >= 0}
    except (NodeFileError, ValueError, AttributeError):
        return {}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(
    results: Sequence[CheckResult],
    now: datetime,
    restarts_total: Mapping[str, int],
    published: Optional[PublishResult],
    boot_timeline: Optional[Mapping[str, Any]] = None,
) -> str:
    """Prometheus text exposition for the node_exporter textfile collector."""
    from agent.timeline import metrics_lines

    health = overall_health(results)
    lines: List[str] = [
        "# HELP gpu_node_agent_health Node health from the agent's last report (1 for the current state).",
        "# TYPE gpu_node_agent_health gauge",
    ]
    lines += [f'gpu_node_agent_health{{health="{h}"}} {int(h == health)}'
              for h in (HEALTHY, DEGRADED, UNHEALTHY)]
    lines += [
        "# HELP gpu_node_agent_check Health check status from the last report (1 for the current status).",
        "# TYPE gpu_node_agent_check gauge",
    ]
    for r in ordered(results):
        for status in (PASS, WARN, FAIL, SKIP):
            labels = f'check="{_label(r.name)}",status="{status}"'
            lines.append(f"gpu_node_agent_check{{{labels}}} {int(r.status == status)}")
    lines += [
        "# HELP gpu_node_agent_last_run_timestamp_seconds When the agent last reported (Unix time).",
        "# TYPE gpu_node_agent_last_run_timestamp_seconds gauge",
        f"gpu_node_agent_last_run_timestamp_seconds {now.timestamp():.3f}",
        "# HELP gpu_node_agent_restarts_total Units the agent restarted since boot.",
        "# TYPE gpu_node_agent_restarts_total counter",
    ]
    lines += [f'gpu_node_agent_restarts_total{{unit="{_label(u)}"}} {n}'
              for u, n in sorted(restarts_total.items())]
    if published is not None:
        lines += [
            "# HELP gpu_node_agent_report_published Whether the last report reached the API server.",
            "# TYPE gpu_node_agent_report_published gauge",
            f"gpu_node_agent_report_published {int(published.ok)}",
        ]
    lines += metrics_lines(boot_timeline)
    return "\n".join(lines) + "\n"


def _status_bytes(document: Mapping[str, Any]) -> bytes:
    order = ("v", "agent", "time", "health", "gpu_ready_seconds", "checks", "actions", "publish", "restarts_total",
             "timeline", "passes")
    ordered_doc = {k: document[k] for k in order if k in document}
    return (json.dumps(ordered_doc, indent=2) + "\n").encode()


def _write(root: NodeRoot, node_path: str, data: bytes) -> Optional[str]:
    path = root.path(node_path)
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(path, data)
    except NodeFileError as exc:
        return str(exc)
    except OSError as exc:
        return f"{path}: cannot write: {exc.strerror or exc}"
    return None


def finish(
    root: NodeRoot,
    config: AgentConfig,
    results: Sequence[CheckResult],
    actions: Optional[Sequence[str]] = None,
    *,
    publish_report: bool,
    restarts: Optional[Mapping[str, int]] = None,
    now: Optional[datetime] = None,
    publisher: Optional[Callable[..., PublishResult]] = None,
    events: Sequence[Any] = (),
    node: Optional[Mapping[str, Any]] = None,
    early: Optional[Any] = None,
) -> ReportOutcome:
    """The end of every ``run`` (and of ``check --report``): publish when asked, then always write
    the status file (and the metrics file when configured). ``actions``: what a ``run`` did (None
    for ``check --report``, which keeps the actions the last run published on the Node).
    ``restarts``: units restarted by this run and how often; the status file keeps the running
    totals since boot for the counter. ``events``: ``events.EventSpec`` of this run's actions.
    ``node``: the Node as a check of this report read it (see ``publish``). ``early``: systemd's
    timestamps as a ``run`` saw them before its restarts (``timeline.observe_systemd``)."""
    now = now or datetime.now(timezone.utc)
    document = report_document(results, actions or (), now=now)
    status_path = config.report.status_file
    totals = _previous_restarts(root.path(status_path))
    for unit, count in (restarts or {}).items():
        totals[unit] = totals.get(unit, 0) + int(count)
    from agent import status, timeline  # the boot passes' records and the timeline outlive every report

    carried = status.carried(root.path(status_path))
    boot = timeline.update(root, config, results, document["health"], actions or (), carried.get("timeline"),
                           totals, node=node, early=early)
    if boot.get("time_to_gpu_ready_seconds") is not None:
        document["gpu_ready_seconds"] = boot["time_to_gpu_ready_seconds"]
    local = {**document, "restarts_total": totals, **carried, "timeline": boot}
    published = None
    if publish_report:
        # The node's own view first: publishing may take up to report.timeout_seconds.
        _write(root, status_path, _status_bytes({**local, "publish": {"attempted": True, "ok": None}}))
        ready = timeline.announcement(boot, config.report.gpu_ready_budget_seconds)
        published = (publisher or publish)(root, config, results, document, now=now,
                                           events=[ready, *events] if ready else events,
                                           keep_actions=actions is None, node=node)
        timeline.announced(boot, ready, published.events if published.ok else None)
    document = {**local, "publish": published.as_dict() if published is not None else {"attempted": False}}
    problems: List[str] = []
    err = _write(root, status_path, _status_bytes(document))
    if err:
        problems.append(err)
    if config.report.metrics_file:
        err = _write(root, config.report.metrics_file,
                     metrics_text(results, now, totals, published, boot).encode())
        if err:
            problems.append(err)
    for problem in problems:
        log.error("report file not written", error=problem)
    return ReportOutcome(document, published, tuple(problems))


def summary_line(outcome: ReportOutcome) -> str:
    """One line for the terminal about where the report went."""
    parts = []
    p = outcome.published
    if p is not None and p.ok:
        parts.append(f"published: node {p.node} ({p.node_source})" + ("" if p.wrote else ", unchanged: nothing sent"))
    elif p is not None:
        parts.append(f"not published: {p.error}")
    parts.extend(f"not written: {problem}" for problem in outcome.problems)
    return "\n".join(parts) + "\n" if parts else ""
