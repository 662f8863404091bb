"""Reasons: the CamelCase word that says why a check has its status, and the condition built from them.

Each check puts the reason of its current status in ``details["event_reason"]`` (``GPUMissing``,
``GPUFellOffBus``, ...). ``CHECK_REASONS`` lists every reason each check can give, with its status:
it is the table in docs/reporting.md ("Reasons"), and what bounds the ``reason`` label of the
metrics. A check without a reason of its own (or with one not listed) is given the fallback
``<Check><Failed|Warning|Passed|Skipped>`` (``agent.report.events.check_reason``), e.g.
``ContainerdConfigFailed``.

The condition (``report.condition``, default ``GPUNodeAgentReady``) is decided here:

* ``reason``: the deciding check's reason: the first failing check, else the first gate check that
  warns, else the first warning check; ``GPUNodeReady`` when every check passes or skips;
* ``status``: ``False`` when a check fails **or a gate check (``GATE_CHECKS``) is anything but
  pass or skip**, else ``True``. The gate checks are what must be proven before GPU pods may land
  on a booting node (docs/readiness.md): containerd serving, kubelet serving, the driver loaded,
  every GPU the instance type has, the GPUs advertised in ``status.allocatable`` (within
  ``gpu.allocatable_grace_seconds`` that is ``warn``, so the node is not *unhealthy* yet, but the
  condition stays ``False`` until the device plugin advertises them), and the NVSwitch fabric.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from agent.pipeline.health import FAIL, PASS, SKIP, WARN, CheckResult
from agent.report.document import ordered

READY_REASON = "GPUNodeReady"  # every check passes or skips
GATE_CHECKS = ("containerd-running", "kubelet-running", "nvidia-driver", "gpu-inventory", "gpu-allocatable",
               "nvidia-fabricmanager")
GATE_OK = (PASS, SKIP)

# check -> ((reason, status), ...): every reason a check gives, in the order of docs/reporting.md.
_OWN: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "compatibility": (("KnownGoodVersions", PASS), ("UntestedVersions", PASS), ("UntestedVersions", WARN),
                      ("VersionsUnknown", WARN), ("UntestedVersions", FAIL), ("NoVersions", SKIP)),
    "gpu-inventory": (("GPUsPresent", PASS), ("GPUCountNotCompared", PASS), ("GPUMissing", FAIL),
                      ("InstanceTypeUnknown", WARN), ("GPUCountUnexpected", WARN), ("GPUInventoryUnknown", WARN),
                      ("GPUInventoryUnreadable", WARN), ("NoGPUs", SKIP), ("NotNVIDIA", SKIP)),
    "gpu-allocatable": (("AllocatableAsExpected", PASS), ("GPUNotAdvertised", FAIL),
                        ("EFANotAdvertised", FAIL), ("GPUNotYetAdvertised", WARN), ("EFANotYetAdvertised", WARN),
                        ("AllocatableUnexpected", WARN), ("NodeUnreadable", WARN),
                        ("AllocatableNotChecked", SKIP), ("NodeNotRead", SKIP)),
    "nvidia-fabricmanager": (("FabricManagerReady", PASS), ("FabricManagerMissing", FAIL),
                             ("FabricManagerNotRunning", FAIL), ("FabricManagerVersionMismatch", FAIL),
                             ("GPUFabricFailed", FAIL), ("FabricManagerStarting", WARN),
                             ("GPUFabricNotReady", WARN), ("FabricManagerUnknown", WARN),
                             ("FabricManagerVersionUnknown", WARN), ("NoNVSwitch", SKIP)),
    "gpu-errors": (("NoGPUErrors", PASS), ("GPURowRemapFailure", FAIL), ("GPURowRemapPending", FAIL),
                   ("GPUPageRetirementPending", FAIL), ("GPUUncorrectableECCError", FAIL),
                   ("GPUErrorsUnknown", WARN), ("GPUXidError", WARN), ("GPUXidBelowThreshold", WARN),
                   ("NoGPUs", SKIP)),
}
_SUFFIX = {FAIL: "Failed", WARN: "Warning", PASS: "Passed", SKIP: "Skipped"}
# Reasons any check can give: the operator's checks.<name>.enabled: false (agent/pipeline/policy.py).
POLICY_REASONS: Tuple[Tuple[str, str], ...] = (("CheckDisabled", SKIP),)


def _xid_reasons() -> Tuple[Tuple[str, str], ...]:
    """The reasons of the XID catalog (``agent/gpu/xid_catalog.py``): fatal and reset-needed fail,
    application warns, ignored ones pass as the check's own pass reason."""
    from agent.gpu.xid_catalog import FATAL, IGNORE, RESET, XIDS

    seen: Dict[str, str] = {}
    for entry in XIDS.values():
        if entry.cls == IGNORE:  # passes: the check's own pass reason
            continue
        status = FAIL if entry.cls in (FATAL, RESET) else WARN
        if seen.get(entry.reason) != FAIL:
            seen[entry.reason] = status
    return tuple(sorted(seen.items(), key=lambda kv: (kv[1] != FAIL, kv[0])))


def fallback(check: str, status: str) -> str:
    """``containerd-config`` failing -> ``ContainerdConfigFailed`` (``agent.report.events.camel``)."""
    from agent.report.events import camel

    return camel(check) + _SUFFIX.get(status, "Changed")


def check_reasons() -> Dict[str, Tuple[Tuple[str, str], ...]]:
    """Every check's reasons and their status; a check without own reasons has the four fallbacks."""
    from agent.pipeline.resources import CHECK_NAMES

    out: Dict[str, Tuple[Tuple[str, str], ...]] = {}
    for name in CHECK_NAMES:
        own = _OWN.get(name, ())
        if name == "gpu-errors":
            xids = tuple(r for r in _xid_reasons() if r[0] not in {o[0] for o in own})
            own = own[:1] + xids + own[1:]
        out[name] = own or tuple((fallback(name, s), s) for s in (PASS, FAIL, WARN, SKIP))
    return out


def reason_of(result: CheckResult) -> str:
    """The reason of a check's current status: its own when listed for it with that status, else the
    fallback. Always one of ``check_reasons()[result.name]`` for a known check (bounded)."""
    own = result.details.get("event_reason") if isinstance(result.details, Mapping) else None
    known = {(r, s) for r, s in _OWN.get(result.name, ())} | set(POLICY_REASONS)
    if result.name == "gpu-errors":
        known |= set(_xid_reasons())
    if isinstance(own, str) and (own, result.status) in known:
        return own
    return fallback(result.name, result.status)


class Condition(NamedTuple):
    status: str  # "True" | "False"
    reason: str
    message: str
    deciding: Optional[str]  # the check that decided it (None: all passed)


def decide(results: Sequence[CheckResult]) -> Condition:
    """The condition's status, reason and message (not shortened) from the checks (module docstring)."""
    results = ordered(results)
    failing = [r for r in results if r.status == FAIL]
    gate = [r for r in results if r.name in GATE_CHECKS and r.status not in GATE_OK]
    warning = [r for r in results if r.status == WARN]
    for group, status in ((failing, "False"), (gate, "False"), (warning, "True")):
        if group:
            r = group[0]
            return Condition(status, reason_of(r), f"{r.name}: {r.message}", r.name)
    passed = sum(1 for r in results if r.status == PASS)
    skipped = sum(1 for r in results if r.status == SKIP)
    return Condition("True", READY_REASON, f"{passed} checks passed" + (f", {skipped} skipped" if skipped else ""),
                     None)


def table_rows() -> List[Tuple[str, str, str]]:
    """(check, status, reason) rows of the documented table, in order."""
    return [(check, status, reason) for check, rows in check_reasons().items() for reason, status in rows]
