"""The HTTPS side of the Kubernetes client (``agent/kube/client.py``): whom to trust, which proxy to take,
and how to read the API server's answers.

No Kubernetes SDK: ``requests`` (AL2023 ships 2.25 with urllib3 1.25, so only APIs those have),
imported only when a session is made. The kubeconfig alone says whom to trust and who the agent is:
no ``.netrc``, no ``REQUESTS_CA_BUNDLE``. The proxy is the kubeconfig's ``proxy-url``, else
``HTTPS_PROXY``/``NO_PROXY`` read as Go's client (kubelet, kubectl) reads them, never for a
loopback server. Error texts pass through ``redact`` (``agent/kube/tokens.py``).
"""


from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Sequence
from urllib.parse import urlsplit

from agent.base.text import clip
from agent.kube.errors import KubeError
from agent.kube.kubeconfig import Cluster
from agent.kube.tokens import redact

if TYPE_CHECKING:
    import requests


def new_session(cluster: Cluster, env: Mapping[str, str], verify: Any) -> requests.Session:
    """A session that trusts ``verify`` (a CA bundle file, or True: the system store) and takes the
    proxy ``proxies`` picks."""
    import requests

    from agent.base import httpread

    session = httpread.mount(requests.Session())
    # No .netrc, no REQUESTS_CA_BUNDLE: the kubeconfig alone says whom to trust and who we are.
    session.trust_env = False
    session.verify = verify
    session.proxies = proxies(cluster, env)
    return session


def ca_description(cluster: Cluster) -> str:
    """What the server's certificate is checked against, for an error text."""
    if cluster.ca_data is not None:
        return "the kubeconfig's certificate-authority-data"
    if cluster.ca_file is not None:
        return str(cluster.ca_file)
    return "the system trust store"


def proxies(cluster: Cluster, env: Mapping[str, str]) -> Dict[str, str]:
    """``proxy-url`` from the kubeconfig, else ``HTTPS_PROXY``/``NO_PROXY`` read as Go's client
    (kubelet, kubectl) reads them: never for a loopback server."""
    if cluster.proxy_url:
        return {"https": cluster.proxy_url}
    proxy = env.get("HTTPS_PROXY") or env.get("https_proxy")
    if not proxy:
        return {}
    parts = urlsplit(cluster.server)
    host = (parts.hostname or "").lower()
    if host == "localhost" or _is_loopback(host):
        return {}
    no_proxy = env.get("NO_PROXY") or env.get("no_proxy") or ""
    if bypass_proxy(host, parts.port or 443, no_proxy):
        return {}
    return {"https": proxy}


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


def verification_failure(exc: BaseException) -> bool:
    """A TLS error about the server's certificate or name: a wrong CA or name does not heal with retries."""
    text = str(exc).lower()
    return "certificate" in text or "hostname" in text or "doesn't match" in text


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def json_body(resp: requests.Response, what: str) -> Dict[str, Any]:
    """A 2xx answer's JSON object (``{}`` when it has no body)."""
    if not resp.content:
        return {}
    try:
        doc = resp.json()
    except ValueError:
        raise KubeError(f"{what}: HTTP {resp.status_code} with a body that is not JSON") from None
    if not isinstance(doc, dict):
        raise KubeError(f"{what}: HTTP {resp.status_code} with a body that is not a JSON object")
    return doc


def api_message(resp: requests.Response, secrets: Sequence[str] = ()) -> str:
    """The message of the API server's ``Status`` object, else the start of the body; credentials
    masked (``redact``, and each of ``secrets`` wherever it appears): a server or proxy may quote
    the request's ``Authorization`` header, and this text goes to stdout, the status file, the
    Node's annotation and Events."""
    text = _api_text(resp)
    for secret in secrets:
        if secret and secret.strip():
            text = text.replace(secret, "<redacted>")
    return clip(redact(text), 300)  # cut after masking: a cut token would no longer be recognised


def _api_text(resp: requests.Response) -> str:
    try:
        doc = resp.json()
        if isinstance(doc, Mapping) and isinstance(doc.get("message"), str):
            return str(doc["message"])
    except ValueError:
        pass
    text = (resp.text or "").strip().splitlines()
    return text[0] if text else (resp.reason or "")


def short_error(exc: BaseException) -> str:
    """An exception's text for an error line: credentials masked, at most 300 characters."""
    text = redact(str(exc))
    return text if len(text) <= 300 else text[:297] + "..."
