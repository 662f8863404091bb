"""Boot passes in the status file, and ``gpu-node-agent status`` (like ``cloud-init status --long``).

Each pass of the agent records itself under ``passes`` in ``report.status_file``, keyed by its name:

* ``prepare``: ``gpu-node-agent prepare`` (gpu-node-agent-prepare.service, between nodeadm-config
  and nodeadm-run: files and EFA, no restarts, no publishing);
* ``run``: ``gpu-node-agent run`` (gpu-node-agent.service after nodeadm-run, or by hand);
* ``check``: ``gpu-node-agent check --report`` (the heartbeat).

A record is ``{"started", "finished", "duration_seconds", "health", "exit_code", "actions",
"boot_id", "unit"}`` (``unit``: the systemd unit the pass ran in, e.g. ``cloud-final.service`` for
user data; the ``run`` record also has ``unit_done``: gpu-node-agent.service's run of this boot has
finished, in this record or an earlier one of the same boot). Every writer (each pass's record and
each report, ``report.finish``) reads, merges its part and atomically replaces the file as one step
under the status file's own lock (``update``): passes that overlap (a heartbeat during a ``run``)
never lose each other's records or restart counters.
``boot_id`` is the kernel's ``/proc/sys/kernel/random/boot_id`` (under ``--root``): it tells this
boot's records from those an earlier boot left in a status file kept on disk.
"""


from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from agent.base.errors import AgentError, NodeFileError, NodeFileMissing
from agent.base.fs import LOCK_PATH, atomic_write, file_lock, read_text
from agent.base.lockholder import Holder, holder
from agent.base.noderoot import NodeRoot
from agent.base.timestamps import rfc3339

PASSES = ("prepare", "run", "check")
BOOT_ID = "/proc/sys/kernel/random/boot_id"
STATUS_LOCK = "/run/gpu-node-agent/status.lock"  # see update()
AGENT_UNIT = "gpu-node-agent.service"
DISABLED = "/etc/gpu-node-agent/disabled"  # the units' ConditionPathExists=! switch
DEFAULT_WAIT_TIMEOUT = 1800.0  # nodeadm, then an EFA install (efa.timeout_seconds 1200) and restarts
POLL_SECONDS = 0.5
MANUAL_RUN_FINISHED = "manual run finished"


class StatusFileError(AgentError):
    """The status file is missing or cannot be read as the agent wrote it (exit 1)."""


def _stamp(when: datetime) -> str:
    return rfc3339(when, millis=True)


def boot_id(root: NodeRoot) -> Optional[str]:
    try:
        return read_text(root.path(BOOT_ID)).strip() or None
    except NodeFileError:
        return None


def own_unit() -> Optional[str]:
    """The systemd unit this process runs in (its cgroup), e.g. gpu-node-agent.service; not --root's."""
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        for part in reversed(line.split(":", 2)[-1].split("/")):
            if part.endswith(".service"):
                return part
    return None


# --- recording a pass ------------------------------------------------------------------------------


class PassRecord:
    """One pass, from its start: ``finish()`` writes it into the status file."""

    def __init__(self, root: NodeRoot, name: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        assert name in PASSES, name
        self.root = root
        self.name = name
        self.clock = clock
        self.started = datetime.now(timezone.utc)
        self.t0 = clock()
        self.boot_id = boot_id(root)
        self.unit = own_unit()

    def as_dict(self, health: Optional[str], exit_code: int, actions: Sequence[str]) -> Dict[str, Any]:
        return {
            "started": _stamp(self.started),
            "finished": _stamp(datetime.now(timezone.utc)),
            "duration_seconds": round(self.clock() - self.t0, 3),
            "health": health,
            "exit_code": exit_code,
            "actions": list(actions),
            "boot_id": self.boot_id,
            "unit": self.unit,
        }

    def finish(self, status_file: str, health: Optional[str], exit_code: int,
               actions: Sequence[str] = ()) -> Optional[str]:
        """Record the pass; returns a one-line problem when the file cannot be written (never raises)."""
        record = self.as_dict(health, exit_code, actions)

        def add_record(document: Dict[str, Any]) -> Dict[str, Any]:
            passes = dict(document.get("passes") or {})
            if self.name == "run":
                earlier = passes.get("run")
                record["unit_done"] = self.unit == AGENT_UNIT or bool(
                    isinstance(earlier, dict) and earlier.get("boot_id") == self.boot_id
                    and earlier.get("unit_done"))
            passes[self.name] = record
            return {**document, "passes": {name: passes[name] for name in PASSES if name in passes}}

        return update(self.root, status_file, add_record, lambda doc: json.dumps(doc, indent=2) + "\n")[0]


def update(root: NodeRoot, status_file: str, change: Callable[[Dict[str, Any]], Dict[str, Any]],
           render: Callable[[Dict[str, Any]], str]) -> Tuple[Optional[str], Dict[str, Any]]:
    """Read, change and replace the status file as one step: ``change`` gets the current document
    (``{}`` when unreadable) and returns the new one, which ``render`` turns into the file's text.
    Returns a one-line problem (None: written) and the document as ``change`` made it; never raises.

    Every writer of the status file (each pass's record, each report, from ``prepare``, ``run`` and
    the ``check --report`` heartbeat, which can overlap) goes through here, under a lock of its own
    (``STATUS_LOCK``, held for the milliseconds of the read and the write, never across a restart or
    a request: the run lock cannot serve, a heartbeat must not wait minutes for a run). Each writer
    merges its part into what the file holds at that moment, so none loses another's (a pass record,
    a restart counter); the replace is atomic, so a reader never sees half of it.
    """
    from agent.config.rules import resolved_output

    path = root.path(status_file)
    document: Dict[str, Any] = {}
    try:
        path = resolved_output(root, status_file, "report.status_file")
        with file_lock(root.path(STATUS_LOCK), "the status file's lock"):
            document = change(_read_document(path))
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            atomic_write(path, render(document).encode())
    except NodeFileError as exc:  # the file itself, or its lock (then named after the file)
        return (str(exc) if exc.path == str(path) else f"{path}: not written: {exc}"), document
    except OSError as exc:
        return f"{path}: cannot write: {exc.strerror or exc}", document
    return None, document


def _read_document(path: Path) -> Dict[str, Any]:
    """The status file as a dict; anything unreadable counts as empty (the next report rewrites it)."""
    try:
        doc = json.loads(read_text(path))
    except (NodeFileError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    if not isinstance(doc.get("passes"), dict):
        doc.pop("passes", None)
    return doc


def restarts_of(doc: Mapping[str, Any]) -> Dict[str, int]:
    """The restart counters since boot a status file document holds (none when unreadable)."""
    counts = doc.get("restarts_total")
    if not isinstance(counts, Mapping):
        return {}
    return {str(k): int(v) for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0}


def carried(path: Path) -> Dict[str, Any]:
    """``{"passes", "timeline", "restarts_total"}`` of the current status file, as a report starts (its
    final write merges again under the file's lock: ``update``)."""
    doc = _read_document(path)
    keys = ("passes", "timeline", "restarts_total")
    return {key: doc[key] for key in keys if isinstance(doc.get(key), dict) and doc[key]}


# --- reading: `gpu-node-agent status` --------------------------------------------------------------


def load(path: Path) -> Dict[str, Any]:
    """The status file, or a ``StatusFileError`` line saying why it cannot be used."""
    try:
        text = read_text(path)
    except NodeFileMissing:
        raise StatusFileError(f"{path}: no status file: the agent has not reported since boot "
                              "(gpu-node-agent-prepare and gpu-node-agent write it)") from None
    except NodeFileError as exc:
        raise StatusFileError(str(exc)) from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        where = f" at line {line}" if line else ""
        raise StatusFileError(f"{path}: corrupt status file: not JSON{where}") from None
    if not isinstance(doc, dict):
        raise StatusFileError(f"{path}: corrupt status file: expected a JSON object")
    passes = doc.get("passes", {})
    if not isinstance(passes, dict) or not all(isinstance(p, dict) for p in passes.values()):
        raise StatusFileError(f"{path}: corrupt status file: 'passes' is not an object of pass records")
    problem = _wrong_type(doc, _DOCUMENT_TYPES, "") or next(
        (p for name, record in passes.items() if (p := _wrong_type(record, _RECORD_TYPES, f"passes.{name}."))), None)
    if problem:
        raise StatusFileError(f"{path}: corrupt status file: {problem}")
    return doc


_STR, _NUMBER = (str, type(None)), (int, float, type(None))
# What ``status`` reads, and what each may be (the agent writes these; anything else is corrupt).
_DOCUMENT_TYPES = {"health": _STR, "time": _STR}
_RECORD_TYPES = {"started": _STR, "finished": _STR, "health": _STR, "boot_id": _STR, "unit": _STR,
                 "duration_seconds": _NUMBER, "exit_code": (int, type(None)), "actions": (list,),
                 "unit_done": (bool,)}


def _wrong_type(doc: Mapping[str, Any], types: Mapping[str, Tuple[type, ...]], prefix: str) -> Optional[str]:
    for key, allowed in types.items():
        if key not in doc:
            continue
        value = doc[key]
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if ok and key == "actions":
            ok = all(isinstance(a, str) for a in value)
        if not ok:
            return f"'{prefix}{key}' is {type(value).__name__}, not what the agent writes there"
    return None


def summary(doc: Mapping[str, Any], current_boot: Optional[str], *, disabled: bool,
            running: Optional[Holder] = None) -> Dict[str, Any]:
    """What ``status --format json`` prints.

    ``status``: ``done`` (gpu-node-agent.service's run of this boot finished), ``running`` (a pass
    holds the run lock now, ``running``; or some pass of this boot finished, that run not yet),
    ``manual run finished`` (a ``run`` of this boot outside that unit finished, none runs now),
    ``not started`` (no pass of this boot yet) or ``disabled``.
    Without a readable boot id, every record counts as this boot's.
    """
    passes: Dict[str, Any] = {}
    for name in PASSES:
        record = doc.get("passes", {}).get(name)
        if isinstance(record, dict):
            this_boot = current_boot is None or record.get("boot_id") == current_boot
            passes[name] = {**record, "this_boot": this_boot}
    if disabled:
        state = "disabled"
    elif passes.get("run", {}).get("this_boot") and passes["run"].get("unit_done"):
        state = "done"
    elif running is not None:
        state = "running"
    elif passes.get("run", {}).get("this_boot"):
        state = MANUAL_RUN_FINISHED
    elif any(p["this_boot"] for p in passes.values()):
        state = "running"
    else:
        state = "not started"
    timeline = doc.get("timeline")  # agent/report/timeline.py: this boot's only
    this_boot = isinstance(timeline, dict) and (current_boot is None or timeline.get("boot_id") == current_boot)
    return {
        "status": state,
        "boot_id": current_boot,
        "health": doc.get("health"),
        "last_report": doc.get("time"),
        "running": running._asdict() if running is not None and state == "running" else None,
        "passes": passes,
        "timeline": timeline if this_boot else None,
    }


def exit_code(view: Mapping[str, Any]) -> int:
    """0 healthy, 2 degraded, 1 unhealthy, a failed pass of this boot, or no report; a disabled node:
    its last health (0 without a report)."""
    from agent.pipeline.health import exit_code_for

    if view["status"] == "disabled":
        return exit_code_for(view["health"]) if view["health"] else 0
    for record in view["passes"].values():
        if record["this_boot"] and record.get("exit_code") not in (0, 2):
            return 1
    return exit_code_for(view["health"]) if view["health"] else 1


def _state_line(view: Mapping[str, Any]) -> str:
    running = view.get("running")
    if running:
        return f"status: running ({Holder(**running).describe()})"
    if view["status"] == MANUAL_RUN_FINISHED:
        return f"status: {MANUAL_RUN_FINISHED} ({AGENT_UNIT} has not run in this boot)"
    if view["status"] == "disabled":
        return f"status: disabled ({DISABLED} exists: the agent's units and passes do nothing)"
    return f"status: {view['status']}"


def render_table(view: Mapping[str, Any]) -> str:
    lines = [
        _state_line(view),
        f"health: {view['health'] or 'unknown'} (last report: {view['last_report'] or 'none'})",
        f"boot id: {view['boot_id'] or 'unknown'}",
    ]
    if not view["passes"]:
        lines.append("passes: none recorded")
        return "\n".join(lines) + "\n"
    rows = [("PASS", "STARTED", "DURATION", "HEALTH", "EXIT", "BOOT")]
    for name, p in view["passes"].items():
        duration = p.get("duration_seconds")
        rows.append((name, str(p.get("started", "?")), f"{duration:.1f}s" if isinstance(duration, (int, float))
                     else "?", str(p.get("health") or "-"), str(p.get("exit_code", "?")),
                     "this" if p["this_boot"] else "earlier"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines.extend("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
    for name, p in view["passes"].items():
        lines.extend(f"{name}: {action}" for action in p.get("actions") or [])
    from agent.report.timeline import render_table as render_timeline

    return "\n".join(lines) + "\n" + render_timeline(view.get("timeline"))


def lock_holder(root: NodeRoot) -> Optional[Holder]:
    """The pass running now: the live process the run lock's file names (``agent/base/lockholder.py``)."""
    return holder(root.path(LOCK_PATH))


def wait_for_run(
    root: NodeRoot,
    path: Path,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Dict[str, Any]:
    """Block until this boot's run pass is in the status file (or the node is disabled); its view.

    A status file that is missing or unreadable meanwhile is waited for too (the prepare pass
    creates it; every write is atomic); at the deadline the last reason is the error.
    """
    deadline = clock() + timeout
    current = boot_id(root)
    while True:
        disabled = root.path(DISABLED).exists()
        problem: Optional[StatusFileError] = None
        try:
            view = summary(load(path), current, disabled=disabled, running=lock_holder(root))
        except StatusFileError as exc:
            if disabled:
                return summary({}, current, disabled=True)
            problem, view = exc, {}
        if view and view["status"] in ("done", "disabled"):
            return view
        if clock() >= deadline:
            why = str(problem) if problem else f"status {view['status']}"
            raise StatusFileError(f"timed out after {timeout:g}s waiting for this boot's agent run ({why})")
        sleep(POLL_SECONDS)

