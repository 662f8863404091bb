"""Boot pass records in the status file, `gpu-node-agent prepare` and `gpu-node-agent status`, on a
simulated node (real files under a --root; no systemd here: the boot tests run both passes on a real
one)."""

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from agent import cli
from agent.base.noderoot import NodeRoot
from agent.config.settings import AgentConfig, EfaSettings
from agent.pipeline import prepare
from agent.pipeline.health import FAIL, PASS, SKIP, WARN, CheckResult
from agent.pipeline.plan import NotRestarted, Plan, Restart
from agent.report import status
from tests.support.gpu_node import healthy_gpu_node
from tests.support.lock_helpers import HOLDER_COMMAND, holding_the_lock
from tests.support.paths import sample

# The unit checks as on a healthy node: these tests are about the pass records (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("units_serving")

BOOT = "0b5e2a4c-7d1e-4f4a-9c1b-2f8e6d3a1b00"
STATUS = "run/gpu-node-agent/status.json"
CONFIG = "report:\n  publish: false\nrestart:\n  policy: never\n"


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")  # no systemd here
    node = healthy_gpu_node(tmp_path / "node")
    (node / "proc/sys/kernel/random").mkdir(parents=True)
    (node / "proc/sys/kernel/random/boot_id").write_text(BOOT + "\n")
    (node / "etc/gpu-node-agent").mkdir(parents=True, exist_ok=True)
    (node / "etc/gpu-node-agent/config.yaml").write_text(CONFIG)
    return node


def agent(root: Path, *args: str) -> int:
    return cli.main(["--root", str(root), "-q", *args])


def document(root: Path) -> Dict[str, Any]:
    return dict(json.loads((root / STATUS).read_text()))


# --- the pass records -------------------------------------------------------------------------------


def test_each_pass_records_itself_and_keeps_the_others(root: Path) -> None:
    assert agent(root, "prepare") == 0
    first = document(root)["passes"]
    assert list(first) == ["prepare"]
    assert agent(root, "run") == 0
    assert agent(root, "check", "--report") == 0
    doc = document(root)
    assert list(doc["passes"]) == ["prepare", "run", "check"]
    assert doc["passes"]["prepare"] == first["prepare"]  # untouched by the later passes and reports
    for name, record in doc["passes"].items():
        assert set(record) >= {"started", "finished", "duration_seconds", "health", "exit_code", "actions",
                               "boot_id", "unit"}, name
        assert record["boot_id"] == BOOT and record["health"] == "healthy" and record["exit_code"] == 0
        assert record["started"] <= record["finished"] and record["duration_seconds"] >= 0
    assert doc["passes"]["run"]["unit_done"] is False  # not gpu-node-agent.service's run
    assert doc["health"] == "healthy" and doc["v"] == 1  # the report itself is still all there


def test_prepare_fixes_the_file_and_records_the_edit(root: Path) -> None:
    config = root / "etc/containerd/config.toml"
    config.write_text(sample("containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml"))

    assert agent(root, "prepare") == 0

    assert config.read_text() == sample("containerd-v3-nodeadm-nvidia.toml")
    edit, *later = document(root)["passes"]["prepare"]["actions"]
    assert "SystemdCgroup" in edit
    # No systemd here, and restart.policy: never: the restart the edit needs is the run pass's business.
    assert [a.split(":")[0] for a in later] == ["restart left to the pass after nodeadm-run"] * 2
    assert document(root)["publish"] == {"attempted": False}  # never the cluster


def test_a_pass_that_fails_on_its_configuration_is_recorded_too(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "etc/gpu-node-agent/config.yaml").write_text("efa:\n  before_kubelet: maybe\n")
    assert agent(root, "run") == 64
    assert "efa.before_kubelet: expected true or false" in capsys.readouterr().err
    record = document(root)["passes"]["run"]
    assert (record["exit_code"], record["health"]) == (64, None)
    assert record["actions"][0].startswith("failed: ")


def test_a_corrupt_status_file_is_replaced_by_the_next_pass(root: Path) -> None:
    (root / STATUS).parent.mkdir(parents=True, exist_ok=True)  # the agent's state dir may exist
    (root / STATUS).write_text("{not json")
    assert agent(root, "prepare") == 0
    assert list(document(root)["passes"]) == ["prepare"]


# --- status --------------------------------------------------------------------------------------------


def test_status_shows_this_boots_passes(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert agent(root, "prepare") == 0
    capsys.readouterr()
    assert agent(root, "status", "--format", "json") == 0
    view = json.loads(capsys.readouterr().out)
    assert view["status"] == "running"  # gpu-node-agent.service has not run yet
    assert view["boot_id"] == BOOT and view["health"] == "healthy"
    assert view["passes"]["prepare"]["this_boot"] is True

    assert agent(root, "status") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "status: running"
    assert any(line.startswith("prepare ") and "healthy" in line and line.endswith("this") for line in table)


def test_status_after_a_manual_run_says_it_finished(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert agent(root, "prepare") == 0
    assert agent(root, "run") == 0  # by hand: not gpu-node-agent.service's run
    capsys.readouterr()
    assert agent(root, "status", "--format", "json") == 0
    view = json.loads(capsys.readouterr().out)
    assert (view["status"], view["running"]) == ("manual run finished", None)
    assert view["passes"]["run"]["unit_done"] is False
    assert agent(root, "status") == 0
    assert capsys.readouterr().out.splitlines()[0] == \
        "status: manual run finished (gpu-node-agent.service has not run in this boot)"


def test_status_names_the_pass_running_now_and_forgets_it_once_gone(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert agent(root, "prepare") == 0
    assert agent(root, "run") == 0
    capsys.readouterr()
    with holding_the_lock(root) as holder:
        assert agent(root, "status", "--format", "json") == 0
        view = json.loads(capsys.readouterr().out)
        assert (view["status"], view["running"]) == ("running", {"pid": holder.pid, "command": HOLDER_COMMAND})
        assert agent(root, "status") == 0
        assert capsys.readouterr().out.splitlines()[0] == f"status: running (pid {holder.pid}: {HOLDER_COMMAND})"
    assert (root / "run/gpu-node-agent/lock").read_text()  # the record stays; its process does not
    assert agent(root, "status") == 0
    assert capsys.readouterr().out.startswith("status: manual run finished ")


def test_a_pass_holding_the_lock_before_any_record_is_running(root: Path) -> None:
    with holding_the_lock(root) as holder:
        node = NodeRoot(str(root))
        view = status.summary({}, BOOT, disabled=False, running=status.lock_holder(node))
    assert view["status"] == "running" and view["running"]["pid"] == holder.pid
    assert status.summary({}, BOOT, disabled=False, running=status.lock_holder(node))["status"] == "not started"


@pytest.mark.parametrize("args", [("--timeout", "5"), ("--timeout", "5", "--format", "json")])
def test_timeout_without_wait_is_a_usage_error(root: Path, capsys: pytest.CaptureFixture[str], args: Any) -> None:
    assert agent(root, "prepare") == 0
    capsys.readouterr()
    assert agent(root, "status", *args) == 64
    out = capsys.readouterr()
    assert out.out == "" and out.err == "gpu-node-agent: status: --timeout applies only with --wait\n"


def test_status_tells_an_earlier_boots_records(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert agent(root, "prepare") == 0
    (root / "proc/sys/kernel/random/boot_id").write_text("another-boot\n")
    capsys.readouterr()
    agent(root, "status", "--format", "json")
    view = json.loads(capsys.readouterr().out)
    assert view["status"] == "not started" and view["passes"]["prepare"]["this_boot"] is False


@pytest.mark.parametrize(("content", "message"), [
    (None, "no status file"),
    ("{not json", "corrupt status file: not JSON at line 1"),
    ('["a list"]', "corrupt status file: expected a JSON object"),
    ('{"passes": []}', "corrupt status file: 'passes' is not an object of pass records"),
    ('{"health": {"a": 1}}', "corrupt status file: 'health' is dict, not what the agent writes there"),
    ('{"passes": {"run": {"actions": 5}}}', "corrupt status file: 'passes.run.actions' is int"),
    ('{"passes": {"run": {"actions": [1]}}}', "corrupt status file: 'passes.run.actions' is list"),
    ('{"passes": {"check": {"duration_seconds": "1s"}}}', "'passes.check.duration_seconds' is str"),
    ('{"passes": {"run": {"exit_code": true}}}', "'passes.run.exit_code' is bool"),
])
def test_status_without_a_usable_file_says_so_in_one_line(
    root: Path, capsys: pytest.CaptureFixture[str], content: Any, message: str
) -> None:
    if content is not None:
        (root / STATUS).parent.mkdir(parents=True, exist_ok=True)  # the agent's state dir may exist
        (root / STATUS).write_text(content)
    assert agent(root, "status") == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and message in out.err
    assert out.err.startswith(f"gpu-node-agent: {root / STATUS}: ")


def test_status_wait_times_out_with_one_line(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert agent(root, "status", "--wait", "--timeout", "0.2") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "timed out after 0.2s waiting for this boot's agent run" in err


def _record(name: str, boot: str, **extra: Any) -> Dict[str, Any]:
    return {"started": "2026-12-01T21:00:00.000Z", "finished": "2026-12-01T21:00:01.000Z",
            "duration_seconds": 1.0, "health": "healthy", "exit_code": 0, "actions": [], "boot_id": boot,
            "unit": name, **extra}


def test_wait_returns_once_the_units_run_of_this_boot_is_recorded(root: Path) -> None:
    path = root / STATUS
    path.parent.mkdir(parents=True, exist_ok=True)
    steps: List[Dict[str, Any]] = [
        {},  # nothing yet: keeps waiting
        {"health": "healthy", "passes": {"prepare": _record("gpu-node-agent-prepare.service", BOOT)}},
        {"health": "healthy", "passes": {"run": _record("cloud-final.service", BOOT, unit_done=False)}},
        {"health": "healthy", "passes": {"run": _record("gpu-node-agent.service", "earlier", unit_done=True)}},
        {"health": "degraded", "passes": {"run": _record("gpu-node-agent.service", BOOT, unit_done=True)}},
    ]
    seen: List[str] = []

    def sleep(_: float) -> None:
        doc = steps.pop(0)
        if doc:
            path.write_text(json.dumps(doc))
        seen.append("tick")

    view = status.wait_for_run(NodeRoot(str(root)), path, 60, clock=lambda: 0.0, sleep=sleep)
    assert len(seen) == 5 and view["status"] == "done" and status.exit_code(view) == 2


def test_a_disabled_node_is_done_waiting_at_once(root: Path) -> None:
    (root / "etc/gpu-node-agent/disabled").write_text("")
    view = status.wait_for_run(NodeRoot(str(root)), root / STATUS, 60, clock=lambda: 0.0,
                               sleep=lambda _: pytest.fail("waited"))
    assert view["status"] == "disabled" and status.exit_code(view) == 0


def test_a_failed_pass_of_this_boot_makes_status_fail() -> None:
    doc = {"health": "healthy", "passes": {"prepare": _record("p", BOOT, exit_code=75),
                                           "run": _record("r", "earlier", exit_code=1)}}
    assert status.exit_code(status.summary(doc, BOOT, disabled=False)) == 1
    doc["passes"]["prepare"]["exit_code"] = 2
    assert status.exit_code(status.summary(doc, BOOT, disabled=False)) == 0  # the earlier boot's 1 is history


# --- the prepare pass, pure parts -----------------------------------------------------------------------


class _Efa:
    install = True

    def describe(self) -> str:
        return "install aws-efa-installer 1.48.0"


def test_files_only_drops_restarts_and_says_what_it_leaves(tmp_path: Path) -> None:
    plan = Plan(restarts=(Restart("containerd.service", "the daemon runs an older configuration"),),
                not_restarted=(NotRestarted("kubelet.service", "after containerd.service", WARN),
                               NotRestarted("x.service", "not loaded", SKIP)),
                efa=_Efa())  # type: ignore[arg-type]
    now, later = prepare.files_only(plan, AgentConfig())
    assert (now.restarts, now.not_restarted, now.efa) == ((), (), plan.efa)
    assert later == [
        "restart left to the pass after nodeadm-run: containerd.service: the daemon runs an older configuration",
        "restart left to the pass after nodeadm-run: kubelet.service: after containerd.service",
    ]
    opted_out = AgentConfig(efa=EfaSettings(before_kubelet=False))
    now, later = prepare.files_only(plan, opted_out)
    assert now.efa is None
    assert later[-1] == ("EFA userspace left to the pass after nodeadm-run (efa.before_kubelet: false): "
                         "install aws-efa-installer 1.48.0")


def test_a_daemon_not_started_yet_is_not_a_failure_before_nodeadm_run() -> None:
    inactive = {"unit": "containerd.service", "load_state": "loaded", "active_state": "inactive"}
    results = [
        CheckResult("containerd-running", FAIL, "containerd.service inactive, expected active", inactive),
        CheckResult("kubelet-running", FAIL, "kubelet.service failed", {**inactive, "active_state": "failed"}),
        CheckResult("efa", FAIL, "EFA userspace not installed"),
        CheckResult("nvidia-driver", PASS, "ok"),
    ]
    out = prepare.before_start(results, efa_deferred=True)
    assert [r.status for r in out] == [SKIP, FAIL, SKIP, PASS]  # a daemon that failed still fails
    assert out[0].message == "containerd.service not started yet: nodeadm-run starts it after this pass"
    assert prepare.before_start(results, efa_deferred=False)[2].status == FAIL


def test_a_disabled_node_shows_disabled_with_its_last_health(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The health the agent recorded before the node was disabled stays visible, and decides the exit code."""
    doc = {"health": "unhealthy", "time": "2026-07-20T10:00:00Z",
           "passes": {"run": _record("r", BOOT, exit_code=1)}}
    (root / STATUS).parent.mkdir(parents=True, exist_ok=True)
    (root / STATUS).write_text(json.dumps(doc))
    (root / "etc/gpu-node-agent/disabled").write_text("")
    capsys.readouterr()
    assert agent(root, "status") == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["status: disabled (/etc/gpu-node-agent/disabled exists: the agent's units and passes do "
                         "nothing)", "health: unhealthy (last report: 2026-07-20T10:00:00Z)"]
    (root / STATUS).unlink()
    assert agent(root, "status") == 0  # disabled before any report: nothing to worry about
