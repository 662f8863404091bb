"""Every health check, evaluated from discovered facts. Each resource module owns its checks' logic."""


from __future__ import annotations

from typing import List, Mapping, Tuple

from agent.config import AgentConfig
from agent.health import RANK, CheckResult
from agent.node import NodeFacts


def evaluate(facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
    """Every resource's checks (``agent/pipeline.py``), in order; the GPU readiness checks only when
    their facts were discovered (``node.discover(..., gpu_health=True)``); the operator's policy
    (``checks.<name>``, ``agent/policy.py``) applied."""
    from agent import pipeline, policy

    results: List[CheckResult] = []
    for resource in pipeline.resources(gpu_health=facts.gpu_health):
        results.extend(resource.check(facts, config))
    return policy.apply(results, config)


def with_pending_restarts(
    results: List[CheckResult], pending: Mapping[str, Tuple[str, str]], config: AgentConfig
) -> List[CheckResult]:
    """A run's restarts that were needed but not done, shown in their unit's check.

    Without them a node whose systemd could not be reached (unit checks: ``skip``) would be reported
    healthy while containerd still runs its old configuration.
    """
    from agent import units

    check_for_unit = {config.restart.units[0]: "containerd-running",
                      units.kubelet_unit(config.restart.units): "kubelet-running"}
    out = []
    for r in results:
        unit = next((u for u, name in check_for_unit.items() if name == r.name), None)
        held = pending.get(unit) if unit is not None else None
        if held is not None and RANK[held[0]] > RANK[r.status]:
            status, why = held
            out.append(CheckResult(r.name, status, f"{unit}: {why}", {**r.details, "restart_pending": True}))
        else:
            out.append(r)
    from agent import policy

    return policy.apply(out, config)  # a disabled check stays skip, a capped one capped
