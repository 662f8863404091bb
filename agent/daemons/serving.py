"""Whether a daemon serves, in its own words, and waiting for that after a restart.

systemd's ``active`` only says the process runs. containerd stays active when its CRI plugin rejects
the configuration (the node then cannot run a single pod), and kubelet is active before it serves.
So a restart is done, and ``containerd-running``/``kubelet-running`` pass, only when the daemon
itself says it serves: containerd's CRI plugins (``agent/containerd/cri.py``), kubelet's healthz
(``agent/daemons/kubelet.py``). Each offers a ``ServingProbe``; this module only waits.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, NamedTuple, Protocol

SERVING = "serving"
NOT_SERVING = "not-serving"  # the daemon answered: it does not serve (message: its reason)
UNKNOWN = "unknown"  # the agent could not ask (no socket, no ctr, unreadable config)
POLL_INTERVAL = 0.1


class Serving(NamedTuple):
    state: str  # SERVING | NOT_SERVING | UNKNOWN
    message: str
    # True when asking again cannot change the answer (containerd initialises its plugins once at
    # start, so a plugin in error stays in error; a missing ctr stays missing): stop waiting.
    final: bool = False
    details: Mapping[str, Any] = {}

    @property
    def ok(self) -> bool:
        return self.state == SERVING


class ServingProbe(Protocol):
    """How to ask one daemon whether it serves; ``read`` never raises and is bounded by ``timeout``."""

    @property
    def what(self) -> str:
        """What is asked, for messages: ``containerd's CRI plugins``, ``kubelet's healthz``."""

    def read(self, timeout: float) -> Serving: ...


class Unprobed(NamedTuple):
    """A daemon the agent cannot ask (unreadable config, a bad socket path, the endpoint off or not on
    loopback): every reading is ``UNKNOWN`` with ``reason``, final."""

    reason: str
    off: bool = False  # e.g. kubelet's ``healthzPort: 0``, a deliberate choice
    what: str = "kubelet's healthz"

    def read(self, timeout: float = 0.0) -> Serving:
        return Serving(UNKNOWN, self.reason, final=True)


def wait(
    probe: ServingProbe,
    deadline: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    interval: float = POLL_INTERVAL,
) -> Serving:
    """Ask ``probe`` until the daemon serves, the answer is final, or ``deadline`` (``clock`` time).

    The last answer is returned; past the deadline an answer that is not ``serving`` says so.
    """
    while True:
        remaining = deadline - clock()
        answer = probe.read(max(0.5, min(remaining, 5.0)))
        if answer.ok or answer.final:
            return answer
        remaining = deadline - clock()
        if remaining <= 0:
            return answer._replace(message=f"{answer.message} (still so after waiting for {probe.what})")
        sleep(min(interval, remaining))
