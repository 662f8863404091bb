"""Every health check, evaluated from discovered facts. Each module owns its check's logic."""


from __future__ import annotations

from typing import List, Mapping, Tuple

from agent.config import AgentConfig
from agent.errors import NodeFileError
from agent.health import RANK, CheckResult
from agent.node import NodeFacts


def evaluate(facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
    from agent import containerd, efa, nvidia, systemd, units

    results: List[CheckResult] = []
    if isinstance(facts.containerd, NodeFileError):
        results.append(containerd.check_unreadable(facts.containerd))
    else:
        results.append(containerd.check(facts.containerd, config.containerd))
    config_set = None if isinstance(facts.containerd, NodeFileError) else facts.containerd
    containerd_unit, kubelet_unit = config.restart.units[0], systemd.kubelet_unit(config.restart.units)
    results.append(units.check_containerd_running(facts.units, config_set, containerd_unit,
                                                    facts.serving.get(containerd_unit)))
    results.append(units.check_kubelet_running(facts.units, kubelet_unit, facts.serving.get(kubelet_unit)))
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
    results.extend(_gpu_readiness(facts, config))
    return results


def _gpu_readiness(facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
    """gpu-inventory, gpu-allocatable, nvidia-fabricmanager, gpu-errors: all from the one nvidia-smi
    query of ``facts.driver``. Only when discovered (``node.discover(..., gpu_health=True)``)."""
    from agent import allocatable, fabric, gpu, systemd, xid

    if facts.instance is None:
        return []
    driver = facts.driver
    smi = driver.smi if driver is not None else None
    rows = smi.table.rows if smi is not None and smi.table is not None and not smi.timed_out else None
    gpu_node = driver is not None and (driver.loaded or smi is not None or bool(driver.devices))
    out = [gpu.check(driver, facts.instance)]
    out.append(allocatable.check(facts.kube_node, config, gpus=gpu.gpus_seen(driver),
                                 efa_devices=len(facts.efa.devices) if facts.efa is not None else 0,
                                 units=facts.units, kubelet_unit=systemd.kubelet_unit(config.restart.units)))
    out.append(fabric.check(facts.fabric, facts.units, config.gpu.fabricmanager_unit,
                            driver.version if driver is not None else None, rows))
    out.append(xid.check(facts.xid, rows, gpu_node=gpu_node))
    return out


def with_pending_restarts(
    results: List[CheckResult], pending: Mapping[str, Tuple[str, str]], config: AgentConfig
) -> List[CheckResult]:
    """A run's restarts that were needed but not done, shown in their unit's check.

    Without them a node whose systemd could not be reached (unit checks: ``skip``) would be reported
    healthy while containerd still runs its old configuration.
    """
    from agent import systemd

    check_for_unit = {config.restart.units[0]: "containerd-running",
                      systemd.kubelet_unit(config.restart.units): "kubelet-running"}
    out = []
    for r in results:
        unit = next((u for u, name in check_for_unit.items() if name == r.name), None)
        held = pending.get(unit) if unit is not None else None
        if held is not None and RANK[held[0]] > RANK[r.status]:
            status, why = held
            out.append(CheckResult(r.name, status, f"{unit}: {why}", {**r.details, "restart_pending": True}))
        else:
            out.append(r)
    return out
