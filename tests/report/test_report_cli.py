"""``check`` (table, JSON, exit codes, colour, --report) and ``run``'s report, on simulated nodes."""

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from agent import cli
from agent.pipeline.health import FAIL, PASS, SKIP, WARN, CheckResult
from agent.pipeline.resources import CHECK_NAMES
from tests.support.gpu_node import NODE_NAME, SAMPLES, healthy_gpu_node, write
from tests.support.kube_helpers import FakeAws, accept_fake_aws_tokens, write_kubeconfig
from tests.support.kube_server import ApiServer

REPO = Path(__file__).resolve().parent.parent.parent
MY_CHECKS = ("containerd-config", "nvidia-runtime-config", "nvidia-driver", "compatibility")
EXIT_FOR = {"healthy": 0, "degraded": 2, "unhealthy": 1}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return healthy_gpu_node(tmp_path / "node")


def run_cli(args: List[str], capsys: pytest.CaptureFixture) -> Any:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def check_json(root: Path, capsys: pytest.CaptureFixture, *extra: str) -> Any:
    code, out, err = run_cli(["--root", str(root), "check", "--format", "json", *extra], capsys)
    return code, json.loads(out), err


def by_name(doc: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {c["name"]: c for c in doc["checks"]}


# --- table and JSON -------------------------------------------------------------------------------


def test_check_table_on_a_healthy_node(root: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(["--root", str(root), "check"], capsys)
    lines = out.splitlines()
    assert re.fullmatch(r"CHECK +STATUS  MESSAGE", lines[0])
    rows = {line.split()[0]: line.split()[1] for line in lines[1:] if not line.startswith(("health:", "action:"))}
    for name in MY_CHECKS:
        assert rows[name] == PASS, out
    health = lines[-1].split(": ")[1]
    assert code == EXIT_FOR[health]
    assert "\033[" not in out  # not a TTY: no colour


def test_check_json_schema(root: Path, capsys: pytest.CaptureFixture) -> None:
    code, doc, _ = check_json(root, capsys)
    assert list(doc) == ["v", "agent", "time", "health", "checks", "actions"]
    assert doc["v"] == 1 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["time"])
    checks = by_name(doc)
    for name in MY_CHECKS:
        assert checks[name]["status"] == PASS
    assert checks["nvidia-driver"]["details"]["devices"][0] == "/dev/nvidia0"
    assert checks["compatibility"]["details"]["closest"]["ami_release"] == "v20260512"
    assert all(set(c) <= {"name", "status", "message", "details"} for c in doc["checks"])
    assert code == EXIT_FOR[doc["health"]]


def test_check_json_documented_schema_matches(root: Path, capsys: pytest.CaptureFixture) -> None:
    text = (REPO / "docs" / "check-json.md").read_text()
    example = json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])
    _, doc, _ = check_json(root, capsys)
    assert list(example) == list(doc)
    assert {k for c in example["checks"] for k in c} == {"name", "status", "message", "details"}
    assert {c["name"] for c in example["checks"]} <= set(CHECK_NAMES)


@pytest.mark.parametrize(
    "break_node, check, status",
    [
        (lambda r: (r / "proc/driver/nvidia/version").unlink(), "nvidia-driver", FAIL),
        (
            lambda r: write(
                r,
                "/etc/eks/containerd-version.txt",
                "containerd github.com/containerd/containerd/v2 2.2.9 x\n",
            ),
            "compatibility",
            WARN,
        ),
        (
            lambda r: write(
                r,
                "/etc/nvidia-container-runtime/config.toml",
                (SAMPLES / "nvidia-container-runtime-legacy.toml").read_text(),
            ),
            "nvidia-runtime-config",
            FAIL,
        ),
        (
            lambda r: write(
                r,
                "/etc/containerd/config.toml",
                (SAMPLES / "containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml").read_text(),
            ),
            "containerd-config",
            FAIL,
        ),
    ],
)
def test_each_failure_shows_and_sets_the_exit_code(
    root: Path, capsys: pytest.CaptureFixture, break_node: Any, check: str, status: str
) -> None:
    break_node(root)
    code, doc, _ = check_json(root, capsys)
    assert by_name(doc)[check]["status"] == status
    assert doc["health"] == ("unhealthy" if status == FAIL else doc["health"])
    assert code == EXIT_FOR[doc["health"]]
    if status == FAIL:
        assert code == 1


@pytest.mark.parametrize(
    "statuses, code, health",
    [
        ([PASS, PASS, SKIP], 0, "healthy"),
        ([PASS, WARN, SKIP], 2, "degraded"),
        ([FAIL, WARN, PASS], 1, "unhealthy"),
    ],
)
def test_exit_codes(
    root: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    statuses: List[str],
    code: int,
    health: str,
) -> None:
    from agent.pipeline import resources as checks

    fixed = [CheckResult(n, s, f"{n} {s}") for n, s in zip(CHECK_NAMES, statuses)]
    monkeypatch.setattr(checks, "evaluate", lambda facts, config: fixed)
    got, out, _ = run_cli(["--root", str(root), "check"], capsys)
    assert got == code and out.endswith(f"health: {health}\n")
    got, doc, _ = check_json(root, capsys)
    assert got == code and doc["health"] == health


def test_check_imports_neither_requests_nor_structlog(root: Path) -> None:
    probe = (
        "import sys\nfrom agent.cli import main\n"
        "code = main(['--root', sys.argv[1], 'check', '--format', 'json'])\n"
        "heavy = sorted(m for m in sys.modules\n"
        "               if m.split('.')[0] in ('requests', 'urllib3', 'structlog', 'yaml'))\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy) + '\\n')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(root)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert "HEAVY=\n" in proc.stderr, proc.stderr


def test_colour_only_on_a_tty(root: Path) -> None:
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "agent", "--root", str(root), "check"],
            stdout=slave,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
            timeout=60,
            check=False,
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    out = b"".join(chunks).decode()
    assert "\033[32mpass" in out and proc.returncode in (0, 1, 2)


# --- check --report and run -----------------------------------------------------------------------


@pytest.fixture
def api(api: ApiServer) -> ApiServer:
    """The shared API server (tests/conftest.py), knowing what the fake aws plugin issues."""
    accept_fake_aws_tokens(api, 9, f"system:node:{NODE_NAME}")
    return api


def with_cluster(root: Path, api: ApiServer, config: str = "") -> Path:
    write_kubeconfig(root, api)
    write(root, "/etc/gpu-node-agent/config.yaml", config or "report:\n  timeout_seconds: 10\n")
    return root


def test_check_report_publishes(root: Path, api: ApiServer, aws: FakeAws, capsys: pytest.CaptureFixture) -> None:
    with_cluster(root, api)
    code, out, _ = run_cli(["--root", str(root), "check", "--report"], capsys)
    assert f"published: node {NODE_NAME} (--hostname-override in /etc/eks/kubelet/environment)" in out
    node = api.nodes[NODE_NAME]
    health = node["metadata"]["annotations"]["gpu-node-agent/health"]
    assert code == EXIT_FOR[health]
    assert {c["type"] for c in node["status"]["conditions"]} >= {"Ready", "GPUNodeAgentReady"}
    status = json.loads((root / "run/gpu-node-agent/status.json").read_text())
    assert status["publish"]["ok"] is True and status["health"] == health


def test_check_report_json_includes_the_outcome(
    root: Path, api: ApiServer, aws: FakeAws, capsys: pytest.CaptureFixture
) -> None:
    with_cluster(root, api)
    _, doc, _ = check_json(root, capsys, "--report")
    assert doc["publish"]["ok"] is True and doc["publish"]["node"] == NODE_NAME


def test_check_report_failure_exits_1(root: Path, api: ApiServer, aws: FakeAws, capsys: pytest.CaptureFixture) -> None:
    with_cluster(root, api)
    aws.mode("fail")
    code, out, _ = run_cli(["--root", str(root), "check", "--report"], capsys)
    assert code == 1 and "not published: exec plugin aws: exited with 255: An error occurred" in out


def test_check_report_without_publishing_refreshes_the_status_file_only(
    root: Path, capsys: pytest.CaptureFixture
) -> None:
    write(root, "/etc/gpu-node-agent/config.yaml", "report:\n  publish: false\n")  # AMI bake: no cluster
    code, out, _ = run_cli(["--root", str(root), "check", "--report"], capsys)
    assert "published" not in out
    status = json.loads((root / "run/gpu-node-agent/status.json").read_text())
    assert status["publish"] == {"attempted": False}
    assert code == EXIT_FOR[status["health"]]


def test_run_reports_and_a_publishing_failure_keeps_the_repair(
    root: Path, api: ApiServer, aws: FakeAws, capsys: pytest.CaptureFixture
) -> None:
    with_cluster(root, api, "restart:\n  policy: never\nreport:\n  timeout_seconds: 5\n")
    write(
        root,
        "/etc/containerd/config.toml",
        (SAMPLES / "containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml").read_text(),
    )
    api.fail_next("PATCH", f"/api/v1/nodes/{NODE_NAME}", 403)
    code, out, _ = run_cli(["--root", str(root), "run", "--lock-wait", "1"], capsys)
    assert code == 1 and "not published:" in out and "403 Forbidden" in out
    assert "SystemdCgroup = true" in (root / "etc/containerd/config.toml").read_text()  # the repair stays
    status = json.loads((root / "run/gpu-node-agent/status.json").read_text())
    assert status["publish"]["ok"] is False and "403" in status["publish"]["error"]
    assert any("SystemdCgroup" in a for a in status["actions"])
    assert by_name(status)["containerd-config"]["status"] == PASS


def test_run_without_publishing_writes_the_status_file(root: Path, capsys: pytest.CaptureFixture) -> None:
    write(
        root,
        "/etc/gpu-node-agent/config.yaml",
        "restart:\n  policy: never\nreport:\n  publish: false\n"
        "  metrics_file: /var/lib/node_exporter/textfile_collector/gpu_node_agent.prom\n",
    )
    code, out, _ = run_cli(["--root", str(root), "run", "--lock-wait", "1"], capsys)
    assert "published" not in out
    status = json.loads((root / "run/gpu-node-agent/status.json").read_text())
    assert status["publish"] == {"attempted": False}
    assert code == EXIT_FOR[status["health"]]
    prom = (root / "var/lib/node_exporter/textfile_collector/gpu_node_agent.prom").read_text()
    assert f'gpu_node_agent_health{{health="{status["health"]}"}} 1' in prom


def test_run_counts_restarts_for_the_metrics(
    root: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.pipeline import apply

    write(
        root,
        "/etc/gpu-node-agent/config.yaml",
        "report:\n  publish: false\n  metrics_file: /var/lib/node_exporter/textfile_collector/gna.prom\n",
    )
    restarted = apply.ApplyResult(restarted=["containerd.service", "kubelet.service"])
    monkeypatch.setattr(apply, "apply", lambda plan, **kw: restarted)  # the restarts themselves: test_systemd_*
    for _ in range(2):
        run_cli(["--root", str(root), "run", "--lock-wait", "1"], capsys)
    status = json.loads((root / "run/gpu-node-agent/status.json").read_text())
    assert status["restarts_total"] == {"containerd.service": 2, "kubelet.service": 2}
    prom = (root / "var/lib/node_exporter/textfile_collector/gna.prom").read_text()
    assert 'gpu_node_agent_restarts_total{unit="containerd.service"} 2' in prom


def test_run_repair_is_an_event_and_the_next_heartbeat_writes_nothing(
    root: Path, api: ApiServer, aws: FakeAws, capsys: pytest.CaptureFixture
) -> None:
    with_cluster(root, api)
    toolkit = "/etc/nvidia-container-runtime/config.toml"
    write(root, toolkit, (SAMPLES / "nvidia-container-runtime-legacy.toml").read_text())  # no restart needed
    run_cli(["--root", str(root), "run", "--lock-wait", "1"], capsys)
    repaired = [e for e in api.events.values() if e["reason"] == "FileRepaired"]
    assert len(repaired) == 1 and repaired[0]["message"].startswith(f"{toolkit}: ")
    assert repaired[0]["involvedObject"]["uid"] == api.nodes[NODE_NAME]["metadata"]["uid"]
    report = json.loads(api.nodes[NODE_NAME]["metadata"]["annotations"]["gpu-node-agent/report"])
    before = len(api.requests)
    _, out, _ = run_cli(["--root", str(root), "check", "--report"], capsys)
    assert f"published: node {NODE_NAME} (--hostname-override in /etc/eks/kubelet/environment), unchanged: " \
        "nothing sent" in out
    # the heartbeat after the run: nothing changed, nothing sent; one read, gpu-allocatable's (the report uses it)
    assert [r.method for r in api.requests[before:]] == ["GET"]
    assert json.loads(api.nodes[NODE_NAME]["metadata"]["annotations"]["gpu-node-agent/report"]) == report
    assert any(toolkit in a for a in report["actions"])  # the run's repair stays visible
