"""The agent's expected failures, each carrying its exit code (README "Exit codes").

Anything raised as an ``AgentError`` reaches the user as one line (no traceback).
"""


from __future__ import annotations

EXIT_OK = 0
EXIT_UNHEALTHY = 1
EXIT_DEGRADED = 2
EXIT_USAGE = 64
EXIT_LOCKED = 75


class AgentError(Exception):
    """An expected failure: one clear line, and an exit code."""

    exit_code = EXIT_UNHEALTHY


class ConfigError(AgentError):
    """The agent's own configuration file is invalid (exit 64)."""

    exit_code = EXIT_USAGE


class UsageError(AgentError):
    exit_code = EXIT_USAGE


class LockBusy(AgentError):
    exit_code = EXIT_LOCKED


class NodeFileError(AgentError):
    """A node file is missing, unreadable, not UTF-8, not valid TOML, or otherwise unusable."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class NodeFileMissing(NodeFileError):
    def __init__(self, path: object, problem: str = "does not exist") -> None:
        super().__init__(path, problem)
