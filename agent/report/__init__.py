"""Reporting: the report document (``document``), what the Node is given (``node_content``,
``reasons``), the status file's readers (``status``), the metrics (``metrics``), Events (``events``),
the boot timeline (``timeline``), the fleet view (``fleet``), and ``report.finish``, which sends a
report through the sinks.

The sinks: one small interface (``sink.py``: a ``Sink`` has a ``name``, a ``cluster`` flag and
``send(Delivery) -> SinkOutcome``; the cluster sinks share one ``ClusterSession``: node name, client,
deadline), one module per sink under ``sinks/`` (the Node's annotations and condition, the Events,
the status file, the metrics file), listed once in ``sinks/__init__.py``'s ``SINKS``. A new sink (say
CloudWatch) is one module and one entry there.
"""
