"""What a report sink is: one place the report goes out to, behind one small interface.

A sink is an object with a ``name``, a ``cluster`` flag and ``send(delivery) -> SinkOutcome``. The
sinks are listed once, in ``agent/report/sinks/__init__.py`` (``SINKS``, in the order they are sent);
each lives in its own module under ``agent/report/sinks/`` and exposes it as ``SINK``. A new sink (say
CloudWatch) is one module and one entry in ``SINKS``.

``agent/report/report.py``'s ``finish`` sends a report in two phases:

* the cluster sinks (``cluster = True``: the Node's annotations and condition, then the Events), only
  when publishing is asked for, through ``agent/report/publish.py``'s ``publish``. They share one
  ``ClusterSession`` (the node name, the kubeconfig, one API client, one deadline), built on first
  use. A cluster sink's outcome with a ``problem`` ends the phase (the later ones build on it: the
  Events refer to the Node the Node sink wrote); its ``record`` holds the fields of
  ``publish.PublishResult`` it sets, which the status file shows as ``publish``;
* then every other sink (the status file, the metrics file), always, given the report as the status
  file holds it, with how publishing went. A ``problem`` there is a report not written: the run's
  exit code is 1.

``send`` never raises: a failure is its outcome's ``problem`` (one line), logged by the sink.
This module imports no sink and nothing of the report package.
"""

from __future__ import annotations

import contextlib
import socket
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, NamedTuple, Optional, Protocol, Sequence

from agent.base.errors import NodeFileError
from agent.base.fs import atomic_write
from agent.base.noderoot import NodeRoot
from agent.config.settings import AgentConfig
from agent.pipeline.health import CheckResult

if TYPE_CHECKING:
    from agent.kube.kubeconfig import Kubeconfig
    from agent.kube.node import NodeName


class ClusterSession:
    """The cluster as this report's cluster sinks share it: the node name (resolved once), the
    kubeconfig, one API client and one deadline (``report.timeout_seconds`` for the whole publish).
    Each part is made on first use; ``close`` (or leaving the ``with``) closes the client."""

    def __init__(self, root: NodeRoot, config: AgentConfig, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 client_factory: Optional[Callable[..., Any]] = None,
                 imds: Optional[Callable[[], Any]] = None,
                 hostname: Callable[[], str] = socket.gethostname) -> None:
        from agent.base.retry import Deadline

        self.root = root
        self.config = config
        self.clock = clock
        self.sleep = sleep
        self.deadline = Deadline(config.report.timeout_seconds, clock)
        self.node_uid: Optional[str] = None  # the Node's uid, once the Node sink has seen it (for Events)
        self._client_factory = client_factory
        self._imds = imds
        self._hostname = hostname
        self._name: Optional[NodeName] = None
        self._kubeconfig: Optional[Kubeconfig] = None
        self._client: Any = None
        self._stack = contextlib.ExitStack()

    @property
    def resolved(self) -> Optional[NodeName]:
        """The node name, if it has been resolved (None before, or when resolving failed)."""
        return self._name

    def node_name(self) -> NodeName:
        if self._name is None:
            from agent.kube.node import resolve_node_name

            self._name = resolve_node_name(self.root, self.config, imds=self._imds, hostname=self._hostname)
        return self._name

    def kubeconfig(self) -> Kubeconfig:
        if self._kubeconfig is None:
            from agent.kube.kubeconfig import load_kubeconfig

            self._kubeconfig = load_kubeconfig(self.root, self.config.report.kubeconfig)
        return self._kubeconfig

    def client(self) -> Any:
        """The API client (``agent/kube/client.py``'s ``KubeClient``), with the node's credentials."""
        if self._client is None:
            from agent.kube.client import KubeClient

            factory = self._client_factory or KubeClient
            self._client = self._stack.enter_context(factory(self.kubeconfig(), clock=self.clock, sleep=self.sleep))
        return self._client

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> ClusterSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Delivery(NamedTuple):
    """What every sink may need of one report."""

    root: NodeRoot
    config: AgentConfig
    results: Sequence[CheckResult]
    # the cluster sinks: the report document; the others: the report as the status file holds it
    # (with the restart totals, the timeline, the pass and how publishing went)
    document: Mapping[str, Any]
    now: datetime
    events: Sequence[Any] = ()  # ``events.EventSpec`` of this report (a run's actions, GPUReady first)
    node: Optional[Mapping[str, Any]] = None  # the Node as a check of this report read it
    keep_actions: bool = False  # ``check --report``: keep the actions the last run published
    cluster: Optional[ClusterSession] = None  # only for the cluster sinks
    restarts: Mapping[str, int] = {}  # units this run restarted, and how often (the status file adds them up)


class SinkOutcome(NamedTuple):
    problem: Optional[str] = None  # why the report did not go out through this sink (one line)
    # a cluster sink: the fields of ``PublishResult`` it sets; any other: the document as it wrote it,
    # which the sinks after it get (the status file's, with the totals and pass records it holds)
    record: Optional[Dict[str, Any]] = None


class Sink(Protocol):
    name: str  # short, stable, for logs and tests
    cluster: bool  # True: sent only when publishing is asked for, first, through ``delivery.cluster``

    def send(self, delivery: Delivery) -> SinkOutcome:
        """Send the report; never raises (a failure is the outcome's ``problem``)."""


def write_node_file(root: NodeRoot, node_path: str, data: bytes, key: Optional[str] = None) -> Optional[str]:
    """Write a report file atomically (its directory made when missing); the problem, or None.
    ``key``: the output setting that names it (``report.metrics_file``): where the file really is,
    its directories' symlinks followed, must be where that setting may point
    (``agent.config.rules.resolved_output``); checked right before the write."""
    from agent.config.rules import resolved_output

    path = root.path(node_path)
    try:
        if key is not None:
            path = resolved_output(root, node_path, key)
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(path, data)
    except NodeFileError as exc:
        return str(exc)
    except OSError as exc:
        return f"{path}: cannot write: {exc.strerror or exc}"
    return None
