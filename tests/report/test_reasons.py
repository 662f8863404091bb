"""The condition's reason and status, driven by the documented reasons table (docs/reporting.md)."""

import ast
import re
from datetime import datetime, timezone
from typing import Dict, List, Set, Tuple

import pytest

from agent.pipeline.health import FAIL, PASS, SKIP, WARN, CheckResult
from agent.pipeline.resources import CHECK_NAMES
from agent.report import node_content, reasons
from tests.support.paths import REPO

NOW = datetime(2026, 5, 12, 10, 0, tzinfo=timezone.utc)
STATUSES = (PASS, WARN, FAIL, SKIP)


def documented() -> Dict[str, Tuple[bool, Dict[str, List[str]]]]:
    """check -> (gate, {status: [reasons]}) from the table under "### Reasons"."""
    text = (REPO / "docs" / "reporting.md").read_text()
    section = text[text.index("### Reasons"):]
    section = section[section.index("| check |"):]
    table = section[:section.index("\n\n")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    out = {}
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        check = cells[0].strip("`")
        by_status = {s: re.findall(r"`([A-Za-z0-9]+)`", cell) for s, cell in zip(STATUSES, cells[2:6])}
        out[check] = (cells[1] == "yes", by_status)
    return out


DOCUMENTED = documented()
ROWS = [(check, status, reason) for check, (_gate, by) in DOCUMENTED.items()
        for status, names in by.items() for reason in names]


def test_the_table_is_what_the_agent_gives() -> None:
    assert list(DOCUMENTED) == list(CHECK_NAMES)
    for check, rows in reasons.check_reasons().items():
        gate, by_status = DOCUMENTED[check]
        assert gate == (check in reasons.GATE_CHECKS), check
        assert {s: sorted(r for r, st in rows if st == s) for s in STATUSES} == \
            {s: sorted(by_status[s]) for s in STATUSES}, check


def _strings(node: ast.AST) -> Set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _agent_trees() -> List[ast.AST]:
    return [ast.parse(p.read_text()) for p in (REPO / "agent").rglob("*.py") if p.name != "reasons.py"]


def test_every_reason_set_in_the_code_is_documented() -> None:
    """``{"event_reason": X}`` and ``details["event_reason"] = X`` in the checks, and the XID table."""
    given: Set[str] = set()
    for tree in _agent_trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                given |= {s for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant)
                          and k.value == "event_reason" for s in _strings(v)}
            elif isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Subscript) and _strings(t.slice) == {"event_reason"} for t in node.targets):
                given |= _strings(node.value)
    from agent.gpu.xid_catalog import IGNORE, XIDS

    given |= {entry.reason for entry in XIDS.values() if entry.cls != IGNORE}
    documented_reasons = {r for _c, _s, r in ROWS}
    assert given and given - documented_reasons - {r for r, _ in reasons.POLICY_REASONS} == set()


def test_the_reasons_any_check_gives_are_documented() -> None:
    text = (REPO / "docs" / "reporting.md").read_text()
    for reason, status in reasons.POLICY_REASONS:
        assert f"`{reason}`" in text
        disabled = CheckResult("containerd-config", status, "disabled by configuration", {"event_reason": reason})
        assert reasons.reason_of(disabled) == reason


def test_every_documented_reason_of_a_check_is_in_its_code() -> None:
    in_code = set().union(*(_strings(t) for t in _agent_trees()))
    own = {r for c, s, r in ROWS if r != reasons.fallback(c, s)}
    assert own - in_code == set()


@pytest.mark.parametrize("check, status, reason", ROWS, ids=[f"{c}-{s}-{r}" for c, s, r in ROWS])
def test_condition_reason_for_each_documented_reason(check: str, status: str, reason: str) -> None:
    # A warning elsewhere (efa, not a gate check) must not hide a failure or an unproven gate check.
    others = [CheckResult(n, WARN if n == "efa" and check != "efa" else PASS, f"{n} note") for n in CHECK_NAMES
              if n != check]
    subject = CheckResult(check, status, "what happened", {"event_reason": reason})
    cond = node_content.node_condition("GPUNodeAgentReady", [*others, subject], NOW)
    assert reasons.reason_of(subject) == reason
    gate = check in reasons.GATE_CHECKS
    if status == FAIL or (status == WARN and gate):
        assert (cond["status"], cond["reason"], cond["message"]) == ("False", reason, f"{check}: what happened")
    elif status == WARN:  # not a gate check: degraded, still fit; the first warning in check order decides
        first = reason if CHECK_NAMES.index(check) <= CHECK_NAMES.index("efa") else "EFAWarning"
        assert (cond["status"], cond["reason"]) == ("True", first)
    elif check == "efa":  # passing or skipping, and nothing else warns
        assert (cond["status"], cond["reason"]) == ("True", "GPUNodeReady")
    else:
        assert (cond["status"], cond["reason"]) == ("True", "EFAWarning")


def test_all_passing_is_gpu_node_ready() -> None:
    cond = node_content.node_condition("GPUNodeAgentReady", [CheckResult(n, PASS, "ok") for n in CHECK_NAMES], NOW)
    assert (cond["status"], cond["reason"]) == ("True", "GPUNodeReady")


def test_gpus_not_yet_advertised_keep_the_condition_false_within_the_grace() -> None:
    """On a booting node the device plugin is late: degraded (not unhealthy), and not yet True."""
    from agent.config.settings import AgentConfig
    from agent.gpu import allocatable
    from agent.kube.node import NodeRead
    from agent.systemd.state import UnitState, UnitStates

    read = NodeRead({"status": {"allocatable": {"cpu": "8"}}}, "n1")
    kubelet = UnitState("kubelet.service", "loaded", "active", "running", 1000 * 10**6, 42)
    states = UnitStates("unix:path=/run/dbus/system_bus_socket", (kubelet,))
    result = allocatable.check(read, AgentConfig(), gpus=8, efa_devices=0, units=states,
                               kubelet_unit="kubelet.service", now=1030.0)
    assert result.status == WARN
    checks = [CheckResult(n, PASS, "ok") for n in CHECK_NAMES if n != result.name] + [result]
    cond = node_content.node_condition("GPUNodeAgentReady", checks, NOW)
    assert (cond["status"], cond["reason"]) == ("False", "GPUNotYetAdvertised")
    late = allocatable.check(read, AgentConfig(), gpus=8, efa_devices=0, units=states,
                             kubelet_unit="kubelet.service", now=1000.0 + 3600)
    cond = node_content.node_condition("GPUNodeAgentReady", [*checks[:-1], late], NOW)
    assert (late.status, cond["status"], cond["reason"]) == (FAIL, "False", "GPUNotAdvertised")


def test_a_reason_not_listed_for_the_check_falls_back_to_its_status_word() -> None:
    odd = CheckResult("gpu-inventory", FAIL, "x", {"event_reason": "SomethingNew"})
    assert reasons.reason_of(odd) == "GPUInventoryFailed"
    wrong_status = CheckResult("gpu-inventory", PASS, "x", {"event_reason": "GPUMissing"})
    assert reasons.reason_of(wrong_status) == "GPUInventoryPassed"
    assert reasons.reason_of(CheckResult("containerd-config", WARN, "x")) == "ContainerdConfigWarning"
