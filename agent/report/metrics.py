"""The metrics file (``report.metrics_file``): the report as Prometheus text for node_exporter's
textfile collector. The metrics, their labels and their cardinality: docs/metrics.md.

Everything here is computed from the **report document** (what the status file holds: the checks
with their details, ``restarts_total``, ``publish``, ``passes``, ``pass``), so the file says nothing
the status file does not.

Adding metrics from another module is one line: a function ``families(document) -> Iterable[Family]``
named in ``SOURCES`` as ``"agent.package.module:function"`` (imported only when a metrics file is written).
It returns ``Family(name, type, help, samples)`` with ``samples`` as ``[(labels, value), ...]``;
``render`` checks the names (``gpu_node_agent_`` prefix, Prometheus conventions: ``_total`` only on
counters, ``_info`` gauges of value 1), escapes label values and writes HELP and TYPE once per
family. A family with no samples is left out. Keep label values bounded (no messages, no ids).
"""

from __future__ import annotations

import importlib
import math
import re
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

PREFIX = "gpu_node_agent_"
_NAME = re.compile(r"gpu_node_agent_[a-z0-9_]*[a-z0-9]")
_LABEL = re.compile(r"[a-z_][a-z0-9_]*")
TYPES = ("gauge", "counter")
XID_CLASSES = ("fatal", "reset", "application", "ignore", "other")  # agent.gpu.xid.CLASSES
PASSES = ("prepare", "run", "check")
VERSION_LABELS = ("agent", "kubernetes", "containerd", "toolkit", "driver")
UNKNOWN = "unknown"

# "module:function" of every metric source, in the order of the file.
SOURCES: Tuple[str, ...] = ("agent.report.metrics:core_families", "agent.report.timeline:metric_families")

Labels = Mapping[str, str]


class Family(NamedTuple):
    name: str
    type: str  # gauge | counter
    help: str
    samples: Sequence[Tuple[Labels, float]]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    return f"{float(value):.3f}"


def _checked(family: Family) -> Family:
    if not _NAME.fullmatch(family.name) or family.type not in TYPES:
        raise ValueError(f"metric {family.name!r} ({family.type}): not a gpu_node_agent_ gauge or counter")
    if (family.type == "counter") != family.name.endswith("_total"):
        raise ValueError(f"metric {family.name!r}: counters, and only counters, end in _total")
    for labels, value in family.samples:
        bad = [k for k in labels if not _LABEL.fullmatch(k) or k.startswith("__")]
        if bad:
            raise ValueError(f"metric {family.name!r}: bad label name {bad[0]!r}")
        if family.name.endswith("_info") and value != 1:
            raise ValueError(f"metric {family.name!r}: an _info metric is 1")
    return family


def render(document: Mapping[str, Any], sources: Optional[Sequence[str]] = None) -> str:
    """The metrics file's text (Prometheus text exposition format 0.0.4), from ``SOURCES``."""
    lines: List[str] = []
    seen = set()
    for source in SOURCES if sources is None else sources:
        module, _, function = source.partition(":")
        for family in getattr(importlib.import_module(module), function)(document):
            family = _checked(family)
            if not family.samples:
                continue
            if family.name in seen:
                raise ValueError(f"metric {family.name!r} given twice")
            seen.add(family.name)
            lines += [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.type}"]
            for labels, value in family.samples:
                inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                lines.append(f"{family.name}{{{inner}}} {_number(value)}" if inner
                             else f"{family.name} {_number(value)}")
    return "\n".join(lines) + "\n"


# --- the agent's own metrics ---------------------------------------------------------------------


def _checks(document: Mapping[str, Any]) -> Dict[str, Mapping[str, Any]]:
    return {str(c.get("name")): c for c in document.get("checks", []) if isinstance(c, Mapping)}


def _details(check: Optional[Mapping[str, Any]]) -> Mapping[str, Any]:
    details = check.get("details") if check else None
    return details if isinstance(details, Mapping) else {}


def _results(document: Mapping[str, Any]) -> List[Any]:
    from agent.pipeline.health import CheckResult

    return [CheckResult(str(c["name"]), str(c["status"]), str(c.get("message", "")), dict(_details(c)))
            for c in _checks(document).values()]


def _versions(document: Mapping[str, Any]) -> Family:
    compat = _details(_checks(document).get("compatibility"))
    detected = compat.get("detected") if isinstance(compat.get("detected"), Mapping) else {}
    assert isinstance(detected, Mapping)
    labels = {"agent": str(document.get("agent") or UNKNOWN)}
    labels.update({k: str(detected.get(k) or UNKNOWN) for k in VERSION_LABELS[1:]})
    labels["known_good"] = str(compat.get("matched") or "none")
    return Family(PREFIX + "versions_info", "gauge", "The agent's and the GPU stack's versions, and the "
                  "known-good row of the compatibility matrix they match (none: no row matches).", [(labels, 1)])


def _gpus(document: Mapping[str, Any]) -> List[Family]:
    inventory = _details(_checks(document).get("gpu-inventory"))
    out = []
    for key, help_text in (("expected", "GPUs the instance type has (absent when it is not known)."),
                           ("seen", "GPUs the driver shows (absent when they could not be counted).")):
        value = inventory.get(key)
        samples: List[Tuple[Labels, float]] = []
        if isinstance(value, int) and not isinstance(value, bool):
            samples = [({}, value)]
        out.append(Family(f"{PREFIX}gpus_{key}", "gauge", help_text, samples))
    return out


def _xids(document: Mapping[str, Any]) -> Family:
    errors = _details(_checks(document).get("gpu-errors"))
    counts = errors.get("xid_classes")
    samples: List[Tuple[Labels, float]] = []
    if isinstance(counts, Mapping):
        samples = [({"class": cls}, int(counts.get(cls, 0))) for cls in XID_CLASSES]
    return Family(PREFIX + "xid_events_total", "counter", "XID events in the kernel log since boot, by class "
                  "(fatal, reset, application, other).", samples)


def _durations(document: Mapping[str, Any]) -> Family:
    durations: Dict[str, float] = {}
    passes = document.get("passes") if isinstance(document.get("passes"), Mapping) else {}
    for name, record in (passes or {}).items():
        if name in PASSES and isinstance(record, Mapping) and isinstance(record.get("duration_seconds"),
                                                                         (int, float)):
            durations[name] = float(record["duration_seconds"])
    current = document.get("pass")
    if isinstance(current, Mapping) and current.get("name") in PASSES:
        durations[str(current["name"])] = float(current.get("duration_seconds") or 0.0)
    return Family(PREFIX + "last_run_duration_seconds", "gauge", "How long the last pass of each kind took "
                  "(prepare, run, check --report; up to its report).",
                  [({"pass": p}, durations[p]) for p in PASSES if p in durations])


def core_families(document: Mapping[str, Any]) -> Iterable[Family]:
    from agent.base.timestamps import parse_rfc3339
    from agent.pipeline.health import DEGRADED, FAIL, HEALTHY, PASS, SKIP, UNHEALTHY, WARN
    from agent.report import reasons
    from agent.report.document import ordered

    results = ordered(_results(document))
    health = document.get("health")
    yield Family(PREFIX + "health", "gauge", "Node health from the agent's last report (1 for the current state).",
                 [({"health": h}, int(h == health)) for h in (HEALTHY, DEGRADED, UNHEALTHY)])
    decided = reasons.decide(results)
    yield Family(PREFIX + "condition_info", "gauge", "The node condition as the agent decides it: status "
                 "(True/False) and the deciding check's reason (docs/reporting.md, Reasons).",
                 [({"status": decided.status, "reason": decided.reason}, 1)])
    yield Family(PREFIX + "check", "gauge", "Health check status from the last report (1 for the current status).",
                 [({"check": r.name, "status": s}, int(r.status == s)) for r in results
                  for s in (PASS, WARN, FAIL, SKIP)])
    yield Family(PREFIX + "check_info", "gauge", "Each check's current status and its reason (one series per "
                 "check; the reasons are listed in docs/reporting.md).",
                 [({"check": r.name, "status": r.status, "reason": reasons.reason_of(r)}, 1) for r in results])
    yield _versions(document)
    yield from _gpus(document)
    yield _xids(document)
    yield Family(PREFIX + "last_run_timestamp_seconds", "gauge", "When the agent last reported (Unix time).",
                 [({}, parse_rfc3339(str(document["time"])))])
    yield _durations(document)
    restarts = document.get("restarts_total") if isinstance(document.get("restarts_total"), Mapping) else {}
    yield Family(PREFIX + "restarts_total", "counter", "Units the agent restarted since boot.",
                 [({"unit": str(u)}, int(n)) for u, n in sorted((restarts or {}).items())])
    publish = document.get("publish") if isinstance(document.get("publish"), Mapping) else {}
    if publish and publish.get("attempted"):
        yield Family(PREFIX + "report_published", "gauge", "Whether the last report reached the API server.",
                     [({}, int(bool(publish.get("ok"))))])
