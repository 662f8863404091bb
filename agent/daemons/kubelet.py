"""kubelet's health endpoint: ``GET /healthz`` on loopback answers ``ok`` when kubelet serves.

Where it listens: ``healthzBindAddress`` and ``healthzPort`` (defaults ``127.0.0.1`` and ``10248``)
of the KubeletConfiguration that kubelet is started with. On AL2023, nodeadm passes ``--config``
(and ``--config-dir`` for drop-ins) in ``NODEADM_KUBELET_ARGS`` of ``/etc/eks/kubelet/environment``,
which the kubelet unit reads; the drop-ins (``*.conf``, in lexical order) override the main file.
``healthzPort: 0`` turns the endpoint off. The agent asks over loopback only, never through a proxy:
a bind address that is not loopback or a wildcard is reported, not probed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

from agent.base.errors import NodeFileError, NodeFileMissing
from agent.base.fs import read_text
from agent.base.noderoot import NodeRoot
from agent.daemons.serving import NOT_SERVING, SERVING, Serving, Unprobed

KUBELET_ENVIRONMENT = "/etc/eks/kubelet/environment"
KUBELET_ARGS_VARIABLE = "NODEADM_KUBELET_ARGS"
DEFAULT_CONFIG = "/etc/kubernetes/kubelet/config.json"
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 10248
PROBE_TIMEOUT = 2.0
_ANSWER_LIMIT = 1024
MAX_CONFIG_NODES = 10_000  # YAML nodes, aliases counted each time they are used (a real one has ~100)


def kubelet_flag(environment: str, flag: str) -> Optional[str]:
    """The value of ``flag`` (``--config``) in ``NODEADM_KUBELET_ARGS`` of nodeadm's environment file."""
    for line in environment.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key.strip() != KUBELET_ARGS_VARIABLE:
            continue
        try:  # systemd unquotes the value, then ExecStart's $VAR splits it at whitespace
            words = shlex.split(value)
        except ValueError:
            words = [value]
        args = [arg for word in words for arg in word.split()]
        for i, arg in enumerate(args):
            if arg.startswith(f"{flag}="):
                return arg.split("=", 1)[1].strip() or None
            if arg == flag and i + 1 < len(args):
                return args[i + 1].strip() or None
    return None


class HealthzProbe(NamedTuple):
    """Asks kubelet's healthz endpoint (``host`` is always a loopback address)."""

    host: str
    port: int
    source: str  # where the address came from, for messages

    @property
    def what(self) -> str:
        return f"kubelet's healthz on {self.url}"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/healthz"

    def read(self, timeout: float = PROBE_TIMEOUT) -> Serving:
        """One answer within ``timeout``, all of it (``agent/base/httpread.py``: a trickling endpoint is cut)."""
        import http.client  # stdlib, no proxy handling at all: loopback only (and no requests for `check`)

        from agent.base import httpread
        from agent.base.retry import Deadline

        details = {"url": self.url, "source": self.source}
        deadline = Deadline(timeout)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            with httpread.Watch(deadline) as watch:
                watch.add(conn)
                try:
                    conn.request("GET", "/healthz")
                    response = conn.getresponse()
                    body = httpread.read_capped(response.read, _ANSWER_LIMIT, deadline)
                    if watch.fired:  # the cut looked like the end of the body
                        raise httpread.TooLate(timeout)
                except (OSError, http.client.HTTPException):
                    if watch.fired:
                        raise httpread.TooLate(timeout) from None
                    raise
            text = body.decode("utf-8", "replace").strip()
        except httpread.AnswerRefused as exc:
            return Serving(NOT_SERVING, f"kubelet healthz {self.url}: {exc}", details=details)
        except (OSError, http.client.HTTPException) as exc:
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            return Serving(NOT_SERVING, f"kubelet healthz {self.url}: no answer: {why}", details=details)
        finally:
            conn.close()
        if response.status == 200 and text == "ok":
            return Serving(SERVING, f"kubelet healthz {self.url}: ok", details=details)
        shown = text.splitlines()[0][:200] if text else ""
        return Serving(NOT_SERVING, f"kubelet healthz {self.url}: HTTP {response.status} {shown!r}",
                       details={**details, "status": response.status})


def _config_files(root: NodeRoot) -> Tuple[List[str], str]:
    """kubelet's config file and its drop-ins (node paths), and where the list came from; a flag
    that is not an absolute path under the root is a ``NodeFileError`` naming it."""
    try:
        environment: Optional[str] = read_text(root.path(KUBELET_ENVIRONMENT))
    except NodeFileError:
        environment = None
    flag = kubelet_flag(environment, "--config") if environment else None
    main = flag or DEFAULT_CONFIG
    source = f"--config in {KUBELET_ENVIRONMENT}" if flag else DEFAULT_CONFIG
    root.supplied(main, f"{KUBELET_ENVIRONMENT}: --config")
    files = [main]
    config_dir = kubelet_flag(environment, "--config-dir") if environment else None
    if config_dir:
        where = root.supplied(config_dir, f"{KUBELET_ENVIRONMENT}: --config-dir")
        try:
            names = sorted(n for n in os.listdir(where) if n.endswith(".conf"))
        except OSError:
            names = []
        files.extend(f"{config_dir.rstrip('/')}/{n}" for n in names)
    return files, source


def _parse(text: str, node_path: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # a KubeletConfiguration may be YAML; nodeadm writes JSON
        from agent.base.yamlsafe import load_budgeted

        return load_budgeted(text, node_path, MAX_CONFIG_NODES)


def probe(root: NodeRoot) -> Any:
    """A ``HealthzProbe`` for this node's kubelet, or an ``Unprobed`` saying why there is none."""
    from agent.base.yamlsafe import YamlRefused

    try:
        files, source = _config_files(root)
    except NodeFileError as exc:
        return Unprobed(f"cannot find kubelet's healthz: {exc}")
    settings: Dict[str, Any] = {}
    for node_path in files:
        try:
            data = _parse(read_text(root.path(node_path)), node_path)
        except NodeFileMissing:
            continue  # no config file: kubelet's defaults
        except NodeFileError as exc:
            return Unprobed(f"cannot find kubelet's healthz: {exc}")
        except YamlRefused as exc:  # not JSON, and not YAML either (or an alias bomb)
            return Unprobed(f"cannot find kubelet's healthz: {exc}")
        if isinstance(data, Mapping):
            settings.update({k: data[k] for k in ("healthzBindAddress", "healthzPort") if k in data})
    host = settings.get("healthzBindAddress", DEFAULT_ADDRESS) or DEFAULT_ADDRESS
    port = settings.get("healthzPort", DEFAULT_PORT)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        return Unprobed(f"cannot find kubelet's healthz: healthzPort {port!r} in {', '.join(files)}")
    if port == 0:
        return Unprobed("kubelet's healthz is off (healthzPort: 0)", off=True)
    try:
        address = ipaddress.ip_address(str(host))
    except ValueError:
        return Unprobed(f"kubelet's healthz: healthzBindAddress {host!r} is not an IP address")
    if address.is_unspecified:
        host = "::1" if address.version == 6 else DEFAULT_ADDRESS
    elif not address.is_loopback:
        return Unprobed(f"kubelet's healthz listens on {host}, not on loopback; not probed")
    return HealthzProbe(str(host), port, source)
