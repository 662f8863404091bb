"""The metrics file and packaging/prometheus/ through the real promtool (Debian's prometheus package):
``promtool check metrics`` on the file a real ``check --report`` writes, ``promtool check rules`` and
``promtool test rules`` on the shipped alerting rules (series that fire and series that do not), and
the Grafana dashboard's queries against the metrics the agent exports."""

import json
import re
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterable, List, Set

import pytest
import yaml

from agent import cli
from agent.pipeline.health import PASS, CheckResult
from agent.pipeline.resources import CHECK_NAMES
from agent.report import metrics
from agent.report.document import report_document
from tests.support.gpu_node import BOOT_KMSG, healthy_gpu_node, kmsg_record, write
from tests.support.paths import REPO, which

PROMETHEUS = REPO / "packaging" / "prometheus"
RULES = PROMETHEUS / "gpu-node-agent.rules.yml"
DASHBOARD = PROMETHEUS / "gpu-node-agent-dashboard.json"
METRICS_FILE = "/run/gpu-node-agent/gpu_node_agent.prom"
XID_79 = "NVRM: Xid (PCI:0000:97:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
XID_13 = "NVRM: Xid (PCI:0000:53:00): 13, pid=40112, name=python3, Graphics SM Warp Exception"
XID_999 = "NVRM: Xid (PCI:0000:53:00): 999, something new"


def node_metrics(tmp_path: Path, capsys: pytest.CaptureFixture, kmsg: str = BOOT_KMSG) -> str:
    """The metrics file of a real ``check --report`` (publishing off) on a simulated GPU node."""
    root = healthy_gpu_node(tmp_path / "node", gpus=4)
    write(root, "/dev/kmsg", kmsg)
    write(root, "/etc/gpu-node-agent/config.yaml", f"report:\n  publish: false\n  metrics_file: {METRICS_FILE}\n")
    cli.main(["--root", str(root), "-q", "check", "--report", "--format", "json"])
    capsys.readouterr()
    return (root / METRICS_FILE.lstrip("/")).read_text()


def promtool(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([which("promtool"), *args], input=stdin, capture_output=True, text=True, timeout=60)


def samples(text: str) -> Dict[str, List[str]]:
    """metric name -> its sample lines."""
    out: Dict[str, List[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            out.setdefault(re.split(r"[{ ]", line, maxsplit=1)[0], []).append(line)
    return out


def test_the_metrics_file_passes_promtool_check_metrics(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    kmsg = BOOT_KMSG + kmsg_record(500, 9_000_000, XID_79) + kmsg_record(501, 9_000_100, XID_13) \
        + kmsg_record(502, 9_000_200, XID_13) + kmsg_record(503, 9_000_300, XID_999)
    text = node_metrics(tmp_path, capsys, kmsg)
    proc = promtool("check", "metrics", stdin=text)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    got = samples(text)
    assert got["gpu_node_agent_xid_events_total"] == [
        'gpu_node_agent_xid_events_total{class="fatal"} 1', 'gpu_node_agent_xid_events_total{class="reset"} 0',
        'gpu_node_agent_xid_events_total{class="application"} 2', 'gpu_node_agent_xid_events_total{class="ignore"} 0',
        'gpu_node_agent_xid_events_total{class="other"} 1']
    assert got["gpu_node_agent_gpus_expected"] == ["gpu_node_agent_gpus_expected 4"]
    assert got["gpu_node_agent_gpus_seen"] == ["gpu_node_agent_gpus_seen 4"]
    assert got["gpu_node_agent_condition_info"] == [
        'gpu_node_agent_condition_info{status="False",reason="GPUFellOffBus"} 1']
    assert 'gpu_node_agent_check_info{check="gpu-errors",status="fail",reason="GPUFellOffBus"} 1' in text
    assert 'gpu_node_agent_check_info{check="gpu-inventory",status="pass",reason="GPUsPresent"} 1' in text
    (versions,) = got["gpu_node_agent_versions_info"]
    labels = dict(re.findall(r'(\w+)="([^"]*)"', versions))
    assert set(labels) == {"agent", "kubernetes", "containerd", "toolkit", "driver", "known_good"}
    assert labels["driver"] == "580.159.03" and labels["known_good"] != ""
    (duration,) = got["gpu_node_agent_last_run_duration_seconds"]
    assert duration.startswith('gpu_node_agent_last_run_duration_seconds{pass="check"} ')
    assert float(duration.split()[-1]) > 0


def test_the_series_per_node_stay_within_the_documented_bound(tmp_path: Path, capsys: pytest.CaptureFixture
                                                              ) -> None:
    """docs/metrics.md: at most 70 series plus one per restarted unit (and the published flag)."""
    text = node_metrics(tmp_path, capsys)
    doc = (REPO / "docs" / "metrics.md").read_text()
    bound = int(re.search(r"at most \*\*(\d+)\*\* series", doc).group(1))  # type: ignore[union-attr]
    series = sum(len(v) for v in samples(text).values())
    assert series <= bound
    # the check_info reason label takes only documented reasons, whatever a check puts in its details
    odd = report_document([CheckResult("gpu-errors", "fail", "x", {"event_reason": "Made" + "Up" * 50})])
    assert 'reason="GPUErrorsFailed"' in metrics.render(odd)


def exported_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> Set[str]:
    """Every metric name the agent writes (a report with restarts and a failed publish has them all)."""
    names = set(samples(node_metrics(tmp_path, capsys)))
    doc = {**report_document([CheckResult(n, PASS, "ok") for n in CHECK_NAMES]), "restarts_total": {"a": 1},
           "publish": {"attempted": True, "ok": False},
           # a boot that reached GPU-ready (agent/report/timeline.py)
           "timeline": {"milestones": {"kernel": {"seconds": 0.0}, "gpu-ready": {"seconds": 95.2}},
                        "time_to_gpu_ready_seconds": 95.2, "agent_share_seconds": 0.4}}
    return names | set(samples(metrics.render(doc)))


def metric_names(expr: str) -> Set[str]:
    return set(re.findall(r"\bgpu_node_agent_[a-z0-9_]+", expr))


def test_every_documented_metric_is_exported_and_every_exported_one_documented(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    doc = (REPO / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `(gpu_node_agent_[a-z0-9_]+)`", doc, re.M))
    assert documented == exported_names(tmp_path, capsys)


def test_shipped_rules_pass_promtool_check_rules() -> None:
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 4 rules found" in proc.stdout


def annotations(name: str, instance: str, value: str) -> Dict[str, str]:
    """The annotations the shipped rules render for ``instance`` (their templates, filled in)."""
    return {
        "GPUNodeUnhealthy": {
            "summary": f"GPU node {instance} unhealthy for 15 minutes",
            "description": "gpu-node-agent reports a failing check. The condition's reason says which: "
                           f'gpu_node_agent_condition_info{{instance="{instance}"}}, or kubectl describe node '
                           "(condition GPUNodeAgentReady)."},
        "GPUsMissing": {
            "summary": f"{instance} shows fewer GPUs than its instance type has",
            "description": f"{value} GPUs visible to the driver; see the gpu-inventory check (gpu-node-agent check)."},
        "GPUFatalXid": {
            "summary": f"Fatal XID on {instance} since boot: reboot the node",
            "description": f"{value} fatal XID events (64: row remapping failure, 79: fallen off the bus) since "
                           "boot. Reboot the node; replace the GPU if it recurs."},
        "GPUNodeAgentStoppedReporting": {
            "summary": f"gpu-node-agent on {instance} has not reported for 45 minutes",
            "description": "The heartbeat timer (gpu-node-agent-check.timer) runs every 5-7 minutes; check it "
                           "with systemctl status gpu-node-agent-check.timer over SSM."},
    }[name]


def alert(name: str, at: str, labels: Iterable[Dict[str, str]] = (), value: str = "") -> Dict[str, Any]:
    return {"eval_time": at, "alertname": name,
            "exp_alerts": [{"exp_labels": dict(lb), "exp_annotations": annotations(name, lb["instance"], value)}
                           for lb in labels]}


def test_shipped_rules_fire_on_broken_nodes_and_not_on_healthy_ones(tmp_path: Path) -> None:
    a, b = {"instance": "gpu-a:9100", "job": "node"}, {"instance": "gpu-b:9100", "job": "node"}

    def series(name: str, labels: Dict[str, str], values: str) -> Dict[str, str]:
        inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return {"series": f"{name}{{{inner}}}", "values": values}

    tests = [{
        "interval": "1m",
        "input_series": [
            # a: unhealthy for 20 minutes; b: unhealthy for 10 minutes only, then healthy
            series("gpu_node_agent_health", {**a, "health": "unhealthy"}, "1x30"),
            series("gpu_node_agent_health", {**b, "health": "unhealthy"}, "1x10 0x20"),
            # a: 7 of 8 GPUs; b: all 8
            series("gpu_node_agent_gpus_expected", a, "8x30"),
            series("gpu_node_agent_gpus_seen", a, "7x30"),
            series("gpu_node_agent_gpus_expected", b, "8x30"),
            series("gpu_node_agent_gpus_seen", b, "8x30"),
            # a: an XID 79 at minute 3; b: application XIDs only
            series("gpu_node_agent_xid_events_total", {**a, "class": "fatal"}, "0 0 0 1x27"),
            series("gpu_node_agent_xid_events_total", {**b, "class": "fatal"}, "0x30"),
            series("gpu_node_agent_xid_events_total", {**b, "class": "application"}, "0 5 9x28"),
        ],
        "alert_rule_test": [
            alert("GPUNodeUnhealthy", "14m"),  # b was unhealthy for 11 minutes only, a not yet 15
            alert("GPUNodeUnhealthy", "20m", [{**a, "health": "unhealthy", "severity": "warning"}]),
            alert("GPUsMissing", "4m"),
            alert("GPUsMissing", "6m", [{**a, "severity": "critical"}], "7"),
            alert("GPUFatalXid", "2m"),
            alert("GPUFatalXid", "3m", [{**a, "class": "fatal", "severity": "critical"}], "1"),
            alert("GPUNodeAgentStoppedReporting", "30m"),
        ],
    }, {
        "interval": "1m",
        "input_series": [
            # a: its last report stays at minute 0 (the timer stopped); b: reports every 6 minutes
            series("gpu_node_agent_last_run_timestamp_seconds", a, "0x80"),
            series("gpu_node_agent_last_run_timestamp_seconds", b, " ".join(str(360 * (m // 6)) for m in range(81))),
        ],
        "alert_rule_test": [
            alert("GPUNodeAgentStoppedReporting", "49m"),
            alert("GPUNodeAgentStoppedReporting", "52m", [{**a, "severity": "warning"}]),
            alert("GPUNodeAgentStoppedReporting", "80m", [{**a, "severity": "warning"}]),
        ],
    }]
    spec = tmp_path / "rules_test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}))
    proc = promtool("test", "rules", str(spec))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_rules_test_that_expects_the_wrong_thing_fails(tmp_path: Path) -> None:
    """The harness above can fail: a healthy node expected to alert makes promtool exit 1."""
    spec = tmp_path / "rules_test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": 'gpu_node_agent_health{instance="x",health="unhealthy"}', "values": "0x30"}],
        "alert_rule_test": [alert("GPUNodeUnhealthy", "20m", [{"instance": "x", "health": "unhealthy",
                                                                "severity": "warning"}])]}]}))
    assert promtool("test", "rules", str(spec)).returncode == 1


def dashboard_exprs() -> List[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_every_dashboard_query_names_metrics_the_agent_exports(tmp_path: Path, capsys: pytest.CaptureFixture
                                                               ) -> None:
    exported = exported_names(tmp_path, capsys)
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    for expr in exprs:
        assert metric_names(expr), expr
        assert metric_names(expr) <= exported, expr
    rules = yaml.safe_load(RULES.read_text())
    for rule in rules["groups"][0]["rules"]:
        assert metric_names(rule["expr"]) and metric_names(rule["expr"]) <= exported, rule["alert"]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each query as a recording rule through promtool's own PromQL parser."""
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e}
                                                          for i, e in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_another_module_contributes_families_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = report_document([CheckResult(n, PASS, "ok") for n in CHECK_NAMES])
    monkeypatch.setattr(metrics, "SOURCES", (*metrics.SOURCES, "tests.report.test_prometheus:_extra_families"))
    text = metrics.render(doc)
    assert 'gpu_node_agent_example_seconds{milestone="kubelet_ready"} 12.500' in text
    proc = promtool("check", "metrics", stdin=text)
    assert (proc.returncode, proc.stdout) == (0, "")


def _extra_families(document: Dict[str, Any]) -> Iterable[metrics.Family]:
    yield metrics.Family("gpu_node_agent_example_seconds", "gauge", "An example.", [({"milestone": "kubelet_ready"},
                                                                                     12.5)])


@pytest.mark.parametrize("family", [
    metrics.Family("node_gpu_total", "counter", "h", [({}, 1)]),  # not the agent's prefix
    metrics.Family("gpu_node_agent_x", "counter", "h", [({}, 1)]),  # a counter without _total
    metrics.Family("gpu_node_agent_x_total", "gauge", "h", [({}, 1)]),  # _total on a gauge
    metrics.Family("gpu_node_agent_x_info", "gauge", "h", [({}, 2)]),  # an info metric is 1
    metrics.Family("gpu_node_agent_x", "gauge", "h", [({"Bad-Label": "v"}, 1)]),
])
def test_families_that_break_the_conventions_are_refused(family: metrics.Family,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "SOURCES", ("tests.report.test_prometheus:_bad",))
    monkeypatch.setitem(globals(), "_BAD", family)
    with pytest.raises(ValueError):
        metrics.render({})


_BAD: Any = None


def _bad(document: Dict[str, Any]) -> Iterable[metrics.Family]:
    yield _BAD
