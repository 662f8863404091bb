"""Check results and what they add up to: node health and the exit code.

A check is ``pass | warn | fail | skip`` with a one-line message. Health is ``unhealthy`` when any
check fails, ``degraded`` when any warns, ``healthy`` otherwise; the exit code follows README "Exit codes".
"""


from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, NamedTuple

from agent.base.errors import EXIT_DEGRADED, EXIT_OK, EXIT_UNHEALTHY

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
RANK = {SKIP: 0, PASS: 1, WARN: 2, FAIL: 3}  # how bad a status is

class CheckResult(NamedTuple):
    name: str
    status: str
    message: str
    details: Mapping[str, Any] = {}  # never mutated

    def as_dict(self, *, with_details: bool = True) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "status": self.status, "message": self.message}
        if with_details and self.details:
            out["details"] = dict(self.details)
        return out


def overall_health(results: Iterable[CheckResult]) -> str:
    statuses = {r.status for r in results}
    if FAIL in statuses:
        return UNHEALTHY
    if WARN in statuses:
        return DEGRADED
    return HEALTHY


def exit_code_for(health: str) -> int:
    return {HEALTHY: EXIT_OK, DEGRADED: EXIT_DEGRADED}.get(health, EXIT_UNHEALTHY)
