"""Fleet-scale reporting: an unchanged heartbeat writes nothing, each change is written once, the
condition's heartbeat is slow, and what someone removed from the Node is put back."""

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

from agent.base.errors import ConfigError
from agent.base.noderoot import NodeRoot
from agent.config.load import parse_config
from agent.config.settings import AgentConfig, ReportSettings
from agent.pipeline.health import FAIL, PASS, WARN, CheckResult
from agent.report import published, report
from tests.support.kube_helpers import NODE, NODE_USER, FakeTime, write_kubeconfig
from tests.support.kube_server import ApiServer
from tests.support.report_helpers import results

T0 = datetime(2026, 5, 12, 10, 0, 0, tzinfo=timezone.utc)
HEALTH, REPORT = "gpu-node-agent/health", "gpu-node-agent/report"


@pytest.fixture
def api(api: ApiServer) -> ApiServer:
    """The shared API server (tests/conftest.py), where an administrator (``kubectl``) may act too."""
    api.add_token("admin-token", "admin")
    return api


@pytest.fixture
def root(tmp_path: Path, api: ApiServer) -> Path:
    api.add_token("node-token", NODE_USER)
    return write_kubeconfig(tmp_path / "node", api, {"token": "node-token"})


class Node:
    """One simulated node's reports over time, and what each cost on the API server."""

    def __init__(self, root: Path, api: ApiServer, **settings: Any) -> None:
        self.root = root
        self.api = api
        self.config = AgentConfig(report=ReportSettings(node_name=NODE, **settings))
        self.t = FakeTime()

    def beat(self, rs: Sequence[CheckResult], at: datetime, actions: Optional[List[str]] = None
               ) -> List[Tuple[str, str]]:
        """One report (``actions`` given: a ``run``; else ``check --report``); the requests it made."""
        before = len(self.api.requests)
        outcome = report.finish(NodeRoot(str(self.root)), self.config, rs, actions, publish_report=True, now=at,
                                publisher=self._publish)
        assert outcome.ok, outcome.published
        return [(r.method, r.path) for r in self.api.requests[before:] if "/events" not in r.path]

    def _publish(self, *args: Any, **kw: Any) -> report.PublishResult:
        return report.publish(*args, clock=self.t.clock, sleep=self.t.sleep, **kw)

    def annotations(self) -> Dict[str, str]:
        return dict(self.api.nodes[NODE]["metadata"]["annotations"])

    def report_annotation(self) -> Dict[str, Any]:
        return dict(json.loads(self.annotations()[REPORT]))

    def condition(self) -> Optional[Dict[str, Any]]:
        return published.find_condition(self.api.nodes[NODE], "GPUNodeAgentReady")


GET = ("GET", f"/api/v1/nodes/{NODE}")
META = ("PATCH", f"/api/v1/nodes/{NODE}")
STATUS = ("PATCH", f"/api/v1/nodes/{NODE}/status")


@pytest.fixture
def kubectl(api: ApiServer, tmp_path: Path) -> Any:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(api.ca_pem())

    def call(method: str, path: str, body: Any, ctype: str = "application/merge-patch+json") -> None:
        import requests

        r = requests.request(method, api.url + path, data=json.dumps(body), verify=str(ca), timeout=5,
                             headers={"Authorization": "Bearer admin-token", "Content-Type": ctype})
        assert r.status_code == 200, r.text

    return call


# --- publish on change -----------------------------------------------------------------------------


def test_unchanged_heartbeats_send_no_request(root: Path, api: ApiServer) -> None:
    node = Node(root, api)
    assert node.beat(results(), T0, actions=[]) == [GET, META, STATUS]  # the boot run
    for minutes in (5, 11, 16, 22, 27):  # the timer: every 5 minutes plus up to 2
        assert node.beat(results(), T0 + timedelta(minutes=minutes)) == []
    assert node.report_annotation()["time"] == "2026-05-12T10:00:00Z"  # the last change, not the last check
    # The local status file still says when the last check ran.
    status = json.loads((root / "run/gpu-node-agent/status.json").read_text())
    assert status["time"] == "2026-05-12T10:27:00Z" and status["publish"]["wrote"] == []


def test_each_kind_of_change_is_written_once(root: Path, api: ApiServer) -> None:
    node = Node(root, api)
    at = iter(T0 + timedelta(minutes=5 * n) for n in range(100))
    node.beat(results(), next(at), actions=[])

    # health: both annotations and the condition change
    degraded = results(efa=(WARN, "EFA userspace 1.47.0 installed, 1.48.0 pinned"))
    assert node.beat(degraded, next(at)) == [META, STATUS]
    assert node.beat(degraded, next(at)) == []
    assert node.annotations()[HEALTH] == "degraded" and node.condition()["reason"] == "EFAWarning"  # type: ignore[index]

    # a message of a passing check: the annotation only (the condition's summary is the same)
    back = results()
    node.beat(back, next(at))
    reworded = results(compatibility=(PASS, "matches the row k8s 1.33 / containerd 2.1"))
    assert node.beat(reworded, next(at)) == [META]
    assert node.beat(reworded, next(at)) == []
    checks = {c["name"]: c["message"] for c in node.report_annotation()["checks"]}
    assert checks["compatibility"] == "matches the row k8s 1.33 / containerd 2.1"

    # the condition's message (the first warning check's message changed)
    node.beat(degraded, next(at))
    worse = results(efa=(WARN, "EFA userspace missing fi_info"))
    assert node.beat(worse, next(at)) == [META, STATUS]
    assert node.condition()["message"] == "efa: EFA userspace missing fi_info"  # type: ignore[index]

    # an action of a run; the heartbeats that follow keep it and write nothing
    when = next(at)
    assert node.beat(worse, when, actions=["restarted containerd.service: config changed"]) == [META]
    assert node.beat(worse, next(at)) == []
    assert node.report_annotation()["actions"] == ["restarted containerd.service: config changed"]
    assert node.report_annotation()["time"] == when.strftime("%Y-%m-%dT%H:%M:%SZ")
    # a run that did nothing says so
    assert node.beat(worse, next(at), actions=[]) == [META]
    assert node.report_annotation()["actions"] == []


def test_transition_time_is_kept_through_unwritten_heartbeats(root: Path, api: ApiServer) -> None:
    node = Node(root, api)
    node.beat(results(), T0, actions=[])
    node.beat(results(efa=(WARN, "w")), T0 + timedelta(minutes=5))  # True -> True
    node.beat(results(efa=(FAIL, "f")), T0 + timedelta(minutes=10))  # True -> False
    node.beat(results(efa=(FAIL, "f")), T0 + timedelta(minutes=15))  # unchanged: not written
    cond = node.condition()
    assert cond is not None and cond["status"] == "False"
    assert cond["lastTransitionTime"] == "2026-05-12T10:10:00Z" == cond["lastHeartbeatTime"]


# --- the slow heartbeat ----------------------------------------------------------------------------


def test_condition_heartbeat_every_heartbeat_minutes(root: Path, api: ApiServer) -> None:
    node = Node(root, api)  # the default: 30 minutes
    assert AgentConfig().report.heartbeat_minutes == 30
    node.beat(results(), T0, actions=[])
    writes = {m: node.beat(results(), T0 + timedelta(minutes=m)) for m in range(5, 95, 5)}
    refreshed = [m for m, calls in writes.items() if calls]
    assert refreshed == [30, 60, 90]
    assert all(writes[m] == [STATUS] for m in refreshed)  # the condition alone, no GET
    cond = node.condition()
    assert cond is not None
    assert cond["lastHeartbeatTime"] == "2026-05-12T11:30:00Z"
    assert cond["lastTransitionTime"] == "2026-05-12T10:00:00Z"


def test_a_change_resets_the_heartbeat(root: Path, api: ApiServer) -> None:
    node = Node(root, api, heartbeat_minutes=20)
    node.beat(results(), T0, actions=[])
    node.beat(results(efa=(WARN, "w")), T0 + timedelta(minutes=15))  # written: heartbeat at :15
    assert node.beat(results(efa=(WARN, "w")), T0 + timedelta(minutes=25)) == []
    assert node.beat(results(efa=(WARN, "w")), T0 + timedelta(minutes=35)) == [STATUS]


def test_heartbeat_minutes_zero_refreshes_every_time(root: Path, api: ApiServer) -> None:
    node = Node(root, api, heartbeat_minutes=0)
    node.beat(results(), T0, actions=[])
    assert node.beat(results(), T0 + timedelta(minutes=5)) == [STATUS]
    assert node.beat(results(), T0 + timedelta(minutes=10)) == [STATUS]


def test_a_clock_that_went_back_still_gets_a_heartbeat(root: Path, api: ApiServer) -> None:
    node = Node(root, api)
    node.beat(results(), T0, actions=[])
    assert node.beat(results(), T0 - timedelta(hours=3)) == [STATUS]


def test_without_a_condition_there_is_no_heartbeat(root: Path, api: ApiServer) -> None:
    node = Node(root, api, condition=None)
    assert node.beat(results(), T0, actions=[]) == [GET, META]
    assert node.beat(results(), T0 + timedelta(hours=5)) == []


# --- at most one GET; repairs ------------------------------------------------------------------------


def test_after_boot_one_get_and_nothing_written_when_the_node_agrees(root: Path, api: ApiServer) -> None:
    node = Node(root, api)
    node.beat(results(), T0, actions=["restarted containerd.service: config changed"])
    (root / "run/gpu-node-agent/published.json").unlink()  # /run is gone (the agent's memory)
    assert node.beat(results(), T0 + timedelta(minutes=5)) == [GET]
    assert node.report_annotation()["actions"] == ["restarted containerd.service: config changed"]
    assert node.beat(results(), T0 + timedelta(minutes=10)) == []


def test_a_failed_publish_is_followed_by_a_read(root: Path, api: ApiServer) -> None:
    node = Node(root, api)
    node.beat(results(), T0, actions=[])
    api.fail_next("PATCH", f"/api/v1/nodes/{NODE}", 403)
    out = report.publish(NodeRoot(str(root)), node.config, results(efa=(WARN, "w")),
                         report.report_document(results(efa=(WARN, "w")), now=T0), now=T0, clock=node.t.clock,
                         sleep=node.t.sleep)
    assert not out.ok
    assert node.beat(results(efa=(WARN, "w")), T0 + timedelta(minutes=5)) == [GET, META, STATUS]


def test_another_node_name_or_cluster_reads_the_node(root: Path, api: ApiServer) -> None:
    node = Node(root, api)
    node.beat(results(), T0, actions=[])
    memory = json.loads((root / "run/gpu-node-agent/published.json").read_text())
    memory["server"] = "https://other.example.com"
    (root / "run/gpu-node-agent/published.json").write_text(json.dumps(memory))
    assert node.beat(results(), T0 + timedelta(minutes=5)) == [GET]


def test_a_removed_annotation_is_repaired_at_the_next_heartbeat(root: Path, api: ApiServer, kubectl: Any) -> None:
    node = Node(root, api)
    node.beat(results(), T0, actions=[])
    kubectl("PATCH", f"/api/v1/nodes/{NODE}", {"metadata": {"annotations": {REPORT: None, HEALTH: None}}})
    assert node.beat(results(), T0 + timedelta(minutes=5)) == []  # not seen: nothing was sent
    assert node.beat(results(), T0 + timedelta(minutes=30)) == [STATUS, META]  # the heartbeat's answer
    assert node.annotations()[HEALTH] == "healthy"
    assert node.report_annotation()["time"] == "2026-05-12T10:00:00Z"  # the content is as old as ever
    assert node.beat(results(), T0 + timedelta(minutes=35)) == []


def test_a_removed_annotation_is_repaired_with_the_next_change(root: Path, api: ApiServer, kubectl: Any) -> None:
    node = Node(root, api)
    node.beat(results(), T0, actions=[])
    kubectl("PATCH", f"/api/v1/nodes/{NODE}", {"metadata": {"annotations": {HEALTH: None}}})
    assert node.beat(results(efa=(FAIL, "gone")), T0 + timedelta(minutes=5)) == [META, STATUS]
    assert node.annotations()[HEALTH] == "unhealthy"


def test_a_removed_condition_is_repaired_with_the_next_change(root: Path, api: ApiServer, kubectl: Any) -> None:
    node = Node(root, api)
    node.beat(results(), T0, actions=[])
    kubectl("PATCH", f"/api/v1/nodes/{NODE}/status",
            {"status": {"conditions": [{"type": "GPUNodeAgentReady", "$patch": "delete"}]}},
            "application/strategic-merge-patch+json")
    assert node.condition() is None
    # A message of a passing check changes: the annotation write's answer shows the condition gone.
    assert node.beat(results(efa=(PASS, "EFA 1.48.0")), T0 + timedelta(minutes=5)) == [META, STATUS]
    cond = node.condition()
    assert cond is not None and cond["status"] == "True"
    assert cond["lastTransitionTime"] == "2026-05-12T10:05:00Z"  # it is a new condition
    assert [c["type"] for c in api.nodes[NODE]["status"]["conditions"]][:4] == [
        "MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]


def test_a_removed_condition_is_repaired_at_the_next_heartbeat(root: Path, api: ApiServer, kubectl: Any) -> None:
    node = Node(root, api)
    node.beat(results(), T0, actions=[])
    kubectl("PATCH", f"/api/v1/nodes/{NODE}/status",
            {"status": {"conditions": [{"type": "GPUNodeAgentReady", "$patch": "delete"}]}},
            "application/strategic-merge-patch+json")
    assert node.beat(results(), T0 + timedelta(minutes=30)) == [STATUS]
    assert node.condition() is not None


def test_a_recreated_node_gets_everything_back(root: Path, api: ApiServer) -> None:
    node = Node(root, api)
    node.beat(results(), T0, actions=[])
    old_uid = api.nodes[NODE]["metadata"]["uid"]
    api.add_node(NODE)  # deleted and registered again: a new uid, none of the agent's state
    assert node.beat(results(efa=(WARN, "w")), T0 + timedelta(minutes=5)) == [META, STATUS]
    assert node.annotations()[HEALTH] == "degraded" and node.condition() is not None
    memory = json.loads((root / "run/gpu-node-agent/published.json").read_text())
    assert memory["uid"] == api.nodes[NODE]["metadata"]["uid"] != old_uid


# --- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value, problem", [
    ("-5", "c.yaml:3: report.heartbeat_minutes: must be 0 or more, got -5.0"),
    ("often", "c.yaml:3: report.heartbeat_minutes: expected a number of minutes, got a string 'often'"),
    ("true", "c.yaml:3: report.heartbeat_minutes: expected a number of minutes, got a boolean True"),
])
def test_heartbeat_minutes_validated(value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(f"report:\n  publish: true\n  heartbeat_minutes: {value}\n", "c.yaml")
    assert str(err.value) == problem


def test_heartbeat_minutes_zero_and_fractions_are_fine() -> None:
    assert parse_config("report:\n  heartbeat_minutes: 0\n", "c.yaml").report.heartbeat_minutes == 0
    assert parse_config("report:\n  heartbeat_minutes: 7.5\n", "c.yaml").report.heartbeat_minutes == 7.5


def test_a_node_a_check_already_read_is_not_read_again_and_shows_removals(
    root: Path, api: ApiServer, kubectl: Any
) -> None:
    node = Node(root, api)
    node.beat(results(), T0, actions=[])
    kubectl("PATCH", f"/api/v1/nodes/{NODE}", {"metadata": {"annotations": {HEALTH: None}}})
    (root / "run/gpu-node-agent/published.json").unlink()
    fresh = json.loads(json.dumps(api.nodes[NODE]))  # as a check that reads the Node (allocatable) got it
    before = len(api.requests)
    report.finish(NodeRoot(str(root)), node.config, results(), publish_report=True, now=T0 + timedelta(minutes=5),
                  publisher=node._publish, node=fresh)
    assert [(r.method, r.path) for r in api.requests[before:]] == [META]  # no GET, the removal repaired
    assert node.annotations()[HEALTH] == "healthy"
