"""Kubernetes Events on the Node: what changed the node or its health, for ``kubectl get events``.

An Event is a core/v1 ``Event`` in namespace ``default`` (where kubelet puts a Node's events) with
``involvedObject`` the Node (kind, name, uid), ``source.component: gpu-node-agent`` and
``source.host``, type ``Normal`` or ``Warning`` and a CamelCase reason. Sent after the Node's
report, with the node's own credentials (the node authorizer lets a node create and patch Events,
never read or delete them), and never failing the run.

* **Transitions only**: a ``run``'s actions (``FileRepaired``, ``UnitRestarted``, ``ConfigRolledBack``,
  ``EFAInstalled``) and a check whose status (or event reason) changed since the last report.
  A check that fails or warns in the first report after boot counts as a change; one that passes
  does not.
* **Deduplicated** as client-go's event correlator does: the same type, reason and message again
  within the API server's event TTL is a ``PATCH`` of ``count`` and ``lastTimestamp`` on the Event
  already there (a 404, the Event expired, makes a new one).
* **Bounded**: at most ``MAX_PER_RUN`` per report; the first request that fails stops the rest.

A check chooses its reasons: ``details["event_reason"]`` (CamelCase, e.g. ``GPUFellOffBus``) names
the reason of the transition into its current status; without it the reason is the check's name
and the new status, e.g. ``NVIDIADriverFailed``, ``GPUErrorsWarning``, ``EFARecovered``. The memory
(last statuses and recent Events) is ``/run/gpu-node-agent/events.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from agent.base.errors import AgentError, NodeFileError
from agent.base.fs import atomic_write, read_text
from agent.base.log import get_logger
from agent.base.noderoot import NodeRoot
from agent.base.timestamps import rfc3339
from agent.pipeline.health import FAIL, PASS, SKIP, WARN, CheckResult

if TYPE_CHECKING:
    from agent.base.retry import Deadline
    from agent.kube.client import KubeClient
    from agent.pipeline.apply import ApplyResult

COMPONENT = "gpu-node-agent"
NAMESPACE = "default"  # a cluster-scoped object's events live here (kubelet's Node events too)
NORMAL, WARNING = "Normal", "Warning"
MAX_PER_RUN = 12
EVENT_TTL_SECONDS = 3600  # kube-apiserver --event-ttl default; older Events are gone, create anew
CACHE_ENTRIES = 64
MESSAGE_LIMIT = 1024
STATE_FILE = "/run/gpu-node-agent/events.json"
REASON_KEY = "event_reason"  # a check's details may carry the reason of its current status
_EFA_INSTALLED = re.compile(r"EFA userspace \S+ installed")
_REASON = re.compile(r"[A-Z][A-Za-z0-9]{0,127}")
_WORDS = {"efa": "EFA", "gpu": "GPU", "nvidia": "NVIDIA", "cdi": "CDI", "xid": "XID", "ecc": "ECC"}
_STATUS_SUFFIX = {FAIL: "Failed", WARN: "Warning", SKIP: "Skipped"}

log = get_logger("events")


class EventSpec(NamedTuple):
    """An Event to send: its type (Normal/Warning), CamelCase reason and message."""

    type: str
    reason: str
    message: str

    def key(self) -> str:
        text = "\0".join((self.type, self.reason, self.message))
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def camel(check_name: str) -> str:
    """``gpu-errors`` -> ``GPUErrors``, ``nvidia-driver`` -> ``NVIDIADriver``."""
    return "".join(_WORDS.get(w, w[:1].upper() + w[1:]) for w in re.split(r"[-_.\s]+", check_name) if w)


def check_reason(result: CheckResult, previous: Optional[str]) -> str:
    """The reason of ``result``'s transition from ``previous``: the check's own
    ``details["event_reason"]`` when it is CamelCase, else ``<Check><Failed|Warning|Skipped|
    Recovered|Passed>``."""
    own = result.details.get(REASON_KEY) if isinstance(result.details, Mapping) else None
    if isinstance(own, str) and _REASON.fullmatch(own):
        return own
    if result.status == PASS:
        return camel(result.name) + ("Recovered" if previous in (FAIL, WARN) else "Passed")
    return camel(result.name) + _STATUS_SUFFIX.get(result.status, "Changed")


def check_transition(result: CheckResult, previous: Optional[str], *,
                     reason: Optional[str] = None) -> Optional[EventSpec]:
    """The Event for a check that went from ``previous`` (None: not known, e.g. the first report
    after boot) to ``result.status``; None when there is nothing to tell (the same status, or a
    healthy start). ``reason`` overrides the derived reason, and makes an Event even when the
    status stayed (a failing check that now fails for another reason)."""
    if previous == result.status and reason is None:
        return None
    if previous is None and result.status in (PASS, SKIP):
        return None
    kind = WARNING if result.status in (FAIL, WARN) else NORMAL
    # The message leaves the previous status out, so the same failure after a recovery (or after
    # boot) is the same Event again, counted up, as client-go's correlator does for equal messages.
    message = f"{result.name}: {result.status}: {result.message}"
    return EventSpec(kind, reason or check_reason(result, previous), message)


def check_transitions(previous: Optional[Mapping[str, Tuple[str, str]]],
                      results: Sequence[CheckResult]) -> List[EventSpec]:
    """The Events of every check whose status changed since ``previous`` (``{check: (status,
    reason)}``, see ``remembered_statuses``; None: no report since boot), or that still fails or
    warns but with another ``event_reason``."""
    out: List[EventSpec] = []
    for r in results:
        before = (previous or {}).get(r.name)
        if before is not None and before[0] == r.status:
            reason = check_reason(r, None)
            if r.status not in (FAIL, WARN) or before[1] == reason:
                continue
            spec = check_transition(r, before[0], reason=reason)
        else:
            spec = check_transition(r, before[0] if before else None)
        if spec is not None:
            out.append(spec)
    return out


def remembered_statuses(results: Sequence[CheckResult]) -> Dict[str, Tuple[str, str]]:
    return {r.name: (r.status, check_reason(r, None)) for r in results}


def from_apply(root: NodeRoot, result: ApplyResult) -> List[EventSpec]:
    """The Events of what a ``run`` did to the node: the files it wrote (and kept), the units it
    restarted, the rollbacks, the EFA installation (``apply``'s action lines say which)."""
    out = [EventSpec(NORMAL, "FileRepaired", f"{root.node_path(edit.path)}: {'; '.join(edit.reasons)}")
           for edit in result.written]
    for action in result.actions:
        if action.startswith("restarted "):
            out.append(EventSpec(NORMAL, "UnitRestarted", action[len("restarted "):]))
        elif action.startswith("rolled back "):
            out.append(EventSpec(WARNING, "ConfigRolledBack", action[len("rolled back "):]))
        elif _EFA_INSTALLED.match(action):
            out.append(EventSpec(NORMAL, "EFAInstalled", action))
    return out


# --- the memory ----------------------------------------------------------------------------------


@dataclass
class Memory:
    checks: Optional[Dict[str, Tuple[str, str]]] = None  # None: no report since boot
    sent: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # key -> name, count, last (epoch)


def load(root: NodeRoot) -> Memory:
    try:
        doc = json.loads(read_text(root.path(STATE_FILE)))
        checks = {str(k): (str(v[0]), str(v[1])) for k, v in doc["checks"].items()}
        sent = {str(k): {"name": v["name"], "count": int(v["count"]), "last": float(v["last"])}
                for k, v in doc.get("sent", {}).items()
                if isinstance(v, dict) and isinstance(v.get("name"), str)
                and isinstance(v.get("count"), int) and isinstance(v.get("last"), (int, float))}
        return Memory(checks, sent)
    except (NodeFileError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return Memory()


def save(root: NodeRoot, memory: Memory) -> None:
    newest = sorted(memory.sent.items(), key=lambda kv: float(kv[1].get("last", 0)))[-CACHE_ENTRIES:]
    doc = {"checks": {k: list(v) for k, v in (memory.checks or {}).items()}, "sent": dict(newest)}
    path = root.path(STATE_FILE)
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(path, (json.dumps(doc, indent=1) + "\n").encode(), mode=0o600)
    except (NodeFileError, OSError) as exc:
        log.warning("cannot remember the events sent", error=str(exc))


# --- sending -------------------------------------------------------------------------------------


class Sent(NamedTuple):
    created: int = 0
    repeated: int = 0  # patched count/lastTimestamp
    dropped: int = 0  # over MAX_PER_RUN
    error: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        return dict(self._asdict())


def event_object(spec: EventSpec, name: str, node: str, uid: Optional[str], stamp: str) -> Dict[str, Any]:
    involved: Dict[str, Any] = {"apiVersion": "v1", "kind": "Node", "name": node}
    if uid:
        involved["uid"] = uid
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "involvedObject": involved,
        "type": spec.type,
        "reason": spec.reason,
        "message": spec.message[:MESSAGE_LIMIT],
        "source": {"component": COMPONENT, "host": node},
        "reportingComponent": COMPONENT,
        "reportingInstance": node,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def send(client: KubeClient, deadline: Deadline, memory: Memory, specs: Sequence[EventSpec], *,
         node: str, uid: Optional[str], now: datetime) -> Sent:
    """Create (or, for a repeat, patch) each Event; never raises an AgentError."""
    from agent.kube.errors import KubeNotFound

    stamp = rfc3339(now)
    epoch = now.timestamp()
    unique: List[EventSpec] = list(dict.fromkeys(specs))  # one report says a thing once
    todo, dropped = unique[:MAX_PER_RUN], max(0, len(unique) - MAX_PER_RUN)
    if dropped:
        log.warning("too many events for one report; the rest are not sent", sent=len(todo), dropped=dropped)
    created = repeated = 0
    for i, spec in enumerate(todo):
        key = spec.key()
        known = memory.sent.get(key)
        try:
            if known and epoch - float(known.get("last", 0)) < EVENT_TTL_SECONDS:
                count = int(known.get("count", 1)) + 1
                try:
                    client.patch_event(NAMESPACE, str(known["name"]),
                                       {"count": count, "lastTimestamp": stamp}, deadline)
                    memory.sent[key] = {**known, "count": count, "last": epoch}
                    repeated += 1
                    continue
                except KubeNotFound:
                    pass  # expired early (or deleted): a new one
            name = f"{node}.{int(epoch * 1e9) + i:x}"  # as client-go names them: <object>.<time in hex>
            client.create_event(NAMESPACE, event_object(spec, name, node, uid, stamp), deadline)
            memory.sent[key] = {"name": name, "count": 1, "last": epoch}
            created += 1
        except AgentError as exc:
            log.warning("event not sent", reason=spec.reason, error=str(exc))
            return Sent(created, repeated, dropped + len(todo) - i, str(exc))
        log.info("event sent", type=spec.type, reason=spec.reason)
    return Sent(created, repeated, dropped)
