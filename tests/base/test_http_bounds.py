"""Every HTTP answer the agent reads is bounded in time (connect, status line, headers and body
together) and in size (agent/base/httpread.py), whatever the server does: the Kubernetes API client, IMDS,
kubelet's healthz probe and the downloader, against loopback servers that trickle one byte at a
time, flood, or quote the request's credential back."""

import contextlib
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Iterator, List, Optional, Type

import pytest
import trustme

from agent.aws.imds import ImdsClient, ImdsError
from agent.base import httpread
from agent.base.fs import NodeRoot
from agent.base.retry import Deadline
from agent.daemons.kubelet import HealthzProbe
from agent.daemons.serving import NOT_SERVING
from agent.efa import download
from agent.efa.download import DownloadError, DownloadOptions, DownloadPolicy
from agent.kube.client import KubeClient
from agent.kube.errors import KubeError, KubeForbidden
from agent.kube.kubeconfig import load_kubeconfig
from tests.support.kube_helpers import CLUSTER_CA, KUBECONFIG, NODE, sample_kubeconfig, write_node_file
from tests.support.loopback import LoopbackServer

SECRET = "k8s-aws-v1.SECRETsecretSECRET"


class Hostile(LoopbackServer):
    """Answers every request as ``mode`` says: ``trickle-status`` (the status line one byte every
    0.2 s, forever), ``trickle-headers``, ``trickle-body``, ``huge`` (an endless body, no length),
    ``echo-auth`` (a 403 quoting the request's Authorization header)."""

    name = "hostile-http"

    def __init__(self, mode: str, *, https: bool = False) -> None:
        super().__init__()
        self.ca = trustme.CA() if https else None
        self.mode = mode
        self.stop_event = threading.Event()
        self.requests = 0

    def handler(self) -> Type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                server.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with contextlib.suppress(OSError):  # the client hung up
                    server.answer(self)

            do_GET = do_PUT = do_PATCH = do_POST = _any

        return Handler

    def tls(self) -> Optional[ssl.SSLContext]:
        if self.ca is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(ctx)
        return ctx

    def trickle(self, handler: BaseHTTPRequestHandler, data: bytes) -> None:
        for i in range(len(data)):
            if self.stop_event.wait(0.2):
                return
            handler.wfile.write(data[i:i + 1])
            handler.wfile.flush()

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        if self.mode == "trickle-status":
            self.trickle(h, b"HTTP/1.1 200 OK" + b" " * 10_000)
        elif self.mode == "trickle-headers":
            h.wfile.write(b"HTTP/1.1 200 OK\r\n")
            self.trickle(h, b"X-Slow: " + b"a" * 10_000)
        elif self.mode == "trickle-body":
            h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n")
            self.trickle(h, b" " * 10_000)
        elif self.mode == "stall-body":  # headers, then silence, then the connection closed: no length
            h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
            h.wfile.flush()
            self.stop_event.wait(5)
        elif self.mode == "huge":
            h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
            chunk = b" " * 65536
            while not self.stop_event.is_set():
                h.wfile.write(chunk)
        elif self.mode == "echo-auth":
            auth = h.headers.get("Authorization", "")
            body = json.dumps({"kind": "Status", "message": f"forbidden: request had Authorization: {auth} "
                               f"and token={auth.split()[-1] if auth else ''}"}).encode()
            h.send_response(403)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)

    def stop(self) -> None:
        self.stop_event.set()
        super().stop()


@pytest.fixture
def hostile(request: Any) -> Iterator[Hostile]:
    with Hostile(request.param) as server:
        yield server


@pytest.fixture
def hostile_api(request: Any) -> Iterator[Hostile]:
    with Hostile(request.param, https=True) as server:
        yield server


def client_for(tmp_path: Path, server: Hostile, **kw: Any) -> KubeClient:
    assert server.ca is not None
    root = tmp_path / "node"
    doc = sample_kubeconfig(server.url)
    doc["users"][0]["user"] = {"token": SECRET}
    write_node_file(root, CLUSTER_CA, server.ca.cert_pem.bytes())
    write_node_file(root, KUBECONFIG, doc, 0o600)
    return KubeClient(load_kubeconfig(NodeRoot(str(root)), KUBECONFIG), **kw)


TRICKLES = ["trickle-status", "trickle-headers", "trickle-body", "stall-body"]


@pytest.mark.parametrize("hostile_api", TRICKLES, indirect=True)
def test_an_api_server_that_trickles_is_cut_at_the_request_timeout(tmp_path: Path, hostile_api: Hostile) -> None:
    started = time.monotonic()
    with client_for(tmp_path, hostile_api, request_timeout=1.0) as client, pytest.raises(KubeError) as caught:
        client.get_node(NODE, Deadline(1.5))
    took = time.monotonic() - started
    assert took < 4, took
    assert "sent no complete answer within " in str(caught.value), caught.value


@pytest.mark.parametrize("hostile_api", ["huge"], indirect=True)
def test_an_api_answer_larger_than_the_cap_is_refused_unread(tmp_path: Path, hostile_api: Hostile) -> None:
    with client_for(tmp_path, hostile_api) as client, pytest.raises(KubeError, match="larger than 16 MiB"):
        client.get_node(NODE, Deadline(20))


@pytest.mark.parametrize("hostile_api", ["echo-auth"], indirect=True)
def test_an_api_error_quoting_the_credential_never_shows_it(tmp_path: Path, hostile_api: Hostile) -> None:
    with client_for(tmp_path, hostile_api) as client, pytest.raises(KubeForbidden) as caught:
        client.get_node(NODE, Deadline(5))
    text = str(caught.value)
    assert "SECRET" not in text and "forbidden: request had Authorization" in text, text


def test_a_short_token_quoted_without_bearer_is_masked_too() -> None:
    import requests

    resp = requests.models.Response()
    resp.status_code = 403
    resp._content = json.dumps({"message": "token abc123 is not valid"}).encode()
    from agent.kube.http import api_message

    assert api_message(resp, ["abc123"]) == "token <redacted> is not valid"


@pytest.mark.parametrize("hostile", TRICKLES, indirect=True)
def test_imds_that_trickles_is_cut_at_its_timeout(hostile: Hostile) -> None:
    started = time.monotonic()
    with ImdsClient(hostile.url, timeout=1.0, attempts=1) as imds, pytest.raises(ImdsError):
        imds.get("instance-type")
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("hostile", [*TRICKLES, "huge"], indirect=True)
def test_a_healthz_that_trickles_or_floods_is_cut_at_the_probe_timeout(hostile: Hostile) -> None:
    started = time.monotonic()
    answer = HealthzProbe("127.0.0.1", hostile.port, "test").read(1.0)
    assert time.monotonic() - started < 3
    assert answer.state == NOT_SERVING
    assert ("no complete answer within 1s" in answer.message or "larger than 1024 bytes" in answer.message
            ), answer.message


@pytest.mark.parametrize("hostile", ["trickle-status", "trickle-headers"], indirect=True)
def test_the_download_deadline_covers_the_status_line_and_headers(tmp_path: Path, hostile: Hostile) -> None:
    policy = DownloadPolicy(attempts=3, connect_timeout=1.0, read_timeout=30.0, total_seconds=1.5)
    sleeps: List[float] = []
    started = time.monotonic()
    with pytest.raises(DownloadError, match="download took longer than 1.5s"):
        download.download(f"{hostile.url}/x.tar.gz", tmp_path / "x.tar.gz", None,
                          DownloadOptions(policy=policy, sleep=sleeps.append))
    assert time.monotonic() - started < 4
    assert not list(tmp_path.iterdir())


def test_a_kept_alive_connection_is_watched_by_the_next_request() -> None:
    """The second request of a session reuses the first one's connection: the watch of the second
    request must still be able to cut it."""
    import requests

    served: List[int] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            served.append(1)
            conn.recv(65536)
            for _ in range(40):  # the second answer: one byte every 0.1 s
                try:
                    conn.sendall(b"H")
                except OSError:
                    return
                time.sleep(0.1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    with httpread.mount(requests.Session()) as session:
        assert httpread.read(session, "GET", url, Deadline(2), max_bytes=10).content == b"ok"
        started = time.monotonic()
        with pytest.raises(httpread.TooLate):
            httpread.read(session, "GET", url, Deadline(1), max_bytes=10)
        assert time.monotonic() - started < 2.5
    thread.join(5)
    listener.close()
