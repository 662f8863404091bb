"""Reading an HTTP answer within one total deadline and a size cap: connect, status line, headers and
body (the Kubernetes API, IMDS, kubelet's healthz, the EFA download).

A socket timeout bounds one socket operation, not an answer: a server that sends one byte a second
never trips it (``requests``' ``timeout`` is such a per-operation timeout). So:

* every socket operation gets a timeout no longer than what is left of the deadline (``timeouts``);
* a ``Watch`` (a timer thread) shuts the connection down at the deadline, whatever phase the request
  is in: a read waiting for the next trickled byte of the status line, of a header or of the body
  returns at once, and the request fails as "too late" (``TooLate``). ``requests`` sessions get
  their connections registered with the watch of the request in progress on this thread
  (``mount``: an adapter whose urllib3 connection classes register themselves when they connect or
  send a request; ``requests`` 2.25 / urllib3 1.25 as on AL2023, and the newest); ``http.client``
  connections are added by hand (``Watch.add``);
* the body is read in chunks into memory only up to ``max_bytes`` (a ``Content-Length`` above it is
  refused before reading), checking the deadline between chunks (``read``, ``read_capped``).

``TooLate``, ``TooLarge`` and ``CutShort`` (fewer bytes than ``Content-Length``) are
``AnswerRefused``; the callers turn them into their own one-line errors. ``requests`` is imported
only by the functions that take a session.
"""


from __future__ import annotations

import contextlib
import socket
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Tuple, Type

from agent.base.retry import Deadline

if TYPE_CHECKING:
    import requests

CHUNK = 64 << 10


class AnswerRefused(Exception):
    """The answer was cut off: see ``TooLate`` and ``TooLarge``."""


class TooLate(AnswerRefused):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"no complete answer within {seconds:.3g}s")


class CutShort(AnswerRefused):
    def __init__(self, received: int, declared: int) -> None:
        super().__init__(f"answer cut short: {received} of {declared} bytes")


class TooLarge(AnswerRefused):
    def __init__(self, limit: int) -> None:
        super().__init__(f"answer larger than {limit} bytes; not read")


_current = threading.local()  # .watch: the Watch of the request in progress on this thread


class Watch:
    """Shuts every connection added to it down when ``deadline`` runs out (``fired`` then)."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self.fired = False
        self._connections: List[Any] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline.remaining()), self._cut)
        self._timer.daemon = True

    def add(self, connection: Any) -> None:
        """An ``http.client``/urllib3 connection (its ``sock`` is looked up when the deadline runs out)."""
        with self._lock:
            if connection not in self._connections:
                self._connections.append(connection)
            fired = self.fired
        if fired:
            _shut(connection)

    def _cut(self) -> None:
        with self._lock:
            self.fired = True
            connections = list(self._connections)
        for connection in connections:
            _shut(connection)

    def __enter__(self) -> Watch:
        self._previous = getattr(_current, "watch", None)
        _current.watch = self
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()
        _current.watch = self._previous


def _shut(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def timeouts(deadline: Deadline, connect: Optional[float] = None, read: Optional[float] = None
             ) -> Tuple[float, float]:
    """``requests``' ``(connect, read)`` timeouts (the read one: the longest silence), neither past
    the deadline."""
    left = max(0.05, deadline.remaining())
    return (min(connect, left) if connect else left), (min(read, left) if read else left)


def read_capped(read: Callable[[int], bytes], max_bytes: int, deadline: Deadline) -> bytes:
    """A body from ``read(n)`` (``b""`` at its end), at most ``max_bytes``, within ``deadline``."""
    body = bytearray()
    while True:
        if deadline.remaining() <= 0:
            raise TooLate(deadline.seconds)
        chunk = read(CHUNK)
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > max_bytes:
            raise TooLarge(max_bytes)


def declared_too_large(headers: Any, max_bytes: int) -> bool:
    length = str(headers.get("Content-Length") or "").strip()
    return length.isdigit() and int(length) > max_bytes


# --- requests ---------------------------------------------------------------------------------------


def mount(session: requests.Session) -> requests.Session:
    """Make ``session``'s connections (direct and through a proxy) register with the ``Watch`` of the
    request in progress on their thread."""
    adapter = _adapter_class()()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


@contextlib.contextmanager
def response(session: requests.Session, method: str, url: str, deadline: Deadline, *,
             connect_timeout: Optional[float] = None, read_timeout: Optional[float] = None,
             **kwargs: Any) -> Iterator[requests.Response]:
    """A streamed response of a ``mount``-ed session, under a ``Watch`` until the ``with`` ends; a
    cut-off request or read raises ``TooLate``."""
    import requests

    if deadline.remaining() <= 0:
        raise TooLate(deadline.seconds)
    with Watch(deadline) as watch:
        try:
            resp = session.request(method, url, stream=True, timeout=timeouts(deadline, connect_timeout, read_timeout),
                                   **kwargs)
        except requests.exceptions.RequestException:
            if watch.fired:
                raise TooLate(deadline.seconds) from None
            raise
        try:
            yield resp
        except (OSError, requests.exceptions.RequestException, _urllib3_error()):
            if watch.fired:
                raise TooLate(deadline.seconds) from None
            raise
        finally:
            resp.close()


def read(session: requests.Session, method: str, url: str, deadline: Deadline, *, max_bytes: int,
         connect_timeout: Optional[float] = None, **kwargs: Any) -> requests.Response:
    """The whole answer, its body in ``content`` (at most ``max_bytes``), within ``deadline``:
    ``TooLate``, ``TooLarge``, ``CutShort``, or ``requests``' own errors (refused, reset, TLS). A
    connection cut at the deadline ends the body like a server closing it would: ``TooLate`` then,
    never a short body taken for the whole."""
    with response(session, method, url, deadline, connect_timeout=connect_timeout, **kwargs) as resp:
        if declared_too_large(resp.headers, max_bytes):
            raise TooLarge(max_bytes)
        chunks = resp.iter_content(CHUNK)
        body = read_capped(lambda n: next(chunks, b""), max_bytes, deadline)
        if getattr(_current, "watch", None) is not None and _current.watch.fired:
            raise TooLate(deadline.seconds)  # the cut looks like the end of the body: it is not
        declared = str(resp.headers.get("Content-Length") or "").strip()
        if declared.isdigit() and len(body) < int(declared):  # urllib3 1.x does not check
            raise CutShort(len(body), int(declared))
        resp._content = body  # what .content, .text and .json() read
        resp._content_consumed = True  # type: ignore[attr-defined]
        return resp


def _urllib3_error() -> Type[Exception]:
    import urllib3

    return urllib3.exceptions.HTTPError


_ADAPTER: Optional[type] = None


def _adapter_class() -> type:
    """An ``HTTPAdapter`` whose pools (direct and proxied) make watched connections: built once."""
    global _ADAPTER
    if _ADAPTER is not None:
        return _ADAPTER
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class Watched:
        def connect(self) -> None:
            _register(self)
            super().connect()  # type: ignore[misc]

        def request(self, *args: Any, **kwargs: Any) -> Any:  # a kept-alive connection connects no more
            _register(self)
            return super().request(*args, **kwargs)  # type: ignore[misc]

    class WatchedHTTP(Watched, HTTPConnection):
        pass

    class WatchedHTTPS(Watched, HTTPSConnection):
        pass

    class Pool(HTTPConnectionPool):
        ConnectionCls = WatchedHTTP

    class TLSPool(HTTPSConnectionPool):
        ConnectionCls = WatchedHTTPS

    pools = {"http": Pool, "https": TLSPool}

    class WatchedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kwargs)
            manager.pool_classes_by_scheme = pools
            return manager

    _ADAPTER = WatchedAdapter
    return _ADAPTER


def _register(connection: Any) -> None:
    watch = getattr(_current, "watch", None)
    if watch is not None:
        watch.add(connection)
