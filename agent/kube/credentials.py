"""The credential the Kubernetes client presents, from the kubeconfig's user: a token, a token
file, a client certificate, or the exec plugin (``agent/kube/exec.py``).

The credential is cached until shortly before it expires; on a 401 the client asks for it again,
once (``refresh``). TLS material given as data is written to a private temporary directory (mode
0700, files 0600) because the TLS stack takes files, and removed by ``close()``. Tokens and keys
are never logged.
"""


from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Tuple

from agent.base.errors import NodeFileError
from agent.base.fs import MAX_TOKEN_FILE, read_bytes
from agent.base.retry import Deadline
from agent.base.timestamps import rfc3339
from agent.kube import exec as kube_exec
from agent.kube.errors import KubeconfigError
from agent.kube.kubeconfig import ExecConfig, Kubeconfig
from agent.kube.tokens import checked_token

CREDENTIAL_REFRESH_MARGIN = 60.0  # refresh a credential this long before it expires


@dataclass
class Credential:
    token: Optional[str] = field(default=None, repr=False)
    cert: Optional[Tuple[str, str]] = None  # (certificate file, key file) for the TLS client
    expires: Optional[float] = None  # seconds since the epoch
    source: str = ""
    refreshable: bool = False  # a 401 is worth getting it again (exec plugin, token file)


class PrivateFiles:
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


class CredentialSource:
    """The kubeconfig user's credential, cached; ``exec_runs`` counts the exec plugin's runs."""

    def __init__(self, config: Kubeconfig, files: PrivateFiles, *, env: Mapping[str, str],
                 wall_clock: Callable[[], float], exec_timeout: float) -> None:
        self.config = config
        self.files = files
        self.env = env
        self.wall_clock = wall_clock
        self.exec_timeout = exec_timeout
        self.exec_runs = 0
        self.cached: Optional[Credential] = None

    def get(self, deadline: Deadline, *, refresh: bool = False) -> Credential:
        """The cached credential while it is not near its expiry (and not ``refresh``), else a new one."""
        cached = self.cached
        if not refresh and cached is not None and (
            cached.expires is None or self.wall_clock() < cached.expires - CREDENTIAL_REFRESH_MARGIN
        ):
            return cached
        user = self.config.user
        cred = Credential(source="kubeconfig")
        if user.exec is not None:
            cred = self._from_exec(user.exec, deadline)
        elif user.token_file is not None:
            cred = self._from_token_file(user.token_file)
        elif user.token:
            cred = Credential(token=user.token, source="kubeconfig token")
        if cred.cert is None and (user.cert_file or user.cert_data):
            cert = str(user.cert_file) if user.cert_file else \
                self.files.write("client.crt", user.cert_data or b"")
            key = str(user.key_file) if user.key_file else \
                self.files.write("client.key", user.key_data or b"")
            cred.cert = (cert, key)
            cred.source = cred.source if cred.token else "kubeconfig client certificate"
        self.cached = cred
        return cred

    def why_unauthorized(self, cred: Credential) -> str:
        if cred.expires is not None and cred.expires <= self.wall_clock():
            when = rfc3339(cred.expires)
            return f"the credential from {cred.source} expired at {when} (is the clock right?)"
        again = " (refreshed once, refused again)" if cred.refreshable else ""
        return f"the API server refused the credential from {cred.source}{again}"

    def _from_token_file(self, token_file: Path) -> Credential:
        try:
            raw = read_bytes(token_file, limit=MAX_TOKEN_FILE)
        except NodeFileError as exc:
            raise KubeconfigError(f"{self.config.path}: tokenFile: {exc}") from None
        what = f"{self.config.path}: tokenFile {token_file}"
        try:  # client-go trims the whitespace around a token file's content
            token = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise KubeconfigError(f"{what}: not UTF-8 (the value is not shown)") from None
        if not token:
            raise KubeconfigError(f"{what}: is empty")
        token = checked_token(token, what, KubeconfigError)
        return Credential(token=token, source=f"tokenFile {token_file}", refreshable=True)

    def _from_exec(self, ex: ExecConfig, deadline: Deadline) -> Credential:
        out = kube_exec.run_plugin(self.config, ex, self.env, timeout=self.exec_timeout, deadline=deadline,
                                   wall_clock=self.wall_clock, on_run=self._count_run)
        cert = None
        if out.cert_pem and out.key_pem:
            cert = (self.files.write("exec-client.crt", out.cert_pem.encode()),
                    self.files.write("exec-client.key", out.key_pem.encode()))
        return Credential(token=out.token, cert=cert, expires=out.expires, source=out.source, refreshable=True)

    def _count_run(self) -> None:
        self.exec_runs += 1
