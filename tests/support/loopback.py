"""The start and stop of the tests' loopback HTTP(S) servers (Kubernetes API, IMDS, kubelet's
healthz, the EFA installer downloads).

A ``LoopbackServer`` listens on 127.0.0.1 on a port the kernel picks and serves from a daemon thread,
each connection in a thread of its own (``ThreadingHTTPServer``); with a ``tls()`` context it speaks
TLS on the listening socket. ``start()`` returns the server; ``stop()`` may be called more than once
(a test that takes the server down, then its fixture); ``with`` does both.
"""

import socketserver
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Type, TypeVar

S = TypeVar("S", bound="LoopbackServer")


class LoopbackServer:
    """A subclass gives its request handler (``handler``) and, for HTTPS, its TLS context (``tls``),
    or builds the listening server itself (``listen``)."""

    name = "loopback-server"  # the serving thread's

    def __init__(self) -> None:
        self._server: Optional[socketserver.TCPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.scheme = "http"

    def handler(self) -> Type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def tls(self) -> Optional[ssl.SSLContext]:
        return None

    def listen(self) -> socketserver.TCPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        server.daemon_threads = True
        context = self.tls()
        if context is not None:
            server.socket = context.wrap_socket(server.socket, server_side=True)
            self.scheme = "https"
        return server

    def start(self: S) -> S:
        self._server = server = self.listen()
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name=self.name, daemon=True)
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
        return f"{self.scheme}://127.0.0.1:{self.port}"


def send_text(handler: BaseHTTPRequestHandler, status: int, text: str) -> None:
    """A short ``text/plain`` answer with its length."""
    data = text.encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "text/plain")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
