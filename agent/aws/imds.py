"""EC2 instance metadata, IMDSv2 only (README "Configuration", docs/reporting.md).

``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` gives a session token, sent
back as ``X-aws-ec2-metadata-token``. The token is reused until shortly before its TTL runs out; a
401 means it expired early (IMDS restarted): get a new one and ask again, once. 403 means IMDS is
disabled for this instance (or the token request came through a proxy), 404 that the item does not
exist, 503 and connection failures are retried a bounded number of times with a short timeout each.

Proxies never apply: the session ignores ``HTTP_PROXY``/``NO_PROXY`` (``trust_env = False``), so a
node-wide proxy cannot intercept the link-local address. The AWS SDK variables are honoured:
``AWS_EC2_METADATA_DISABLED=true`` turns IMDS off, ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` (and
``AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6``) choose the endpoint unless the agent's config does.
``requests`` is imported only when a request is made.
"""


from __future__ import annotations

import os
import random as random_module
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from agent.base.errors import AgentError
from agent.base.log import get_logger
from agent.base.retry import Deadline, backoff
from agent.config.settings import ImdsSettings

if TYPE_CHECKING:
    import requests

DEFAULT_ENDPOINT = "http://169.254.169.254"
IPV6_ENDPOINT = "http://[fd00:ec2::254]"
TOKEN_PATH = "/latest/api/token"  # noqa: S105 - a URL path, not a secret
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
TOKEN_TTL_SECONDS = 21600  # the maximum; the token is refreshed TOKEN_REFRESH_MARGIN before it runs out
TOKEN_REFRESH_MARGIN = 60.0
ATTEMPTS = 3
BACKOFF_BASE = 0.1  # seconds before the first retry, doubling
BACKOFF_CAP = 1.0
MAX_ANSWER_BYTES = 64 << 10  # metadata items and tokens are short

log = get_logger("imds")


class ImdsError(AgentError):
    """IMDS could not answer (unreachable, disabled, or kept failing)."""


class ImdsDisabled(ImdsError):
    pass


def disabled_by_env(env: Mapping[str, str]) -> bool:
    return env.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() == "true"


def resolve_endpoint(settings: ImdsSettings, env: Mapping[str, str]) -> str:
    """The agent's config first, then the AWS SDK variables, then the IPv4 link-local address."""
    if settings.endpoint:
        return settings.endpoint.rstrip("/")
    from_env = env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "").strip()
    if from_env:
        return from_env.rstrip("/")
    if env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "").strip().lower() == "ipv6":
        return IPV6_ENDPOINT
    return DEFAULT_ENDPOINT


class ImdsClient:
    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        timeout: float = 2.0,
        *,
        disabled: bool = False,
        attempts: int = ATTEMPTS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self.disabled = disabled
        self.attempts = max(1, attempts)
        self.clock = clock
        self.sleep = sleep
        self.random = random
        self._token: Optional[str] = None
        self._token_expires = 0.0
        self._session: Optional[requests.Session] = None

    @classmethod
    def from_settings(
        cls, settings: ImdsSettings, env: Optional[Mapping[str, str]] = None, **kw: Any
    ) -> ImdsClient:
        env = os.environ if env is None else env
        return cls(resolve_endpoint(settings, env), settings.timeout_seconds,
                   disabled=disabled_by_env(env), **kw)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> ImdsClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            import requests

            from agent.base import httpread

            session = httpread.mount(requests.Session())
            session.trust_env = False  # no proxy, no .netrc: IMDS is link-local
            self._session = session
        return self._session

    def get(self, path: str) -> Optional[str]:
        """``GET /latest/meta-data/<path>``: the text, or None when IMDS has no such item (404)."""
        if self.disabled:
            raise ImdsDisabled("IMDS is disabled (AWS_EC2_METADATA_DISABLED=true)")
        url = f"{self.endpoint}/latest/meta-data/{path.lstrip('/')}"
        refreshed = False
        attempt = 0
        while True:
            token = self._get_token()
            resp = self._call("GET", url, {TOKEN_HEADER: token})
            if resp is not None and resp.status_code == 401 and not refreshed:
                # The token expired before its TTL (IMDS restarted, clock jumped): one fresh token.
                self._token = None
                refreshed = True
                continue
            if resp is not None and resp.status_code == 200:
                return str(resp.text)
            if resp is not None and resp.status_code == 404:
                return None
            if resp is not None and resp.status_code == 403:
                raise ImdsDisabled(f"{url}: 403 Forbidden (IMDS access is disabled for this instance)")
            attempt += 1
            what = f"HTTP {resp.status_code}" if resp is not None else "no answer"
            if resp is not None and resp.status_code not in (500, 502, 503, 504):
                raise ImdsError(f"{url}: unexpected {what}")
            if attempt >= self.attempts:
                raise ImdsError(f"{url}: {what} after {attempt} attempts")
            self._backoff(attempt)

    def _get_token(self) -> str:
        if self._token is not None and self.clock() < self._token_expires:
            return self._token
        url = f"{self.endpoint}{TOKEN_PATH}"
        attempt = 0
        while True:
            started = self.clock()
            resp = self._call("PUT", url, {TTL_HEADER: str(TOKEN_TTL_SECONDS)})
            if resp is not None and resp.status_code == 200 and resp.text.strip():
                self._token = resp.text.strip()
                self._token_expires = started + TOKEN_TTL_SECONDS - TOKEN_REFRESH_MARGIN
                return self._token
            if resp is not None and resp.status_code == 403:
                raise ImdsDisabled(f"{url}: 403 Forbidden (IMDS is disabled, or the request went "
                                   "through a proxy)")
            if resp is not None and resp.status_code in (400, 404, 405):
                raise ImdsError(f"{url}: HTTP {resp.status_code}: the endpoint does not speak IMDSv2")
            attempt += 1
            what = f"HTTP {resp.status_code}" if resp is not None else "no answer"
            if attempt >= self.attempts:
                raise ImdsError(f"{url}: cannot get a session token: {what} after {attempt} attempts")
            self._backoff(attempt)

    def _call(self, method: str, url: str, headers: Mapping[str, str]) -> Optional[requests.Response]:
        """One answer within ``timeout`` (all of it: a trickling endpoint is cut), at most
        ``MAX_ANSWER_BYTES``; None when there is none."""
        import requests

        from agent.base import httpread

        try:
            return httpread.read(self.session, method, url, Deadline(self.timeout, self.clock),
                                 max_bytes=MAX_ANSWER_BYTES, headers=dict(headers), allow_redirects=False)
        except (requests.RequestException, httpread.AnswerRefused) as exc:
            log.debug("imds request failed", method=method, url=url, error=type(exc).__name__)
            return None

    def _backoff(self, attempt: int) -> None:
        self.sleep(backoff(attempt, BACKOFF_BASE, BACKOFF_CAP, self.random))
