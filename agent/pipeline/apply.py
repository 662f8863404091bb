"""Effects: carry out a ``Plan`` in order. The only module that changes what the node runs: the files
the agent manages, unit restarts, the EFA install.

Discovery and reporting write only the agent's own state and reports (``/run/gpu-node-agent``: the
parsed-TOML cache in ``agent/toml/cache.py`` and the small caches of ``agent/gpu/inventory.py``,
``agent/gpu/fabric.py`` and ``agent/gpu/xid.py``; the status file and metrics), never a node file.

Each edit is written atomically, and only if the file still holds the text the plan was made from
(nodeadm may rewrite it meanwhile). What was written is kept so a later step can roll it back.
"""


from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

from agent.base.errors import AgentError, NodeFileError
from agent.base.fs import FileEdit, atomic_write, read_text
from agent.base.log import get_logger
from agent.base.text import clip
from agent.pipeline.health import FAIL, WARN
from agent.pipeline.plan import Plan, Restart

if TYPE_CHECKING:
    from agent.daemons.serving import Serving
    from agent.systemd.client import SystemdClient

log = get_logger("apply")
BEFORE_PROBE_SECONDS = 5.0  # asking containerd before a restart that loads this run's edit


@dataclass
class ApplyResult:
    written: List[FileEdit] = field(default_factory=list)
    actions: List[str] = field(default_factory=list)
    failures: List[str] = field(default_factory=list)
    restarted: List[str] = field(default_factory=list)  # units, in the order they were restarted
    # Restarts needed but not done, by unit: (WARN or FAIL, why). ``run`` shows them in the unit's
    # check, so the report, the condition and the exit code all say the restart is pending.
    pending: Dict[str, Tuple[str, str]] = field(default_factory=dict)


def write_edit(edit: FileEdit) -> None:
    current = read_text(edit.path)
    if current != edit.old_text:
        raise NodeFileError(edit.path, "changed while the agent was planning; nothing written")
    # compare-and-swap: a writer that replaces the file from here on is detected, and its file kept
    atomic_write(edit.path, edit.new_text.encode("utf-8"), expected=edit.old_text.encode("utf-8"))


def rollback(edits: List[FileEdit]) -> List[str]:
    """Put back the previous contents of files this run wrote; returns failures (empty: all restored).

    Compare-and-swap: only a file that still holds what this run wrote is rolled back; a newer
    version from another writer (nodeadm, an operator) is kept and the failure says so."""
    failures = []
    for edit in reversed(edits):
        try:
            atomic_write(edit.path, edit.old_text.encode("utf-8"), expected=edit.new_text.encode("utf-8"))
            log.warning("rolled back", path=str(edit.path))
        except NodeFileError as exc:
            failures.append(str(exc))
    return failures


def apply(
    plan: Plan,
    *,
    restart_timeout: float = 120.0,
    connect: Optional[Callable[[float], SystemdClient]] = None,
) -> ApplyResult:
    result = ApplyResult()
    for edit in plan.edits:
        try:
            write_edit(edit)
        except NodeFileError as exc:
            log.error("edit failed", path=str(edit.path), error=exc.problem)
            result.failures.append(str(exc))
            continue
        result.written.append(edit)
        for reason in edit.reasons:
            result.actions.append(f"{edit.path}: {reason}")
        log.info("file updated", path=str(edit.path), changes=list(edit.reasons))
    restart_units(plan, result, restart_timeout, connect)
    if plan.efa is not None and plan.efa.install:
        from agent.efa import install

        try:
            result.actions.append(install.execute(plan.efa))
        except AgentError as exc:
            log.error("EFA userspace not installed", error=str(exc))
            result.failures.append(str(exc))
    return result


def restart_units(
    plan: Plan,
    result: ApplyResult,
    timeout: float,
    connect: Optional[Callable[[float], SystemdClient]] = None,
) -> None:
    """Restart ``plan.restarts`` in order, after the file edits; each restart bounded by ``timeout``.

    If containerd does not come back active after a restart that loads this run's own edit, the
    edited files get their previous contents back and containerd is restarted again: the agent
    never leaves containerd down because of its own change. That is still a failure (exit 1).
    Unless the error is the one containerd already had before the restart (the same plugin with the
    same message, asked just before it): then the edit did not cause it and rolling it back would not
    cure it, so the edit is kept and the run fails with containerd's reason. The units after it are
    not restarted, and their pending restart names the state that blocked them (not active, or
    active but not serving).
    """
    from agent.systemd import client as systemd
    from agent.systemd import errors as systemd_errors

    for held in plan.not_restarted:
        if held.status == FAIL:
            result.failures.append(f"restart pending: {held.unit}: {held.reason}")
        elif held.status == WARN:
            result.actions.append(f"restart pending: {held.unit}: {held.reason}")
        if held.status in (FAIL, WARN):
            result.pending[held.unit] = (held.status, f"restart pending: {held.reason}")
        log.warning("not restarted", unit=held.unit, reason=held.reason)
    if not plan.restarts:
        return
    try:
        client = (connect or (lambda t: systemd.connect(timeout=t)))(timeout)
    except systemd_errors.SystemdError as exc:
        for restart in plan.restarts:
            why = f"{restart.reason}; cannot restart it: {exc}"
            result.failures.append(f"restart pending: {restart.unit}: {why}")
            result.pending[restart.unit] = (FAIL, f"restart pending: {why}")
        log.error("cannot reach systemd", error=str(exc))
        return
    with client:
        blocked: Optional[str] = None
        for restart in plan.restarts:
            if blocked is not None:
                result.failures.append(f"{restart.unit}: not restarted: {blocked}")
                result.pending[restart.unit] = (FAIL, f"restart pending: {restart.reason}; {blocked}")
                continue
            if restart.only_for_edits and not result.written:  # every edit failed: nothing new to load
                why = "not restarted: this run's configuration change was not written"
                result.failures.append(f"{restart.unit}: {why}")
                result.pending[restart.unit] = (FAIL, f"restart pending: {restart.reason}; {why}")
                blocked = f"{restart.unit} was not restarted"
                continue
            before = _serving_before(restart)
            ok, answer = _restart(client, restart, timeout, result)
            if ok:
                continue
            if answer is not None and _same_error(before, answer):
                # containerd had this very error before the edit: rolling back would not cure it
                result.failures.append(
                    f"{restart.unit}: {answer.message} is the error containerd already had before this run's "
                    "change (same plugin, same message); the change is kept, not rolled back")
                log.error("restart into an earlier error", unit=restart.unit, error=answer.message)
            elif restart.rollback_on_failure and _roll_back(client, restart, timeout, result):
                continue
            if restart is plan.restarts[0]:
                blocked = (f"{restart.unit} is not active" if answer is None
                           else f"{restart.unit} is active but does not serve ({clip(answer.message, 200)})")


def _serving_before(restart: Restart) -> Optional[Serving]:
    """What the daemon says before a restart that loads this run's edit: its error, if it already has
    one, is not the edit's doing (containerd reads its configuration only at start)."""
    from agent.daemons.serving import NOT_SERVING

    if not restart.rollback_on_failure or restart.probe is None:
        return None
    answer = restart.probe.read(BEFORE_PROBE_SECONDS)
    return answer if answer.state == NOT_SERVING else None


def _same_error(before: Optional[Serving], after: Serving) -> bool:
    """The same plugin with the same message: the error was there before the restart."""
    return before is not None and after.state == before.state and after.message == before.message


def _restart(client: SystemdClient, restart: Restart, timeout: float, result: ApplyResult, *,
             reset_failed: bool = False) -> Tuple[bool, Optional[Serving]]:
    """Restart one unit and wait until it serves (its probe says so), all within ``timeout``: whether
    it does, and the daemon's last answer (None when systemd's restart itself failed)."""
    import time

    from agent.daemons import serving
    from agent.systemd.errors import SystemdError

    deadline = time.monotonic() + timeout
    try:
        outcome = client.restart(restart.unit, timeout, reset_failed=reset_failed)
    except SystemdError as exc:
        log.error("restart failed", unit=restart.unit, error=str(exc))
        result.failures.append(str(exc))
        return False, None
    answer = serving.wait(restart.probe, deadline) if restart.probe is not None else None
    if answer is not None and not answer.ok and not (answer.state == serving.UNKNOWN and answer.final):
        problem = f"{restart.unit}: restarted and active, but {answer.message}"
        log.error("restart failed", unit=restart.unit, error=problem)
        result.failures.append(problem)
        return False, answer
    result.restarted.append(restart.unit)
    result.actions.append(f"restarted {restart.unit}: {restart.reason}")
    if answer is not None and not answer.ok:  # the agent cannot ask (e.g. no ctr): systemd's word only
        result.actions.append(f"{restart.unit}: not confirmed serving: {answer.message}")
        log.warning("restart not confirmed", unit=restart.unit, reason=answer.message)
    log.info("restarted", unit=restart.unit, pid=outcome.after.main_pid, seconds=round(outcome.seconds, 3),
             serving=answer.message if answer is not None else None)
    return True, answer


def _roll_back(client: SystemdClient, restart: Restart, timeout: float, result: ApplyResult) -> bool:
    """Put the previous files back and restart ``restart.unit`` again; True when it serves again."""
    restored = 0
    for edit in reversed([e for e in result.written if e.resource == "containerd"]):
        problems = rollback([edit])
        result.failures.extend(problems)
        if not problems:
            restored += 1
            result.written.remove(edit)
            result.actions.append(f"rolled back {edit.path}: {restart.unit} did not come back serving with it")
    if not restored:
        return False
    again = restart._replace(reason="with the previous configuration restored")
    # ResetFailedUnit first: the failed restart counts against systemd's start-rate limit.
    if not _restart(client, again, timeout, result, reset_failed=True)[0]:
        return False
    result.failures.append(
        f"{restart.unit} did not come back serving with this run's configuration change; the previous "
        f"configuration is restored and {restart.unit} serves again"
    )
    return True
