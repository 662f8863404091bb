"""Kubernetes Events on the Node: transitions only, deduplicated, bounded, never failing the report."""

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

from agent.base.noderoot import NodeRoot
from agent.config.settings import AgentConfig, ReportSettings
from agent.pipeline.health import FAIL, PASS, SKIP, WARN, CheckResult
from agent.report import events, report
from tests.support.kube_helpers import NODE, NODE_USER, FakeTime, write_kubeconfig, write_node_file
from tests.support.kube_server import ApiServer
from tests.support.report_helpers import results
from tests.support.restarts import CONTAINERD, ScriptedSystemd, failed, plan_for, run

T0 = datetime(2026, 5, 12, 10, 0, 0, tzinfo=timezone.utc)
EVENTS = "/api/v1/namespaces/default/events"


@pytest.fixture
def root(tmp_path: Path, api: ApiServer) -> Path:
    api.add_token("node-token", NODE_USER)
    return write_kubeconfig(tmp_path / "node", api, {"token": "node-token"})


def publish(root: Path, rs: Sequence[CheckResult], at: datetime, extra: Sequence[events.EventSpec] = ()
            ) -> report.PublishResult:
    t = FakeTime()
    cfg = AgentConfig(report=ReportSettings(node_name=NODE))
    return report.publish(NodeRoot(str(root)), cfg, rs, report.report_document(rs, now=at), now=at,
                          clock=t.clock, sleep=t.sleep, events=extra)


def by_reason(api: ApiServer) -> Dict[str, Dict[str, Any]]:
    return {e["reason"]: e for e in api.events.values()}


def event_calls(api: ApiServer) -> List[Tuple[str, int]]:
    return [(r.method, r.status) for r in api.requests if "/events" in r.path]


# --- check transitions ---------------------------------------------------------------------------


def test_a_check_failing_is_a_warning_event_on_the_node(root: Path, api: ApiServer) -> None:
    assert publish(root, results(), T0).events == events.Sent().as_dict()  # a healthy start: no news
    assert event_calls(api) == []
    out = publish(root, results(nvidia_driver=(FAIL, "nvidia-smi exited 9")), T0 + timedelta(minutes=5))
    assert out.ok and out.events == {"created": 1, "repeated": 0, "dropped": 0, "error": None}
    ((_, name), event), = api.events.items()
    node_meta = api.nodes[NODE]["metadata"]
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node_meta["uid"]}
    assert event["source"] == {"component": "gpu-node-agent", "host": NODE}
    assert event["type"] == "Warning" and event["reason"] == "NVIDIADriverFailed"
    assert event["message"] == "nvidia-driver: fail: nvidia-smi exited 9"
    assert event["count"] == 1 and event["firstTimestamp"] == event["lastTimestamp"] == "2026-05-12T10:05:00Z"
    assert name.startswith(NODE + ".") and event["metadata"]["namespace"] == "default"
    # The same status again is no transition.
    publish(root, results(nvidia_driver=(FAIL, "nvidia-smi exited 9")), T0 + timedelta(minutes=10))
    assert len(api.events) == 1 and len(event_calls(api)) == 1


def test_recovery_then_the_same_failure_again_counts_up(root: Path, api: ApiServer) -> None:
    # A GPU check that names the reason of its failure in its details.
    broken = [*results(), CheckResult("gpu-errors", FAIL, "XID 79 on GPU 3 (00000000:53:00.0): fallen off the bus",
                                      {"event_reason": "GPUFellOffBus"})]
    fine = [*results(), CheckResult("gpu-errors", PASS, "no XID since boot")]
    publish(root, fine, T0)
    publish(root, broken, T0 + timedelta(minutes=5))
    publish(root, fine, T0 + timedelta(minutes=10))
    publish(root, broken, T0 + timedelta(minutes=15))
    reasons = by_reason(api)
    assert set(reasons) == {"GPUFellOffBus", "GPUErrorsRecovered"}
    fell = reasons["GPUFellOffBus"]
    assert fell["type"] == "Warning" and fell["count"] == 2  # deduplicated: one Event, counted
    assert fell["firstTimestamp"] == "2026-05-12T10:05:00Z" and fell["lastTimestamp"] == "2026-05-12T10:15:00Z"
    assert reasons["GPUErrorsRecovered"]["type"] == "Normal"
    patch = next(r for r in api.requests if r.method == "PATCH" and "/events/" in r.path)
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert patch.body == {"count": 2, "lastTimestamp": "2026-05-12T10:15:00Z"}


def test_another_reason_while_failing_is_a_new_event(root: Path, api: ApiServer) -> None:
    def gpu(reason: str, message: str) -> List[CheckResult]:
        return [*(r for r in results() if r.name != "gpu-errors"),
                CheckResult("gpu-errors", FAIL, message, {"event_reason": reason})]

    publish(root, gpu("GPUFellOffBus", "XID 79"), T0)
    publish(root, gpu("GPUFellOffBus", "XID 79 twice"), T0 + timedelta(minutes=5))  # same reason: no news
    publish(root, gpu("GPUUncorrectableECC", "XID 48"), T0 + timedelta(minutes=10))
    assert sorted(by_reason(api)) == ["GPUFellOffBus", "GPUUncorrectableECC"]


def test_first_report_after_boot_tells_only_of_problems(root: Path, api: ApiServer) -> None:
    publish(root, results(efa=(WARN, "no fi_info"), compatibility=(SKIP, "no versions")), T0)
    assert sorted(by_reason(api)) == ["EFAWarning"]
    assert by_reason(api)["EFAWarning"]["message"] == "efa: warn: no fi_info"


def test_an_expired_event_is_created_anew(root: Path, api: ApiServer) -> None:
    publish(root, results(efa=(FAIL, "x")), T0)
    publish(root, results(), T0 + timedelta(minutes=5))
    api.events.clear()  # the API server's event TTL passed
    publish(root, results(efa=(FAIL, "x")), T0 + timedelta(minutes=10))
    assert ("PATCH", 404) in event_calls(api)
    assert by_reason(api)["EFAFailed"]["count"] == 1


def test_a_repeat_after_the_event_ttl_is_a_new_event(root: Path, api: ApiServer) -> None:
    publish(root, results(efa=(FAIL, "x")), T0)
    publish(root, results(), T0 + timedelta(minutes=5))
    publish(root, results(efa=(FAIL, "x")), T0 + timedelta(hours=2))
    assert [m for m, _ in event_calls(api)] == ["POST", "POST", "POST"]


def test_events_are_bounded_per_report(root: Path, api: ApiServer) -> None:
    many = [CheckResult(f"gpu-{i}", FAIL, f"GPU {i} is gone") for i in range(30)]
    out = publish(root, results() + many, T0)
    assert out.ok and out.events is not None
    assert out.events["created"] == events.MAX_PER_RUN == len(api.events)
    assert out.events["dropped"] == 30 - events.MAX_PER_RUN


@pytest.mark.parametrize("status", [403, 500])
def test_an_event_failing_never_fails_the_report(root: Path, api: ApiServer, status: int) -> None:
    api.fail_next("POST", EVENTS, status, times=100)
    out = publish(root, results(efa=(FAIL, "x"), nvidia_driver=(FAIL, "y")), T0)
    assert out.ok and out.annotations and out.condition
    assert out.events is not None and out.events["created"] == 0 and out.events["dropped"] == 2
    assert f"{status}" in (out.events["error"] or "")
    assert api.nodes[NODE]["metadata"]["annotations"]["gpu-node-agent/health"] == "unhealthy"


def test_events_remembered_in_run(root: Path, api: ApiServer) -> None:
    publish(root, results(efa=(FAIL, "x")), T0)
    memory = json.loads((root / "run/gpu-node-agent/events.json").read_text())
    assert memory["checks"]["efa"] == ["fail", "EFAFailed"]
    assert len(memory["sent"]) == 1


# --- the run's actions -----------------------------------------------------------------------------


def test_a_runs_actions_are_events(root: Path, api: ApiServer, tmp_path: Path) -> None:
    from agent.base.fs import FileEdit
    from agent.pipeline.apply import ApplyResult

    config = root / "etc/containerd/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("old\n")
    edit = FileEdit(config, "old\n", "new\n", ("SystemdCgroup = true (was not set)",), "containerd")
    applied = run(plan_for(edit), ScriptedSystemd())
    applied.actions.append("EFA userspace 1.48.0 installed (libfabric 2.1.0amzn3.0)")  # efa.execute's line
    specs = events.from_apply(NodeRoot(str(root)), applied)
    assert [(s.type, s.reason) for s in specs] == [
        ("Normal", "FileRepaired"), ("Normal", "UnitRestarted"), ("Normal", "UnitRestarted"),
        ("Normal", "EFAInstalled")]
    assert specs[0].message == "/etc/containerd/config.toml: SystemdCgroup = true (was not set)"
    assert specs[1].message == "containerd.service: this run changes its configuration"
    rolled = run(plan_for(FileEdit(config, "new\n", "newer\n", ("x",), "containerd")),
                 ScriptedSystemd(containerd_service=[failed(CONTAINERD)]))
    assert [s.reason for s in events.from_apply(NodeRoot(str(root)), rolled)] == [
        "ConfigRolledBack", "UnitRestarted", "UnitRestarted"]
    assert events.from_apply(NodeRoot(str(root)), ApplyResult()) == []

    out = publish(root, results(), T0, specs)
    assert out.ok and sorted(by_reason(api)) == ["EFAInstalled", "FileRepaired", "UnitRestarted"]
    assert len(api.events) == 4  # kubelet and containerd restarted: two messages, two Events
    assert out.events == {"created": 4, "repeated": 0, "dropped": 0, "error": None}


# --- the function other checks use -------------------------------------------------------------------


@pytest.mark.parametrize("name, previous, status, details, expected", [
    ("nvidia-driver", PASS, FAIL, {}, ("Warning", "NVIDIADriverFailed")),
    ("gpu-errors", None, FAIL, {"event_reason": "GPUFellOffBus"}, ("Warning", "GPUFellOffBus")),
    ("gpu-errors", FAIL, PASS, {}, ("Normal", "GPUErrorsRecovered")),
    ("containerd-config", SKIP, PASS, {}, ("Normal", "ContainerdConfigPassed")),
    ("efa", PASS, SKIP, {}, ("Normal", "EFASkipped")),
    ("gpu-inventory", PASS, WARN, {"event_reason": "not CamelCase"}, ("Warning", "GPUInventoryWarning")),
    ("efa", None, PASS, {}, None),
    ("efa", FAIL, FAIL, {}, None),
])
def test_check_transition(name: str, previous: Optional[str], status: str, details: Dict[str, Any],
                          expected: Optional[Tuple[str, str]]) -> None:
    spec = events.check_transition(CheckResult(name, status, "m", details), previous)
    assert (spec and (spec.type, spec.reason)) == expected


def test_check_transition_with_a_given_reason() -> None:
    spec = events.check_transition(CheckResult("gpu-errors", FAIL, "XID 48"), FAIL, reason="GPUUncorrectableECC")
    assert spec == events.EventSpec("Warning", "GPUUncorrectableECC", "gpu-errors: fail: XID 48")


@pytest.mark.parametrize("text", ["{not json", '{"checks": {"efa": "x"}}', '{"checks": {}, "sent": {"k": {"name": 1}}}',
                                  '{"checks": {}, "sent": {"k": {"name": "n", "count": "2", "last": "soon"}}}'])
def test_a_damaged_memory_starts_over(root: Path, api: ApiServer, text: str) -> None:
    write_node_file(root, "/run/gpu-node-agent/events.json", text)
    out = publish(root, results(efa=(FAIL, "x")), T0)
    assert out.ok and out.events == {"created": 1, "repeated": 0, "dropped": 0, "error": None}
