"""The operator's policy over the checks (README "Operator policy"): ``checks.<name>.enabled: false``
turns a check into ``skip`` ("disabled by configuration"), ``checks.<name>.max_status: warn`` caps
what it can report. Applied to every check result of every command (``resources.evaluate``, and again
after a run's pending restarts), so a disabled check never counts toward health and a capped one
never fails. The names are validated when the configuration is read (``agent/config/parse.py``).
"""


from __future__ import annotations

from typing import Iterable, List

from agent.config.settings import AgentConfig
from agent.pipeline.health import RANK, SKIP, CheckResult

DISABLED = "disabled by configuration"


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
