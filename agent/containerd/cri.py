"""containerd's CRI plugins as the running daemon reports them: ``ctr plugins ls`` over its socket.

containerd (1.x and 2.x) keeps running, and systemd keeps saying ``active``, when its CRI plugin
rejects the configuration (``default_runtime_name`` naming no runtime, ``registry.mirrors`` next to
``registry.config_path``, the deprecated ``systemd_cgroup`` with a v2 runtime, a CNI ``conf_dir`` it
cannot create): only the plugin is disabled, and kubelet cannot run a single pod. The daemon says
so itself: ``ctr --address SOCKET plugins ls`` lists each plugin's status (``ok``, ``error``,
``skip``), and ``ctr plugins ls -d type==T,id==I`` prints the reason under ``Error: / Message:``.

Plugins checked (all must be ``ok``):

* containerd 1.x: ``io.containerd.grpc.v1 cri``;
* containerd 2.x: also ``io.containerd.cri.v1 runtime`` and ``io.containerd.cri.v1 images``.

``ctr`` (``/usr/bin/ctr`` on AL2023) and the socket (the effective ``[grpc] address``, default
``/run/containerd/containerd.sock``) are node paths, resolved under ``--root``.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any, Dict, Mapping, NamedTuple, Optional, Tuple, Union

from agent.base.errors import NodeFileError
from agent.base.noderoot import NodeRoot
from agent.base.text import clip
from agent.daemons.serving import NOT_SERVING, SERVING, UNKNOWN, Serving, Unprobed

if TYPE_CHECKING:
    from agent.containerd.files import ContainerdConfigSet

CTR = "/usr/bin/ctr"
DEFAULT_SOCKET = "/run/containerd/containerd.sock"
PROBE_TIMEOUT = 5.0
CRI_PLUGINS = {
    1: (("io.containerd.grpc.v1", "cri"),),
    2: (("io.containerd.grpc.v1", "cri"), ("io.containerd.cri.v1", "runtime"), ("io.containerd.cri.v1", "images")),
}


class PluginStatus(NamedTuple):
    type: str
    id: str
    status: str  # ok | error | skip, as ctr prints it; "missing" when the daemon did not list it

    @property
    def name(self) -> str:
        return f"{self.type} {self.id}"


def socket_address(config_set: ContainerdConfigSet) -> str:
    """The effective ``[grpc] address``: the last loaded file that sets it wins."""
    return _address(config_set)[0]


def _address(config_set: ContainerdConfigSet) -> Tuple[str, str]:
    """The effective ``[grpc] address`` and where it comes from, for messages."""
    address, source = DEFAULT_SOCKET, "containerd's default"
    for f in config_set.files:
        grpc = f.data.get("grpc")
        if isinstance(grpc, Mapping) and isinstance(grpc.get("address"), str) and grpc["address"]:
            address, source = grpc["address"], f"[grpc] address in {f.node_path}"
    return address, source


def parse_plugins(text: str) -> Tuple[PluginStatus, ...]:
    """``ctr plugins ls`` rows (``TYPE ID PLATFORMS STATUS``), header skipped."""
    rows = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] != "TYPE":
            rows.append(PluginStatus(fields[0], fields[1], fields[-1]))
    return tuple(rows)


def parse_error(text: str) -> str:
    """The reason under ``Error:`` in ``ctr plugins ls -d`` (its ``Message:`` line), or ''."""
    in_error = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Error:"):
            in_error = True
        elif in_error and stripped.startswith("Message:"):
            return stripped[len("Message:"):].strip()
    return ""


class CriProbe(NamedTuple):
    """Asks the running containerd about its CRI plugins (host paths, resolved under ``--root``)."""

    ctr: str
    socket: str
    socket_node_path: str
    plugins: Tuple[Tuple[str, str], ...]

    @property
    def what(self) -> str:
        return f"containerd's CRI plugins on {self.socket_node_path}"

    def _ctr(self, timeout: float, *args: str) -> Any:
        from agent.base.process import run_tool

        connect = f"{max(0.2, min(timeout / 2, 2.0)):.1f}s"
        return run_tool([self.ctr, "--address", self.socket, "--connect-timeout", connect, "plugins", "ls", *args],
                        timeout)

    def read(self, timeout: float = PROBE_TIMEOUT) -> Serving:
        details: Dict[str, Any] = {"socket": self.socket_node_path, "plugins": [" ".join(p) for p in self.plugins]}
        if not os.access(self.ctr, os.X_OK):
            return Serving(UNKNOWN, f"cannot ask containerd: {CTR} not found", final=True, details=details)
        try:
            is_socket = stat.S_ISSOCK(os.stat(self.socket).st_mode)
        except OSError as exc:
            return Serving(UNKNOWN, f"cannot ask containerd: {self.socket_node_path}: {exc.strerror}",
                           details=details)
        if not is_socket:
            return Serving(UNKNOWN, f"cannot ask containerd: {self.socket_node_path} is not a socket",
                           final=True, details=details)
        out = self._ctr(timeout)
        if out is None:
            return Serving(UNKNOWN, f"cannot ask containerd: {CTR} cannot be executed", final=True, details=details)
        if not out.ok:
            return Serving(UNKNOWN, f"cannot ask containerd: {out.problem(timeout)}", details=details)
        listed = {(p.type, p.id): p for p in parse_plugins(out.stdout)}
        found = tuple(listed.get(key, PluginStatus(key[0], key[1], "missing")) for key in self.plugins)
        details = {**details, "plugins": {p.name: p.status for p in found}}
        bad = next((p for p in found if p.status != "ok"), None)
        if bad is None:
            names = ", ".join(p.name for p in found)
            return Serving(SERVING, f"CRI plugin{'s' if len(found) > 1 else ''} {names}: ok", details=details)
        if bad.status == "missing":
            reason = "not loaded by the daemon"
        else:
            detail = self._ctr(timeout, "-d", f"type=={bad.type},id=={bad.id}")
            reason = parse_error(detail.stdout) if detail is not None and detail.ok else ""
            reason = f"{bad.status}: {reason}" if reason else bad.status
        details = {**details, "reason": reason}
        return Serving(NOT_SERVING, f"CRI plugin {bad.name}: {clip(reason, 300)}", final=True, details=details)


def probe(root: NodeRoot, config_set: Optional[ContainerdConfigSet]) -> Union[CriProbe, Unprobed, None]:
    """The probe for this node's containerd (None without a readable config: nothing to ask about;
    ``Unprobed`` when its ``[grpc] address`` is not an absolute path under the root)."""
    if config_set is None:
        return None
    address, source = _address(config_set)
    try:
        socket = root.supplied(address, source)
    except NodeFileError as exc:
        return Unprobed(f"cannot ask containerd: {exc}", what="containerd's CRI plugins")
    major = config_set.daemon.major if config_set.daemon.major in CRI_PLUGINS else 2
    return CriProbe(str(root.executable(CTR)), str(socket), address, CRI_PLUGINS[major])
