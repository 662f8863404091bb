"""Reporting: check results -> the Node's annotations and condition, the status file, the metrics file.

What the cluster sees (README "What the cluster sees", docs/reporting.md):
* annotations ``<prefix>/health`` (``healthy|degraded|unhealthy``) and ``<prefix>/report`` (compact
  JSON, at most 4 KiB: messages are shortened, the structure never), set with a JSON merge patch;
* the condition (``report.condition``, default ``GPUNodeAgentReady``): ``True`` when healthy or
  degraded, ``False`` when unhealthy, set with a *strategic* merge patch on ``nodes/{name}/status``
  so kubelet's own conditions stay; ``lastTransitionTime`` is kept while the status is unchanged;
* only what changed is written (``agent/report/published.py``): an unchanged heartbeat sends nothing, and
  ``lastHeartbeatTime`` is refreshed every ``report.heartbeat_minutes``;
* Events of the run's actions and of check transitions (``agent/report/events.py``).

On the node: the status file (the report with details, and how publishing went) and, when
configured, a Prometheus textfile, both written atomically. Publishing (``agent/report/publish.py``)
failures are reported, never raised: ``run`` has already changed the node, and a report cannot undo
that.

``finish`` builds the report and sends it through the sinks listed in ``agent/report/sinks/``
(``SINKS``; the interface: ``agent/report/sink.py``): the cluster sinks when publishing is asked
for, then the others with how publishing went.

The node name: ``agent/kube/node.py``.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from agent.base.log import get_logger
from agent.base.noderoot import NodeRoot
from agent.config.settings import AgentConfig
from agent.pipeline.health import CheckResult
from agent.report import sinks
from agent.report.document import report_document
from agent.report.publish import PublishResult, publish
from agent.report.sink import Delivery
from agent.report.sinks import status_file

log = get_logger("report")


# --- local state ---------------------------------------------------------------------------------


class ReportOutcome(NamedTuple):
    document: Dict[str, Any]  # what the status file holds
    published: Optional[PublishResult]  # None: publishing not asked for
    problems: Tuple[str, ...] = ()  # the sinks after publishing that could not send (files not written)

    @property
    def ok(self) -> bool:
        return not self.problems and (self.published is None or self.published.ok)


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
    pass_name: Optional[str] = None,
    started: Optional[float] = None,
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
    from agent.report import status, timeline  # the boot passes' records and the timeline outlive every report

    carried = status.carried(root.path(status_path))
    totals = status.restarts_of(carried)  # as the file holds them now; the final write adds under its lock
    for unit, count in (restarts or {}).items():
        totals[unit] = totals.get(unit, 0) + int(count)
    boot = timeline.update(status.boot_id(root), config, results, document["health"], actions or (),
                           carried.get("timeline"), totals, node=node, early=early)
    if boot.get("time_to_gpu_ready_seconds") is not None:
        document["gpu_ready_seconds"] = boot["time_to_gpu_ready_seconds"]
    local = {**document, "timeline": boot}
    if pass_name is not None:  # how long the pass making this report took so far (the metrics)
        took = time.monotonic() - started if started is not None else 0.0
        local["pass"] = {"name": pass_name, "duration_seconds": round(took, 3)}
    published = None
    if publish_report:  # the cluster sinks
        # The node's own view first: publishing may take up to report.timeout_seconds. Its restart
        # counts are added by the final write only.
        status_file.write(root, status_path, {**local, "publish": {"attempted": True, "ok": None}})
        ready = timeline.announcement(boot, config.report.gpu_ready_budget_seconds)
        published = (publisher or publish)(root, config, results, document, now=now,
                                           events=[ready, *events] if ready else events,
                                           keep_actions=actions is None, node=node)
        timeline.announced(boot, ready, published.events if published.ok else None)
    document = {**local, "publish": published.as_dict() if published is not None else {"attempted": False}}
    problems: List[str] = []
    delivery = Delivery(root, config, results, document, now, events, node, actions is None, restarts=restarts or {})
    for sink in sinks.SINKS:  # the others: the status file, the metrics file
        if not sink.cluster:
            outcome = sink.send(delivery)
            if outcome.problem:
                problems.append(outcome.problem)
            if outcome.record:  # the document as that sink wrote it (the status file's)
                delivery = delivery._replace(document=outcome.record)
    document = dict(delivery.document)
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
