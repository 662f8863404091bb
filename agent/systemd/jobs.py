"""A restart that waits for its job: ``RestartUnit``, then *that* job's ``JobRemoved``, then ``active``.

Done the way nodeadm does not: subscribe to ``JobRemoved`` first (a fast job can finish before the
call returns), wait for the job's result with a deadline on a private GLib main context, then
confirm ``ActiveState == "active"`` (the job result alone does not say the unit stayed up). Every
failure is one ``SystemdError`` line naming the unit and what was expected. The calls go over
``agent/systemd/client.py``'s client (``SystemdClient.restart``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Protocol

from agent.systemd.errors import JobFailed, SystemdError, SystemdTimeout, UnitNotLoaded
from agent.systemd.state import UnitState


class JobClient(Protocol):
    """What a restart needs of ``agent/systemd/client.py``'s ``SystemdClient`` (which calls it)."""

    timeout: float
    clock: Callable[[], float]

    def unit_state(self, name: str, *, deadline: Optional[float] = None) -> UnitState: ...

    def reset_failed(self, name: str, *, deadline: Optional[float] = None) -> None: ...

    def service_result(self, name: str, *, deadline: Optional[float] = None) -> str: ...

    def watch_jobs(self, on_job_removed: Callable[..., None], deadline: float) -> Any: ...

    def restart_unit(self, name: str, deadline: float) -> str: ...


class RestartOutcome(NamedTuple):
    unit: str
    job: str
    result: str  # "done"
    before: UnitState
    after: UnitState
    seconds: float  # from the RestartUnit call to ActiveState confirmed "active"


def restart(client: JobClient, name: str, timeout: float, *, reset_failed: bool = False) -> RestartOutcome:
    """Restart ``name`` and wait, at most ``timeout`` seconds, until it is confirmed active.

    A unit in ``failed`` (or any unit, with ``reset_failed``) gets ``ResetFailedUnit`` first, so
    systemd's start-rate limit cannot refuse the restart (a rollback must not be refused).
    Raises ``UnitNotLoaded``, ``JobFailed`` (result other than done, or not active after it),
    ``SystemdTimeout`` (the job still runs at the deadline) or ``BusUnreachable``.
    """
    from gi.repository import GLib

    clock = client.clock
    deadline = clock() + timeout
    before = client.unit_state(name, deadline=deadline)
    if not before.loaded:
        raise UnitNotLoaded(f"{name}: cannot restart, the unit is not loaded ({before.load_state})", name)
    if reset_failed or before.active_state == "failed":
        client.reset_failed(name, deadline=deadline)
    finished: Dict[str, str] = {}

    def on_job_removed(_sender: str, _path: str, _iface: str, _signal: str, params: Any) -> None:
        _job_id, job, _unit, result = params
        finished[str(job)] = str(result)

    context = GLib.MainContext.new()
    # Signal callbacks are dispatched to the thread-default context current at subscription time,
    # so a private context makes this wait independent of any other main loop in the process.
    context.push_thread_default()
    try:
        subscription = client.watch_jobs(on_job_removed, deadline)
        try:
            started = clock()
            job = client.restart_unit(name, deadline)
            if not _iterate_until(context, lambda: job in finished, deadline, clock):
                state = _state_after_timeout(client, name)
                raise SystemdTimeout(
                    f"{name}: restart did not finish within {timeout:g}s (job {job} still running; "
                    f"{state})", name)
        finally:
            subscription.unsubscribe()
    finally:
        context.pop_thread_default()
    result = finished[job]
    after = client.unit_state(name, deadline=max(deadline, clock() + 1.0))
    if result != "done":
        why = ""
        if result == "failed" and client.service_result(name, deadline=clock() + 1.0) == "start-limit-hit":
            why = ("; systemd's start-rate limit was hit (too many starts in a short time), not a problem "
                   "of the configuration")
        raise JobFailed(f"{name}: restart job finished with result '{result}', expected 'done'; now "
                        f"{after.active_state} ({after.sub_state}){why}", name, result)
    if after.active_state != "active":
        raise JobFailed(f"{name}: restart job done but the unit is {after.active_state} "
                        f"({after.sub_state}), expected active", name, result)
    return RestartOutcome(name, job, result, before, after, clock() - started)


def _iterate_until(context: Any, done: Callable[[], bool], deadline: float, clock: Callable[[], float]) -> bool:
    """Run ``context`` until ``done()`` or the deadline; a timeout source bounds each blocking wait."""
    from gi.repository import GLib

    while not done():
        remaining = deadline - clock()
        if remaining <= 0:
            return False
        wake = GLib.timeout_source_new(max(1, int(min(remaining, 0.5) * 1000)))
        wake.set_callback(lambda *_: False)
        wake.attach(context)
        try:
            context.iteration(True)
        finally:
            wake.destroy()
    return True


def _state_after_timeout(client: JobClient, name: str) -> str:
    try:
        state = client.unit_state(name, deadline=client.clock() + min(5.0, client.timeout))
    except SystemdError as exc:
        return f"state unknown: {exc}"
    return f"ActiveState {state.active_state} ({state.sub_state})"
