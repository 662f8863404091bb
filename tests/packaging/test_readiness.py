"""packaging/readiness/: the NodeReadinessRule against node-readiness-controller's own CRD schema, the
NodeConfig snippet against nodeadm's, and the two agreeing with each other and with the condition."""

import re
from pathlib import Path
from typing import Any, Dict

import pytest
import yaml

from agent.config.settings import AgentConfig
from agent.pipeline.health import FAIL, PASS, SKIP, WARN, CheckResult
from agent.pipeline.resources import CHECK_NAMES
from agent.report import reasons
from tests.support.openapi_schema import crd_schema, validate
from tests.support.paths import REPO, SAMPLES

READINESS = REPO / "packaging" / "readiness"
RULE = READINESS / "nodereadinessrule.yaml"
SNIPPET = READINESS / "nodeconfig-gpu-taint.yaml"
NRR_CRD = SAMPLES / "readiness" / "nodereadinessrules.readiness.node.x-k8s.io.yaml"
NODECONFIG_CRD = SAMPLES / "readiness" / "node.eks.aws_nodeconfigs.yaml"
# core/v1 Taint, as kube-apiserver validates it (ValidateTaint): a qualified name, a label value, an effect
DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
QUALIFIED = rf"({DNS_SUBDOMAIN}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?"
LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"


def load(path: Path) -> Any:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return doc


def rule_schema() -> Any:
    crd = load(NRR_CRD)
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == ("readiness.node.x-k8s.io", "NodeReadinessRule")
    return crd_schema(crd, "v1alpha1")


def test_the_rule_is_valid_against_the_controllers_crd() -> None:
    rule = load(RULE)
    assert (rule["apiVersion"], rule["kind"]) == ("readiness.node.x-k8s.io/v1alpha1", "NodeReadinessRule")
    assert validate(rule_schema(), rule) == []


def test_the_rule_waits_for_the_agents_condition_bootstrap_only() -> None:
    spec = load(RULE)["spec"]
    assert spec["conditions"] == [{"type": AgentConfig().report.condition, "requiredStatus": "True"}]
    assert spec["enforcementMode"] == "bootstrap-only"
    assert spec["taint"]["effect"] == "NoSchedule" and spec["taint"]["key"] == "readiness.k8s.io/gpu-node-agent"
    # the controller's admission webhook refuses anyOf and defaultStatus with bootstrap-only
    assert "conditionPolicy" not in spec and all("defaultStatus" not in c for c in spec["conditions"])


@pytest.mark.parametrize("path, value, error", [
    ("taint.key", "gpu-node-agent", "taint key must start with 'readiness.k8s.io/'"),
    ("taint.key", "readiness.k8s.io/gpu/agent", "exactly one '/'"),
    ("taint.effect", "Evict", "taint effect must be one of"),
    ("enforcementMode", "always", "not one of"),
    ("conditions", [], "items out of bounds"),
    ("taint.colour", "red", "unknown field"),
])
def test_the_schema_check_refuses_what_the_api_server_would(path: str, value: Any, error: str) -> None:
    rule = load(RULE)
    target: Dict[str, Any] = rule["spec"]
    *parents, last = path.split(".")
    for p in parents:
        target = target[p]
    target[last] = value
    errors = validate(rule_schema(), rule)
    assert any(error in e for e in errors), errors


def test_the_nodeconfig_snippet_is_valid_against_nodeadms_crd() -> None:
    snippet = load(SNIPPET)
    crd = load(NODECONFIG_CRD)
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    assert (snippet["apiVersion"], snippet["kind"]) == (f"{group}/v1alpha1", kind)
    # spec.kubelet.config is a KubeletConfiguration that nodeadm merges as raw JSON (its Go type is a
    # map of RawExtension, which the generated CRD renders as "object" values); its field is checked
    # below against the KubeletConfiguration and core/v1 Taint rules instead.
    assert validate(crd_schema(crd, "v1alpha1"), snippet, opaque=(".spec.kubelet.config",)) == []
    config = snippet["spec"]["kubelet"]["config"]
    assert list(config) == ["registerWithTaints"]
    for taint in config["registerWithTaints"]:
        assert set(taint) <= {"key", "value", "effect"}
        assert re.fullmatch(QUALIFIED, taint["key"]) and len(taint["key"].split("/")[-1]) <= 63
        assert re.fullmatch(LABEL_VALUE, taint.get("value", "")) and len(taint.get("value", "")) <= 63
        assert taint["effect"] in ("NoSchedule", "PreferNoSchedule", "NoExecute")


def test_the_snippet_registers_the_rules_taint_and_the_label_it_selects() -> None:
    snippet, rule = load(SNIPPET), load(RULE)
    (taint,) = snippet["spec"]["kubelet"]["config"]["registerWithTaints"]
    assert taint == rule["spec"]["taint"]
    labels = {}
    for flag in snippet["spec"]["kubelet"]["flags"]:
        name, _, value = flag.partition("=")
        assert name == "--node-labels"
        labels.update(item.split("=", 1) for item in value.split(","))
    assert rule["spec"]["nodeSelector"] == {"matchLabels": labels}
    for key, value in labels.items():  # NodeRestriction lets a kubelet set only labels outside *.kubernetes.io/k8s.io
        assert re.fullmatch(QUALIFIED, key) and not re.search(r"(^|\.)(kubernetes|k8s)\.io/", key)
        assert re.fullmatch(LABEL_VALUE, value)


# --- when the condition may turn True on a booting node -------------------------------------------


def booting(**statuses: str) -> Any:
    results = [CheckResult(n, statuses.get(n.replace("-", "_"), PASS), "m") for n in CHECK_NAMES]
    return reasons.decide(results)


@pytest.mark.parametrize("check", reasons.GATE_CHECKS)
@pytest.mark.parametrize("status", [WARN, FAIL])
def test_no_gate_check_short_of_pass_lets_the_taint_go(check: str, status: str) -> None:
    assert booting(**{check.replace("-", "_"): status}).status == "False"


def test_the_gate_checks_are_the_documented_ones() -> None:
    doc = (REPO / "docs" / "readiness.md").read_text()
    listed = re.findall(r"^\| `([a-z-]+)` \|", doc.split("## What must pass")[1], re.M)
    assert tuple(listed) == reasons.GATE_CHECKS
    assert {"nvidia-driver", "gpu-inventory", "gpu-allocatable"} <= set(reasons.GATE_CHECKS)


def test_skips_and_other_warnings_do_not_hold_the_gate() -> None:
    assert booting(efa=SKIP, nvidia_fabricmanager=SKIP).status == "True"
    assert booting(compatibility=WARN, nvidia_runtime_config=WARN).status == "True"
