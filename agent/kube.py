"""The Kubernetes API with the node's own credentials: kubeconfig, exec credentials, Node reads and
patches, Events.

No Kubernetes SDK: ``requests`` (AL2023 ships 2.25 with urllib3 1.25, so only APIs those have).

kubeconfig (``/var/lib/kubelet/kubeconfig`` as nodeadm writes it): the current context's cluster
and user. Cluster: ``server`` (https only: TLS is always verified), ``certificate-authority`` or
``-data`` (without either, the system trust store), ``proxy-url``. User: ``token``, ``tokenFile``,
``client-certificate``/``client-key`` as files or ``-data``, or an ``exec`` plugin
(``client.authentication.k8s.io/v1beta1`` or ``v1``). Every path in the file resolves under
``--root``, relative ones against the kubeconfig's own directory, as kubectl does; an exec command
that is a bare name (``aws``) is looked up on ``PATH``.

Exec protocol: the plugin gets ``KUBERNETES_EXEC_INFO`` (``spec.interactive: false``, plus the
cluster when ``provideClusterInfo``), runs with a timeout, and prints an ``ExecCredential`` with a
token or a client certificate and key, and optionally ``expirationTimestamp``. The credential is
cached until shortly before that time; on a 401 it is obtained again, once.

Requests: 401 -> refresh the credential once; 403 -> not retried (NodeRestriction said no); 404 ->
for the node itself, waited out (it may not be registered yet); 429 and 5xx -> retried with
exponential backoff and jitter, honouring ``Retry-After`` (waiting at least that long, plus up to
half of it again, so a crowd told the same ``Retry-After`` does not come back at the same instant);
every retry within one ``Deadline``.
TLS material given as data is written to a private temporary directory (mode 0700, files 0600)
because the TLS stack takes files, and removed by ``close()``. Tokens and keys are never logged.
"""


from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import random as random_module
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple
from urllib.parse import quote, urlsplit

from agent import __version__
from agent.errors import AgentError, NodeFileError
from agent.fs import MAX_TOKEN_FILE, NodeRoot, confined, read_bytes, read_text
from agent.log import get_logger
from agent.retry import Deadline, backoff, honour_retry_after, parse_retry_after
from agent.text import clip
from agent.timestamps import parse_rfc3339, rfc3339

if TYPE_CHECKING:
    import requests

EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1beta1", "client.authentication.k8s.io/v1")
EXEC_TIMEOUT_SECONDS = 20.0
REQUEST_TIMEOUT_SECONDS = 10.0
CREDENTIAL_REFRESH_MARGIN = 60.0  # refresh a credential this long before it expires
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
_RETRIABLE = (429, 500, 502, 503, 504)

log = get_logger("kube")


# --- errors -------------------------------------------------------------------------------------


class KubeconfigError(AgentError):
    """The kubeconfig is missing, invalid, or asks for something the agent does not do."""


class KubeError(AgentError):
    """The API server did not do what was asked."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status


class KubeUnauthorized(KubeError):
    pass


class KubeForbidden(KubeError):
    pass


class KubeNotFound(KubeError):
    pass


class ExecPluginError(KubeError):
    """The exec credential plugin could not give a credential."""


# --- kubeconfig ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecConfig:
    api_version: str
    command: str
    args: Tuple[str, ...]
    env: Tuple[Tuple[str, str], ...]
    provide_cluster_info: bool
    interactive_mode: str
    install_hint: str
    cluster_config: Any = None  # clusters[].cluster.extensions["client.authentication.k8s.io/exec"]


@dataclass(frozen=True)
class Cluster:
    server: str
    ca_file: Optional[Path]
    ca_data: Optional[bytes]
    proxy_url: Optional[str]


@dataclass(frozen=True)
class User:
    token: Optional[str] = field(default=None, repr=False)
    token_file: Optional[Path] = None
    cert_file: Optional[Path] = None
    cert_data: Optional[bytes] = field(default=None, repr=False)
    key_file: Optional[Path] = None
    key_data: Optional[bytes] = field(default=None, repr=False)
    exec: Optional[ExecConfig] = None


@dataclass(frozen=True)
class Kubeconfig:
    path: Path  # where the agent read it (under --root)
    node_path: str  # how the node names it
    root: NodeRoot
    context: str
    cluster_name: str
    user_name: str
    cluster: Cluster
    user: User


def _named(entries: Any, name: str, kind: str, where: str) -> Mapping[str, Any]:
    if not isinstance(entries, list):
        raise KubeconfigError(f"{where}: '{kind}' must be a list")
    for entry in entries:
        if isinstance(entry, Mapping) and entry.get("name") == name:
            body = entry.get(kind[:-1])
            if not isinstance(body, Mapping):
                raise KubeconfigError(f"{where}: {kind}[{name}] has no '{kind[:-1]}' mapping")
            return body
    raise KubeconfigError(f"{where}: no {kind[:-1]} named {name!r} (referenced by the current context)")


def _b64(value: Any, key: str) -> bytes:
    if not isinstance(value, str):
        raise KubeconfigError(f"{key}: expected base64 text")
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KubeconfigError(f"{key}: not valid base64") from None


def load_kubeconfig(root: NodeRoot, node_path: str) -> Kubeconfig:
    """Parse the kubeconfig at ``node_path`` (under ``root``) down to what the current context uses."""
    path = root.path(node_path)
    try:
        text = read_text(path, allow_empty=False)
    except NodeFileError as exc:
        raise KubeconfigError(str(exc)) from None
    data = _parse_yaml(text, path)
    where = str(path)
    if not isinstance(data, Mapping):
        raise KubeconfigError(f"{where}: expected a kubeconfig mapping")
    context_name = data.get("current-context")
    if not isinstance(context_name, str) or not context_name:
        raise KubeconfigError(f"{where}: current-context is not set")
    context = _named(data.get("contexts"), context_name, "contexts", where)
    cluster_name, user_name = context.get("cluster"), context.get("user")
    if not isinstance(cluster_name, str) or not isinstance(user_name, str):
        raise KubeconfigError(f"{where}: contexts[{context_name}] must name a cluster and a user")
    base_dir = str(PurePosixPath(node_path).parent)

    def node_file(value: Any, key: str) -> Path:
        if not isinstance(value, str) or not value or "\0" in value:
            raise KubeconfigError(f"{where}: {key}: expected a path")
        p = value if value.startswith("/") else str(PurePosixPath(base_dir) / value)
        host = _confined(root, p, f"{where}: {key}")
        if not host.is_file():
            raise KubeconfigError(f"{where}: {key}: {clip(p, 120)} does not exist")
        return host

    c = _named(data.get("clusters"), cluster_name, "clusters", where)
    ckey = f"clusters[{cluster_name}].cluster"
    server = c.get("server")
    if not isinstance(server, str) or not server.startswith("https://"):
        raise KubeconfigError(f"{where}: {ckey}.server: must be an https:// URL (the agent always verifies "
                              f"TLS), got {server!r}")
    if c.get("insecure-skip-tls-verify"):
        raise KubeconfigError(f"{where}: {ckey}.insecure-skip-tls-verify: the agent always verifies TLS")
    if c.get("tls-server-name"):
        raise KubeconfigError(f"{where}: {ckey}.tls-server-name is not supported")
    ca_file = node_file(c["certificate-authority"], f"{ckey}.certificate-authority") \
        if c.get("certificate-authority") else None
    ca_data = _b64(c["certificate-authority-data"], f"{where}: {ckey}.certificate-authority-data") \
        if c.get("certificate-authority-data") else None
    proxy_url = c.get("proxy-url")
    if proxy_url is not None and not (isinstance(proxy_url, str) and urlsplit(proxy_url).scheme in
                                      ("http", "https")):
        raise KubeconfigError(f"{where}: {ckey}.proxy-url: expected an http(s):// URL")
    exec_ext = None
    extensions = c.get("extensions")
    if isinstance(extensions, list):
        for ext in extensions:
            if isinstance(ext, Mapping) and ext.get("name") == "client.authentication.k8s.io/exec":
                exec_ext = ext.get("extension")
    cluster = Cluster(server.rstrip("/"), ca_file, ca_data, proxy_url)

    u = _named(data.get("users"), user_name, "users", where)
    ukey = f"users[{user_name}].user"
    for unsupported in ("auth-provider", "username", "password"):
        if u.get(unsupported):
            raise KubeconfigError(f"{where}: {ukey}.{unsupported}: not supported (use a token, a client "
                                  "certificate or an exec plugin)")
    token = u.get("token")
    if token is not None and not isinstance(token, str):
        raise KubeconfigError(f"{where}: {ukey}.token: expected a string")
    if token:
        token = checked_token(token, f"{where}: {ukey}.token", KubeconfigError)
    user = User(
        token=token or None,
        token_file=node_file(u["tokenFile"], f"{ukey}.tokenFile") if u.get("tokenFile") else None,
        cert_file=node_file(u["client-certificate"], f"{ukey}.client-certificate")
        if u.get("client-certificate") else None,
        cert_data=_b64(u["client-certificate-data"], f"{where}: {ukey}.client-certificate-data")
        if u.get("client-certificate-data") else None,
        key_file=node_file(u["client-key"], f"{ukey}.client-key") if u.get("client-key") else None,
        key_data=_b64(u["client-key-data"], f"{where}: {ukey}.client-key-data")
        if u.get("client-key-data") else None,
        exec=_exec_config(u.get("exec"), f"{where}: {ukey}.exec", exec_ext) if u.get("exec") else None,
    )
    has_cert = bool(user.cert_file or user.cert_data)
    has_key = bool(user.key_file or user.key_data)
    if has_cert != has_key:
        raise KubeconfigError(f"{where}: {ukey}: a client certificate needs both the certificate and the key")
    if not (user.token or user.token_file or has_cert or user.exec):
        raise KubeconfigError(f"{where}: {ukey}: no credentials (token, tokenFile, client certificate "
                              "or exec)")
    return Kubeconfig(path, node_path, root, context_name, cluster_name, user_name, cluster, user)


def _exec_config(raw: Any, key: str, cluster_config: Any) -> ExecConfig:
    if not isinstance(raw, Mapping):
        raise KubeconfigError(f"{key}: expected a mapping")
    api_version = raw.get("apiVersion")
    if api_version not in EXEC_API_VERSIONS:
        raise KubeconfigError(f"{key}.apiVersion: expected one of {', '.join(EXEC_API_VERSIONS)}, "
                              f"got {api_version!r}")
    command = raw.get("command")
    if not isinstance(command, str) or not command:
        raise KubeconfigError(f"{key}.command: expected a command")
    args = raw.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise KubeconfigError(f"{key}.args: expected a list of strings")
    env: List[Tuple[str, str]] = []
    for item in raw.get("env") or []:
        if not (isinstance(item, Mapping) and isinstance(item.get("name"), str)
                and isinstance(item.get("value"), str)):
            raise KubeconfigError(f"{key}.env: expected entries with a name and a value")
        env.append((item["name"], item["value"]))
    mode = raw.get("interactiveMode") or ("IfAvailable" if api_version.endswith("v1beta1") else None)
    if mode not in ("Never", "IfAvailable", "Always"):
        raise KubeconfigError(f"{key}.interactiveMode: expected Never, IfAvailable or Always"
                              + (" (required by v1)" if mode is None else ""))
    return ExecConfig(
        api_version=api_version,
        command=command,
        args=tuple(args),
        env=tuple(env),
        provide_cluster_info=bool(raw.get("provideClusterInfo")),
        interactive_mode=mode,
        install_hint=str(raw.get("installHint") or "").strip(),
        cluster_config=cluster_config,
    )


# --- credentials --------------------------------------------------------------------------------


@dataclass
class Credential:
    token: Optional[str] = field(default=None, repr=False)
    cert: Optional[Tuple[str, str]] = None  # (certificate file, key file) for the TLS client
    expires: Optional[float] = None  # seconds since the epoch
    source: str = ""
    refreshable: bool = False  # a 401 is worth getting it again (exec plugin, token file)


class _PrivateFiles:
    """TLS material that exists only as data, written where only root can read it, removed on close."""

    def __init__(self) -> None:
        self._dir: Optional[str] = None
        self._count = 0

    def write(self, name: str, data: bytes) -> str:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="gpu-node-agent-tls-")  # mode 0700
        self._count += 1
        path = os.path.join(self._dir, f"{self._count}-{name}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


# --- the client ---------------------------------------------------------------------------------


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
        self.exec_timeout = exec_timeout
        self.exec_runs = 0  # how many times the exec plugin ran (for the report and tests)
        self._files = _PrivateFiles()
        self._credential: Optional[Credential] = None
        self._session: Optional[requests.Session] = None
        self._ca_path: Optional[str] = None

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
        return self.request("GET", _node_path(name), deadline, wait_registered=wait_registered)

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
            credential = self._get_credential(deadline, refresh=refresh_now)
            refresh_now = False
            headers = {"Accept": "application/json", "User-Agent": f"gpu-node-agent/{__version__}"}
            if credential.token:
                headers["Authorization"] = f"Bearer {credential.token}"
            if data is not None:
                headers["Content-Type"] = content_type or "application/json"
            retry_after: Optional[float] = None
            try:
                resp = self.session.request(
                    method, url, data=data, headers=headers, cert=credential.cert, allow_redirects=False,
                    timeout=max(0.05, min(self.request_timeout, deadline.remaining())),
                )
            except requests.exceptions.SSLError as exc:
                if _verification_failure(exc):  # a wrong CA or name does not heal with retries
                    raise KubeError(f"{what}: TLS with {self.config.cluster.server} failed (its certificate "
                                    f"is checked against {self._ca_description()}): {_short(exc)}") from None
                last = f"TLS with {self.config.cluster.server} broke off: {_short(exc)}"
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
                    return _json_body(resp, what)
                message = _api_message(resp)
                if status == 401:
                    if not refreshed and credential.refreshable:
                        refreshed = refresh_now = True
                        log.info("credential refused, getting a new one", request=what,
                                 source=credential.source)
                        continue
                    raise KubeUnauthorized(f"{what}: 401 Unauthorized: {self._why_unauthorized(credential)}",
                                           status)
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
            import requests

            session = requests.Session()
            # No .netrc, no REQUESTS_CA_BUNDLE: the kubeconfig alone says whom to trust and who we are.
            session.trust_env = False
            session.verify = self._ca_bundle()
            session.proxies = self._proxies()
            self._session = session
        return self._session

    def _ca_bundle(self) -> Any:
        cluster = self.config.cluster
        if self._ca_path is None:
            if cluster.ca_data is not None:
                self._ca_path = self._files.write("ca.crt", cluster.ca_data)
            elif cluster.ca_file is not None:
                self._ca_path = str(cluster.ca_file)
        return self._ca_path if self._ca_path is not None else True

    def _ca_description(self) -> str:
        cluster = self.config.cluster
        if cluster.ca_data is not None:
            return "the kubeconfig's certificate-authority-data"
        if cluster.ca_file is not None:
            return str(cluster.ca_file)
        return "the system trust store"

    def _proxies(self) -> Dict[str, str]:
        """``proxy-url`` from the kubeconfig, else ``HTTPS_PROXY``/``NO_PROXY`` read as Go's client
        (kubelet, kubectl) reads them: never for a loopback server."""
        if self.config.cluster.proxy_url:
            return {"https": self.config.cluster.proxy_url}
        proxy = self.env.get("HTTPS_PROXY") or self.env.get("https_proxy")
        if not proxy:
            return {}
        parts = urlsplit(self.config.cluster.server)
        host = (parts.hostname or "").lower()
        if host == "localhost" or _is_loopback(host):
            return {}
        no_proxy = self.env.get("NO_PROXY") or self.env.get("no_proxy") or ""
        if bypass_proxy(host, parts.port or 443, no_proxy):
            return {}
        return {"https": proxy}

    # -- credentials --

    def _get_credential(self, deadline: Deadline, *, refresh: bool = False) -> Credential:
        cached = self._credential
        if not refresh and cached is not None and (
            cached.expires is None or self.wall_clock() < cached.expires - CREDENTIAL_REFRESH_MARGIN
        ):
            return cached
        user = self.config.user
        cred = Credential(source="kubeconfig")
        if user.exec is not None:
            cred = self._run_exec(user.exec, deadline)
        elif user.token_file is not None:
            try:
                raw = read_bytes(user.token_file, limit=MAX_TOKEN_FILE)
            except NodeFileError as exc:
                raise KubeconfigError(f"{self.config.path}: tokenFile: {exc}") from None
            what = f"{self.config.path}: tokenFile {user.token_file}"
            try:  # client-go trims the whitespace around a token file's content
                token = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise KubeconfigError(f"{what}: not UTF-8 (the value is not shown)") from None
            if not token:
                raise KubeconfigError(f"{what}: is empty")
            token = checked_token(token, what, KubeconfigError)
            cred = Credential(token=token, source=f"tokenFile {user.token_file}", refreshable=True)
        elif user.token:
            cred = Credential(token=user.token, source="kubeconfig token")
        if cred.cert is None and (user.cert_file or user.cert_data):
            cert = str(user.cert_file) if user.cert_file else \
                self._files.write("client.crt", user.cert_data or b"")
            key = str(user.key_file) if user.key_file else \
                self._files.write("client.key", user.key_data or b"")
            cred.cert = (cert, key)
            cred.source = cred.source if cred.token else "kubeconfig client certificate"
        if cached is not None and cached.cert != cred.cert and self._session is not None:
            # Kept-alive connections would go on presenting the old client certificate.
            self._session.close()
            self._session = None
        self._credential = cred
        return cred

    def _why_unauthorized(self, cred: Credential) -> str:
        if cred.expires is not None and cred.expires <= self.wall_clock():
            when = rfc3339(cred.expires)
            return f"the credential from {cred.source} expired at {when} (is the clock right?)"
        again = " (refreshed once, refused again)" if cred.refreshable else ""
        return f"the API server refused the credential from {cred.source}{again}"

    def resolve_exec_command(self, command: str) -> Optional[str]:
        """A bare name is looked up on PATH (as kubectl does); a path resolves under ``--root``,
        a relative one against the kubeconfig's directory."""
        if "/" not in command:
            return shutil.which(command, path=self.env.get("PATH", os.defpath))
        node_path = command if command.startswith("/") else \
            str(PurePosixPath(self.config.node_path).parent / command)
        try:
            host = _confined(self.config.root, node_path, f"{self.config.path}: exec command")
        except KubeconfigError as exc:
            raise ExecPluginError(str(exc)) from None
        return str(host) if os.access(host, os.X_OK) and host.is_file() else None

    def _run_exec(self, ex: ExecConfig, deadline: Deadline) -> Credential:
        from agent.process import run_tool

        name = ex.command
        source = f"exec plugin {name}"
        if ex.interactive_mode == "Always":
            raise ExecPluginError(f"{source}: interactiveMode is Always, but the agent has no terminal")
        binary = self.resolve_exec_command(name)
        if binary is None:
            hint = f" ({ex.install_hint})" if ex.install_hint else ""
            where = "on PATH" if "/" not in name else f"under {self.config.root.root}"
            raise ExecPluginError(f"{source}: command not found {where}{hint}")
        spec: Dict[str, Any] = {"interactive": False}
        if ex.provide_cluster_info:
            cluster: Dict[str, Any] = {"server": self.config.cluster.server}
            ca = self.config.cluster.ca_data
            if ca is None and self.config.cluster.ca_file is not None:
                ca = read_bytes(self.config.cluster.ca_file)
            if ca is not None:
                cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
            if self.config.cluster.proxy_url:
                cluster["proxy-url"] = self.config.cluster.proxy_url
            if ex.cluster_config is not None:
                cluster["config"] = ex.cluster_config
            spec["cluster"] = cluster
        env = dict(self.env)
        env.update(dict(ex.env))
        env["KUBERNETES_EXEC_INFO"] = json.dumps({"apiVersion": ex.api_version, "kind": "ExecCredential",
                                                  "spec": spec})
        timeout = max(0.1, min(self.exec_timeout, deadline.remaining()))
        self.exec_runs += 1
        out = run_tool([binary, *ex.args], timeout, env=env)
        if out is None:
            raise ExecPluginError(f"{source}: cannot execute {binary}")
        if out.returncode is None:
            raise ExecPluginError(f"{source}: no credential within {timeout:g}s (killed)")
        if not out.ok:
            first = next((ln.strip() for ln in out.stderr.splitlines() if ln.strip()), "")
            tail = f": {redact(first)[:200]}" if first else ""
            raise ExecPluginError(f"{source}: exited with {out.returncode}{tail}")
        cred = self._parse_exec_credential(out.stdout, ex, source)
        log.info("exec credential obtained", plugin=name, expires=_stamp(cred.expires))
        if cred.expires is not None and cred.expires <= self.wall_clock():
            log.warning("exec credential is already expired", plugin=name, expires=_stamp(cred.expires))
        return cred

    def _parse_exec_credential(self, stdout: str, ex: ExecConfig, source: str) -> Credential:
        try:
            doc = json.loads(stdout)
        except ValueError as exc:
            # The output may hold a secret: describe the error, never echo the text.
            raise ExecPluginError(f"{source}: printed invalid JSON ({type(exc).__name__} at "
                                  f"position {getattr(exc, 'pos', '?')})") from None
        if not isinstance(doc, Mapping) or doc.get("kind") != "ExecCredential":
            raise ExecPluginError(f"{source}: output is not an ExecCredential")
        if doc.get("apiVersion") != ex.api_version:
            raise ExecPluginError(f"{source}: returned apiVersion {doc.get('apiVersion')!r}, the kubeconfig "
                                  f"asked for {ex.api_version!r}")
        status = doc.get("status")
        if not isinstance(status, Mapping):
            raise ExecPluginError(f"{source}: the ExecCredential has no status")
        token = status.get("token")
        cert_data, key_data = status.get("clientCertificateData"), status.get("clientKeyData")
        if token is not None and (not isinstance(token, str) or not token):
            raise ExecPluginError(f"{source}: status.token must be a non-empty string")
        if token:
            token = checked_token(token, f"{source}: status.token", ExecPluginError)
        if bool(cert_data) != bool(key_data):
            raise ExecPluginError(f"{source}: clientCertificateData and clientKeyData come together")
        if not token and not cert_data:
            raise ExecPluginError(f"{source}: the ExecCredential has neither a token nor a client "
                                  "certificate")
        expires: Optional[float] = None
        raw_expiry = status.get("expirationTimestamp")
        if raw_expiry is not None:
            try:
                expires = parse_rfc3339(str(raw_expiry))
            except ValueError:
                raise ExecPluginError(f"{source}: expirationTimestamp {raw_expiry!r} is not RFC 3339") \
                    from None
        cert = None
        if cert_data:
            if not (isinstance(cert_data, str) and isinstance(key_data, str)):
                raise ExecPluginError(f"{source}: clientCertificateData and clientKeyData must be PEM text")
            cert = (self._files.write("exec-client.crt", cert_data.encode()),
                    self._files.write("exec-client.key", key_data.encode()))
        return Credential(token=token or None, cert=cert, expires=expires, source=source, refreshable=True)


# --- helpers ------------------------------------------------------------------------------------


def _node_path(name: str) -> str:
    import re

    from agent.config import DNS_SUBDOMAIN

    if not re.fullmatch(DNS_SUBDOMAIN, name or ""):
        raise KubeError(f"node name {clip(repr(name), 120)} is not a DNS subdomain (lowercase letters, digits, "
                        "'-' and '.'); not asking the API server about it")
    return f"/api/v1/nodes/{quote(name, safe='')}"


def _events_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/events"


def bypass_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` exempts ``host:port``: ``*``, IPs, CIDRs, ``host:port``, and domains
    (``example.com`` and ``.example.com`` both cover subdomains)."""
    try:
        ip: Optional[Any] = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        ip = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(entry.strip("[]"), strict=False):
                    return True
            except ValueError:
                pass
            continue
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and entry_port != str(port):
            continue
        domain = name.lstrip("*").lstrip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def _verification_failure(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "certificate" in text or "hostname" in text or "doesn't match" in text


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _json_body(resp: requests.Response, what: str) -> Dict[str, Any]:
    if not resp.content:
        return {}
    try:
        doc = resp.json()
    except ValueError:
        raise KubeError(f"{what}: HTTP {resp.status_code} with a body that is not JSON") from None
    if not isinstance(doc, dict):
        raise KubeError(f"{what}: HTTP {resp.status_code} with a body that is not a JSON object")
    return doc


def _api_message(resp: requests.Response) -> str:
    """The message of the API server's ``Status`` object, else the start of the body."""
    try:
        doc = resp.json()
        if isinstance(doc, Mapping) and isinstance(doc.get("message"), str):
            return str(doc["message"])[:300]
    except ValueError:
        pass
    text = (resp.text or "").strip().splitlines()
    return text[0][:200] if text else (resp.reason or "")


def _short(exc: BaseException) -> str:
    text = redact(str(exc))
    return text if len(text) <= 300 else text[:297] + "..."



# --- hostile input: credentials and paths ---------------------------------------------------------

MAX_KUBECONFIG_NODES = 100_000  # YAML nodes once aliases are expanded (a real kubeconfig has ~50)
MAX_TOKEN = 16 << 10  # bytes; an EKS token is ~1.5 KiB, a service-account JWT a few KiB
_TOKEN_LIKE = None


def checked_token(token: str, what: str, error: Any) -> str:
    """A bearer token as kubectl would send it: one trailing newline dropped; refused (with a
    message that never holds the value) when it still has control characters or is absurdly long."""
    if token.endswith("\n"):
        token = token[:-1]
    if len(token) > MAX_TOKEN:
        raise error(f"{what}: is {len(token)} characters long, more than {MAX_TOKEN}; refusing to send it "
                    "(the value is not shown)")
    for i, ch in enumerate(token):
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise error(f"{what}: contains the control character U+{ord(ch):04X} at position {i + 1}; "
                        "refusing to send it (the value is not shown)")
        if ord(ch) > 0x7E:
            raise error(f"{what}: contains a non-ASCII character at position {i + 1}; refusing to send it "
                        "(the value is not shown)")
    if not token.strip():
        raise error(f"{what}: is empty")
    return token


def redact(text: str) -> str:
    """An error text with anything that can be a credential masked: ``Bearer <x>``, a JWT or EKS
    token, and any long run of token characters."""
    import re

    global _TOKEN_LIKE
    if _TOKEN_LIKE is None:
        _TOKEN_LIKE = re.compile(r"(?i)(bearer|basic)\s+\S+|k8s-aws-v1\.\S+|[A-Za-z0-9+/=_.\-]{32,}")
    return str(_TOKEN_LIKE.sub("<redacted>", text))


def _stamp(ts: Optional[float]) -> Optional[str]:
    return rfc3339(ts) if ts is not None else None


def _confined(root: NodeRoot, node_path: str, what: str) -> Path:
    """A path named by the kubeconfig, resolved inside ``--root`` (``..`` may not climb above it),
    its last symlink followed inside the tree too."""
    try:
        host = root.path(node_path)
    except NodeFileError as exc:
        raise KubeconfigError(f"{what}: {exc.problem}") from None
    return confined(host)


def _parse_yaml(text: str, path: Path) -> Any:
    import yaml

    from agent.config import yaml_error_line, yaml_too_big

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problem = yaml_too_big(node, MAX_KUBECONFIG_NODES)
        if problem:
            raise KubeconfigError(f"{path}: {problem}")
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}" if mark else ""
        raise KubeconfigError(f"{path}{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"{path}{yaml_error_line(exc, text)}") from None
    finally:
        loader.dispose()
