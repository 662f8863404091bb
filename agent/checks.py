"""Every health check, evaluated from discovered facts. Each module owns its check's logic."""


from __future__ import annotations

from typing import List

from agent.config import AgentConfig
from agent.errors import NodeFileError
from agent.health import CheckResult
from agent.node import NodeFacts


def evaluate(facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
    from agent import containerd, efa, nvidia

    results: List[CheckResult] = []
    if isinstance(facts.containerd, NodeFileError):
        results.append(containerd.check_unreadable(facts.containerd))
    else:
        results.append(containerd.check(facts.containerd, config.containerd))
    if isinstance(facts.nvidia_runtime, NodeFileError):
        results.append(nvidia.check_unreadable(facts.nvidia_runtime))
    else:
        path = facts.root.path(config.nvidia_runtime.config_path)
        results.append(nvidia.check(facts.nvidia_runtime, config.nvidia_runtime, path))
    if facts.efa is not None:
        results.append(efa.check(facts.efa, config.efa))
    return results
