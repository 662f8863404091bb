"""GPU errors since boot: XID events in the kernel log, and ECC / row-remapping state. Owns ``gpu-errors``.

XIDs: kernel log lines ``NVRM: Xid (PCI:0000:53:00): 79, pid=..., GPU has fallen off the bus.``
read from ``/dev/kmsg`` (``agent.gpu.kmsg``). Each XID is judged by ``XIDS``, built from NVIDIA's Xid
catalog (https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html, the "Resolution
Bucket (Immediate Action)" column, Ampere and newer) and its older Xid table:

* ``fatal``: the GPU is gone or its memory cannot be repaired (reboot the node, replace the GPU): ``fail``;
* ``reset``: the GPU needs a reset (or the node a reboot) before it can be trusted: ``fail``;
* ``application``: usually the workload's own fault (``RESTART_APP``): ``warn``.

An XID not in the table is a ``warn`` naming it. From the same ``nvidia-smi`` query as the other
checks: uncorrected volatile ECC errors, retired pages pending, remapped rows pending (``reset``) or
failed (``fatal``); ``[N/A]``/``[Not Supported]`` mean the GPU does not report it.

State, in ``/run/gpu-node-agent/gpu-errors.json`` (gone at boot; a different boot id also starts
over): the XID events seen since boot (so the summary survives the ring buffer wrapping), the last
kmsg sequence read, and the last one *reported*. The check's details list ``new_events`` (after the
reported sequence); ``acknowledge`` moves that mark after a report went out (``run``, ``check
--report``), so a heartbeat reports each event once while the status keeps the since-boot summary.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from agent.base.errors import NodeFileError
from agent.base.fs import atomic_write, read_text
from agent.base.noderoot import NodeRoot
from agent.gpu import kmsg
from agent.pipeline.contract import Discovery, Resource
from agent.pipeline.health import FAIL, PASS, SKIP, WARN, CheckResult

if TYPE_CHECKING:
    from agent.config.settings import AgentConfig
    from agent.pipeline.contract import NodeFacts

CHECK = "gpu-errors"
STATE = "/run/gpu-node-agent/gpu-errors.json"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
KEEP_EVENTS = 256  # events kept in the state file (the newest)
FATAL, RESET, APPLICATION = "fatal", "reset", "application"
_XID_RE = r"NVRM: Xid \((?:PCI:)?([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2})(?:\.\d)?\): (\d+)(?:, (.*))?"

# xid -> (class, meaning, suggested Event reason)
XIDS: Dict[int, Tuple[str, str, str]] = {
    13: (APPLICATION, "Graphics Engine Exception", "GPUApplicationError"),
    31: (APPLICATION, "GPU memory page fault", "GPUApplicationError"),
    43: (APPLICATION, "GPU stopped processing", "GPUApplicationError"),
    45: (APPLICATION, "Preemptive cleanup, due to previous errors", "GPUApplicationError"),
    69: (APPLICATION, "Graphics Engine class error", "GPUApplicationError"),
    48: (RESET, "Double Bit ECC Error", "GPUDoubleBitECCError"),
    61: (RESET, "Internal micro-controller breakpoint/warning", "GPUMicrocontrollerError"),
    62: (RESET, "Internal micro-controller halt", "GPUMicrocontrollerError"),
    63: (RESET, "ECC page retirement or row remapping recording event", "GPURowRemapPending"),
    74: (RESET, "NVLink Error", "GPUNVLinkError"),
    94: (RESET, "Contained ECC error", "GPUContainedECCError"),
    95: (RESET, "Uncontained ECC error", "GPUUncontainedECCError"),
    119: (RESET, "GSP RPC timeout", "GPUSystemProcessorTimeout"),
    120: (RESET, "GSP error", "GPUSystemProcessorError"),
    140: (RESET, "Unrecovered ECC error", "GPUUncorrectableECCError"),
    64: (FATAL, "ECC page retirement or row remapper recording failure", "GPURowRemapFailure"),
    79: (FATAL, "GPU has fallen off the bus", "GPUFellOffBus"),
}
_STATUS = {FATAL: FAIL, RESET: FAIL, APPLICATION: WARN}
_ACTION = {FATAL: "reboot the node; replace the GPU if it recurs", RESET: "reset the GPU or reboot the node",
           APPLICATION: "usually the workload's fault"}


class XidEvent(NamedTuple):
    seq: int
    usec: int  # since boot
    xid: int
    bus: str  # as the kernel names it: 0000:53:00
    text: str  # the rest of the line, shortened

    def as_dict(self) -> Dict[str, Any]:
        return dict(self._asdict())


class XidFacts(NamedTuple):
    events: Tuple[XidEvent, ...]  # since boot (state file + this read), oldest first
    new_events: Tuple[XidEvent, ...]  # after the last reported sequence
    last_seq: Optional[int]
    read: kmsg.KmsgRead


def parse_event(record: kmsg.Record) -> Optional[XidEvent]:
    m = re.search(_XID_RE, record.message)
    if not m:
        return None
    return XidEvent(record.seq, record.usec, int(m.group(2)), m.group(1).lower(), (m.group(3) or "")[:200])


def _boot_id(root: NodeRoot) -> Optional[str]:
    try:
        return read_text(root.path(BOOT_ID)).strip() or None
    except NodeFileError:
        return None


def _load_state(root: NodeRoot, boot_id: Optional[str]) -> Dict[str, Any]:
    try:
        state = json.loads(read_text(root.path(STATE)))
        if isinstance(state, dict) and state.get("boot_id") == boot_id and isinstance(state.get("events"), list):
            state["events"] = [XidEvent(*e) for e in state["events"]]
            return state
    except (NodeFileError, ValueError, TypeError):
        pass
    return {"boot_id": boot_id, "events": [], "last_seq": None, "reported_seq": None}


def _save_state(root: NodeRoot, state: Dict[str, Any]) -> None:
    path = root.path(STATE)
    doc = {**state, "events": [list(e) for e in state["events"][-KEEP_EVENTS:]]}
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(path, (json.dumps(doc) + "\n").encode())
    except (OSError, NodeFileError):
        pass  # state only: the next check reads the log again


def discover(root: NodeRoot) -> XidFacts:
    read = kmsg.read(root.path(kmsg.KMSG), b"NVRM: Xid")
    boot_id = _boot_id(root)
    state = _load_state(root, boot_id)
    known: List[XidEvent] = state["events"]
    last_known = state.get("last_seq")
    if last_known is not None and read.last_seq is not None and read.last_seq < last_known:
        known, last_known, state["reported_seq"] = [], None, None  # the log started over: not this boot's state
    fresh = [e for r in read.records for e in [parse_event(r)] if e and (last_known is None or e.seq > last_known)]
    events = known + fresh
    last_seq = read.last_seq if read.last_seq is not None else last_known
    if fresh:  # written only when there is something new to keep: most checks write nothing
        _save_state(root, {**state, "boot_id": boot_id, "events": events, "last_seq": last_seq})
    reported = state.get("reported_seq")
    new = tuple(e for e in events if reported is None or e.seq > reported)
    return XidFacts(tuple(events), new, last_seq, read)


def acknowledge(root: NodeRoot, facts: Optional[XidFacts]) -> None:
    """A report carried ``facts``: its events are no longer new."""
    if facts is None or facts.last_seq is None:
        return
    state = _load_state(root, _boot_id(root))
    state["reported_seq"] = facts.last_seq
    state["last_seq"] = max(facts.last_seq, state.get("last_seq") or 0)
    if not state["events"]:
        state["events"] = list(facts.events)
    _save_state(root, state)


# --- the check ----------------------------------------------------------------------------------


def _bus_key(bus: str) -> Tuple[int, str]:
    """``0000:53:00`` and nvidia-smi's ``00000000:53:00.0`` name the same GPU: (domain, bus:device)."""
    parts = bus.lower().split(".")[0].split(":")
    try:
        return int(parts[0], 16), ":".join(parts[1:3])
    except (ValueError, IndexError):
        return -1, bus.lower()


class _Finding(NamedTuple):
    cls: str
    text: str
    reason: str


def check(facts: Optional[XidFacts], rows: Optional[Sequence[Any]], *, gpu_node: bool = True) -> CheckResult:
    """``rows``: the GPUs of the nvidia-smi query (``agent.nvidia.smi.GpuRow``), None when it did not answer."""
    by_bus = {_bus_key(r.bus_id): r for r in rows or ()}
    findings: List[_Finding] = []
    if facts is not None:
        for e in facts.events:
            cls, meaning, reason = XIDS.get(e.xid, ("", "not in the agent's XID table", "GPUXidError"))
            row = by_bus.get(_bus_key(e.bus))
            who = row.label() if row is not None else f"GPU at {e.bus}"
            findings.append(_Finding(cls or "unknown", f"{who}: XID {e.xid} {meaning}"
                                     + (f" ({_ACTION[cls]})" if cls else f": {e.text[:80]}"), reason))
    for r in rows or ():
        if r.remapped_rows_failure:
            findings.append(_Finding(FATAL, f"{r.label()}: row remapping failed (replace the GPU)",
                                     "GPURowRemapFailure"))
        if r.remapped_rows_pending:
            findings.append(_Finding(RESET, f"{r.label()}: remapped rows pending (reset the GPU)",
                                     "GPURowRemapPending"))
        if r.retired_pages_pending:
            findings.append(_Finding(RESET, f"{r.label()}: retired pages pending (reset the GPU)",
                                     "GPUPageRetirementPending"))
        if r.ecc_uncorrected:
            findings.append(_Finding(RESET, f"{r.label()}: {r.ecc_uncorrected} uncorrected ECC errors since the "
                                     "driver loaded", "GPUUncorrectableECCError"))
    read = facts.read if facts is not None else None
    details: Dict[str, Any] = {
        "xid_events": [e.as_dict() for e in facts.events[-20:]] if facts else [],
        "xid_events_total": len(facts.events) if facts else 0,
        "new_events": [e.as_dict() for e in facts.new_events[-20:]] if facts else [],
        "kmsg": {"last_seq": facts.last_seq, "records": read.total, "unreadable": read.unreadable,
                 "truncated": read.truncated, "problem": read.problem} if facts and read else None,
        "gpus": [{k: v for k, v in r.as_dict().items() if k not in ("fabric_state", "fabric_status", "uuid")}
                 for r in rows or ()],
    }
    order = {FATAL: 0, RESET: 1, "unknown": 2, APPLICATION: 3}
    counts: Dict[_Finding, int] = {}
    for f in findings:  # the same XID on the same GPU, logged again and again: once, with a count
        counts[f] = counts.get(f, 0) + 1
    findings = [f._replace(text=f"{f.text} (x{n})") if n > 1 else f for f, n in counts.items()]
    findings.sort(key=lambda f: order.get(f.cls, 2))
    if findings:
        worst = findings[0]
        status = _STATUS.get(worst.cls, WARN)
        more = f"; +{len(findings) - 1} more" if len(findings) > 1 else ""
        details.update(event_reason=worst.reason, findings=[f.text for f in findings[:20]])
        return CheckResult(CHECK, status, f"{worst.text}{more}", details)
    problem = read.problem if read is not None else None
    no_log = problem is not None and problem.endswith("does not exist")  # an image or a container, no kernel
    if not gpu_node:  # and no XID in the log either
        return CheckResult(CHECK, SKIP, "no NVIDIA GPU on this node", {**details, "event_reason": "NoGpus"})
    notes = []
    if no_log:
        notes.append(f"no kernel log to read ({problem})")
    elif problem:
        notes.append(f"XIDs not read: {problem}")
    elif read is not None and read.truncated:
        notes.append(f"kernel log read cut at {read.total} records")
    if rows is None:
        notes.append("ECC and row remapping not read (nvidia-smi did not answer)")
    if (problem and not no_log) or rows is None:
        details["event_reason"] = "GpuErrorsUnknown"
        return CheckResult(CHECK, WARN, "; ".join(notes), details)
    details["event_reason"] = "NoGpuErrors"
    base = (f"no XID events since boot ({read.total} kernel log records)" if read is not None and not no_log
            else "no XID events")
    ecc = f", no ECC or row-remapping problem on {len(rows)} GPUs" if rows else ""
    note = f"; {'; '.join(notes)}" if notes else ""
    return CheckResult(CHECK, PASS, f"{base}{ecc}{note}", details)


class GpuErrors(Resource):
    """``xid``: the XID events since boot (the kernel log); ``gpu-errors``, with the nvidia-smi query's
    ECC and row-remapping state."""

    checks = ("gpu-errors",)

    def discover(self, node: Discovery) -> Dict[str, Any]:
        return {"xid": discover(node.root)}

    def check(self, facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
        from agent.nvidia import driver

        return [check(facts.xid, driver.smi_rows(facts.driver), gpu_node=driver.gpu_node(facts.driver))]

    def reported(self, facts: NodeFacts, delivered: bool) -> None:
        """The report carried the XID events: no longer new. After a failed publish they stay new."""
        if delivered:
            acknowledge(facts.root, facts.xid)


RESOURCE = GpuErrors()
