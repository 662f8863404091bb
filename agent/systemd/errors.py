"""systemd's failures, each one line naming the unit and what was expected (exit 1)."""

from __future__ import annotations

from typing import Optional

from agent.base.errors import AgentError


class SystemdError(AgentError):
    """systemd could not be asked, or did not do what was asked (exit 1)."""

    def __init__(self, message: str, unit: Optional[str] = None) -> None:
        super().__init__(message)
        self.unit = unit


class BusUnreachable(SystemdError):
    """No system bus at the address, or systemd is not on it."""


class UnitNotLoaded(SystemdError):
    """``NoSuchUnit``, or the unit's ``LoadState`` is not ``loaded`` (not-found, masked, error)."""


class JobFailed(SystemdError):
    """The restart job finished with a result other than ``done``, or the unit is not active after it."""

    def __init__(self, message: str, unit: str, result: str) -> None:
        super().__init__(message, unit)
        self.result = result


class SystemdTimeout(SystemdError):
    """The restart job did not finish, or systemd did not answer, within the deadline."""
