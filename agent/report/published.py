"""What the agent last published to its Node, remembered in ``/run/gpu-node-agent/published.json``.

The heartbeat (``check --report`` every 5-7 minutes) compares what it would publish with what it
remembers and writes to the API server only when something differs: the health, a check's status
or message, the actions of a run, or the condition's ``lastHeartbeatTime`` once
``report.heartbeat_minutes`` have passed. An unchanged heartbeat sends no request at all (the
Node read of ``gpu-allocatable`` is spaced too, ``agent/kube/node.py``).

The memory is for one Node (name and API server) and lives in ``/run`` (gone at boot). Without
it (first report after boot, after a failed publish, another node name or cluster) the Node is read
once and its own annotations and condition are the starting point. Every write returns the whole
Node, so each write also shows whether someone removed an annotation or the condition since; the
missing part is written in the same publish (see ``docs/reporting.md``, "Publish on change").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

from agent.base.errors import NodeFileError
from agent.base.fs import atomic_write, read_text
from agent.base.log import get_logger
from agent.base.noderoot import NodeRoot
from agent.base.timestamps import rfc3339
from agent.pipeline.health import CheckResult
from agent.report.node_content import compact_report, node_condition

if TYPE_CHECKING:
    from agent.base.retry import Deadline
    from agent.config.settings import ReportSettings
    from agent.kube.client import KubeClient

STATE_FILE = "/run/gpu-node-agent/published.json"
STATE_VERSION = 1
CONDITION_CONTENT = ("type", "status", "reason", "message")  # what a change of the condition means

log = get_logger("published")


@dataclass
class Published:
    """The Node as the agent last left it (or, without a memory, as it was read)."""

    node: str
    server: str
    uid: Optional[str] = None
    annotations: Dict[str, str] = field(default_factory=dict)  # only the agent's own keys
    condition: Optional[Dict[str, Any]] = None  # the agent's condition as on the Node

    def to_json(self) -> Dict[str, Any]:
        return {"v": STATE_VERSION, "node": self.node, "server": self.server, "uid": self.uid,
                "annotations": self.annotations, "condition": self.condition}


def observe(node: Mapping[str, Any], name: str, server: str, keys: List[str],
            condition_type: Optional[str]) -> Published:
    """What the Node itself holds of the agent's report."""
    meta = node.get("metadata") if isinstance(node.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    annotations = meta.get("annotations") if isinstance(meta.get("annotations"), Mapping) else {}
    assert isinstance(annotations, Mapping)
    uid = meta.get("uid")
    return Published(
        node=name,
        server=server,
        uid=uid if isinstance(uid, str) else None,
        annotations={k: str(annotations[k]) for k in keys if isinstance(annotations.get(k), str)},
        condition=find_condition(node, condition_type) if condition_type else None,
    )


def find_condition(node: Mapping[str, Any], condition_type: str) -> Optional[Dict[str, Any]]:
    status = node.get("status")
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    for cond in conditions if isinstance(conditions, list) else []:
        if isinstance(cond, Mapping) and cond.get("type") == condition_type:
            return dict(cond)
    return None


def same_condition(a: Optional[Mapping[str, Any]], b: Optional[Mapping[str, Any]]) -> bool:
    """Status, reason and message agree (the times are the heartbeat's business)."""
    if a is None or b is None:
        return a is b
    return all(a.get(k) == b.get(k) for k in CONDITION_CONTENT)


def heartbeat_due(condition: Optional[Mapping[str, Any]], now: datetime, minutes: float) -> bool:
    """Whether ``lastHeartbeatTime`` is ``minutes`` old (or unreadable, or in the future: a clock
    that went back must not silence the heartbeat)."""
    if condition is None or minutes <= 0:
        return True
    from agent.base.timestamps import parse_rfc3339

    try:
        last = parse_rfc3339(str(condition.get("lastHeartbeatTime") or ""))
    except ValueError:
        return True
    age = now.timestamp() - last
    return age < -60 or age >= minutes * 60 - 1  # a second of slack: timers fire on the minute


def since_of(report_value: Optional[str]) -> Optional[str]:
    """The ``time`` of a published ``<prefix>/report`` value: when its content last changed."""
    if not report_value:
        return None
    try:
        doc = json.loads(report_value)
    except ValueError:
        return None
    since = doc.get("time") if isinstance(doc, dict) else None
    return since if isinstance(since, str) else None


def actions_of(report_value: Optional[str]) -> List[str]:
    """The actions of a published ``<prefix>/report`` value (a ``check --report`` keeps them)."""
    try:
        doc = json.loads(report_value or "")
    except ValueError:
        return []
    actions = doc.get("actions") if isinstance(doc, dict) else None
    return [str(a) for a in actions] if isinstance(actions, list) else []


# --- one publish ---------------------------------------------------------------------------------


class NodeSync:
    """One publish to the Node: at most one GET (only without a memory), then only the writes that
    change something; each write's answer (the whole Node) also shows what someone else removed."""

    def __init__(self, settings: ReportSettings, results: Sequence[CheckResult], document: Mapping[str, Any],
                 now: datetime, keep_actions: bool) -> None:
        self.settings = settings
        self.results = results
        self.document = document
        self.now = now
        self.keep_actions = keep_actions
        self.read = False
        self.wrote: List[str] = []

    def run(self, client: KubeClient, deadline: Deadline, node: str, server: str,
            memory: Optional[Published], fresh: Optional[Mapping[str, Any]] = None) -> Published:
        """``fresh``: the Node as a check of this report already read it; it stands for the memory
        (it is newer) and for the GET."""
        prefix, ctype = self.settings.annotation_prefix, self.settings.condition
        health_key, report_key = f"{prefix}/health", f"{prefix}/report"
        keys = [health_key, report_key]
        seen = observe(fresh, node, server, keys, ctype) if fresh is not None else memory
        if seen is None:
            seen = observe(client.get_node(node, deadline, wait_registered=True), node, server, keys, ctype)
            self.read = True
        want = {health_key: str(self.document["health"]),
                report_key: self._report_value(seen.annotations.get(report_key))}
        need_annotations = seen.annotations != want
        prev = seen.condition if ctype and seen.condition and seen.condition.get("type") == ctype else None
        cond = node_condition(ctype, self.results, self.now, prev) if ctype else None
        need_condition = ctype is not None and (
            not same_condition(cond, prev)
            or heartbeat_due(prev, self.now, self.settings.heartbeat_minutes))
        if ctype and not need_condition:
            cond = prev  # unchanged: keep its times
        uid = seen.uid
        if need_annotations:
            there = client.patch_node(node, {"metadata": {"annotations": want}}, deadline)
            self.wrote.append("annotations")
            uid = _uid(there) or uid
            actual = find_condition(there, ctype) if ctype else None
            if ctype and not need_condition and actual != prev:  # removed or changed behind our back
                cond, need_condition = node_condition(ctype, self.results, self.now, actual), True
        if need_condition:
            there = client.patch_node_status(node, {"status": {"conditions": [cond]}}, deadline)
            self.wrote.append("condition")
            uid = _uid(there) or uid
            if observe(there, node, server, keys, ctype).annotations != want:  # removed
                client.patch_node(node, {"metadata": {"annotations": want}}, deadline)
                self.wrote.append("annotations")
        return Published(node, server, uid, want, cond)

    def _report_value(self, published_value: Optional[str]) -> str:
        """``<prefix>/report``: its ``time`` stays what the Node has while the content is the same."""
        doc: Mapping[str, Any] = self.document
        if self.keep_actions:
            doc = {**doc, "actions": actions_of(published_value)}
        old_since = since_of(published_value)
        if old_since:
            value = compact_report(doc, since=old_since)
            if value == published_value:
                return value
        return compact_report(doc, since=rfc3339(self.now))


def _uid(node: Mapping[str, Any]) -> Optional[str]:
    meta = node.get("metadata")
    uid = meta.get("uid") if isinstance(meta, Mapping) else None
    return uid if isinstance(uid, str) else None


# --- the file ------------------------------------------------------------------------------------


def load(root: NodeRoot, node: str, server: str) -> Optional[Published]:
    """The memory of publishing to ``node`` on ``server``; None when there is none for it."""
    try:
        doc = json.loads(read_text(root.path(STATE_FILE)))
    except (NodeFileError, ValueError):
        return None
    if not (isinstance(doc, dict) and doc.get("v") == STATE_VERSION and doc.get("node") == node
            and doc.get("server") == server):
        return None
    annotations = doc.get("annotations")
    condition = doc.get("condition")
    uid = doc.get("uid")
    if not isinstance(annotations, dict) or not (condition is None or isinstance(condition, dict)):
        return None
    return Published(node, server, uid if isinstance(uid, str) else None,
                     {str(k): str(v) for k, v in annotations.items()}, condition)


def save(root: NodeRoot, state: Published) -> None:
    path = root.path(STATE_FILE)
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(path, (json.dumps(state.to_json(), indent=1) + "\n").encode(), mode=0o600)
    except (NodeFileError, OSError) as exc:  # the next publish reads the Node instead
        log.warning("cannot remember what was published", error=str(exc))


def forget(root: NodeRoot) -> None:
    """After a failed publish the Node's state is unknown: the next publish reads it."""
    try:
        root.path(STATE_FILE).unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot forget what was published", error=str(exc))
