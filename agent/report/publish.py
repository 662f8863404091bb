"""Publishing a report to the cluster: this node's Node object brought up to date, writing only
what changed (``agent/report/published.py``), then the Events of the report (``agent/report/events.py``).

Publishing failures are returned, never raised (``PublishResult``): ``run`` has already changed the
node, and a report cannot undo that. ``agent/report/report.py`` calls ``publish`` from ``finish`` and
resolves the node name; what the Node is given (annotations, condition) is built there too.
"""

from __future__ import annotations

import socket
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

from agent.base.errors import AgentError
from agent.base.log import get_logger
from agent.base.noderoot import NodeRoot
from agent.config.settings import AgentConfig
from agent.pipeline.health import CheckResult

if TYPE_CHECKING:
    from agent.kube.node import NodeName

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


EVENTS_SECONDS = 10.0  # at most this much of the publishing deadline goes to Events


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
    """Bring this node's Node object up to date with the report, writing only what changed (see
    ``agent/report/published.py``), then send the Events of this report. Never raises an AgentError.

    ``events``: ``events.EventSpec`` of what a ``run`` did; check transitions are added here.
    ``keep_actions``: a ``check --report`` keeps the actions the last ``run`` published.
    ``node``: the Node, if a check of this report has just read it (then no GET is needed, and what
    someone removed is seen at once)."""
    from agent.base.retry import Deadline
    from agent.kube.client import KubeClient
    from agent.kube.kubeconfig import load_kubeconfig
    from agent.kube.node import resolve_node_name  # report.py imports this module: not at its top
    from agent.report import published

    settings = config.report
    deadline = Deadline(settings.timeout_seconds, clock)
    now = now or datetime.now(timezone.utc)
    name: Optional[NodeName] = None
    sync = published.NodeSync(settings, results, document, now, keep_actions)
    try:
        name = resolve_node_name(root, config, imds=imds, hostname=hostname)
        kubeconfig = load_kubeconfig(root, settings.kubeconfig)
        memory = published.load(root, name.name, kubeconfig.cluster.server)
        factory = client_factory or KubeClient
        with factory(kubeconfig, clock=clock, sleep=sleep) as client:
            after = sync.run(client, deadline, name.name, kubeconfig.cluster.server, memory, node)
            if after != memory:
                published.save(root, after)
            sent = _send_events(root, client, Deadline(min(EVENTS_SECONDS, deadline.remaining()), clock),
                                results, events, name.name, after.uid, now)
        if sync.wrote:
            log.info("report published", node=name.name, health=document["health"], wrote=sync.wrote)
        else:
            log.info("report unchanged, nothing written", node=name.name, health=document["health"])
        return PublishResult(True, name.name, name.source, True, True if settings.condition else None,
                             None, sync.read, tuple(sync.wrote), sent)
    except AgentError as exc:
        error = str(exc)
    except Exception as exc:  # a bug must not cost the status file; the message says where it came from
        from agent.kube.tokens import redact  # a request error can quote its headers

        error = redact(f"internal error while publishing: {type(exc).__name__}: {exc}")
        log.error("publishing crashed", error=error)
    log.error("report not published", error=error)
    published.forget(root)  # the Node's state is unknown now: the next publish reads it
    annotated = "annotations" in sync.wrote
    condition = None if settings.condition is None else "condition" in sync.wrote
    return PublishResult(False, name.name if name else None, name.source if name else None, annotated,
                         condition, error, sync.read, tuple(sync.wrote))


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
