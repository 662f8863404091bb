"""Structured logging (structlog) to stderr: console on a TTY, JSON lines otherwise.

When stderr is connected to the journal (``JOURNAL_STREAM`` names it), each line carries a
``<N>`` syslog priority prefix so journald records the right level. structlog is imported on the
first event that passes the level filter, so a quiet ``check`` never pays for it. Values under
secret-looking keys, and bearer tokens anywhere in a message, are redacted.
"""


from __future__ import annotations

import os
import re
import sys
from typing import Any, Dict, Optional

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_JOURNAL_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_SECRET_KEYS = re.compile(
    r"(token|authorization|password|secret|client[-_]key|key[-_]data|credential)", re.IGNORECASE
)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
REDACTED = "[redacted]"


class _Settings:
    fmt = "auto"
    level = LEVELS["info"]
    configured = False
    stream: Any = None


_settings = _Settings()


def setup(fmt: str = "auto", verbosity: int = 0, stream: Any = None) -> None:
    """Choose format and level; nothing is imported until the first event is emitted."""
    _settings.fmt = fmt
    _settings.level = LEVELS["debug"] if verbosity > 0 else LEVELS["warning"] if verbosity < 0 else LEVELS["info"]
    _settings.stream = stream
    _settings.configured = False


def stderr_is_journal(stream: Any = None) -> bool:
    value = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in value:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


def redact(_logger: Any, _method: str, event: Dict[str, Any]) -> Dict[str, Any]:
    for key, value in list(event.items()):
        if _SECRET_KEYS.search(key) and value is not None:
            event[key] = REDACTED
        elif isinstance(value, str) and "earer" in value:
            event[key] = _BEARER.sub(r"\1" + REDACTED, value)
    return event


def _configure() -> None:
    import structlog

    stream = _settings.stream or sys.stderr
    journal = stderr_is_journal(stream)
    fmt = _settings.fmt
    if fmt == "auto":
        fmt = "console" if hasattr(stream, "isatty") and stream.isatty() else "json"
    processors: list = [structlog.processors.add_log_level, redact]
    if not journal:
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    if fmt == "console":
        processors.append(structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    else:
        processors.append(structlog.processors.JSONRenderer(sort_keys=False))
    if journal:
        processors.append(_journal_prefix)
    structlog.configure(
        processors=processors,
        logger_factory=structlog.PrintLoggerFactory(stream),
        wrapper_class=structlog.make_filtering_bound_logger(_settings.level),
        cache_logger_on_first_use=False,
    )
    _settings.configured = True


def _journal_prefix(_logger: Any, method: str, rendered: Any) -> Any:
    level = {"warn": "warning", "exception": "error"}.get(method, method)
    return f"<{_JOURNAL_PRIORITY.get(level, 6)}>{rendered}"


class Logger:
    """A logger bound to a component name; structlog is loaded on the first emitted event."""

    def __init__(self, component: str, context: Optional[Dict[str, Any]] = None) -> None:
        self.component = component
        self.context = dict(context or {})

    def bind(self, **kw: Any) -> Logger:
        return Logger(self.component, {**self.context, **kw})

    def _emit(self, level: str, event: str, kw: Dict[str, Any]) -> None:
        if LEVELS[level] < _settings.level:
            return
        if not _settings.configured:
            _configure()
        import structlog

        logger = structlog.get_logger().bind(component=self.component, **self.context)
        getattr(logger, level)(event, **kw)

    def debug(self, event: str, **kw: Any) -> None:
        self._emit("debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._emit("info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._emit("warning", event, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._emit("error", event, kw)


def get_logger(component: str) -> Logger:
    return Logger(component)
