"""What the Node is given: the ``<prefix>/report`` annotation's value (at most 4 KiB: messages are
shortened, the structure never) and the condition (README "What the cluster sees").
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Dict, Mapping, Optional, Sequence

from agent.base.timestamps import rfc3339
from agent.pipeline.health import CheckResult

ANNOTATION_LIMIT = 4096  # bytes of the <prefix>/report value
CONDITION_MESSAGE_LIMIT = 1024
READABLE_MESSAGE = 80  # characters a message keeps before actions start folding into "+N more"
_ELLIPSIS = "\u2026"


# --- the annotation ------------------------------------------------------------------------------


def _clip(text: str, limit: Optional[int]) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + _ELLIPSIS if limit > 0 else ""


def _encode(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def compact_report(document: Mapping[str, Any], limit: int = ANNOTATION_LIMIT, *,
                   since: Optional[str] = None) -> str:
    """The ``<prefix>/report`` value: the report without details, at most ``limit`` bytes.

    Nothing in it changes on its own: its ``time`` is ``since``, when its content last changed
    (default: the report's time), so an unchanged heartbeat has nothing to write.

    Every check keeps its name and status. When the whole does not fit, every message and action
    is cut to the same, largest possible length, so short messages stay whole. Rather than cut
    everything below ``READABLE_MESSAGE`` characters, trailing actions fold into one ``+N more``.
    """
    checks = [{"name": c["name"], "status": c["status"], "message": c.get("message", "")}
              for c in document["checks"]]
    actions = [str(a) for a in document.get("actions", [])]
    head = {"v": document["v"], "agent": document["agent"], "time": since or document["time"],
            "health": document["health"]}
    if document.get("gpu_ready_seconds") is not None:  # the boot's time to GPU-ready (agent/report/timeline.py)
        head["gpu_ready_seconds"] = document["gpu_ready_seconds"]
    longest = max([len(c["message"]) for c in checks] + [len(a) for a in actions] + [0])

    def render(cap: Optional[int], kept: int) -> bytes:
        acts = [_clip(a, cap) for a in actions[:kept]]
        if kept < len(actions):
            acts.append(f"+{len(actions) - kept} more")
        return _encode({**head, "checks": [{**c, "message": _clip(c["message"], cap)} for c in checks],
                        "actions": acts})

    def fits(cap: Optional[int], kept: int) -> bool:
        return len(render(cap, kept)) <= limit

    def best_cap(kept: int) -> int:  # the largest cap that fits (fits(0, kept) holds)
        lo, hi = 0, longest
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid, kept) else (lo, mid - 1)
        return lo

    kept = len(actions)
    if fits(None, kept):
        return render(None, kept).decode()
    floor = min(READABLE_MESSAGE, longest)
    if not fits(floor, kept):
        while kept > 0 and not fits(floor, kept):  # fold actions until messages stay readable
            kept -= 1
        if not fits(floor, kept) and not fits(0, kept):
            raise ValueError(f"{len(checks)} checks do not fit in {limit} bytes even without messages")
    return render(best_cap(kept), kept).decode()


# --- the condition -------------------------------------------------------------------------------


def condition_message(results: Sequence[CheckResult]) -> str:
    """The deciding check (``agent.report.reasons.decide``) as ``<check>: <message>``, else a summary."""
    from agent.report import reasons

    return _clip(reasons.decide(results).message, CONDITION_MESSAGE_LIMIT)


def node_condition(
    condition_type: str,
    results: Sequence[CheckResult],
    now: datetime,
    previous: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The condition as of ``now`` (status and reason: ``agent.report.reasons.decide``);
    ``lastTransitionTime`` is ``previous``'s while the status stays."""
    from agent.report import reasons

    decided = reasons.decide(results)
    stamp = rfc3339(now)
    kept = (previous.get("lastTransitionTime") if previous and previous.get("status") == decided.status
            else None)
    return {
        "type": condition_type,
        "status": decided.status,
        "reason": decided.reason,
        "message": _clip(decided.message, CONDITION_MESSAGE_LIMIT),
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": kept or stamp,
    }
