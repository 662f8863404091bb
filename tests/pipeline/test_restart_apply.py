"""apply's restart orchestration: order, rollback, what is reported. systemd is scripted here so the
rarer branches (the rollback restart failing too, the bus vanishing between plan and apply) are
exact; the real-systemd tests (test_systemd_restart.py) prove the same flows end to end.
"""

import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

from agent.base import log
from agent.base.fs import FileEdit
from agent.pipeline.apply import apply
from agent.pipeline.health import FAIL, SKIP, WARN
from agent.pipeline.plan import NotRestarted, Plan, Restart
from agent.systemd.errors import BusUnreachable
from tests.support.restarts import CONTAINERD, KUBELET, ScriptedSystemd, failed, plan_for, run


@pytest.fixture
def edit(tmp_path: Path) -> FileEdit:
    path = tmp_path / "config.toml"
    path.write_text("old\n")
    return FileEdit(path, "old\n", "new\n", ("SystemdCgroup = true (was not set)",), "containerd")


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


# --- what an operator sees: journal events, pending restarts, bounded waits ---------------------------


@pytest.fixture
def journal(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], List[Dict[str, Any]]]]:
    """The JSON log events apply wrote (what journald gets), without their timestamps."""
    log.setup("json", 0)

    def events() -> List[Dict[str, Any]]:
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
        return [{k: v for k, v in e.items() if k != "timestamp"} for e in lines]

    yield events
    log.setup("json", 0)


def assert_events(actual: List[Dict[str, Any]], expected: List[Dict[str, Any]]) -> None:
    """The events, in order, each with at least these fields (a new field elsewhere is fine)."""
    assert len(actual) == len(expected), actual
    for got, want in zip(actual, expected):
        assert want.items() <= got.items(), (got, want)


def test_the_journal_tells_the_rollback_story(edit: FileEdit, journal: Callable[[], List[Dict[str, Any]]]) -> None:
    client = ScriptedSystemd(containerd_service=[failed(CONTAINERD)])
    result = run(plan_for(edit), client)
    path = str(edit.path)
    assert_events(journal(), [
        {"component": "apply", "path": path, "changes": ["SystemdCgroup = true (was not set)"],
         "event": "file updated", "level": "info"},
        {"component": "apply", "unit": CONTAINERD, "error": str(failed(CONTAINERD)), "event": "restart failed",
         "level": "error"},
        {"component": "apply", "path": path, "event": "rolled back", "level": "warning"},
        {"component": "apply", "unit": CONTAINERD, "pid": 7, "seconds": 0.012, "event": "restarted", "level": "info"},
        {"component": "apply", "unit": KUBELET, "pid": 7, "seconds": 0.012, "event": "restarted", "level": "info"},
    ])
    assert result.actions == [
        f"{path}: SystemdCgroup = true (was not set)",
        f"rolled back {path}: containerd.service did not come back serving with it",
        "restarted containerd.service: with the previous configuration restored",
        "restarted kubelet.service: after containerd.service",
    ]


def test_every_restart_is_bounded_by_the_restart_timeout(edit: FileEdit) -> None:
    client = ScriptedSystemd(containerd_service=[failed(CONTAINERD)])
    run(plan_for(edit), client)  # restart, the restart after the rollback, kubelet
    assert client.calls == [CONTAINERD, CONTAINERD, KUBELET]
    assert client.timeouts == [7, 7, 7]


def test_a_rollback_that_cannot_write_restarts_nothing_more(
    edit: FileEdit, tmp_path: Path, journal: Callable[[], List[Dict[str, Any]]]
) -> None:
    def replaced_by_a_symlink() -> None:  # while containerd restarts, someone swaps the file
        edit.path.unlink()
        (tmp_path / "elsewhere.toml").write_text("theirs\n")
        edit.path.symlink_to(tmp_path / "elsewhere.toml")

    client = ScriptedSystemd(during=replaced_by_a_symlink, containerd_service=[failed(CONTAINERD)])
    result = run(plan_for(edit), client)
    assert (tmp_path / "elsewhere.toml").read_text() == "theirs\n" and edit.path.is_symlink()
    assert client.calls == [CONTAINERD]  # nothing was restored: no second restart, and no kubelet
    assert result.failures == [
        str(failed(CONTAINERD)),
        f"{edit.path}: is a symlink; refusing to replace it",
        "kubelet.service: not restarted: containerd.service is not active",
    ]
    assert not any(a.startswith("rolled back") for a in result.actions)
    assert result.pending == {KUBELET: (FAIL, "restart pending: after containerd.service; containerd.service "
                                              "is not active")}
    assert not any(e["event"] == "rolled back" for e in journal())


def test_one_edit_changed_meanwhile_does_not_stop_the_others(
    edit: FileEdit, tmp_path: Path, journal: Callable[[], List[Dict[str, Any]]]
) -> None:
    other_path = tmp_path / "nvidia-runtime.toml"
    other_path.write_text("legacy\n")
    other = FileEdit(other_path, "legacy\n", "default\n", ("back to the packaged default",), "nvidia-runtime")
    edit.path.write_text("rewritten by nodeadm\n")
    result = apply(Plan(edits=(edit, other)), restart_timeout=7, connect=lambda t: ScriptedSystemd())  # type: ignore[arg-type,return-value]
    assert edit.path.read_text() == "rewritten by nodeadm\n" and other_path.read_text() == "default\n"
    assert result.written == [other]
    assert result.actions == [f"{other_path}: back to the packaged default"]
    assert [(e["event"], e["path"]) for e in journal()] == [("edit failed", str(edit.path)),
                                                           ("file updated", str(other_path))]


def test_restarts_that_cannot_happen_are_pending_with_their_reason(edit: FileEdit) -> None:
    gone = BusUnreachable("system bus unix:path=/x: Could not connect")
    result = run(plan_for(edit), gone)
    assert result.pending == {
        CONTAINERD: (FAIL, "restart pending: this run changes its configuration; cannot restart it: "
                           "system bus unix:path=/x: Could not connect"),
        KUBELET: (FAIL, "restart pending: after containerd.service; cannot restart it: "
                        "system bus unix:path=/x: Could not connect"),
    }


def test_held_restarts_are_in_the_journal(edit: FileEdit, journal: Callable[[], List[Dict[str, Any]]]) -> None:
    held = (NotRestarted(CONTAINERD, "reason A; not restarting it (restart.policy: never)", WARN),)
    apply(Plan(edits=(), not_restarted=held), restart_timeout=7, connect=lambda t: ScriptedSystemd())  # type: ignore[arg-type,return-value]
    assert_events(journal(), [{"component": "apply", "unit": CONTAINERD, "event": "not restarted",
                               "level": "warning", "reason": "reason A; not restarting it (restart.policy: never)"}])


def test_bus_gone_is_in_the_journal(edit: FileEdit, journal: Callable[[], List[Dict[str, Any]]]) -> None:
    run(plan_for(None), BusUnreachable("system bus unix:path=/x: Could not connect"))
    assert_events(journal(), [{"component": "apply", "error": "system bus unix:path=/x: Could not connect",
                               "event": "cannot reach systemd", "level": "error"}])


def test_an_edit_that_cannot_be_written_restarts_nothing(edit: FileEdit, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk (ENOSPC, which GPU nodes hit; atomic_write's own error for it is tested on a real
    full tmpfs in test_fs_hostile.py): the restarts that were only for this edit are not done."""
    from agent.base.errors import NodeFileError
    from agent.pipeline import apply as apply_module

    def disk_full(path: Path, data: bytes, **kw: Any) -> None:
        raise NodeFileError(path, "cannot write: No space left on device")

    monkeypatch.setattr(apply_module, "atomic_write", disk_full)
    client = ScriptedSystemd()
    restarts = (Restart(CONTAINERD, "this run changes its configuration", rollback_on_failure=True,
                        only_for_edits=True), Restart(KUBELET, "after containerd.service"))
    result = run(Plan(edits=(edit,), restarts=restarts), client)
    assert client.calls == [] and result.restarted == []
    assert result.failures == [
        f"{edit.path}: cannot write: No space left on device",
        "containerd.service: not restarted: this run's configuration change was not written",
        "kubelet.service: not restarted: containerd.service was not restarted",
    ]
    assert result.pending[CONTAINERD][0] == FAIL and edit.path.read_text() == "old\n"


def test_a_restart_with_a_reason_besides_the_edit_still_happens_when_the_edit_fails(
        edit: FileEdit, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.base.errors import NodeFileError
    from agent.pipeline import apply as apply_module

    def disk_full(path: Path, data: bytes, **kw: Any) -> None:
        raise NodeFileError(path, "cannot write: No space left on device")

    monkeypatch.setattr(apply_module, "atomic_write", disk_full)
    client = ScriptedSystemd()
    result = run(plan_for(edit), client)  # e.g. restart.policy always, or a daemon older than its config
    assert client.calls == [CONTAINERD, KUBELET] and len(result.failures) == 1


def test_the_plan_marks_a_restart_that_is_only_for_edits() -> None:
    from agent.config.settings import RestartSettings
    from agent.pipeline.contract import RestartNeed
    from agent.pipeline.plan import decide_restarts
    from agent.systemd.state import UnitState, UnitStates

    units = UnitStates("bus", (UnitState(CONTAINERD, "loaded", "active", "running", 1, 7),
                               UnitState(KUBELET, "loaded", "active", "running", 2, 8)))
    edit_only = (RestartNeed("this run changes its configuration", from_edit=True),)
    (first, _), _ = decide_restarts(edit_only, units, RestartSettings())
    assert first.only_for_edits
    (first, _), _ = decide_restarts((*edit_only, RestartNeed("the daemon is older than its configuration")),
                                  units, RestartSettings())
    assert not first.only_for_edits
    (first, _), _ = decide_restarts(edit_only, units, RestartSettings(policy="always"))
    assert not first.only_for_edits
