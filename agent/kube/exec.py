"""The kubeconfig's exec credential plugin (``client.authentication.k8s.io/v1beta1`` or ``v1``).

The plugin gets ``KUBERNETES_EXEC_INFO`` (``spec.interactive: false``, plus the cluster when
``provideClusterInfo``), runs with a timeout, and prints an ``ExecCredential`` with a token or a
client certificate and key, and optionally ``expirationTimestamp``. A command that is a bare name
(``aws``) is looked up on ``PATH``; a path resolves under ``--root``, a relative one against the
kubeconfig's directory. Its output may hold a secret: errors describe it, never echo it. Caching
and refreshing the credential: ``agent/kube/credentials.py``.
"""


from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import PurePosixPath
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional

from agent.base.fs import read_bytes
from agent.base.log import get_logger
from agent.base.retry import Deadline
from agent.base.timestamps import parse_rfc3339, rfc3339
from agent.kube.errors import ExecPluginError, KubeconfigError
from agent.kube.kubeconfig import ExecConfig, Kubeconfig, confined_node_path
from agent.kube.tokens import checked_token, redact

log = get_logger("kube")


class ExecCredential(NamedTuple):
    """What the plugin printed, checked: a token, or a client certificate and key (PEM), or both."""

    token: Optional[str]
    cert_pem: Optional[str]
    key_pem: Optional[str]
    expires: Optional[float]  # seconds since the epoch
    source: str  # "exec plugin <command>"

    def __repr__(self) -> str:  # never the token or the key
        return f"ExecCredential(source={self.source!r}, expires={self.expires!r})"


def resolve_command(config: Kubeconfig, command: str, env: Mapping[str, str]) -> Optional[str]:
    """A bare name is looked up on PATH (as kubectl does); a path resolves under ``--root``,
    a relative one against the kubeconfig's directory."""
    if "/" not in command:
        return shutil.which(command, path=env.get("PATH", os.defpath))
    node_path = command if command.startswith("/") else \
        str(PurePosixPath(config.node_path).parent / command)
    try:
        host = confined_node_path(config.root, node_path, f"{config.path}: exec command")
    except KubeconfigError as exc:
        raise ExecPluginError(str(exc)) from None
    return str(host) if os.access(host, os.X_OK) and host.is_file() else None


def exec_info(config: Kubeconfig, ex: ExecConfig) -> str:
    """``KUBERNETES_EXEC_INFO``: never interactive; the cluster when the kubeconfig asks for it."""
    spec: Dict[str, Any] = {"interactive": False}
    if ex.provide_cluster_info:
        cluster: Dict[str, Any] = {"server": config.cluster.server}
        ca = config.cluster.ca_data
        if ca is None and config.cluster.ca_file is not None:
            ca = read_bytes(config.cluster.ca_file)
        if ca is not None:
            cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
        if config.cluster.proxy_url:
            cluster["proxy-url"] = config.cluster.proxy_url
        if ex.cluster_config is not None:
            cluster["config"] = ex.cluster_config
        spec["cluster"] = cluster
    return json.dumps({"apiVersion": ex.api_version, "kind": "ExecCredential", "spec": spec})


def run_plugin(config: Kubeconfig, ex: ExecConfig, env: Mapping[str, str], *, timeout: float,
               deadline: Deadline, wall_clock: Callable[[], float], on_run: Callable[[], None]
               ) -> ExecCredential:
    """Run the plugin once (at most ``timeout`` seconds, never past ``deadline``) and return its
    credential. ``wall_clock``: to warn about a credential that is already expired; ``on_run``:
    called just before the plugin starts (the caller counts the runs)."""
    name = ex.command
    source = f"exec plugin {name}"
    if ex.interactive_mode == "Always":
        raise ExecPluginError(f"{source}: interactiveMode is Always, but the agent has no terminal")
    binary = resolve_command(config, name, env)
    if binary is None:
        hint = f" ({ex.install_hint})" if ex.install_hint else ""
        where = "on PATH" if "/" not in name else f"under {config.root.root}"
        raise ExecPluginError(f"{source}: command not found {where}{hint}")
    info = exec_info(config, ex)
    run_env = dict(env)
    run_env.update(dict(ex.env))
    run_env["KUBERNETES_EXEC_INFO"] = info
    timeout = max(0.1, min(timeout, deadline.remaining()))
    on_run()
    from agent.base.process import run_tool

    out = run_tool([binary, *ex.args], timeout, env=run_env)
    if out is None:
        raise ExecPluginError(f"{source}: cannot execute {binary}")
    if out.returncode is None:
        raise ExecPluginError(f"{source}: no credential within {timeout:g}s (killed)")
    if not out.ok:
        first = next((ln.strip() for ln in out.stderr.splitlines() if ln.strip()), "")
        tail = f": {redact(first)[:200]}" if first else ""
        raise ExecPluginError(f"{source}: exited with {out.returncode}{tail}")
    cred = parse_exec_credential(out.stdout, ex, source)
    log.info("exec credential obtained", plugin=name, expires=_stamp(cred.expires))
    if cred.expires is not None and cred.expires <= wall_clock():
        log.warning("exec credential is already expired", plugin=name, expires=_stamp(cred.expires))
    return cred


def parse_exec_credential(stdout: str, ex: ExecConfig, source: str) -> ExecCredential:
    """The ``ExecCredential`` the plugin printed, checked; every problem is one ``ExecPluginError``."""
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
    if cert_data and not (isinstance(cert_data, str) and isinstance(key_data, str)):
        raise ExecPluginError(f"{source}: clientCertificateData and clientKeyData must be PEM text")
    return ExecCredential(token or None, cert_data or None, key_data or None, expires, source)


def _stamp(ts: Optional[float]) -> Optional[str]:
    return rfc3339(ts) if ts is not None else None
