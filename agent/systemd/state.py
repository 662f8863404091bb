"""What systemd says about the units the agent manages: ``UnitState`` per unit (as
``agent/systemd/client.py`` reads it), ``UnitStates`` for the discovered set, which units those are."""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

from agent.base.timestamps import rfc3339

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
