"""systemd units as the agent sees them: their state, and the unit checks built on it.

``UnitState`` is what systemd says about one unit (``agent/systemd/client.py``, the client that reads it);
``containerd-running`` and ``kubelet-running`` judge it, together with the daemon's own word
(``agent/daemons/serving.py``: containerd's CRI plugins, kubelet's healthz), and ``stale_daemon`` tells a
containerd older than its configuration. Only the resource's ``discover`` talks to systemd and the
daemons; the rest is pure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Tuple, Union

from agent.base.timestamps import rfc3339
from agent.daemons.serving import NOT_SERVING
from agent.pipeline.contract import Discovery, Resource
from agent.pipeline.health import FAIL, PASS, WARN, CheckResult
from agent.systemd.state import UnitState, UnitStates, kubelet_unit, units_to_discover

if TYPE_CHECKING:
    from agent.base.errors import NodeFileError
    from agent.base.noderoot import NodeRoot
    from agent.config.settings import AgentConfig
    from agent.containerd.files import ContainerdConfigSet
    from agent.daemons.serving import Serving, ServingProbe
    from agent.pipeline.contract import NodeFacts
    from agent.systemd.errors import SystemdError

# --- checks ------------------------------------------------------------------------------------------


class StaleDaemon(NamedTuple):
    """The running daemon started before its newest configuration file was written."""

    unit: str
    active_since: float
    config_path: str
    config_mtime: float

    def describe(self) -> str:
        return (f"{self.unit} has run since {_utc(self.active_since)} but {self.config_path} changed at "
                f"{_utc(self.config_mtime)}: the daemon runs an older configuration")


def stale_daemon(
    state: Optional[UnitState], config_set: Optional[ContainerdConfigSet]
) -> Optional[StaleDaemon]:
    """Pure: is the active daemon older than its configuration (newest mtime among the loaded files)?

    This is the pre-awslabs/amazon-eks-ami#2705 nodeadm case: ``StartUnit`` on a running containerd
    is a no-op, so a config.toml rewritten at boot is never loaded.
    """
    if state is None or config_set is None or state.active_state != "active" or state.active_since is None:
        return None
    newest = max(config_set.files, key=lambda f: f.mtime)
    # Both clocks are the node's realtime clock; µs resolution on both sides.
    if int(newest.mtime * 1e6) > state.active_enter_timestamp:
        return StaleDaemon(state.name, state.active_since, newest.node_path, newest.mtime)
    return None


def _utc(seconds: float) -> str:
    return rfc3339(seconds, millis=True)


def _state_details(state: UnitState) -> Dict[str, Any]:
    return {
        "unit": state.name,
        "load_state": state.load_state,
        "active_state": state.active_state,
        "sub_state": state.sub_state,
        "main_pid": state.main_pid,
        "active_since": _utc(state.active_since) if state.active_since else None,
    }


def check_unit_running(
    check_name: str, name: str, units: Union[UnitStates, SystemdError, None], serving: Optional[Serving] = None,
) -> CheckResult:
    """pass: active and (when asked) the daemon serves; warn: starting or reloading, or a state the
    agent could not read (no bus, cannot ask the daemon); fail: not loaded, inactive, failed, or
    active while the daemon says it does not serve."""
    if not isinstance(units, UnitStates):
        why = str(units) if units is not None else "unit state not discovered"
        return CheckResult(check_name, WARN, f"cannot read {name}: {why}")
    state = units.get(name)
    if state is None:
        return CheckResult(check_name, WARN, f"{name}: state not discovered")
    details = _state_details(state)
    if state.active_state == "active":
        if serving is None:
            return CheckResult(check_name, PASS, state.describe(), details)
        details = {**details, "serving": serving.state, **serving.details}
        if serving.ok:
            return CheckResult(check_name, PASS, f"{state.describe()}; {serving.message}", details)
        status = FAIL if serving.state == NOT_SERVING else WARN
        return CheckResult(check_name, status, f"{state.describe()}, but {serving.message}", details)
    if state.loaded and state.active_state in ("activating", "reloading"):
        return CheckResult(check_name, WARN, state.describe(), details)
    return CheckResult(check_name, FAIL, state.describe() + ("" if not state.loaded else ", expected active"),
                       details)


def check_containerd_running(
    units: Union[UnitStates, SystemdError, None],
    config_set: Optional[ContainerdConfigSet],
    unit: str,
    serving: Optional[Serving] = None,
) -> CheckResult:
    """``containerd-running``: the daemon is active, its CRI plugins are ``ok`` (``agent/containerd/cri.py``),
    and it is not older than its configuration."""
    result = check_unit_running("containerd-running", unit, units, serving)
    if result.status != PASS or not isinstance(units, UnitStates):
        return result
    stale = stale_daemon(units.get(unit), config_set)
    if stale is None:
        return result
    details = dict(result.details)
    details.update(config_path=stale.config_path, config_changed=_utc(stale.config_mtime))
    return CheckResult("containerd-running", WARN, f"{stale.describe()} (restart pending)", details)


def check_kubelet_running(
    units: Union[UnitStates, SystemdError, None], unit: str, serving: Optional[Serving] = None
) -> CheckResult:
    """``kubelet-running``: the unit is active and kubelet's healthz answers ``ok`` (``agent/daemons/kubelet.py``)."""
    return check_unit_running("kubelet-running", unit, units, serving)


# --- the resource: containerd and kubelet as systemd sees them, and in their own word ------------------

# A daemon that systemd started moments ago may not serve yet (kubelet is active before its healthz
# listens): the answer is awaited until it has been active this long, then taken as it is.
STARTING_GRACE_SECONDS = 10.0
PROBE_TIMEOUT = 5.0  # one reading of a daemon's own word (ctr, healthz)


class Daemons(Resource):
    """``units``: restart.units, kubelet (and, for GPU health, the fabric manager) over D-Bus;
    ``probes``/``serving``: how to ask containerd and kubelet whether they serve, and their answers."""

    checks = ("containerd-running", "kubelet-running")

    def discover(self, node: Discovery) -> Dict[str, Any]:
        from agent.systemd import client as systemd

        config = node.config
        names = units_to_discover(config.restart.units)
        if node.gpu_health and config.gpu.fabricmanager_unit not in names:
            names.append(config.gpu.fabricmanager_unit)
        units = systemd.discover(names, timeout=min(config.restart.timeout_seconds, systemd.DISCOVERY_TIMEOUT))
        probes, serving = _serving(node.root, config, node.facts.get("containerd"), units)
        return {"units": units, "probes": probes, "serving": serving}

    def check(self, facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
        from agent.containerd.files import ContainerdConfigSet

        config_set = facts.containerd if isinstance(facts.containerd, ContainerdConfigSet) else None
        containerd_unit, kubelet = config.restart.units[0], kubelet_unit(config.restart.units)
        return [check_containerd_running(facts.units, config_set, containerd_unit, facts.serving.get(containerd_unit)),
                check_kubelet_running(facts.units, kubelet, facts.serving.get(kubelet))]


def _serving(
    root: NodeRoot, config: AgentConfig, containerd_facts: Union[ContainerdConfigSet, NodeFileError, None],
    units: Union[UnitStates, SystemdError],
) -> Tuple[Dict[str, ServingProbe], Dict[str, Serving]]:
    from agent.containerd import cri
    from agent.containerd.files import ContainerdConfigSet
    from agent.daemons import kubelet

    probes: Dict[str, ServingProbe] = {}
    cri_probe = cri.probe(root, containerd_facts if isinstance(containerd_facts, ContainerdConfigSet) else None)
    if cri_probe is not None:
        probes[config.restart.units[0]] = cri_probe
    probes[kubelet_unit(config.restart.units)] = kubelet.probe(root)
    serving: Dict[str, Serving] = {}
    if isinstance(units, UnitStates):
        for unit, probe in probes.items():
            state = units.get(unit)
            if state is not None and state.active_state == "active":
                serving[unit] = _ask(probe, state)
    return probes, serving


def _ask(probe: ServingProbe, state: UnitState) -> Serving:
    import time

    from agent.daemons import serving

    answer = probe.read(PROBE_TIMEOUT)
    since = state.active_since
    if answer.ok or answer.final or since is None:
        return answer
    remaining = since + STARTING_GRACE_SECONDS - time.time()
    if remaining <= 0:
        return answer
    return serving.wait(probe, time.monotonic() + min(remaining, STARTING_GRACE_SECONDS))


RESOURCE = Daemons()
