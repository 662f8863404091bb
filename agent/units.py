"""systemd units as the agent sees them: their state, and the unit checks built on it.

``UnitState`` is what systemd says about one unit (read by ``agent/systemd.py``'s client);
``containerd-running`` and ``kubelet-running`` judge it, together with the daemon's own word
(``agent/serving.py``: containerd's CRI plugins, kubelet's healthz), and ``stale_daemon`` tells a
containerd older than its configuration. Only the resource's ``discover`` talks to systemd and the
daemons; the rest is pure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from agent.health import FAIL, PASS, WARN, CheckResult
from agent.pipeline import Discovery, Resource
from agent.serving import NOT_SERVING
from agent.timestamps import rfc3339

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.containerd import ContainerdConfigSet
    from agent.errors import NodeFileError
    from agent.fs import NodeRoot
    from agent.node import NodeFacts
    from agent.serving import Serving, ServingProbe
    from agent.systemd import SystemdError

KUBELET_UNIT = "kubelet.service"
# Active enough that restarting applies a new configuration; "activating" covers auto-restart.
RUNNING_STATES = ("active", "activating", "reloading")


def _utc(seconds: float) -> str:
    return rfc3339(seconds, millis=True)


class UnitState(NamedTuple):
    """What systemd says about one unit (``org.freedesktop.systemd1.Unit`` / ``.Service``)."""

    name: str
    load_state: str  # loaded | not-found | bad-setting | error | masked
    active_state: str  # active | reloading | inactive | failed | activating | deactivating
    sub_state: str
    active_enter_timestamp: int  # µs since the epoch (realtime); 0: never active since loaded
    main_pid: int  # 0: none
    invocation_id: str = ""  # hex; changes on every start

    @property
    def loaded(self) -> bool:
        return self.load_state == "loaded"

    @property
    def running(self) -> bool:
        return self.loaded and self.active_state in RUNNING_STATES

    @property
    def active_since(self) -> Optional[float]:
        """``ActiveEnterTimestamp`` in seconds since the epoch, or None when never active."""
        return self.active_enter_timestamp / 1e6 if self.active_enter_timestamp else None

    def describe(self) -> str:
        """``containerd.service active (running) since 2025-01-01T00:00:00.000Z, PID 42``"""
        if not self.loaded:
            return f"{self.name} is not loaded ({self.load_state})"
        text = f"{self.name} {self.active_state} ({self.sub_state})"
        if self.active_state == "active" and self.active_since is not None:
            text += f" since {_utc(self.active_since)}"
        if self.main_pid:
            text += f", PID {self.main_pid}"
        return text


class UnitStates(NamedTuple):
    """The discovered state of the units the agent manages, as read over ``address``."""

    address: str
    units: Tuple[UnitState, ...]

    def get(self, name: str) -> Optional[UnitState]:
        return next((u for u in self.units if u.name == name), None)


def kubelet_unit(units: Sequence[str]) -> str:
    """The kubelet unit among ``restart.units`` (after containerd), else ``kubelet.service``."""
    return next((u for u in units[1:] if u.startswith("kubelet")), KUBELET_UNIT)


def units_to_discover(units: Sequence[str]) -> List[str]:
    """``restart.units`` plus the kubelet unit (checked even when it is not in the restart list)."""
    names = list(units)
    kubelet = kubelet_unit(units)
    if kubelet not in names:
        names.append(kubelet)
    return names



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
    """``containerd-running``: the daemon is active, its CRI plugins are ``ok`` (``agent/cri.py``),
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
    """``kubelet-running``: the unit is active and kubelet's healthz answers ``ok`` (``agent/kubelet.py``)."""
    return check_unit_running("kubelet-running", unit, units, serving)


# --- the resource: containerd and kubelet as systemd sees them, and in their own word ------------------

# A daemon that systemd started moments ago may not serve yet (kubelet is active before its healthz
# listens): the answer is awaited until it has been active this long, then taken as it is.
STARTING_GRACE_SECONDS = 10.0
PROBE_TIMEOUT = 5.0  # one reading of a daemon's own word (ctr, healthz)


class Daemons(Resource):
    """``units``: restart.units, kubelet (and, for GPU health, the fabric manager) over D-Bus;
    ``probes``/``serving``: how to ask containerd and kubelet whether they serve, and their answers."""

    def discover(self, node: Discovery) -> Dict[str, Any]:
        from agent import systemd

        config = node.config
        names = units_to_discover(config.restart.units)
        if node.gpu_health and config.gpu.fabricmanager_unit not in names:
            names.append(config.gpu.fabricmanager_unit)
        units = systemd.discover(names, timeout=min(config.restart.timeout_seconds, systemd.DISCOVERY_TIMEOUT))
        probes, serving = _serving(node.root, config, node.facts.get("containerd"), units)
        return {"units": units, "probes": probes, "serving": serving}

    def check(self, facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
        from agent.containerd import ContainerdConfigSet

        config_set = facts.containerd if isinstance(facts.containerd, ContainerdConfigSet) else None
        containerd_unit, kubelet = config.restart.units[0], kubelet_unit(config.restart.units)
        return [check_containerd_running(facts.units, config_set, containerd_unit, facts.serving.get(containerd_unit)),
                check_kubelet_running(facts.units, kubelet, facts.serving.get(kubelet))]


def _serving(
    root: NodeRoot, config: AgentConfig, containerd_facts: Union[ContainerdConfigSet, NodeFileError, None],
    units: Union[UnitStates, SystemdError],
) -> Tuple[Dict[str, ServingProbe], Dict[str, Serving]]:
    from agent import cri, kubelet
    from agent.containerd import ContainerdConfigSet

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

    from agent import serving

    answer = probe.read(PROBE_TIMEOUT)
    since = state.active_since
    if answer.ok or answer.final or since is None:
        return answer
    remaining = since + STARTING_GRACE_SECONDS - time.time()
    if remaining <= 0:
        return answer
    return serving.wait(probe, time.monotonic() + min(remaining, STARTING_GRACE_SECONDS))


RESOURCE = Daemons()
