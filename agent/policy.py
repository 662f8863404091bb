"""The operator's policy over the checks (README "Operator policy"): ``checks.<name>.enabled: false``
turns a check into ``skip`` ("disabled by configuration"), ``checks.<name>.max_status: warn`` caps
what it can report. Applied to every check result of every command (``checks.evaluate``, and again
after a run's pending restarts), so a disabled check never counts toward health and a capped one
never fails. The names are validated against the real checks (``health.CHECK_NAMES``).
"""


from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, List, Optional

from agent.health import CHECK_NAMES, RANK, SKIP, CheckResult

if TYPE_CHECKING:
    from agent.config import AgentConfig

DISABLED = "disabled by configuration"


def check_name_problem(name: str) -> Optional[str]:
    """Why ``checks.<name>`` is not a check (with a suggestion), or None."""
    if name in CHECK_NAMES:
        return None
    import difflib

    close = difflib.get_close_matches(name, CHECK_NAMES, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; the checks are {', '.join(CHECK_NAMES)}"
    return f"unknown check{hint}"


def xid_problem(name: str) -> Optional[str]:
    """Why ``xid.<name>`` is not an XID number, or None."""
    if name.isdigit() and 0 < int(name) < 1000:
        return None
    return f"expected an XID number (1 to 999), got {name!r}"


def apply(results: Iterable[CheckResult], config: AgentConfig) -> List[CheckResult]:
    """The results as the policy reports them. Idempotent: applying it twice changes nothing more."""
    out = []
    for r in results:
        policy = config.checks.get(r.name)
        if policy is None:
            out.append(r)
        elif not policy.enabled:
            out.append(CheckResult(r.name, SKIP, f"{DISABLED} (checks.{r.name}.enabled: false)",
                                   {"policy": "disabled", "event_reason": "CheckDisabled"}))
        elif RANK[r.status] > RANK[policy.max_status]:
            out.append(CheckResult(r.name, policy.max_status,
                                   f"{r.message} (capped at {policy.max_status} by checks.{r.name}.max_status)",
                                   {**r.details, "policy": {"max_status": policy.max_status, "status": r.status}}))
        else:
            out.append(r)
    return out
