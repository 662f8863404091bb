"""The status file sink (``report.status_file``): the report with details, the restart totals, the
boot timeline, the pass, and how publishing went; JSON, written atomically, mode 0644. ``finish``
also writes it before publishing (``write``), so the node's own view is there first."""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional

from agent.base.noderoot import NodeRoot
from agent.report.sink import Delivery, SinkOutcome, write_node_file


def _status_bytes(document: Mapping[str, Any]) -> bytes:
    order = ("v", "agent", "time", "health", "gpu_ready_seconds", "checks", "actions", "publish", "restarts_total",
             "pass", "timeline", "passes")
    ordered_doc = {k: document[k] for k in order if k in document}
    return (json.dumps(ordered_doc, indent=2) + "\n").encode()


def write(root: NodeRoot, node_path: str, document: Mapping[str, Any]) -> Optional[str]:
    """The status file at ``node_path`` holding ``document``; the problem, or None."""
    return write_node_file(root, node_path, _status_bytes(document))


class StatusFileSink:
    name = "status-file"
    cluster = False

    def send(self, delivery: Delivery) -> SinkOutcome:
        return SinkOutcome(write(delivery.root, delivery.config.report.status_file, delivery.document))


SINK = StatusFileSink()
