"""A loopback IMDSv2 server with the token semantics of EC2's instance metadata service.

* ``PUT /latest/api/token`` needs ``X-aws-ec2-metadata-token-ttl-seconds`` between 1 and 21600
  (400 otherwise) and is refused (403) when it carries ``X-Forwarded-For``, i.e. came through a proxy;
* ``GET /latest/meta-data/<item>`` needs a valid token in ``X-aws-ec2-metadata-token``: 401 when it
  is missing, unknown or expired; 404 for an item that does not exist;
* ``disabled``: every request is 403 (IMDS turned off for the instance);
* ``fail_next(status)``: the next requests get that status (503: throttled / not ready).
"""

import secrets
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

from tests.support.loopback import LoopbackServer, send_text


@dataclass
class ImdsRequest:
    method: str
    path: str
    token: Optional[str]
    ttl: Optional[str]


class ImdsServer(LoopbackServer):
    name = "imds"

    def __init__(self, *, now: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.now = now
        self.metadata: Dict[str, str] = {
            "local-hostname": "ip-10-0-0-12.us-west-2.compute.internal",
            "instance-id": "i-0123456789abcdef0",
            "instance-type": "p5.48xlarge",
            "ami-id": "ami-0123456789abcdef0",
            "placement/region": "us-west-2",
        }
        self.tokens: Dict[str, float] = {}  # token -> expiry on the server's clock
        self.disabled = False
        self.failures: List[int] = []
        self.requests: List[ImdsRequest] = []

    def handler(self) -> Type[BaseHTTPRequestHandler]:
        return type("Handler", (_Handler,), {"imds": self})

    def fail_next(self, status: int, times: int = 1) -> None:
        self.failures.extend([status] * times)

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def puts(self) -> int:
        return sum(1 for r in self.requests if r.method == "PUT")

    def handle(self, method: str, path: str, headers: Any) -> Tuple[int, str]:
        token = headers.get("X-aws-ec2-metadata-token")
        ttl = headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        self.requests.append(ImdsRequest(method, path, token, ttl))
        if self.disabled:
            return 403, "Forbidden"
        if self.failures:
            return self.failures.pop(0), "scripted"
        if path == "/latest/api/token":
            if method != "PUT":
                return 405, "Method Not Allowed"
            if headers.get("X-Forwarded-For"):
                return 403, "Forbidden"
            if ttl is None or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return 400, "Bad Request"
            new = secrets.token_urlsafe(24)
            self.tokens[new] = self.now() + int(ttl)
            return 200, new
        if method != "GET":
            return 405, "Method Not Allowed"
        if token is None or token not in self.tokens or self.now() >= self.tokens[token]:
            return 401, "Unauthorized"
        prefix = "/latest/meta-data/"
        if path.startswith(prefix) and path[len(prefix) :] in self.metadata:
            return 200, self.metadata[path[len(prefix) :]]
        return 404, "Not Found"


class _Handler(BaseHTTPRequestHandler):
    imds: ImdsServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        send_text(self, *self.imds.handle(self.command, self.path, self.headers))

    do_GET = _serve
    do_PUT = _serve
    do_POST = _serve
