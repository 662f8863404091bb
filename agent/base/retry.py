"""Time budgets and retries: one ``Deadline``, one backoff with jitter, one ``Retry-After`` reading.

Used by the Kubernetes client (``agent/kube/client.py``), IMDS (``agent/aws/imds.py``) and the EFA download.
"""


from __future__ import annotations

import time
from typing import Callable, Optional


class Deadline:
    """One overall time budget for a sequence of requests and retries."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.expires = clock() + seconds

    def remaining(self) -> float:
        return max(0.0, self.expires - self.clock())


def backoff(attempt: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """The wait before retry ``attempt`` (1, 2, ...): exponential from ``base``, at most ``cap``,
    with equal jitter (half fixed, half random) so a fleet does not retry in step."""
    step = min(cap, base * 2 ** (attempt - 1))
    return step / 2 + rand() * step / 2


def honour_retry_after(delay: float, retry_after: Optional[float], cap: float, rand: Callable[[], float]) -> float:
    """At least what ``Retry-After`` asks, plus a random part of up to half of it (at most ``cap``):
    a server that sheds load tells every client the same number, and clients that all obey it
    exactly come back as one wave."""
    if retry_after is None:
        return delay
    return max(delay, retry_after + rand() * min(cap, retry_after / 2))


def parse_retry_after(value: Optional[str], wall_clock: Callable[[], float]) -> Optional[float]:
    """``Retry-After``: delay-seconds or an HTTP date; None when absent or unreadable."""
    from datetime import timezone
    from email.utils import parsedate_to_datetime

    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - wall_clock())
