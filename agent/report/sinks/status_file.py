"""The status file sink (``report.status_file``): the report with details, the restart totals, the
boot timeline, the pass, and how publishing went; JSON, written atomically, mode 0644. ``finish``
also writes it before publishing (``write``), so the node's own view is there first.

Every write goes through ``agent.report.status.update`` (its lock, the file as it is at that moment):
the pass records another pass wrote stay, and the restart totals are the file's plus this run's, so
a heartbeat overlapping a ``run`` loses neither."""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional, Tuple

from agent.base.noderoot import NodeRoot
from agent.report import status
from agent.report.sink import Delivery, SinkOutcome


def _status_bytes(document: Mapping[str, Any]) -> bytes:
    order = ("v", "agent", "time", "health", "gpu_ready_seconds", "checks", "actions", "publish", "restarts_total",
             "pass", "timeline", "passes")
    ordered_doc = {k: document[k] for k in order if k in document}
    return (json.dumps(ordered_doc, indent=2) + "\n").encode()


def write(root: NodeRoot, node_path: str, document: Mapping[str, Any],
          restarts: Mapping[str, int] = {}) -> Tuple[Optional[str], Dict[str, Any]]:
    """The status file at ``node_path`` holding ``document`` over what it holds now: its pass records,
    its restart totals plus ``restarts``. The problem (or None) and the document as written."""
    def change(current: Dict[str, Any]) -> Dict[str, Any]:
        totals = status.restarts_of(current)
        for unit, count in restarts.items():
            totals[unit] = totals.get(unit, 0) + int(count)
        passes = current.get("passes")
        return {**document, "restarts_total": totals, **({"passes": passes} if passes else {})}

    return status.update(root, node_path, change, lambda doc: _status_bytes(doc).decode())


class StatusFileSink:
    name = "status-file"
    cluster = False

    def send(self, delivery: Delivery) -> SinkOutcome:
        problem, written = write(delivery.root, delivery.config.report.status_file, delivery.document,
                                 delivery.restarts)
        return SinkOutcome(problem, written)


SINK = StatusFileSink()
