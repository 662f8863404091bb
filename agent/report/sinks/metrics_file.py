"""The metrics file sink (``report.metrics_file``, when set): the report as a Prometheus textfile
for node_exporter (``agent/report/metrics.py``, docs/metrics.md), written atomically."""

from __future__ import annotations

from agent.report.sink import Delivery, SinkOutcome, write_node_file


class MetricsFileSink:
    name = "metrics-file"
    cluster = False

    def send(self, delivery: Delivery) -> SinkOutcome:
        path = delivery.config.report.metrics_file
        if not path:
            return SinkOutcome()
        from agent.report import metrics

        return SinkOutcome(write_node_file(delivery.root, path, metrics.render(delivery.document).encode(),
                                           "report.metrics_file"))


SINK = MetricsFileSink()
