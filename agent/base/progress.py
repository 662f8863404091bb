"""Progress of long work, for someone watching a no-TTY SSM shell or the journal.

* ``Transfer``: a download's bytes, total, percent and rate, logged at every 10 % step or every
  5 s, whichever comes first (a slow link still shows signs of life). On a TTY it is one line on
  stderr, rewritten in place, instead of log events.
* ``Heartbeat``: for a child process that may be silent for minutes (the EFA installer inside
  dnf): every 30 s, its elapsed time and the last line it printed.

Both take the clock as a parameter, so tests can drive them.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any, Callable, Dict, Optional

from agent.base.log import get_logger

log = get_logger("progress")

STEP_PERCENT = 10
EVERY_SECONDS = 5.0
HEARTBEAT_SECONDS = 30.0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover (the loop returns)


class Transfer:
    """Call ``update(received)`` as bytes arrive (``received``: the whole file's count so far)."""

    def __init__(self, what: str, total: Callable[[], Optional[int]], *,
                 clock: Callable[[], float] = time.monotonic, stream: Optional[IO[str]] = None,
                 every_seconds: float = EVERY_SECONDS, step_percent: int = STEP_PERCENT) -> None:
        self.what = what
        self._total = total
        self._clock = clock
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._every = every_seconds
        self._step = step_percent
        self._last_time = clock()
        self._last_bytes: Optional[int] = None
        self._last_step = -1
        self._shown = False

    def update(self, received: int) -> None:
        now = self._clock()
        total = self._total()
        step = int(100 * received / total) // self._step if total else -1
        if self._last_bytes is None:  # the first piece (or the resume offset): measured from here
            self._last_bytes, self._last_time, self._last_step = received, now, step
            return
        if step > self._last_step or now - self._last_time >= self._every or (total and received >= total):
            rate = (received - self._last_bytes) / max(now - self._last_time, 1e-9)
            self._last_step = max(step, self._last_step)
            self._last_time, self._last_bytes = now, received
            percent = round(100.0 * received / total, 1) if total else None
            self._emit({"bytes": received, "total": total, "percent": percent,
                        "rate_bytes_per_second": round(rate)})

    def _emit(self, f: Dict[str, Any]) -> None:
        received = f["bytes"]
        if self._tty:
            total = f" of {_size(f['total'])}" if f["total"] else ""
            percent = f" ({f['percent']:.0f}%)" if f["percent"] is not None else ""
            line = f"{self.what}: {_size(received)}{total}{percent}, {_size(f['rate_bytes_per_second'])}/s"
            self._stream.write(f"\r\033[K{line}")
            self._stream.flush()
            self._shown = True
        else:
            log.info("download progress", url=self.what, **f)

    def finish(self) -> None:
        """End the TTY line (the log's own "downloaded" event follows)."""
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()
            self._shown = False


class Heartbeat:
    """A background thread logging ``what``'s elapsed time and ``last_line()`` every ``interval``."""

    def __init__(self, what: str, last_line: Callable[[], Optional[str]], *,
                 interval: float = HEARTBEAT_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self._last_line = last_line
        self._interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._start = 0.0
        self.beats = 0

    def __enter__(self) -> Heartbeat:
        self._start = self._clock()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.beats += 1
            log.info("still running", what=self.what, elapsed_seconds=round(self._clock() - self._start),
                     last_output=self._last_line())
