"""The Kubernetes API with the node's own credentials: Node reads and patches, Events.

The kubeconfig: ``agent/kube/kubeconfig.py``; the credential it names (token, token file, client
certificate, exec plugin), cached and refreshed: ``agent/kube/credentials.py`` and
``agent/kube/exec.py``; trust, proxies and reading answers: ``agent/kube/http.py``.

Requests: 401 -> refresh the credential once; 403 -> not retried (NodeRestriction said no); 404 ->
for the node itself, waited out (it may not be registered yet); 429 and 5xx -> retried with
exponential backoff and jitter, honouring ``Retry-After`` (waiting at least that long, plus up to
half of it again, so a crowd told the same ``Retry-After`` does not come back at the same instant);
every retry within one ``Deadline`` (``agent/base/retry.py``). ``close()`` removes the private TLS files.
Tokens and keys are never logged.
"""


from __future__ import annotations

import json
import os
import random as random_module
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional
from urllib.parse import quote

from agent import __version__
from agent.base import httpread
from agent.base.log import get_logger
from agent.base.retry import Deadline, backoff, honour_retry_after, parse_retry_after
from agent.base.text import clip
from agent.kube.credentials import Credential, CredentialSource, PrivateFiles
from agent.kube.errors import KubeError, KubeForbidden, KubeNotFound, KubeUnauthorized
from agent.kube.http import api_message, ca_description, json_body, new_session, short_error, verification_failure
from agent.kube.kubeconfig import Kubeconfig

if TYPE_CHECKING:
    import requests

EXEC_TIMEOUT_SECONDS = 20.0
REQUEST_TIMEOUT_SECONDS = 10.0  # one answer, all of it
MAX_ANSWER_BYTES = 16 << 20  # a Node with its images list is far smaller
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
_RETRIABLE = (429, 500, 502, 503, 504)

log = get_logger("kube")


class KubeClient:
    """A small client for the calls the agent makes on its own Node."""

    def __init__(
        self,
        config: Kubeconfig,
        *,
        env: Optional[Mapping[str, str]] = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = random_module.random,
        request_timeout: float = REQUEST_TIMEOUT_SECONDS,
        exec_timeout: float = EXEC_TIMEOUT_SECONDS,
    ) -> None:
        self.config = config
        self.env = dict(os.environ if env is None else env)
        self.clock = clock
        self.wall_clock = wall_clock
        self.sleep = sleep
        self.random = random
        self.request_timeout = request_timeout
        self._files = PrivateFiles()
        self.credentials = CredentialSource(config, self._files, env=self.env, wall_clock=wall_clock,
                                            exec_timeout=exec_timeout)
        self._session: Optional[requests.Session] = None
        self._ca_path: Optional[str] = None

    @property
    def exec_runs(self) -> int:
        """How many times the exec plugin ran (for the report and tests)."""
        return self.credentials.exec_runs

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        self._files.close()

    def __enter__(self) -> KubeClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- Node calls --

    def get_node(self, name: str, deadline: Deadline, *, wait_registered: bool = False) -> Dict[str, Any]:
        """The Node with ``resourceVersion=0``: served from the API server's watch cache, not etcd
        (it may be a moment behind; the agent's reads compare what it wrote, and writes repair)."""
        return self.request("GET", _node_path(name) + "?resourceVersion=0", deadline,
                            wait_registered=wait_registered)

    def patch_node(self, name: str, patch: Mapping[str, Any], deadline: Deadline) -> Dict[str, Any]:
        """A JSON merge patch (RFC 7386) on the Node: for metadata such as annotations."""
        return self.request("PATCH", _node_path(name), deadline, body=patch, content_type=MERGE_PATCH,
                            wait_registered=True)

    def patch_node_status(self, name: str, patch: Mapping[str, Any], deadline: Deadline) -> Dict[str, Any]:
        """A strategic merge patch on ``nodes/{name}/status``: conditions merge by ``type``.

        Never a JSON merge patch here: it would replace the whole conditions list, kubelet's
        ``Ready`` included.
        """
        return self.request("PATCH", _node_path(name) + "/status", deadline, body=patch,
                            content_type=STRATEGIC_MERGE_PATCH, wait_registered=True)

    # -- Events (the node authorizer lets a node create and patch them, never read or delete) --

    def create_event(self, namespace: str, event: Mapping[str, Any], deadline: Deadline) -> Dict[str, Any]:
        return self.request("POST", _events_path(namespace), deadline, body=event,
                            content_type="application/json")

    def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any], deadline: Deadline
                    ) -> Dict[str, Any]:
        """A strategic merge patch on an Event (``count``, ``lastTimestamp``), as client-go's
        event correlator sends for a repeat."""
        return self.request("PATCH", f"{_events_path(namespace)}/{quote(name, safe='')}", deadline,
                            body=patch, content_type=STRATEGIC_MERGE_PATCH)

    # -- the request loop --

    def request(
        self,
        method: str,
        path: str,
        deadline: Deadline,
        *,
        body: Optional[Mapping[str, Any]] = None,
        content_type: Optional[str] = None,
        wait_registered: bool = False,
    ) -> Dict[str, Any]:
        import requests

        url = self.config.cluster.server + path
        what = f"{method} {path}"
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        refreshed = False
        refresh_now = False
        attempt = 0
        last = "no attempt made"
        while True:
            if deadline.remaining() <= 0:
                raise KubeError(f"{what}: gave up after the {deadline.seconds:g}s deadline: {last}")
            credential = self._credential(deadline, refresh=refresh_now)
            refresh_now = False
            headers = {"Accept": "application/json", "User-Agent": f"gpu-node-agent/{__version__}"}
            if credential.token:
                headers["Authorization"] = f"Bearer {credential.token}"
            if data is not None:
                headers["Content-Type"] = content_type or "application/json"
            retry_after: Optional[float] = None
            # One answer within request_timeout (and the overall deadline): status line, headers and
            # body, however slowly the server sends them; at most MAX_ANSWER_BYTES of body.
            answer_deadline = Deadline(min(self.request_timeout, deadline.remaining()), self.clock)
            try:
                resp = httpread.read(self.session, method, url, answer_deadline, max_bytes=MAX_ANSWER_BYTES,
                                     data=data, headers=headers, cert=credential.cert, allow_redirects=False)
            except httpread.TooLate:
                last = (f"{self.config.cluster.server} sent no complete answer within "
                        f"{answer_deadline.seconds:.3g}s")
                log.debug("api request failed", request=what, error="too late")
            except httpread.CutShort as exc:
                last = f"{self.config.cluster.server}: {exc}"
                log.debug("api request failed", request=what, error="cut short")
            except httpread.TooLarge:
                raise KubeError(f"{what}: the answer is larger than {MAX_ANSWER_BYTES >> 20} MiB; not read") from None
            except requests.exceptions.SSLError as exc:
                if verification_failure(exc):  # a wrong CA or name does not heal with retries
                    raise KubeError(f"{what}: TLS with {self.config.cluster.server} failed (its certificate "
                                    f"is checked against {ca_description(self.config.cluster)}): "
                                    f"{short_error(exc)}") from None
                last = f"TLS with {self.config.cluster.server} broke off: {short_error(exc)}"
                log.debug("api request failed", request=what, error=type(exc).__name__)
            except requests.exceptions.RequestException as exc:  # refused, reset, timed out, cut short
                last = f"cannot reach {self.config.cluster.server}: {type(exc).__name__}"
                log.debug("api request failed", request=what, error=type(exc).__name__)
            except ValueError as exc:  # a header the HTTP stack refuses: its text would hold the credential
                raise KubeError(f"{what}: the request could not be built ({type(exc).__name__}; details not "
                                "shown, they can hold the credential)") from None
            else:
                status = resp.status_code
                if 200 <= status < 300:
                    return json_body(resp, what)
                message = api_message(resp, [credential.token or ""])
                if status == 401:
                    if not refreshed and credential.refreshable:
                        refreshed = refresh_now = True
                        log.info("credential refused, getting a new one", request=what,
                                 source=credential.source)
                        continue
                    why = self.credentials.why_unauthorized(credential)
                    raise KubeUnauthorized(f"{what}: 401 Unauthorized: {why}", status)
                if status == 403:
                    raise KubeForbidden(f"{what}: 403 Forbidden: {message}", status)
                if status == 404 and wait_registered:
                    last = "404: the node is not registered (yet)"
                elif status == 404:
                    raise KubeNotFound(f"{what}: 404 Not Found: {message}", status)
                elif status in _RETRIABLE or status >= 500:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"), self.wall_clock)
                    last = f"HTTP {status}: {message}"
                else:
                    raise KubeError(f"{what}: HTTP {status}: {message}", status)
                log.info("api request will be retried", request=what, status=status)
            attempt += 1
            delay = self._delay(attempt, retry_after)
            if delay >= deadline.remaining():
                wait = f"Retry-After {retry_after:g}s" if retry_after is not None else \
                    f"next try in {delay:.1f}s"
                raise KubeError(f"{what}: gave up after {attempt} attempts ({wait} is past the "
                                f"{deadline.seconds:g}s deadline): {last}")
            self.sleep(delay)

    def _delay(self, attempt: int, retry_after: Optional[float]) -> float:
        """Exponential backoff with equal jitter; at least what ``Retry-After`` asks, plus a random
        part of up to half of it (at most ``BACKOFF_CAP``): an API server that sheds load tells every
        client the same number, and clients that all obey it exactly come back as one wave."""
        delay = backoff(attempt, BACKOFF_BASE, BACKOFF_CAP, self.random)
        return honour_retry_after(delay, retry_after, BACKOFF_CAP, self.random)

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = new_session(self.config.cluster, self.env, self._ca_bundle())
        return self._session

    def _ca_bundle(self) -> Any:
        cluster = self.config.cluster
        if self._ca_path is None:
            if cluster.ca_data is not None:
                self._ca_path = self._files.write("ca.crt", cluster.ca_data)
            elif cluster.ca_file is not None:
                self._ca_path = str(cluster.ca_file)
        return self._ca_path if self._ca_path is not None else True

    def _credential(self, deadline: Deadline, *, refresh: bool = False) -> Credential:
        before = self.credentials.cached
        cred = self.credentials.get(deadline, refresh=refresh)
        if before is not None and before.cert != cred.cert and self._session is not None:
            # Kept-alive connections would go on presenting the old client certificate.
            self._session.close()
            self._session = None
        return cred


def _node_path(name: str) -> str:
    import re

    from agent.config.rules import DNS_SUBDOMAIN

    if not re.fullmatch(DNS_SUBDOMAIN, name or ""):
        raise KubeError(f"node name {clip(repr(name), 120)} is not a DNS subdomain (lowercase letters, digits, "
                        "'-' and '.'); not asking the API server about it")
    return f"/api/v1/nodes/{quote(name, safe='')}"


def _events_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/events"
