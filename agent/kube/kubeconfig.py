"""The kubeconfig (``/var/lib/kubelet/kubeconfig`` as nodeadm writes it), read down to what the
current context uses: its cluster and its user.

Cluster: ``server`` (https only: TLS is always verified), ``certificate-authority`` or ``-data``
(without either, the system trust store), ``proxy-url``. User: ``token``, ``tokenFile``,
``client-certificate``/``client-key`` as files or ``-data``, or an ``exec`` plugin
(``client.authentication.k8s.io/v1beta1`` or ``v1``, run by ``agent/kube/exec.py``). Every path in
the file resolves under ``--root``, relative ones against the kubeconfig's own directory, as kubectl
does. A token is checked on load (``agent/kube/tokens.py``); its value is never shown.
"""


from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from agent.base.errors import NodeFileError
from agent.base.fs import read_text
from agent.base.noderoot import NodeRoot, confined
from agent.base.text import clip
from agent.kube.errors import KubeconfigError
from agent.kube.tokens import checked_token

EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1beta1", "client.authentication.k8s.io/v1")
MAX_KUBECONFIG_NODES = 100_000  # YAML nodes once aliases are expanded (a real kubeconfig has ~50)


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


def load_kubeconfig(root: NodeRoot, node_path: str, context: Optional[str] = None) -> Kubeconfig:
    """Parse the kubeconfig at ``node_path`` (under ``root``) down to what the current context
    (or ``context``, as kubectl's ``--context``) uses."""
    path = root.path(node_path)
    try:
        text = read_text(path, allow_empty=False)
    except NodeFileError as exc:
        raise KubeconfigError(str(exc)) from None
    data = _parse_yaml(text, path)
    where = str(path)
    if not isinstance(data, Mapping):
        raise KubeconfigError(f"{where}: expected a kubeconfig mapping")
    context_name = context or data.get("current-context")
    if not isinstance(context_name, str) or not context_name:
        raise KubeconfigError(f"{where}: current-context is not set")
    chosen = _named(data.get("contexts"), context_name, "contexts", where)
    cluster_name, user_name = chosen.get("cluster"), chosen.get("user")
    if not isinstance(cluster_name, str) or not isinstance(user_name, str):
        raise KubeconfigError(f"{where}: contexts[{context_name}] must name a cluster and a user")
    base_dir = str(PurePosixPath(node_path).parent)

    def node_file(value: Any, key: str) -> Path:
        if not isinstance(value, str) or not value or "\0" in value:
            raise KubeconfigError(f"{where}: {key}: expected a path")
        p = value if value.startswith("/") else str(PurePosixPath(base_dir) / value)
        host = confined_node_path(root, p, f"{where}: {key}")
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


def confined_node_path(root: NodeRoot, node_path: str, what: str) -> Path:
    """A path named by the kubeconfig, resolved inside ``--root`` (``..`` may not climb above it),
    its last symlink followed inside the tree too."""
    try:
        host = root.path(node_path)
    except NodeFileError as exc:
        raise KubeconfigError(f"{what}: {exc.problem}") from None
    return confined(host)


def _parse_yaml(text: str, path: Path) -> Any:
    from agent.base.yamlsafe import YamlRefused, load_budgeted

    try:
        return load_budgeted(text, path, MAX_KUBECONFIG_NODES)
    except YamlRefused as exc:
        raise KubeconfigError(str(exc)) from None
