"""This node's Node object: its name, and reading it from the API server.

The node name: ``report.node_name``, else kubelet's ``--hostname-override`` from
``/etc/eks/kubelet/environment``, else IMDS ``local-hostname``, else the hostname (lowercased, as
kubelet does). ``read_node``: one GET of the Node with the kubelet's credentials whenever a
kubeconfig exists (``gpu-allocatable`` reads its allocatable, ``gpu-inventory`` its labels, the
report its annotations and condition).
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Mapping, NamedTuple, Optional

from agent.base.errors import AgentError, NodeFileError, NodeFileMissing
from agent.base.fs import read_text
from agent.base.log import get_logger
from agent.base.noderoot import NodeRoot
from agent.config.settings import AgentConfig
from agent.daemons.kubelet import KUBELET_ENVIRONMENT, kubelet_flag

READ_TIMEOUT = 10.0  # at most this (and report.timeout_seconds) for the one GET

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
) -> NodeName:
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

    @property
    def allocatable(self) -> Mapping[str, Any]:
        status = (self.node or {}).get("status")
        alloc = status.get("allocatable") if isinstance(status, Mapping) else None
        return alloc if isinstance(alloc, Mapping) else {}

    def label(self, key: str) -> Optional[str]:
        labels = ((self.node or {}).get("metadata") or {}).get("labels") or {}
        value = labels.get(key) if isinstance(labels, Mapping) else None
        return value if isinstance(value, str) else None


def read_node(root: NodeRoot, config: AgentConfig, *, client_factory: Any = None) -> NodeRead:
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
    try:
        name = resolve_node_name(root, config).name
        kubeconfig = load_kubeconfig(root, config.report.kubeconfig)
        deadline = Deadline(min(READ_TIMEOUT, config.report.timeout_seconds))
        with (client_factory or KubeClient)(kubeconfig) as client:
            return NodeRead(client.get_node(name, deadline), name)
    except KubeNotFound:
        return NodeRead(None, name, problem=f"node {name} is not registered (yet)")
    except AgentError as exc:
        return NodeRead(None, name, problem=str(exc))
    except Exception as exc:  # a bug here must not cost the other checks
        problem = redact(f"internal error reading the Node: {type(exc).__name__}: {exc}")
        return NodeRead(None, name, problem=problem)
