"""What the device plugins advertised on the Node against what is there. Owns ``gpu-allocatable``.

The NVIDIA device plugin advertises ``status.allocatable["nvidia.com/gpu"]`` (time-slicing
multiplies it by its replicas; MIG's "mixed" strategy renames it, e.g. ``nvidia.com/mig-1g.10gb``),
the EFA device plugin ``vpc.amazonaws.com/efa``, one per EFA device. Both appear some time after
kubelet registers the Node: within ``gpu.allocatable_grace_seconds`` of kubelet's start (its unit's
``ActiveEnterTimestamp``) a missing or short resource is ``warn`` ("not yet advertised"), later
``fail``.

Expected: GPUs seen (``agent.gpu.gpus_seen``) x ``gpu.resource_per_gpu`` of ``gpu.resource_name``;
EFA devices present (``agent.efa``) of ``gpu.efa_resource_name``, when there is EFA hardware.
``gpu.allocatable: false`` turns the check off (``skip``).

The Node is read (one GET with ``resourceVersion=0``, from the API server's cache, with the
kubelet's credentials through ``agent.kube``) whenever a kubeconfig exists: in ``run`` and plain
``check`` every time; in ``check --report`` (the heartbeat timer) at most once per
``report.heartbeat_minutes``: the allocatable and instance-type label of the last read
(``READ_CACHE``) are reused while they are younger than that, for the same node and API server,
and the last report's ``gpu-allocatable`` passed. A heartbeat reads afresh when that check did not
pass (the device plugin has not advertised the GPUs yet on a booting node, or they went missing,
or the Node was unreadable): the condition turns ``True`` at the first heartbeat that sees them.
No kubeconfig (the node has not joined a cluster, e.g. an AMI bake) or ``report.publish: false``:
``skip``, no API call. A kubeconfig that does not work: ``warn`` with why.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

from agent.config import AgentConfig
from agent.errors import AgentError
from agent.fs import NodeRoot
from agent.health import FAIL, PASS, SKIP, WARN, CheckResult
from agent.pipeline import Resource
from agent.systemd import SystemdError, UnitStates

if TYPE_CHECKING:
    from agent.node import NodeFacts

CHECK = "gpu-allocatable"
READ_TIMEOUT = 10.0  # at most this (and report.timeout_seconds) for the one GET
READ_CACHE = "/run/gpu-node-agent/node-read.json"
_INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"


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
              heartbeat: bool = False, now: Optional[float] = None) -> NodeRead:
    """``imds``: the node name may come from IMDS (``run``, ``check --report``; plain ``check`` asks
    no metadata service and falls back to the hostname, saying so). ``heartbeat``: ``check
    --report``, which reuses a recent read when it may (module docstring)."""
    if not config.gpu.allocatable:
        return NodeRead(None, None, skipped="turned off (gpu.allocatable: false)")
    if not config.report.publish:
        return NodeRead(None, None, skipped="report.publish is false: no cluster to ask")
    if not root.path(config.report.kubeconfig).exists():
        return NodeRead(None, None, skipped=f"no kubeconfig at {config.report.kubeconfig}: the node has not joined "
                        "a cluster")
    from agent.kube import KubeClient
    from agent.kube_errors import KubeNotFound
    from agent.kubeconfig import load_kubeconfig
    from agent.report import resolve_node_name
    from agent.retry import Deadline
    from agent.tokens import redact

    name: Optional[str] = None
    source: Optional[str] = None
    try:
        name, source = resolve_node_name(root, config, use_imds=imds)
        kubeconfig = load_kubeconfig(root, config.report.kubeconfig)
        server = kubeconfig.cluster.server
        wall = time.time() if now is None else now
        if heartbeat:
            kept = _reusable(root, config, name, server, wall)
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


def _trimmed(node: Mapping[str, Any]) -> Dict[str, Any]:
    """What the checks use of the Node: its allocatable and its instance-type label."""
    read = NodeRead(node, None)
    label = read.label(_INSTANCE_TYPE_LABEL)
    return {"metadata": {"labels": {_INSTANCE_TYPE_LABEL: label} if label else {}},
            "status": {"allocatable": dict(read.allocatable)}}


def _remember(root: NodeRoot, node: Mapping[str, Any], name: str, server: str, now: float) -> None:
    import json

    from agent.fs import atomic_write

    path = root.path(READ_CACHE)
    doc = {"v": 1, "node": name, "server": server, "read_at": now, "trimmed": _trimmed(node)}
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(path, (json.dumps(doc) + "\n").encode())
    except (OSError, AgentError):
        pass  # only a cache: the next heartbeat reads the Node again


def _reusable(root: NodeRoot, config: AgentConfig, name: str, server: str, now: float
              ) -> Optional[Dict[str, Any]]:
    """The last read, when a heartbeat may use it instead of a GET (module docstring)."""
    import json

    from agent.fs import read_text

    minutes = config.report.heartbeat_minutes
    if minutes <= 0:
        return None
    try:
        doc = json.loads(read_text(root.path(READ_CACHE)))
        last = json.loads(read_text(root.path(config.report.status_file)))
        passed = any(isinstance(c, dict) and c.get("name") == CHECK and c.get("status") == PASS
                     for c in last.get("checks", []))
        age = now - float(doc["read_at"])
        if (doc.get("v") == 1 and doc.get("node") == name and doc.get("server") == server and passed
                and 0 <= age < minutes * 60 and isinstance(doc.get("trimmed"), dict)):
            return dict(doc["trimmed"])
    except (AgentError, ValueError, TypeError, KeyError, AttributeError):
        pass
    return None


def _named(source: Optional[str]) -> str:
    """Where the node name came from, when that is only a guess (the hostname)."""
    return f" (node name from the {source}; set report.node_name if that is not the Node's)" \
        if source == "hostname" else ""


def _quantity(value: Any) -> Optional[int]:
    text = str(value).strip()
    return int(text) if text.isdigit() else None


def _kubelet_age(units: Union[UnitStates, SystemdError, None], unit: str, now: float) -> Optional[float]:
    state = units.get(unit) if isinstance(units, UnitStates) else None
    since = state.active_since if state is not None and state.active_state == "active" else None
    return now - since if since is not None else None


def check(
    read: Optional[NodeRead],
    config: AgentConfig,
    *,
    gpus: Optional[int],
    efa_devices: int,
    units: Union[UnitStates, SystemdError, None],
    kubelet_unit: str,
    now: Optional[float] = None,
) -> CheckResult:
    settings = config.gpu
    if read is None:
        return CheckResult(CHECK, SKIP, "the Node was not read", {"event_reason": "NodeNotRead"})
    if read.skipped:
        return CheckResult(CHECK, SKIP, read.skipped, {"event_reason": "AllocatableNotChecked"})
    if read.problem or read.node is None:
        return CheckResult(CHECK, WARN, f"cannot read the Node's allocatable: {read.problem}",
                           {"node": read.name, "node_source": read.name_source, "event_reason": "NodeUnreadable"})
    alloc = read.allocatable
    age = _kubelet_age(units, kubelet_unit, time.time() if now is None else now)
    grace = settings.allocatable_grace_seconds
    within = age is not None and age < grace
    details: Dict[str, Any] = {"node": read.name, "node_source": read.name_source, "reused": read.reused,
                               "kubelet_started_seconds_ago": None if age is None else round(age),
                               "grace_seconds": grace, "resources": {}}
    wanted: List[Tuple[str, Optional[int], str]] = []
    if gpus is not None:
        factor = settings.resource_per_gpu
        what = f"{gpus} GPUs x {factor}" if factor != 1 else f"{gpus} GPUs"
        wanted.append((settings.resource_name, gpus * factor, what))
    else:
        wanted.append((settings.resource_name, None, "GPUs not counted"))
    if settings.efa_resource_name and efa_devices:
        wanted.append((settings.efa_resource_name, efa_devices, f"{efa_devices} EFA devices"))
    short: List[str] = []
    odd: List[str] = []
    good: List[str] = []
    for resource, expected, what in wanted:
        raw = alloc.get(resource)
        have = _quantity(raw) if raw is not None else None
        details["resources"][resource] = {"allocatable": raw, "expected": expected}
        if raw is not None and have is None:
            odd.append(f"{resource}: allocatable {raw!r} is not a whole number")
        elif expected is None:
            odd.append(f"{resource}: {have if have is not None else 'not advertised'}, not compared ({what})")
        elif (have or 0) < expected:
            if not have:
                short.append(f"{resource} {'not yet' if within else 'not'} advertised (expected {expected}: {what})")
            else:
                short.append(f"{resource}: {have} allocatable, expected {expected} ({what})")
        elif (have or 0) > expected:
            hint = " (time-slicing or MIG? set gpu.resource_per_gpu)" if resource == settings.resource_name else ""
            odd.append(f"{resource}: {have} allocatable, more than {expected} ({what}){hint}")
        else:
            good.append(f"{resource}: {have or 0} = {what}")
    if short:
        since = (f"kubelet started {round(age)}s ago, grace {grace:g}s" if age is not None
                 else "kubelet's start time unknown")
        status = WARN if within else FAIL
        reason = "GPUNotYetAdvertised" if within else "GPUNotAdvertised"
        if not any(r.startswith(settings.resource_name) for r in short):
            reason = "EFANotYetAdvertised" if within else "EFANotAdvertised"
        return CheckResult(CHECK, status, f"{'; '.join(short)} ({since})", {**details, "event_reason": reason})
    if odd:
        return CheckResult(CHECK, WARN, "; ".join(odd + good), {**details, "event_reason": "AllocatableUnexpected"})
    return CheckResult(CHECK, PASS, "; ".join(good), {**details, "event_reason": "AllocatableAsExpected"})


class Allocatable(Resource):
    """``gpu-allocatable``, from the Node ``agent/gpu.py``'s resource read (``kube_node``)."""

    def check(self, facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
        from agent import gpu, units

        efa_devices = len(facts.efa.devices) if facts.efa is not None else 0
        return [check(facts.kube_node, config, gpus=gpu.gpus_seen(facts.driver), efa_devices=efa_devices,
                      units=facts.units, kubelet_unit=units.kubelet_unit(config.restart.units))]


RESOURCE = Allocatable()
