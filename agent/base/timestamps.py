"""The one way the agent writes and reads UTC timestamps (RFC 3339, ``Z``)."""


from __future__ import annotations

from datetime import datetime, timezone
from typing import Union


def rfc3339(when: Union[datetime, float], *, millis: bool = False) -> str:
    """``2026-05-12T10:00:00Z`` (``...:00.123Z`` with ``millis``) from a datetime or epoch seconds."""
    moment = datetime.fromtimestamp(when, timezone.utc) if isinstance(when, (int, float)) \
        else when.astimezone(timezone.utc)
    if millis:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str) -> float:
    """``2026-05-12T10:00:00Z`` (fractions and offsets allowed) -> seconds since the epoch."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    if "." in text:  # Python 3.9's fromisoformat wants 3 or 6 fraction digits
        head, _, rest = text.partition(".")
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        tz = rest[len(digits):]
        text = f"{head}.{(digits + '000000')[:6]}{tz}"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    return parsed.timestamp()
