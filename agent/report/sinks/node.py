"""The Node sink: this node's Node object brought up to date with the report (annotations
``<prefix>/health`` and ``<prefix>/report``, the condition), writing only what changed
(``agent/report/published.py``). The first cluster sink: the others need the Node it wrote.

A failure is logged and returned (its ``problem``), never raised: ``run`` has already changed the
node, and a report cannot undo that. After one, the memory of what was published is forgotten.
"""

from __future__ import annotations

from agent.base.errors import AgentError
from agent.base.log import get_logger
from agent.report.sink import Delivery, SinkOutcome

log = get_logger("report")


class NodeSink:
    name = "node"
    cluster = True

    def send(self, delivery: Delivery) -> SinkOutcome:
        from agent.report import published

        root, settings, session = delivery.root, delivery.config.report, delivery.cluster
        assert session is not None
        sync = published.NodeSync(settings, delivery.results, delivery.document, delivery.now, delivery.keep_actions)
        try:
            name = session.node_name()
            kubeconfig = session.kubeconfig()
            memory = published.load(root, name.name, kubeconfig.cluster.server)
            client = session.client()
            after = sync.run(client, session.deadline, name.name, kubeconfig.cluster.server, memory, delivery.node)
            if after != memory:
                published.save(root, after)
            session.node_uid = after.uid
            return SinkOutcome(record={"annotations": True, "condition": True if settings.condition else None,
                                       "read": sync.read, "wrote": tuple(sync.wrote)})
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
        return SinkOutcome(error, {"annotations": annotated, "condition": condition, "read": sync.read,
                                   "wrote": tuple(sync.wrote)})


SINK = NodeSink()
