"""``gpu-node-agent fleet``: every Node's report at a glance, from an operator's workstation.

Read-only: Nodes are listed in pages (``limit``/``continue``; the first page with
``resourceVersion=0``, which the API server may serve from its watch cache) and each page is
reduced to one small ``NodeRecord`` per Node before the next is read, so memory follows the page
size, not the fleet. What is shown (docs/reporting.md "The fleet view"): nodes per health and the
condition's reason, the agent and stack versions in use (the report annotation), time to GPU-ready
percentiles per instance type and per known-good AMI row, and stale reports.

The kubeconfig is the operator's own (``--kubeconfig``, ``$KUBECONFIG``'s first file,
``~/.kube/config``), read with the agent's loader at ``/``: confinement to ``--root`` is for node
files, and a workstation kubeconfig's paths mean what they mean to kubectl.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import Counter
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple
from urllib.parse import urlencode

PAGE_SIZE = 500
LIST_TIMEOUT = 300.0  # the whole listing, every page and retry
DEFAULT_STALE_MINUTES = 45.0  # the 30-minute heartbeat refresh plus the timer's spread
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
_PASSED_ROW = re.compile(r"^(?P<stack>.+): known-good row (?P<row>\S+)$")
_REST_ROW = re.compile(r"the rest matches known-good (?P<row>\S+)$")
EXAMPLES = 5  # node names shown per group


class NodeRecord(NamedTuple):
    """What the fleet view keeps of one Node."""

    name: str
    instance_type: str
    health: str  # healthy | degraded | unhealthy | unknown (no report)
    reason: str  # the condition's reason, or "no condition"
    agent: str
    stack: str  # "k8s 1.35, containerd 2.2.3, ..." from the compatibility check, or "unknown"
    row: str  # the known-good AMI row it matches, "untested" or "unknown"
    gpu_ready_seconds: Optional[float]
    stale: bool
    heartbeat_age: Optional[float]  # seconds since the condition's lastHeartbeatTime


def kubeconfig_path(explicit: Optional[str], environ: Mapping[str, str]) -> str:
    """kubectl's order: ``--kubeconfig``, the first file of ``$KUBECONFIG``, ``~/.kube/config``."""
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    for entry in environ.get("KUBECONFIG", "").split(os.pathsep):
        if entry and os.path.exists(os.path.expanduser(entry)):
            return os.path.abspath(os.path.expanduser(entry))
    return os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".kube", "config")


# --- listing -----------------------------------------------------------------------------------------


def list_nodes(client: Any, deadline: Any, page_size: int = PAGE_SIZE) -> Iterator[List[Dict[str, Any]]]:
    """The Nodes, one page at a time. ``resourceVersion=0`` on the first request only: the API
    server refuses it together with ``continue``."""
    query: Dict[str, str] = {"limit": str(page_size), "resourceVersion": "0"}
    while True:
        page = client.request("GET", "/api/v1/nodes?" + urlencode(query), deadline)
        items = page.get("items") if isinstance(page, Mapping) else None
        yield [n for n in items or [] if isinstance(n, dict)]
        token = (page.get("metadata") or {}).get("continue") if isinstance(page, Mapping) else None
        if not token:
            return
        query = {"limit": str(page_size), "continue": str(token)}


def _report(annotations: Mapping[str, Any], key: str) -> Dict[str, Any]:
    try:
        value = json.loads(annotations.get(key) or "")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _stack_and_row(report: Mapping[str, Any]) -> Tuple[str, str]:
    for check in report.get("checks") or []:
        if isinstance(check, Mapping) and check.get("name") == "compatibility":
            message = str(check.get("message", ""))
            passed = _PASSED_ROW.match(message)
            if passed:
                return passed.group("stack"), passed.group("row")
            rest = _REST_ROW.search(message)
            if rest:
                return "unknown", rest.group("row")
            return "unknown", "untested" if check.get("status") == "warn" else "unknown"
    return "unknown", "unknown"


def record(node: Mapping[str, Any], *, prefix: str, condition: str, now: float, stale_seconds: float) -> NodeRecord:
    from agent.base.timestamps import parse_rfc3339

    meta = node.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    report = _report(annotations, f"{prefix}/report")
    health = str(annotations.get(f"{prefix}/health") or report.get("health") or "unknown")
    cond = next((c for c in (node.get("status") or {}).get("conditions") or []
                 if isinstance(c, Mapping) and c.get("type") == condition), None)
    age: Optional[float] = None
    if cond is not None:
        try:
            age = now - parse_rfc3339(str(cond.get("lastHeartbeatTime")))
        except ValueError:
            age = None
    has_report = health != "unknown"
    stale = has_report and (age is None or age > stale_seconds)
    stack, row = _stack_and_row(report)
    ready = report.get("gpu_ready_seconds")
    return NodeRecord(
        name=str(meta.get("name", "?")),
        instance_type=str(labels.get(INSTANCE_TYPE_LABEL) or "unknown"),
        health=health,
        reason=str(cond.get("reason") or "no reason") if cond is not None else "no condition",
        agent=str(report.get("agent") or "unknown"),
        stack=stack,
        row=row,
        gpu_ready_seconds=float(ready) if isinstance(ready, (int, float)) and not isinstance(ready, bool) else None,
        stale=stale,
        heartbeat_age=age,
    )


# --- the view ----------------------------------------------------------------------------------------


def percentiles(values: Sequence[float]) -> Dict[str, Any]:
    """Nearest-rank p50, p90 and the maximum."""
    ordered = sorted(values)
    if not ordered:
        return {"nodes": 0, "p50": None, "p90": None, "max": None}

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return {"nodes": len(ordered), "p50": rank(50), "p90": rank(90), "max": ordered[-1]}


class FleetView:
    """Folds ``NodeRecord``s into counters as they come: nothing per Node is kept but names of
    a few examples, stale nodes and the GPU-ready seconds."""

    def __init__(self) -> None:
        self.nodes = 0
        self.groups: Counter[Tuple[str, str]] = Counter()
        self.examples: Dict[Tuple[str, str], List[str]] = {}
        self.agents: Counter[str] = Counter()
        self.stacks: Counter[str] = Counter()
        self.by_type: Dict[str, List[float]] = {}
        self.by_row: Dict[str, List[float]] = {}
        self.stale: List[NodeRecord] = []
        self.pages = 0

    def add(self, r: NodeRecord) -> None:
        self.nodes += 1
        key = (r.health, r.reason)
        self.groups[key] += 1
        shown = self.examples.setdefault(key, [])
        if len(shown) < EXAMPLES:
            shown.append(r.name)
        self.agents[r.agent] += 1
        self.stacks[r.stack] += 1
        if r.gpu_ready_seconds is not None:
            self.by_type.setdefault(r.instance_type, []).append(r.gpu_ready_seconds)
            self.by_row.setdefault(r.row, []).append(r.gpu_ready_seconds)
        if r.stale:
            self.stale.append(r)

    def as_dict(self) -> Dict[str, Any]:
        order = {"unhealthy": 0, "degraded": 1, "unknown": 2, "healthy": 3}
        groups = sorted(self.groups.items(), key=lambda kv: (order.get(kv[0][0], 9), -kv[1], kv[0][1]))
        return {
            "nodes": self.nodes,
            "pages": self.pages,
            "health": [{"health": h, "reason": reason, "nodes": n, "examples": self.examples[(h, reason)]}
                       for (h, reason), n in groups],
            "agent_versions": dict(self.agents.most_common()),
            "stack_versions": dict(self.stacks.most_common()),
            "gpu_ready_seconds": {
                "by_instance_type": {k: percentiles(v) for k, v in sorted(self.by_type.items())},
                "by_ami_row": {k: percentiles(v) for k, v in sorted(self.by_row.items())},
            },
            "stale": [{"node": r.name, "health": r.health,
                       "heartbeat_age_seconds": round(r.heartbeat_age) if r.heartbeat_age is not None else None}
                      for r in sorted(self.stale, key=lambda r: -(r.heartbeat_age or math.inf))],
        }


def collect(client: Any, deadline: Any, *, prefix: str, condition: str, stale_seconds: float,
            page_size: int = PAGE_SIZE, now: Optional[float] = None) -> FleetView:
    view = FleetView()
    at = time.time() if now is None else now
    for page in list_nodes(client, deadline, page_size):
        view.pages += 1
        for node in page:
            view.add(record(node, prefix=prefix, condition=condition, now=at, stale_seconds=stale_seconds))
    return view


def _seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}s"


def render_table(view: Mapping[str, Any]) -> str:
    lines = [f"nodes: {view['nodes']} ({view['pages']} pages)", "", "health / reason:"]
    lines += [f"  {g['health']:<10} {g['reason']:<22} {g['nodes']:>6}  e.g. {', '.join(g['examples'])}"
              for g in view["health"]]
    lines += ["", "agent versions:"] + [f"  {v:<20} {n:>6}" for v, n in view["agent_versions"].items()]
    lines += ["", "stack versions:"] + [f"  {v:<60} {n:>6}" for v, n in view["stack_versions"].items()]
    for title, key in (("instance type", "by_instance_type"), ("AMI row", "by_ami_row")):
        lines += ["", f"time to GPU-ready by {title}:          nodes      p50      p90      max"]
        lines += [f"  {k:<32} {p['nodes']:>8} {_seconds(p['p50']):>8} {_seconds(p['p90']):>8} {_seconds(p['max']):>8}"
                  for k, p in view["gpu_ready_seconds"][key].items()]
    stale = view["stale"]
    lines += ["", f"stale reports: {len(stale)}"]
    lines += [f"  {s['node']} ({s['health']}, last heartbeat "
              f"{_seconds(s['heartbeat_age_seconds']) if s['heartbeat_age_seconds'] is not None else 'none'} ago)"
              for s in stale[:20]]
    if len(stale) > 20:
        lines.append(f"  ... {len(stale) - 20} more (--format json lists all)")
    return "\n".join(lines) + "\n"
