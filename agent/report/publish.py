"""Publishing a report to the cluster: the cluster sinks of ``agent/report/sinks/`` in their order,
sharing one ``ClusterSession`` (``agent/report/sink.py``): this node's Node object brought up to date,
writing only what changed (``sinks/node.py``, ``agent/report/published.py``), then the Events of the
report (``sinks/events.py``, ``agent/report/events.py``).

Publishing failures are returned, never raised (``PublishResult``): ``run`` has already changed the
node, and a report cannot undo that. ``agent/report/report.py`` calls ``publish`` from ``finish``.
"""

from __future__ import annotations

import socket
import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

from agent.base.log import get_logger
from agent.base.noderoot import NodeRoot
from agent.config.settings import AgentConfig
from agent.pipeline.health import CheckResult
from agent.report.sink import ClusterSession, Delivery

log = get_logger("report")


class PublishResult(NamedTuple):
    ok: bool
    node: Optional[str] = None
    node_source: Optional[str] = None
    annotations: bool = False  # the Node holds this report's annotations (written now or already)
    condition: Optional[bool] = None  # the same for the condition; None: no condition configured
    error: Optional[str] = None
    read: bool = False  # the Node was read (no memory of the last publish)
    wrote: Tuple[str, ...] = ()  # what was written this time: "annotations", "condition"
    events: Optional[Dict[str, Any]] = None  # events.Sent.as_dict()

    def as_dict(self) -> Dict[str, Any]:
        return {
            "attempted": True,
            "ok": self.ok,
            "node": self.node,
            "node_source": self.node_source,
            "annotations": self.annotations,
            "condition": self.condition,
            "error": self.error,
            "read": self.read,
            "wrote": list(self.wrote),
            "events": self.events,
        }


def publish(
    root: NodeRoot,
    config: AgentConfig,
    results: Sequence[CheckResult],
    document: Mapping[str, Any],
    *,
    now: Optional[datetime] = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    client_factory: Optional[Callable[..., Any]] = None,
    imds: Optional[Callable[[], Any]] = None,
    hostname: Callable[[], str] = socket.gethostname,
    events: Sequence[Any] = (),
    keep_actions: bool = False,
    node: Optional[Mapping[str, Any]] = None,
) -> PublishResult:
    """Send the report through the cluster sinks of ``agent/report/sinks/`` (the Node, then its
    Events), in one session: one node name, one client, one deadline. Never raises an AgentError.

    ``events``: ``events.EventSpec`` of what a ``run`` did; check transitions are added by the
    Events sink. ``keep_actions``: a ``check --report`` keeps the actions the last ``run`` published.
    ``node``: the Node, if a check of this report has just read it (then no GET is needed, and what
    someone removed is seen at once)."""
    from agent.report import sinks

    now = now or datetime.now(timezone.utc)
    fields: Dict[str, Any] = {}
    error: Optional[str] = None
    with ClusterSession(root, config, clock=clock, sleep=sleep, client_factory=client_factory, imds=imds,
                        hostname=hostname) as session:
        delivery = Delivery(root, config, results, document, now, events, node, keep_actions, session)
        for sink in sinks.SINKS:
            if not sink.cluster:
                continue
            outcome = sink.send(delivery)
            fields.update(outcome.record or {})
            if outcome.problem is not None:  # the later cluster sinks build on this one
                error = outcome.problem
                break
    name = session.resolved
    result = PublishResult(error is None, name.name if name else None, name.source if name else None,
                           error=error, **fields)
    if result.ok and result.wrote:
        log.info("report published", node=result.node, health=document["health"], wrote=list(result.wrote))
    elif result.ok:
        log.info("report unchanged, nothing written", node=result.node, health=document["health"])
    return result
