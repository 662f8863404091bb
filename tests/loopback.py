"""The start and stop of the tests' loopback HTTP(S) servers (API server, IMDS, kubelet's healthz).

A ``LoopbackServer`` listens on 127.0.0.1 on a port the kernel picks, serves each connection in a
daemon thread of its own (``ThreadingHTTPServer``), and with an ``ssl.SSLContext`` speaks TLS on the
listening socket. ``start()`` returns the server; ``stop()`` may be called more than once (a test
that takes the server down, then the fixture); ``with`` does both.
"""

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Type, TypeVar

S = TypeVar("S", bound="LoopbackServer")


class LoopbackServer:
    """A subclass gives its request handler (``handler``) and, for HTTPS, its TLS context (``tls``)."""

    name = "loopback-server"  # the serving thread's

    def __init__(self) -> None:
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._tls = False

    def handler(self) -> Type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def tls(self) -> Optional[ssl.SSLContext]:
        return None

    def start(self: S) -> S:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self._server.daemon_threads = True
        context = self.tls()
        if context is not None:
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self._tls = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name=self.name,
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"
