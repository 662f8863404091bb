"""apply's restart orchestration: order, rollback, what is reported. systemd is scripted here so the
rarer branches (the rollback restart failing too, the bus vanishing between plan and apply) are
exact; the real-systemd tests (test_systemd_restart.py) prove the same flows end to end.
"""

from pathlib import Path
from typing import Any, List, Optional, Union

import pytest

from agent.apply import apply
from agent.fs import FileEdit
from agent.health import FAIL, SKIP, WARN
from agent.plan import NotRestarted, Plan, Restart
from agent.systemd import BusUnreachable, JobFailed, RestartOutcome, SystemdError, UnitState

CONTAINERD = "containerd.service"
KUBELET = "kubelet.service"


class ScriptedSystemd:
    """Stands in for ``SystemdClient``: each restart pops the next scripted result for that unit."""

    def __init__(self, **script: List[Optional[SystemdError]]) -> None:
        self.script = {k.replace("_", "."): list(v) for k, v in script.items()}
        self.calls: List[str] = []
        self.closed = False

    def restart(self, unit: str, timeout: float, *, reset_failed: bool = False) -> RestartOutcome:
        self.calls.append(unit)
        outcome = self.script.get(unit, [None]).pop(0) if self.script.get(unit) else None
        if outcome is not None:
            raise outcome
        state = UnitState(unit, "loaded", "active", "running", 1, 7)
        return RestartOutcome(unit, "/job/1", "done", state, state, 0.01)

    def __enter__(self) -> "ScriptedSystemd":
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True


def failed(unit: str) -> JobFailed:
    return JobFailed(
        f"{unit}: restart job finished with result 'failed', expected 'done'; now failed (failed)",
        unit,
        "failed",
    )


@pytest.fixture
def edit(tmp_path: Path) -> FileEdit:
    path = tmp_path / "config.toml"
    path.write_text("old\n")
    return FileEdit(path, "old\n", "new\n", ("SystemdCgroup = true (was not set)",), "containerd")


def plan_for(edit: Optional[FileEdit], rollback: bool = True, **kw: Any) -> Plan:
    restarts = (
        Restart(CONTAINERD, "this run changes its configuration", rollback_on_failure=rollback),
        Restart(KUBELET, "after containerd.service"),
    )
    return Plan(edits=(edit,) if edit else (), restarts=restarts, **kw)


def run(plan: Plan, client: Union[ScriptedSystemd, SystemdError]) -> Any:
    def connect(timeout: float) -> Any:
        assert timeout == 7
        if isinstance(client, SystemdError):
            raise client
        return client

    return apply(plan, restart_timeout=7, connect=connect)


def test_restarts_in_order_after_the_edit(edit: FileEdit) -> None:
    client = ScriptedSystemd()
    result = run(plan_for(edit), client)
    assert edit.path.read_text() == "new\n"
    assert client.calls == [CONTAINERD, KUBELET] and client.closed
    assert result.restarted == [CONTAINERD, KUBELET]
    assert result.failures == []
    assert result.actions[-2:] == [
        "restarted containerd.service: this run changes its configuration",
        "restarted kubelet.service: after containerd.service",
    ]


def test_rollback_restores_the_file_and_restarts_containerd_again(edit: FileEdit) -> None:
    client = ScriptedSystemd(containerd_service=[failed(CONTAINERD)])
    result = run(plan_for(edit), client)
    assert edit.path.read_text() == "old\n"
    assert client.calls == [CONTAINERD, CONTAINERD, KUBELET]
    assert result.written == []
    assert f"rolled back {edit.path}: containerd.service did not come back serving with it" in result.actions
    assert result.failures == [
        str(failed(CONTAINERD)),
        "containerd.service did not come back serving with this run's configuration change; the previous "
        "configuration is restored and containerd.service serves again",
    ]


def test_rollback_restart_failing_too_stops_there(edit: FileEdit) -> None:
    client = ScriptedSystemd(containerd_service=[failed(CONTAINERD), failed(CONTAINERD)])
    result = run(plan_for(edit), client)
    assert edit.path.read_text() == "old\n"
    assert client.calls == [CONTAINERD, CONTAINERD]
    assert result.failures[-1] == "kubelet.service: not restarted: containerd.service is not active"
    assert result.restarted == []


def test_no_rollback_when_the_restart_was_not_for_an_edit(edit: FileEdit) -> None:
    client = ScriptedSystemd(containerd_service=[failed(CONTAINERD)])
    result = run(plan_for(None, rollback=False), client)
    assert edit.path.read_text() == "old\n"  # untouched: not part of this plan
    assert client.calls == [CONTAINERD]
    assert result.failures == [
        str(failed(CONTAINERD)),
        "kubelet.service: not restarted: containerd.service is not active",
    ]


@pytest.mark.parametrize("containerd", ["restarts", "fails"])
def test_a_file_rewritten_after_planning_is_not_overwritten(edit: FileEdit, containerd: str) -> None:
    edit.path.write_text("rewritten by nodeadm\n")  # between the plan and its write
    client = ScriptedSystemd(containerd_service=[failed(CONTAINERD)] if containerd == "fails" else [])
    result = run(plan_for(edit), client)
    assert edit.path.read_text() == "rewritten by nodeadm\n"  # neither the plan's text nor a rollback's
    assert result.written == []
    assert result.failures[0] == f"{edit.path}: changed while the agent was planning; nothing written"
    assert not any(a.startswith(f"{edit.path}: ") for a in result.actions)


def test_kubelet_failing_does_not_undo_containerd(edit: FileEdit) -> None:
    client = ScriptedSystemd(kubelet_service=[failed(KUBELET)])
    result = run(plan_for(edit), client)
    assert edit.path.read_text() == "new\n"
    assert result.restarted == [CONTAINERD]
    assert result.failures == [str(failed(KUBELET))]


def test_bus_gone_between_plan_and_apply(edit: FileEdit) -> None:
    result = run(plan_for(edit), BusUnreachable("system bus unix:path=/x: Could not connect"))
    assert edit.path.read_text() == "new\n"  # the files are still reconciled
    assert result.failures == [
        "restart pending: containerd.service: this run changes its configuration; cannot restart it: "
        "system bus unix:path=/x: Could not connect",
        "restart pending: kubelet.service: after containerd.service; cannot restart it: "
        "system bus unix:path=/x: Could not connect",
    ]


def test_held_restarts_are_reported_by_status(edit: FileEdit) -> None:
    held = (
        NotRestarted(CONTAINERD, "reason A; not restarting it (restart.policy: never)", WARN),
        NotRestarted(KUBELET, "reason B", SKIP),
        NotRestarted("x.service", "reason C; cannot restart it: no bus", FAIL),
    )
    client = ScriptedSystemd()
    result = apply(Plan(edits=(edit,), not_restarted=held), restart_timeout=7, connect=lambda t: client)  # type: ignore[arg-type,return-value]
    assert client.calls == []
    assert (
        "restart pending: containerd.service: reason A; not restarting it (restart.policy: never)"
        in result.actions
    )
    assert result.failures == ["restart pending: x.service: reason C; cannot restart it: no bus"]
    assert not any("reason B" in a for a in result.actions + result.failures)
