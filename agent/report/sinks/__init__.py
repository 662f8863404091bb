"""The report sinks, listed once: where a report goes, in the order it goes there.

Each sink is one module here exposing ``SINK``, an object of ``agent/report/sink.py``'s ``Sink``
interface. A new sink is one module and one entry in ``SINKS``. The cluster sinks (``cluster =
True``) are sent first, in this order, and only when publishing is asked for; the others after them,
in this order, with how publishing went. Importing a sink module is cheap: each imports what it
needs when it sends.
"""

from __future__ import annotations

from typing import Tuple

from agent.report.sink import Sink
from agent.report.sinks.events import SINK as EVENTS
from agent.report.sinks.metrics_file import SINK as METRICS_FILE
from agent.report.sinks.node import SINK as NODE
from agent.report.sinks.status_file import SINK as STATUS_FILE

SINKS: Tuple[Sink, ...] = (
    NODE,  # the Node's annotations and condition (publishing; the Events need the Node it wrote)
    EVENTS,  # the Events of the report's actions and of the checks' transitions (publishing)
    STATUS_FILE,  # the status file, with how publishing went
    METRICS_FILE,  # the metrics file, when report.metrics_file is set
)
