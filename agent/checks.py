"""Every health check, evaluated from discovered facts. Each module owns its check's logic."""


from __future__ import annotations

from typing import List

from agent.config import AgentConfig
from agent.errors import NodeFileError
from agent.health import CheckResult
from agent.node import NodeFacts


def evaluate(facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
    from agent import containerd, efa, nvidia, systemd

    results: List[CheckResult] = []
    if isinstance(facts.containerd, NodeFileError):
        results.append(containerd.check_unreadable(facts.containerd))
    else:
        results.append(containerd.check(facts.containerd, config.containerd))
    config_set = None if isinstance(facts.containerd, NodeFileError) else facts.containerd
    results.append(systemd.check_containerd_running(facts.units, config_set, config.restart.units[0]))
    results.append(systemd.check_kubelet_running(facts.units, systemd.kubelet_unit(config.restart.units)))
    if isinstance(facts.nvidia_runtime, NodeFileError):
        results.append(nvidia.check_unreadable(facts.nvidia_runtime))
    else:
        path = facts.root.path(config.nvidia_runtime.config_path)
        results.append(nvidia.check(facts.nvidia_runtime, config.nvidia_runtime, path))
    from agent import compat, driver

    if facts.driver is not None:
        results.append(driver.check(facts.driver))
    if facts.versions is not None:
        results.append(compat.check(facts.versions))
    if facts.efa is not None:
        results.append(efa.check(facts.efa, config.efa))
    return results
