"""The Events sink: this report's Events on the Node (``agent/report/events.py``): a run's actions
(the GPUReady Event first, ``agent/report/timeline.py``) and the checks' transitions. Sent after the
Node sink wrote the Node (they refer to its uid), within ``EVENTS_SECONDS`` of the publishing deadline.

A failure here is logged and counted in the record (``events.error``), never the report's failure.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Dict, Optional, Sequence

from agent.base.log import get_logger
from agent.base.noderoot import NodeRoot
from agent.pipeline.health import CheckResult
from agent.report.sink import Delivery, SinkOutcome

log = get_logger("report")

EVENTS_SECONDS = 10.0  # at most this much of the publishing deadline goes to Events


class EventsSink:
    name = "events"
    cluster = True

    def send(self, delivery: Delivery) -> SinkOutcome:
        from agent.base.retry import Deadline

        session = delivery.cluster
        assert session is not None
        deadline = Deadline(min(EVENTS_SECONDS, session.deadline.remaining()), session.clock)
        sent = _send_events(delivery.root, session.client(), deadline, delivery.results, delivery.events,
                            session.node_name().name, session.node_uid, delivery.now)
        return SinkOutcome(record={"events": sent})


def _send_events(root: NodeRoot, client: Any, deadline: Any, results: Sequence[CheckResult],
                 extra: Sequence[Any], node: str, uid: Optional[str], now: datetime) -> Dict[str, Any]:
    """This report's Events; a failure here is logged and counted, never the report's failure."""
    from agent.report import events

    try:
        memory = events.load(root)
        specs = list(extra) + events.check_transitions(memory.checks, results)
        sent = events.send(client, deadline, memory, specs, node=node, uid=uid, now=now) if specs \
            else events.Sent()
        statuses = events.remembered_statuses(results)
        if specs or statuses != memory.checks:
            memory.checks = statuses
            events.save(root, memory)
        return sent.as_dict()
    except Exception as exc:  # never the run's failure
        from agent.kube.tokens import redact

        error = redact(f"internal error: {type(exc).__name__}: {exc}")
        log.error("events crashed", error=error)
        return events.Sent(error=error).as_dict()


SINK = EventsSink()
