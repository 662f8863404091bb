"""The report sinks behind one interface (agent/report/sink.py), listed once (agent/report/sinks/).

A sink added the way the README says (one module with a ``SINK``, one entry in ``SINKS``) receives
every report with no other edit: a cluster sink through the session the Node and Events sinks
share (one node name, one client, one credential), after them; any other sink after publishing,
with how it went. A sink's problem is the report's: publishing not ok, or a report not written.
"""

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, List, Optional

import pytest

from agent.base.noderoot import NodeRoot
from agent.config.settings import AgentConfig, ReportSettings
from agent.daemons import kubelet
from agent.pipeline.health import PASS, WARN, CheckResult
from agent.pipeline.resources import CHECK_NAMES
from agent.report import report, sinks
from agent.report.sink import Delivery, SinkOutcome, write_node_file
from tests.support.kube_helpers import NODE, FakeAws, FakeTime, accept_fake_aws_tokens, write_kubeconfig
from tests.support.kube_helpers import write_node_file as put_node_file
from tests.support.kube_server import ApiServer

NOW = datetime(2026, 5, 12, 10, 0, 0, tzinfo=timezone.utc)
ARCHIVE = "/var/log/gpu-node-agent/reports.jsonl"


class Archive:
    """A sink as a new destination would add it: every report appended to a JSON-lines file."""

    name = "archive"
    cluster = False

    def __init__(self) -> None:
        self.deliveries: List[Delivery] = []

    def send(self, delivery: Delivery) -> SinkOutcome:
        self.deliveries.append(delivery)
        path = delivery.root.path(ARCHIVE)
        before = path.read_bytes() if path.exists() else b""
        line = json.dumps({"health": delivery.document["health"], "publish": delivery.document["publish"]})
        return SinkOutcome(write_node_file(delivery.root, ARCHIVE, before + line.encode() + b"\n"))


class NodeReader:
    """A cluster sink: reads the Node back through the shared session (the name and client the Node
    sink used), as a sink of a custom resource about the node would."""

    name = "node-reader"
    cluster = True

    def __init__(self, problem: Optional[str] = None) -> None:
        self.problem = problem
        self.seen: List[Any] = []

    def send(self, delivery: Delivery) -> SinkOutcome:
        session = delivery.cluster
        assert session is not None
        there = session.client().get_node(session.node_name().name, session.deadline)
        self.seen.append((session.node_name().name, session.node_uid, there["metadata"]["annotations"]))
        return SinkOutcome(self.problem)


def results(**statuses: str) -> List[CheckResult]:
    return [CheckResult(n, statuses.get(n.replace("-", "_"), PASS), f"{n} ok") for n in CHECK_NAMES]


@pytest.fixture
def node_root(tmp_path: Path, api: ApiServer) -> Path:
    root = write_kubeconfig(tmp_path / "node", api)
    put_node_file(root, kubelet.KUBELET_ENVIRONMENT, f"NODEADM_KUBELET_ARGS=--hostname-override={NODE}\n")
    accept_fake_aws_tokens(api, 9)
    return root


def finish(root: Path, t: FakeTime, **report_settings: Any) -> report.ReportOutcome:
    config = AgentConfig(report=ReportSettings(**report_settings))

    def publisher(*args: Any, **kw: Any) -> report.PublishResult:
        return report.publish(*args, clock=t.clock, sleep=t.sleep, **kw)

    return report.finish(NodeRoot(str(root)), config, results(efa=WARN), ["did a thing"], publish_report=True,
                         now=NOW, publisher=publisher)


def test_the_sinks_in_their_order() -> None:
    assert [(s.name, s.cluster) for s in sinks.SINKS] == [
        ("node", True), ("events", True), ("status-file", False), ("metrics-file", False)]


def test_a_new_sink_is_one_module_and_one_entry(node_root: Path, api: ApiServer, aws: FakeAws,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    archive, reader = Archive(), NodeReader()
    monkeypatch.setattr(sinks, "SINKS", (*sinks.SINKS, archive, reader))
    out = finish(node_root, FakeTime())
    assert out.ok and out.published is not None and out.published.ok
    # the cluster sink: after the Node and its Event, with the same name, client and credential
    (name, uid, annotations), = reader.seen
    assert name == NODE and uid == api.nodes[NODE]["metadata"]["uid"]
    assert annotations["gpu-node-agent/health"] == "degraded"
    assert [(r.method, r.path) for r in api.requests] == [
        ("GET", f"/api/v1/nodes/{NODE}"),
        ("PATCH", f"/api/v1/nodes/{NODE}"),
        ("PATCH", f"/api/v1/nodes/{NODE}/status"),
        ("POST", "/api/v1/namespaces/default/events"),
        ("GET", f"/api/v1/nodes/{NODE}"),  # the new sink's read
    ]
    assert len(aws.calls()) == 1
    # the other sink: the report as the status file holds it, with how publishing went
    (delivery,) = archive.deliveries
    assert delivery.cluster is None and delivery.document == out.document
    assert delivery.document["publish"]["ok"] is True and delivery.document["actions"] == ["did a thing"]
    line = json.loads((node_root / ARCHIVE.lstrip("/")).read_text())
    assert line == {"health": "degraded", "publish": out.document["publish"]}
    status = json.loads((node_root / "run/gpu-node-agent/status.json").read_text())
    assert status["publish"] == out.document["publish"]


def test_a_cluster_sink_problem_is_a_failed_publish(node_root: Path, api: ApiServer, aws: FakeAws,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    archive, first, second = Archive(), NodeReader("node-reader: 409 Conflict"), NodeReader()
    monkeypatch.setattr(sinks, "SINKS", (*sinks.SINKS, first, second, archive))
    out = finish(node_root, FakeTime())
    assert out.published is not None and not out.published.ok and not out.ok
    assert out.published.error == "node-reader: 409 Conflict" and out.published.node == NODE
    assert len(first.seen) == 1 and second.seen == []  # the later cluster sinks build on the earlier ones
    assert archive.deliveries[0].document["publish"]["error"] == "node-reader: 409 Conflict"
    assert report.summary_line(out) == "not published: node-reader: 409 Conflict\n"


def test_a_sink_that_cannot_write_is_a_problem_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sinks, "SINKS", (*sinks.SINKS, Archive()))
    (tmp_path / "var").write_text("a file where a directory should be")
    out = report.finish(NodeRoot(str(tmp_path)), AgentConfig(), results(), publish_report=False, now=NOW)
    assert not out.ok and len(out.problems) == 1 and "var/log/gpu-node-agent/reports.jsonl" in out.problems[0]
    assert json.loads((tmp_path / "run/gpu-node-agent/status.json").read_text())["publish"] == {"attempted": False}
