"""This node's Node object: its name, and reading it from the API server.

The node name: ``report.node_name``, else kubelet's ``--hostname-override`` from
``/etc/eks/kubelet/environment``, else IMDS ``local-hostname``, else the hostname (lowercased, as
kubelet does); plain ``check`` asks no metadata service (``use_imds=False``) and says so.
``read_node``: one GET of the Node (``resourceVersion=0``: the API server's cache) with the kubelet's
credentials whenever a kubeconfig exists (``gpu-allocatable`` reads its allocatable,
``gpu-inventory`` its labels, the report its annotations and condition). Each read leaves the
allocatable and the instance-type label in ``READ_CACHE``; a caller that may (``reuse_for``: the
``check --report`` heartbeat while ``gpu-allocatable`` passes, ``agent/gpu/inventory.py``) takes
them from there while they are younger than that, for the same node and API server.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional

from agent.base.errors import AgentError, NodeFileError, NodeFileMissing
from agent.base.fs import atomic_write, read_text
from agent.base.log import get_logger
from agent.base.noderoot import NodeRoot
from agent.config.settings import AgentConfig
from agent.daemons.kubelet import KUBELET_ENVIRONMENT, kubelet_flag

READ_TIMEOUT = 10.0  # at most this (and report.timeout_seconds) for the one GET
READ_CACHE = "/run/gpu-node-agent/node-read.json"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"

log = get_logger("report")


class NodeName(NamedTuple):
    name: str
    source: str


def resolve_node_name(
    root: NodeRoot,
    config: AgentConfig,
    *,
    imds: Optional[Callable[[], Any]] = None,
    hostname: Callable[[], str] = socket.gethostname,
    use_imds: bool = True,
) -> NodeName:
    """``use_imds``: False in plain ``check``, which contacts no metadata service."""
    if config.report.node_name:
        return NodeName(config.report.node_name, "report.node_name")
    try:
        override = kubelet_flag(read_text(root.path(KUBELET_ENVIRONMENT)), "--hostname-override")
    except NodeFileMissing:
        override = None
    except NodeFileError as exc:
        log.warning("cannot read kubelet environment", error=str(exc))
        override = None
    if override:
        return NodeName(override.lower(), f"--hostname-override in {KUBELET_ENVIRONMENT}")
    if not use_imds:
        return NodeName(hostname().strip().lower(), "hostname")
    from agent.aws.imds import ImdsClient, ImdsError

    client = imds() if imds is not None else ImdsClient.from_settings(config.imds)
    try:
        if not client.disabled:
            local = client.get("local-hostname")
            if local and local.strip():
                return NodeName(local.strip().split()[0].lower(), "IMDS local-hostname")
    except ImdsError as exc:
        log.info("IMDS did not give the node name", error=str(exc))
    finally:
        client.close()
    return NodeName(hostname().strip().lower(), "hostname")


class NodeRead(NamedTuple):
    node: Optional[Mapping[str, Any]]  # the Node object (None: not read)
    name: Optional[str]
    skipped: Optional[str] = None  # why there was nothing to ask (skip)
    problem: Optional[str] = None  # why asking failed (warn)
    name_source: Optional[str] = None  # where the node name came from
    reused: bool = False  # the last read's allocatable and label (READ_CACHE), not the whole Node

    @property
    def allocatable(self) -> Mapping[str, Any]:
        status = (self.node or {}).get("status")
        alloc = status.get("allocatable") if isinstance(status, Mapping) else None
        return alloc if isinstance(alloc, Mapping) else {}

    def label(self, key: str) -> Optional[str]:
        labels = ((self.node or {}).get("metadata") or {}).get("labels") or {}
        value = labels.get(key) if isinstance(labels, Mapping) else None
        return value if isinstance(value, str) else None


def read_node(root: NodeRoot, config: AgentConfig, *, client_factory: Any = None, imds: bool = True,
              reuse_for: Optional[float] = None, now: Optional[float] = None) -> NodeRead:
    """``imds``: the node name may come from IMDS (``run``, ``check --report``). ``reuse_for``: seconds
    the last read may be reused for instead of a GET (module docstring)."""
    if not config.gpu.allocatable:
        return NodeRead(None, None, skipped="turned off (gpu.allocatable: false)")
    if not config.report.publish:
        return NodeRead(None, None, skipped="report.publish is false: no cluster to ask")
    if not root.path(config.report.kubeconfig).exists():
        return NodeRead(None, None, skipped=f"no kubeconfig at {config.report.kubeconfig}: the node has not joined "
                        "a cluster")
    from agent.base.retry import Deadline
    from agent.kube.client import KubeClient
    from agent.kube.errors import KubeNotFound
    from agent.kube.kubeconfig import load_kubeconfig
    from agent.kube.tokens import redact

    name: Optional[str] = None
    source: Optional[str] = None
    try:
        name, source = resolve_node_name(root, config, use_imds=imds)
        kubeconfig = load_kubeconfig(root, config.report.kubeconfig)
        server = kubeconfig.cluster.server
        wall = time.time() if now is None else now
        kept = _reusable(root, name, server, wall, reuse_for) if reuse_for else None
        if kept is not None:
            return NodeRead(kept, name, name_source=source, reused=True)
        deadline = Deadline(min(READ_TIMEOUT, config.report.timeout_seconds))
        with (client_factory or KubeClient)(kubeconfig) as client:
            node = client.get_node(name, deadline)
        _remember(root, node, name, server, wall)
        return NodeRead(node, name, name_source=source)
    except KubeNotFound:
        return NodeRead(None, name, problem=f"node {name} is not registered (yet){_named(source)}",
                        name_source=source)
    except AgentError as exc:
        return NodeRead(None, name, problem=f"{exc}{_named(source)}", name_source=source)
    except Exception as exc:  # a bug here must not cost the other checks
        problem = redact(f"internal error reading the Node: {type(exc).__name__}: {exc}")
        return NodeRead(None, name, problem=problem)


def _named(source: Optional[str]) -> str:
    """Where the node name came from, when that is only a guess (the hostname)."""
    return f" (node name from the {source}; set report.node_name if that is not the Node's)" \
        if source == "hostname" else ""


def _trimmed(node: Mapping[str, Any]) -> Dict[str, Any]:
    """What the checks use of the Node: its allocatable and its instance-type label."""
    read = NodeRead(node, None)
    label = read.label(INSTANCE_TYPE_LABEL)
    return {"metadata": {"labels": {INSTANCE_TYPE_LABEL: label} if label else {}},
            "status": {"allocatable": dict(read.allocatable)}}


def _remember(root: NodeRoot, node: Mapping[str, Any], name: str, server: str, now: float) -> None:
    path = root.path(READ_CACHE)
    doc = {"v": 1, "node": name, "server": server, "read_at": now, "trimmed": _trimmed(node)}
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(path, (json.dumps(doc) + "\n").encode())
    except (OSError, AgentError):
        pass  # only a cache: the next heartbeat reads the Node again


def _reusable(root: NodeRoot, name: str, server: str, now: float, seconds: float) -> Optional[Dict[str, Any]]:
    """The last read's allocatable and label, when it is younger than ``seconds``, of this node and server."""
    try:
        doc = json.loads(read_text(root.path(READ_CACHE)))
        age = now - float(doc["read_at"])
        if (doc.get("v") == 1 and doc.get("node") == name and doc.get("server") == server
                and 0 <= age < seconds and isinstance(doc.get("trimmed"), dict)):
            return dict(doc["trimmed"])
    except (AgentError, ValueError, TypeError, KeyError, AttributeError):
        pass
    return None
