"""A scripted systemd for ``apply``'s restarts, and the plans and runs the restart tests share."""

from typing import Any, Callable, List, Optional, Union

from agent.base.fs import FileEdit
from agent.pipeline.apply import apply
from agent.pipeline.plan import Plan, Restart
from agent.systemd.errors import JobFailed, SystemdError
from agent.systemd.jobs import RestartOutcome
from agent.systemd.state import UnitState

CONTAINERD = "containerd.service"
KUBELET = "kubelet.service"


class ScriptedSystemd:
    """Stands in for ``SystemdClient``: each restart pops the next scripted result for that unit."""

    def __init__(self, during: Optional[Callable[[], None]] = None, **script: List[Optional[SystemdError]]) -> None:
        self.script = {k.replace("_", "."): list(v) for k, v in script.items()}
        self.calls: List[str] = []
        self.timeouts: List[float] = []
        self.closed = False
        self.during = during  # runs inside the first restart (something else changing the node meanwhile)

    def restart(self, unit: str, timeout: float, *, reset_failed: bool = False) -> RestartOutcome:
        self.calls.append(unit)
        self.timeouts.append(timeout)
        if self.during is not None:
            self.during()
            self.during = None
        outcome = self.script.get(unit, [None]).pop(0) if self.script.get(unit) else None
        if outcome is not None:
            raise outcome
        state = UnitState(unit, "loaded", "active", "running", 1, 7)
        return RestartOutcome(unit, "/job/1", "done", state, state, 0.0123456)

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
