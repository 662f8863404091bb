"""GPU errors since boot: XID events in the kernel log, and ECC / row-remapping state. Owns ``gpu-errors``.

XIDs: kernel log lines ``NVRM: Xid (PCI:0000:53:00): 79, pid=..., GPU has fallen off the bus.``
read from ``/dev/kmsg`` (``agent.gpu.kmsg``). Each XID is judged by its class in ``agent/gpu/xid_catalog.py``
(NVIDIA's Xid catalog, its immediate action; the version and the why of each class are there):

* ``fatal``: the GPU is gone or the node must go (reboot, replace): ``fail``;
* ``reset``: the GPU needs a reset (or the node a reboot) before it can be trusted: ``fail``;
* ``application``: usually the workload's own fault (``RESTART_APP``): ``warn``;
* ``ignore``: no action (``IGNORE``): listed in the details, the check still passes.

An XID not in the table is a ``warn`` naming it. The operator's ``xid.<number>`` moves an XID to
another class, or makes it count only when ``repeat`` of them on one GPU fall within
``window_minutes``: fewer are a ``warn`` whose message says the threshold held them back.

From the same ``nvidia-smi`` query as the other checks: uncorrected volatile ECC errors, retired
pages pending, remapped rows pending (``reset``) or failed (``fatal``); ``[N/A]``/``[Not Supported]``
mean the GPU does not report it.

State, in ``/run/gpu-node-agent/gpu-errors.json`` (gone at boot; a different boot id also starts
over): the XID events seen since boot (so the summary survives the ring buffer wrapping), the last
kmsg sequence read, and the last one *reported*. The check's details list ``new_events`` (after the
reported sequence); ``acknowledge`` moves that mark after a report went out (``run``, ``check
--report``), so a heartbeat reports each event once while the status keeps the since-boot summary.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from agent.base.errors import NodeFileError
from agent.base.fs import atomic_write, read_text
from agent.base.noderoot import NodeRoot
from agent.gpu import kmsg
from agent.gpu.xid_catalog import APPLICATION, FATAL, IGNORE, RESET, XIDS
from agent.pipeline.contract import Discovery, Resource
from agent.pipeline.health import FAIL, PASS, SKIP, WARN, CheckResult

if TYPE_CHECKING:
    from agent.config.settings import AgentConfig, XidPolicy
    from agent.pipeline.contract import NodeFacts

CHECK = "gpu-errors"
STATE = "/run/gpu-node-agent/gpu-errors.json"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
KEEP_EVENTS = 256  # events kept in the state file (the newest)
HELD = "held"  # a thresholded XID that has not repeated enough yet
OTHER = "other"  # an XID the catalog does not list
CLASSES = (FATAL, RESET, APPLICATION, IGNORE, OTHER)  # the counts since boot, by the catalog's class
_XID_RE = r"NVRM: Xid \((?:PCI:)?([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2})(?:\.\d)?\): (\d+)(?:, (.*))?"
_STATUS = {FATAL: FAIL, RESET: FAIL, APPLICATION: WARN, HELD: WARN, IGNORE: PASS}
_ACTION = {FATAL: "reboot the node; replace the GPU if it recurs", RESET: "reset the GPU or reboot the node",
           APPLICATION: "usually the workload's fault", IGNORE: "no action needed"}


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
    counts: Mapping[str, int] = {}  # XID events since boot by class (fatal, reset, application, other)


def xid_class(xid: int) -> str:
    """``fatal``, ``reset``, ``application`` or ``other`` (not in the table)."""
    return XIDS[xid][0] if xid in XIDS else OTHER


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
    return {"boot_id": boot_id, "events": [], "last_seq": None, "reported_seq": None, "counts": {}}


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
        state["counts"] = {}
    fresh = [e for r in read.records for e in [parse_event(r)] if e and (last_known is None or e.seq > last_known)]
    events = known + fresh
    last_seq = read.last_seq if read.last_seq is not None else last_known
    # Counted apart from the events kept (the newest KEEP_EVENTS), so the counts never go down.
    counts = _counts(state, known)
    for e in fresh:
        counts[xid_class(e.xid)] += 1
    if fresh:  # written only when there is something new to keep: most checks write nothing
        _save_state(root, {**state, "boot_id": boot_id, "events": events, "last_seq": last_seq, "counts": counts})
    reported = state.get("reported_seq")
    new = tuple(e for e in events if reported is None or e.seq > reported)
    return XidFacts(tuple(events), new, last_seq, read, counts)


def _counts(state: Mapping[str, Any], known: Sequence[XidEvent]) -> Dict[str, int]:
    saved = state.get("counts")
    if isinstance(saved, dict) and all(isinstance(saved.get(c, 0), int) for c in CLASSES):
        return {c: int(saved.get(c, 0)) for c in CLASSES}
    counts = dict.fromkeys(CLASSES, 0)  # a state file without counts: count what it kept
    for e in known:
        counts[xid_class(e.xid)] += 1
    return counts


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


def _class_of(xid: int, policy: Mapping[int, XidPolicy]) -> Tuple[str, str, str]:
    """(class, meaning, Event reason) of an XID: the operator's class, else the catalog's ("" unknown)."""
    known, tuned = XIDS.get(xid), policy.get(xid)
    cls = tuned.class_ if tuned is not None and tuned.class_ else known.cls if known else ""
    return cls, known.meaning if known else "not in the agent's XID table", known.reason if known else "GPUXidError"


def _xid_findings(events: Sequence[XidEvent], by_bus: Dict[Any, Any],
                  policy: Mapping[int, XidPolicy]) -> List[_Finding]:
    """One finding per event; for an XID with a ``repeat`` threshold, one per GPU (``_thresholded``)."""
    findings: List[_Finding] = []
    thresholded: Dict[Tuple[int, str], List[XidEvent]] = {}
    for e in events:
        cls, meaning, reason = _class_of(e.xid, policy)
        row = by_bus.get(_bus_key(e.bus))
        who = row.label() if row is not None else f"GPU at {e.bus}"
        tuned = policy.get(e.xid)
        if tuned is not None and tuned.repeat > 1 and cls != IGNORE:
            thresholded.setdefault((e.xid, who), []).append(e)
        else:
            findings.append(_Finding(cls or "unknown", f"{who}: XID {e.xid} {meaning}"
                                     + (f" ({_ACTION[cls]})" if cls else f": {e.text[:80]}"), reason))
    for (xid, who), group in thresholded.items():
        findings.append(_thresholded(xid, who, group, policy))
    return findings


def _thresholded(xid: int, who: str, events: Sequence[XidEvent], policy: Mapping[int, XidPolicy]) -> _Finding:
    """Its class when ``repeat`` of the events fell within ``window_minutes`` of each other, else ``held``."""
    cls, meaning, reason = _class_of(xid, policy)
    tuned = policy[xid]
    window = tuned.window_minutes * 60e6  # kmsg timestamps are microseconds since boot
    times = sorted(e.usec for e in events)
    most = max(sum(1 for u in times[i:] if u - t <= window) for i, t in enumerate(times))
    text = f"{who}: XID {xid} {meaning} x{len(events)}"
    if most >= tuned.repeat:
        action = f" ({_ACTION[cls]})" if cls in _ACTION else ""
        return _Finding(cls or "unknown", f"{text}, {most} within {tuned.window_minutes:g} min{action}", reason)
    return _Finding(HELD, f"{text}: held back by xid.{xid}.repeat ({tuned.repeat} within "
                    f"{tuned.window_minutes:g} min make it {cls or 'unknown'})", "GPUXidBelowThreshold")


def check(facts: Optional[XidFacts], rows: Optional[Sequence[Any]], *, gpu_node: bool = True,
          policy: Mapping[int, XidPolicy] = {}) -> CheckResult:
    """``rows``: the GPUs of the nvidia-smi query (``agent.nvidia.smi.GpuRow``), None when it did not answer;
    ``policy``: the operator's ``xid.<number>`` settings."""
    by_bus = {_bus_key(r.bus_id): r for r in rows or ()}
    findings: List[_Finding] = []
    if facts is not None:
        findings = _xid_findings(facts.events, by_bus, policy)
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
        "xid_classes": dict(facts.counts) if facts and facts.counts else dict.fromkeys(CLASSES, 0),
        "new_events": [e.as_dict() for e in facts.new_events[-20:]] if facts else [],
        "kmsg": {"last_seq": facts.last_seq, "records": read.total, "unreadable": read.unreadable,
                 "truncated": read.truncated, "problem": read.problem} if facts and read else None,
        "gpus": [{k: v for k, v in r.as_dict().items() if k not in ("fabric_state", "fabric_status", "uuid")}
                 for r in rows or ()],
    }
    order = {FATAL: 0, RESET: 1, "unknown": 2, HELD: 3, APPLICATION: 4, IGNORE: 5}
    counts: Dict[_Finding, int] = {}
    for f in findings:  # the same XID on the same GPU, logged again and again: once, with a count
        counts[f] = counts.get(f, 0) + 1
    findings = [f._replace(text=f"{f.text} (x{n})") if n > 1 else f for f, n in counts.items()]
    findings.sort(key=lambda f: order.get(f.cls, 2))
    ignored = [f.text for f in findings if f.cls == IGNORE]
    findings = [f for f in findings if f.cls != IGNORE]
    if ignored:
        details["ignored"] = ignored[:20]  # XIDs NVIDIA's catalog (or xid.<number>.class) says to ignore
    if findings:
        worst = findings[0]
        status = _STATUS.get(worst.cls, WARN)
        more = f"; +{len(findings) - 1} more" if len(findings) > 1 else ""
        details.update(event_reason=worst.reason, findings=[f.text for f in findings[:20]])
        return CheckResult(CHECK, status, f"{worst.text}{more}", details)
    problem = read.problem if read is not None else None
    no_log = problem is not None and problem.endswith("does not exist")  # an image or a container, no kernel
    if not gpu_node:  # and no XID in the log either
        return CheckResult(CHECK, SKIP, "no NVIDIA GPU on this node", {**details, "event_reason": "NoGPUs"})
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
        details["event_reason"] = "GPUErrorsUnknown"
        return CheckResult(CHECK, WARN, "; ".join(notes), details)
    details["event_reason"] = "NoGPUErrors"
    what = "no XID event that needs action" if ignored else "no XID events"
    base = (f"{what} since boot ({read.total} kernel log records)" if read is not None and not no_log else what)
    ecc = f", no ECC or row-remapping problem on {len(rows)} GPUs" if rows else ""
    if ignored:
        notes.append(f"{len(ignored)} to ignore (details.ignored)")
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

        return [check(facts.xid, driver.smi_rows(facts.driver), gpu_node=driver.gpu_node(facts.driver),
                      policy=config.xid)]

    def reported(self, facts: NodeFacts, delivered: bool) -> None:
        """The report carried the XID events: no longer new. After a failed publish they stay new."""
        if delivered:
            acknowledge(facts.root, facts.xid)


RESOURCE = GpuErrors()
