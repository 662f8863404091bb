"""Reporting: the 4 KiB annotation, the condition, the node name, publishing, the status and metrics files."""

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.aws.imds import ImdsClient
from agent.base.noderoot import NodeRoot
from agent.config.settings import AgentConfig, ImdsSettings, ReportSettings
from agent.daemons import kubelet
from agent.kube import node as kube_node
from agent.pipeline.health import FAIL, PASS, SKIP, WARN, CheckResult
from agent.pipeline.resources import CHECK_NAMES
from agent.report import node_content, report
from agent.report.document import report_document
from tests.support.imds_server import ImdsServer
from tests.support.kube_helpers import (
    NODE,
    FakeAws,
    FakeTime,
    accept_fake_aws_tokens,
    write_kubeconfig,
    write_node_file,
)
from tests.support.kube_server import ApiServer

NOW = datetime(2026, 5, 12, 10, 0, 0, tzinfo=timezone.utc)


def results(**statuses: str) -> List[CheckResult]:
    """Every contract check passing, except those given (name with _ for -)."""
    out = []
    for name in CHECK_NAMES:
        status = statuses.get(name.replace("-", "_"), PASS)
        out.append(CheckResult(name, status, f"{name} is {status}", {"detail": name}))
    return out


# --- the annotation ------------------------------------------------------------------------------


def test_small_report_is_complete_and_compact() -> None:
    doc = report_document(results(), ["/etc/containerd/config.toml: SystemdCgroup = true"], now=NOW)
    text = node_content.compact_report(doc)
    parsed = json.loads(text)
    assert text == json.dumps(parsed, separators=(",", ":"), ensure_ascii=False)  # compact
    assert list(parsed) == ["v", "agent", "time", "health", "checks", "actions"]
    assert parsed["v"] == 1 and parsed["time"] == "2026-05-12T10:00:00Z" and parsed["health"] == "healthy"
    assert json.loads(node_content.compact_report(doc, since="2026-05-12T09:00:00Z"))["time"] == "2026-05-12T09:00:00Z"
    assert parsed["checks"][0] == {
        "name": "containerd-config",
        "status": "pass",
        "message": "containerd-config is pass",
    }
    assert "details" not in parsed["checks"][0]


def test_long_messages_are_cut_never_the_structure() -> None:
    rs = results(efa=FAIL)
    rs[5] = CheckResult("efa", FAIL, "é" * 3000)  # multi-byte: the bound is in bytes
    rs[0] = CheckResult("containerd-config", WARN, "x" * 2500)
    doc = report_document(rs, ["a" * 900, "short action"], now=NOW)
    text = node_content.compact_report(doc)
    assert len(text.encode()) <= node_content.ANNOTATION_LIMIT
    parsed = json.loads(text)
    assert [c["name"] for c in parsed["checks"]] == list(CHECK_NAMES)
    assert [c["status"] for c in parsed["checks"]] == [r.status for r in rs]
    assert parsed["checks"][1]["message"] == "containerd-running is pass"  # short messages stay whole
    assert parsed["checks"][5]["message"].endswith("\u2026")
    assert parsed["actions"][1] == "short action"
    assert len(text.encode()) > node_content.ANNOTATION_LIMIT - 100  # the space is used, not wasted


def test_many_actions_fold_into_a_count() -> None:
    doc = report_document(results(), [f"action number {i} with some words" for i in range(400)], now=NOW)
    parsed = json.loads(node_content.compact_report(doc))
    assert parsed["actions"][-1].startswith("+") and parsed["actions"][-1].endswith(" more")
    kept = len(parsed["actions"]) - 1
    assert kept + int(parsed["actions"][-1][1:].split()[0]) == 400


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(st.text(max_size=2000), min_size=7, max_size=7),
    actions=st.lists(st.text(max_size=300), max_size=30),
)
def test_report_always_fits(messages: List[str], actions: List[str]) -> None:
    rs = [CheckResult(name, WARN, m) for name, m in zip(CHECK_NAMES, messages)]
    text = node_content.compact_report(report_document(rs, actions, now=NOW))
    assert len(text.encode("utf-8")) <= 4096
    parsed = json.loads(text)
    assert [(c["name"], c["status"]) for c in parsed["checks"]] == [(r.name, r.status) for r in rs]
    for original, c in zip(messages, parsed["checks"]):
        assert (
            c["message"] == original
            or (c["message"].endswith("\u2026") and original.startswith(c["message"][:-1]))
            or c["message"] == ""
        )


# --- the condition -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statuses, status, reason, message",
    [
        ({}, "True", "GPUNodeReady", f"{len(CHECK_NAMES)} checks passed"),
        ({"efa": SKIP}, "True", "GPUNodeReady", f"{len(CHECK_NAMES) - 1} checks passed, 1 skipped"),
        ({"compatibility": WARN, "efa": WARN}, "True", "EFAWarning", "efa: efa is warn"),
        ({"efa": WARN, "gpu_allocatable": WARN}, "False", "GPUAllocatableWarning",
         "gpu-allocatable: gpu-allocatable is warn"),
        (
            {"compatibility": WARN, "nvidia_driver": FAIL, "efa": FAIL},
            "False",
            "NVIDIADriverFailed",
            "nvidia-driver: nvidia-driver is fail",
        ),
    ],
)
def test_condition_status_reason_message(
    statuses: Dict[str, str], status: str, reason: str, message: str
) -> None:
    cond = node_content.node_condition("GPUNodeAgentReady", results(**statuses), NOW)
    assert cond == {
        "type": "GPUNodeAgentReady",
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": "2026-05-12T10:00:00Z",
        "lastTransitionTime": "2026-05-12T10:00:00Z",
    }


def test_last_transition_time_kept_while_status_unchanged() -> None:
    before = {"type": "GPUNodeAgentReady", "status": "True", "lastTransitionTime": "2026-05-01T00:00:00Z"}
    same = node_content.node_condition("GPUNodeAgentReady", results(efa=WARN), NOW, before)  # degraded: still True
    assert same["lastTransitionTime"] == "2026-05-01T00:00:00Z"
    flipped = node_content.node_condition("GPUNodeAgentReady", results(efa=FAIL), NOW, before)
    assert flipped["lastTransitionTime"] == "2026-05-12T10:00:00Z"


# --- the node name -------------------------------------------------------------------------------


def config(**report_settings: Any) -> AgentConfig:
    return AgentConfig(report=ReportSettings(**report_settings))


def test_node_name_order(tmp_path: Path, imds: ImdsServer) -> None:
    root = NodeRoot(str(tmp_path))
    make_imds = lambda: ImdsClient(imds.url, 1.0)  # noqa: E731
    hostname = lambda: "Some-Host"  # noqa: E731
    assert kube_node.resolve_node_name(root, config(node_name="configured"), imds=make_imds) == kube_node.NodeName(
        "configured", "report.node_name"
    )
    assert kube_node.resolve_node_name(root, config(), imds=make_imds, hostname=hostname) == kube_node.NodeName(
        "ip-10-0-0-12.us-west-2.compute.internal", "IMDS local-hostname"
    )
    write_node_file(
        tmp_path,
        kubelet.KUBELET_ENVIRONMENT,
        'NODEADM_KUBELET_ARGS="--node-ip=10.0.0.12 --hostname-override=GPU-Node-7 --v=2"\n',
    )
    assert kube_node.resolve_node_name(root, config(), imds=make_imds) == kube_node.NodeName(
        "gpu-node-7", "--hostname-override in /etc/eks/kubelet/environment"
    )
    imds.requests.clear()
    (tmp_path / kubelet.KUBELET_ENVIRONMENT.lstrip("/")).unlink()
    imds.disabled = True
    assert kube_node.resolve_node_name(root, config(), imds=make_imds, hostname=hostname) == kube_node.NodeName(
        "some-host", "hostname"
    )
    assert len(imds.requests) == 1  # 403: no retries


def test_imds_disabled_by_env_is_not_asked(
    tmp_path: Path, imds: ImdsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    cfg = AgentConfig(imds=ImdsSettings(endpoint=imds.url))
    name = kube_node.resolve_node_name(NodeRoot(str(tmp_path)), cfg, hostname=lambda: "h")
    assert name == kube_node.NodeName("h", "hostname") and imds.requests == []


@pytest.mark.parametrize(
    "text, expected",
    [
        ("NODEADM_KUBELET_ARGS=--a=b --hostname-override=node-1 --c=d", "node-1"),
        ("FOO=1\nNODEADM_KUBELET_ARGS=--hostname-override node-2\n", "node-2"),
        ("NODEADM_KUBELET_ARGS=--node-ip=10.0.0.1\n", None),
        ("OTHER_ARGS=--hostname-override=nope\n", None),
    ],
)
def test_hostname_override(text: str, expected: Optional[str]) -> None:
    assert kubelet.kubelet_flag(text, "--hostname-override") == expected


# --- publishing end to end -------------------------------------------------------------------------


@pytest.fixture
def node_root(tmp_path: Path, api: ApiServer) -> Path:
    root = write_kubeconfig(tmp_path / "node", api)
    write_node_file(root, kubelet.KUBELET_ENVIRONMENT, f"NODEADM_KUBELET_ARGS=--hostname-override={NODE}\n")
    accept_fake_aws_tokens(api, 9)
    return root


def publish(
    root: Path, rs: List[CheckResult], t: FakeTime, cfg: Optional[AgentConfig] = None, now: datetime = NOW
) -> report.PublishResult:
    doc = report_document(rs, now=now)
    return report.publish(
        NodeRoot(str(root)), cfg or AgentConfig(), rs, doc, now=now, clock=t.clock, sleep=t.sleep
    )


def agent_condition(api: ApiServer) -> Dict[str, Any]:
    return next(c for c in api.nodes[NODE]["status"]["conditions"] if c["type"] == "GPUNodeAgentReady")


def test_publish_sets_annotations_and_condition_keeping_kubelet_conditions(
    node_root: Path, api: ApiServer, aws: FakeAws
) -> None:
    t = FakeTime()
    out = publish(node_root, results(efa=WARN), t)
    assert out == report.PublishResult(
        True, NODE, "--hostname-override in /etc/eks/kubelet/environment", True, True, None,
        read=True, wrote=("annotations", "condition"), events=out.events,
    )
    assert out.events == {"created": 1, "repeated": 0, "dropped": 0, "error": None}  # efa: unknown -> warn
    annotations = api.nodes[NODE]["metadata"]["annotations"]
    assert annotations["gpu-node-agent/health"] == "degraded"
    assert json.loads(annotations["gpu-node-agent/report"])["checks"][5]["status"] == "warn"
    types = [c["type"] for c in api.nodes[NODE]["status"]["conditions"]]
    assert types == ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready", "GPUNodeAgentReady"]
    assert agent_condition(api)["reason"] == "EFAWarning"
    assert [(r.method, r.path, r.content_type) for r in api.requests] == [
        ("GET", f"/api/v1/nodes/{NODE}", None),
        ("PATCH", f"/api/v1/nodes/{NODE}", "application/merge-patch+json"),
        ("PATCH", f"/api/v1/nodes/{NODE}/status", "application/strategic-merge-patch+json"),
        ("POST", "/api/v1/namespaces/default/events", "application/json"),
    ]
    assert len(aws.calls()) == 1  # one credential for all the calls


def test_transition_time_on_the_server(node_root: Path, api: ApiServer, aws: FakeAws) -> None:
    t = FakeTime()
    publish(node_root, results(), t, now=NOW)
    publish(node_root, results(efa=WARN), t, now=NOW + timedelta(minutes=5))  # True -> True
    cond = agent_condition(api)
    assert (
        cond["lastTransitionTime"] == "2026-05-12T10:00:00Z"
        and cond["lastHeartbeatTime"] == "2026-05-12T10:05:00Z"
    )
    publish(node_root, results(efa=FAIL), t, now=NOW + timedelta(minutes=10))  # True -> False
    cond = agent_condition(api)
    assert cond["status"] == "False" and cond["lastTransitionTime"] == "2026-05-12T10:10:00Z"


def test_condition_disabled(node_root: Path, api: ApiServer, aws: FakeAws) -> None:
    out = publish(
        node_root, results(), FakeTime(), config(condition=None, annotation_prefix="gpu.example.com")
    )
    assert out.ok and out.condition is None
    assert api.nodes[NODE]["metadata"]["annotations"]["gpu.example.com/health"] == "healthy"
    assert not any(r.path.endswith("/status") for r in api.requests)


def test_publish_failure_is_reported_not_raised(node_root: Path, api: ApiServer, aws: FakeAws) -> None:
    aws.mode("fail")
    out = publish(node_root, results(), FakeTime())
    assert not out.ok and out.node == NODE and not out.annotations
    assert out.error is not None and "exec plugin aws: exited with 255" in out.error


def test_condition_patch_forbidden_after_annotations(node_root: Path, api: ApiServer, aws: FakeAws) -> None:
    api.fail_next("PATCH", f"/api/v1/nodes/{NODE}/status", 403)
    out = publish(node_root, results(), FakeTime())
    assert not out.ok and out.annotations and out.condition is False
    assert "403 Forbidden" in (out.error or "")


def test_one_deadline_for_everything(node_root: Path, api: ApiServer, aws: FakeAws) -> None:
    api.fail_next("GET", f"/api/v1/nodes/{NODE}", 503, times=3)
    api.fail_next("PATCH", f"/api/v1/nodes/{NODE}", 503, times=100)
    t = FakeTime()
    out = publish(node_root, results(), t, config(timeout_seconds=10))
    assert not out.ok and "10s deadline" in (out.error or "")
    assert sum(t.sleeps) <= 10


def test_node_not_registered_yet(node_root: Path, api: ApiServer, aws: FakeAws) -> None:
    registered = api.nodes.pop(NODE)
    t = FakeTime(on_sleep=lambda n: api.nodes.__setitem__(NODE, registered) if n == 3 else None)
    assert publish(node_root, results(), t).ok


# --- local files ---------------------------------------------------------------------------------


def test_finish_writes_status_file_and_metrics(tmp_path: Path) -> None:
    root = NodeRoot(str(tmp_path))
    cfg = config(publish=False, metrics_file="/var/lib/node_exporter/textfile_collector/gpu_node_agent.prom")
    out = report.finish(
        root,
        cfg,
        results(nvidia_driver=FAIL),
        ["did a thing"],
        publish_report=False,
        restarts={"containerd.service": 1, "kubelet.service": 1},
        now=NOW,
    )
    assert out.ok and out.published is None
    status = json.loads((tmp_path / "run/gpu-node-agent/status.json").read_text())
    assert status["health"] == "unhealthy" and status["actions"] == ["did a thing"]
    assert status["checks"][4]["details"] == {"detail": "nvidia-driver"}
    assert status["publish"] == {"attempted": False}
    assert status["restarts_total"] == {"containerd.service": 1, "kubelet.service": 1}
    prom = (tmp_path / "var/lib/node_exporter/textfile_collector/gpu_node_agent.prom").read_text()
    assert 'gpu_node_agent_health{health="unhealthy"} 1' in prom
    assert 'gpu_node_agent_health{health="healthy"} 0' in prom
    assert 'gpu_node_agent_check{check="nvidia-driver",status="fail"} 1' in prom
    assert 'gpu_node_agent_check{check="nvidia-driver",status="pass"} 0' in prom
    assert f"gpu_node_agent_last_run_timestamp_seconds {NOW.timestamp():.3f}" in prom
    assert 'gpu_node_agent_restarts_total{unit="containerd.service"} 1' in prom
    assert "gpu_node_agent_report_published" not in prom
    # the boot timeline's gauge (agent/report/timeline.py): kernel start, 0 s by definition
    assert 'gpu_node_agent_boot_milestone_seconds{milestone="kernel"} 0.000' in prom
    assert prom.count("# TYPE") == 8 and prom.endswith("\n")  # the families: docs/metrics.md
    # A second run adds to the counters (since boot: the status file lives in /run).
    report.finish(root, cfg, results(), publish_report=False, restarts={"containerd.service": 1}, now=NOW)
    prom = (tmp_path / "var/lib/node_exporter/textfile_collector/gpu_node_agent.prom").read_text()
    assert 'gpu_node_agent_restarts_total{unit="containerd.service"} 2' in prom
    assert 'gpu_node_agent_restarts_total{unit="kubelet.service"} 1' in prom
    assert not [
        p for p in (tmp_path / "run/gpu-node-agent").iterdir() if p.name.startswith(".")
    ]  # no temp files


def test_finish_records_publishing_outcome(tmp_path: Path) -> None:
    failed = report.PublishResult(
        False, NODE, "hostname", False, None, "GET /api/v1/nodes/x: 403 Forbidden: no"
    )
    seen_while_publishing: List[Any] = []

    def publisher(*args: Any, **kw: Any) -> report.PublishResult:
        seen_while_publishing.append(json.loads((tmp_path / "run/gpu-node-agent/status.json").read_text()))
        return failed

    out = report.finish(
        NodeRoot(str(tmp_path)),
        config(metrics_file="/var/lib/node_exporter/agent.prom"),
        results(),
        publish_report=True,
        publisher=publisher,
        now=NOW,
    )
    assert not out.ok
    (during,) = seen_while_publishing  # the status file is there before the API server answers
    assert during["health"] == "healthy" and during["publish"] == {"attempted": True, "ok": None}
    status = json.loads((tmp_path / "run/gpu-node-agent/status.json").read_text())
    assert list(status) == ["v", "agent", "time", "health", "checks", "actions", "publish", "restarts_total",
                            "timeline"]
    assert status["publish"]["ok"] is False and "403" in status["publish"]["error"]
    assert "gpu_node_agent_report_published 0" in (tmp_path / "var/lib/node_exporter/agent.prom").read_text()
    assert report.summary_line(out) == "not published: GET /api/v1/nodes/x: 403 Forbidden: no\n"


def test_unwritable_status_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("a file where a directory should be")
    out = report.finish(NodeRoot(str(tmp_path)), config(), results(), publish_report=False, now=NOW)
    assert not out.ok and len(out.problems) == 1 and "run/gpu-node-agent/status.json" in out.problems[0]


def test_metrics_label_escaping() -> None:
    from agent.report import metrics

    document = {**report_document([CheckResult('we"ird\\name', PASS, "")], now=NOW), "restarts_total": {"a\nb": 1}}
    text = metrics.render(document)
    assert 'check="we\\"ird\\\\name"' in text and 'unit="a\\nb"' in text


def test_corrupt_previous_status_file_restarts_counting(tmp_path: Path) -> None:
    write_node_file(tmp_path, "/run/gpu-node-agent/status.json", "{not json")
    out = report.finish(
        NodeRoot(str(tmp_path)),
        config(),
        results(),
        publish_report=False,
        restarts={"containerd.service": 1},
        now=NOW,
    )
    assert out.document["restarts_total"] == {"containerd.service": 1}


def test_status_file_mode(tmp_path: Path) -> None:
    report.finish(NodeRoot(str(tmp_path)), config(), results(), publish_report=False, now=NOW)
    assert oct(os.stat(tmp_path / "run/gpu-node-agent/status.json").st_mode & 0o777) == "0o644"


@pytest.mark.parametrize("prefix", ["Gpu_Agent", "-bad.example.com", "a" * 254, "gpu/agent"])
def test_annotation_prefix_validated_when_the_config_loads(prefix: str) -> None:
    from agent.base.errors import ConfigError
    from agent.config.load import parse_config

    with pytest.raises(ConfigError, match=r"report\.annotation_prefix"):
        parse_config(f"report:\n  annotation_prefix: {prefix!r}\n", "config.yaml")


def test_a_crash_while_publishing_never_shows_a_credential(node_root: Path, api: ApiServer, aws: FakeAws,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A bug's exception text can quote request headers (requests: "Invalid header value b'Bearer ...'")."""
    from agent.kube import client as kube

    secret = "k8s-aws-v1.aHR0cHM6Ly9zdHMuYW1hem9uYXdzLmNvbS9zZWNyZXQtdG9rZW4tdmFsdWU"

    def crash(*_: Any, **__: Any) -> Any:
        raise ValueError(f"Invalid header value b'Bearer {secret}\\n'")

    monkeypatch.setattr(kube.KubeClient, "get_node", crash)
    out = publish(node_root, results(), FakeTime())
    assert not out.ok and out.error is not None and out.error.startswith("internal error while publishing: ValueError")
    captured = capsys.readouterr()
    assert secret not in out.error and secret not in captured.out + captured.err


def test_a_heartbeat_overlapping_a_run_loses_neither_its_pass_nor_its_restarts(tmp_path: Path) -> None:
    """A `check --report` heartbeat starts publishing; meanwhile a `run` restarts containerd and
    records its pass; then the heartbeat writes its final report. Every writer merges under the
    status file's lock, so the run's pass record and its restart stay counted."""
    from agent.report.status import PassRecord

    root = NodeRoot(str(tmp_path))
    report.finish(root, config(), results(), publish_report=False, restarts={"containerd.service": 2}, now=NOW)
    PassRecord(root, "prepare").finish("/run/gpu-node-agent/status.json", "healthy", 0)

    def publisher_while_a_run_finishes(*args: Any, **kw: Any) -> report.PublishResult:
        report.finish(root, config(), results(), ["restarted containerd.service"], publish_report=False,
                      restarts={"containerd.service": 1}, now=NOW)
        PassRecord(root, "run").finish("/run/gpu-node-agent/status.json", "healthy", 0, ["restarted"])
        return report.PublishResult(True, NODE, "hostname", True, None)

    out = report.finish(root, config(), results(), publish_report=True, publisher=publisher_while_a_run_finishes,
                        now=NOW)
    status = json.loads((tmp_path / "run/gpu-node-agent/status.json").read_text())
    assert status["restarts_total"] == {"containerd.service": 3}
    assert sorted(status["passes"]) == ["prepare", "run"] and status["passes"]["run"]["actions"] == ["restarted"]
    assert out.document["restarts_total"] == {"containerd.service": 3}


def test_every_status_file_writer_takes_the_status_lock(tmp_path: Path) -> None:
    """While another process holds the status file's lock, a report waits for it."""
    import fcntl
    import threading

    from agent.report.status import STATUS_LOCK

    lock = tmp_path / STATUS_LOCK.lstrip("/")
    lock.parent.mkdir(parents=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (report.finish(NodeRoot(str(tmp_path)), config(), results(),
                                                            publish_report=False, now=NOW), done.set()))
    thread.start()
    try:
        assert not done.wait(0.5)
        assert not (tmp_path / "run/gpu-node-agent/status.json").exists()
    finally:
        os.close(fd)
    assert done.wait(5)
    thread.join()
    assert (tmp_path / "run/gpu-node-agent/status.json").exists()


@pytest.mark.parametrize("key", ["status_file", "metrics_file"])
def test_an_output_through_a_symlinked_directory_never_lands_outside_its_directories(
        tmp_path: Path, key: str) -> None:
    """The configured path is inside /var/lib/gpu-node-agent (lexically valid), but that directory is
    a symlink to /etc/containerd: the report must not replace containerd's config.toml."""
    config_toml = write_node_file(tmp_path, "/etc/containerd/config.toml", "version = 3\n")
    (tmp_path / "var/lib").mkdir(parents=True)
    (tmp_path / "var/lib/gpu-node-agent").symlink_to("/etc/containerd")
    name = "config.toml" if key == "status_file" else "config.prom"
    if key == "metrics_file":
        (tmp_path / "etc/containerd/config.prom").write_text("# node_exporter's\n")
    out = report.finish(NodeRoot(str(tmp_path)), config(**{key: f"/var/lib/gpu-node-agent/{name}"}), results(),
                        publish_report=False, now=NOW)
    assert config_toml.read_text() == "version = 3\n"
    assert not out.ok
    assert any(f"resolves to /etc/containerd/{name}, outside" in p for p in out.problems), out.problems
