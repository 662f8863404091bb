"""The compatibility matrix: the packaged data, the lookup, and the check's verdicts."""

import json
from pathlib import Path
from typing import Any, Dict

import pytest

from agent.compat import matrix as compat
from agent.compat.matrix import KnownGood, Matrix, MatrixError
from agent.compat.versions import NodeVersions
from agent.pipeline.health import PASS, SKIP, WARN

RUNBOOK = dict(kubernetes="1.35.2", containerd="2.2.3", toolkit="1.19.0", driver="580.159.03")


def node(**changes: Any) -> NodeVersions:
    values: Dict[str, Any] = {**RUNBOOK, **changes}
    notes = {k: f"{k} not found here" for k, v in values.items() if v is None}
    return NodeVersions(**values, notes=notes)


def row(release: str, **kw: str) -> KnownGood:
    base = dict(
        kubernetes="1.35", containerd="2.2.3", toolkit="1.19.0", driver="580.159.03", nodeadm="pre-#2705"
    )
    return KnownGood(ami_release=release, **{**base, **kw})


def test_packaged_matrix_has_the_runbook_row() -> None:
    matrix = compat.load_matrix()
    assert (
        KnownGood("v20260512", "1.35", "2.2.3", "1.19.0", "580.159.03", "pre-#2705", matrix.rows[0].notes)
        in matrix.rows
    )
    assert matrix.source.endswith("agent/data/compatibility.json")


def test_known_good_node_passes() -> None:
    r = compat.check(node())
    assert r.status == PASS
    assert (
        r.message == "k8s 1.35, containerd 2.2.3, toolkit 1.19.0, driver 580.159.03: known-good row v20260512"
    )
    assert r.details["unknown"]["ami_release"] == "not found"


def test_unknown_combination_names_closest_row_and_differences() -> None:
    r = compat.check(node(containerd="2.2.4", driver="580.95.05"))
    assert r.status == WARN
    assert r.message == (
        "untested combination: closest known-good row v20260512 differs in containerd 2.2.4 "
        "(known-good 2.2.3), driver 580.95.05 (known-good 580.159.03)"
    )
    assert r.details["differs"] == [["containerd", "2.2.4", "2.2.3"], ["driver", "580.95.05", "580.159.03"]]


def test_kubernetes_matched_by_minor_version() -> None:
    assert compat.check(node(kubernetes="1.35.9")).status == PASS
    r = compat.check(node(kubernetes="1.36.0"))
    assert r.status == WARN and "k8s 1.36 (known-good 1.35)" in r.message


def test_undetected_component_is_a_warning_not_a_guess() -> None:
    r = compat.check(node(toolkit=None))
    assert r.status == WARN
    assert r.message == "toolkit unknown (toolkit not found here); the rest matches known-good v20260512"


def test_nothing_detected_is_skip() -> None:
    r = compat.check(node(kubernetes=None, containerd=None, toolkit=None, driver=None))
    assert r.status == SKIP and r.message.startswith("no component versions found on this node")


def test_closest_prefers_most_matches_then_the_newest_row() -> None:
    matrix = Matrix(
        (
            row("v20260401", kubernetes="1.34", containerd="2.1.4", toolkit="1.18.2", driver="570.172.08"),
            row("v20260512"),
            row("v20260601", containerd="2.2.4", driver="580.159.04", nodeadm="#2705"),
        ),
        "test",
    )
    r = compat.check(node(containerd="2.2.4", driver="580.159.04"), matrix)
    assert r.status == PASS and r.message.endswith("known-good row v20260601")
    r = compat.check(node(containerd="2.2.4"), matrix)  # one difference from each of the newer two
    assert r.status == WARN and "closest known-good row v20260601 differs in driver" in r.message
    r = compat.check(node(kubernetes="1.34.3", containerd="2.1.4", toolkit="1.18.2", driver="1"), matrix)
    assert "row v20260401 differs in driver 1 " in r.message


def test_empty_matrix() -> None:
    r = compat.check(node(), Matrix((), "test"))
    assert r.status == WARN and "no rows" in r.message


@pytest.mark.parametrize(
    "data, problem",
    [
        ({"rows": []}, "schema"),
        ({"schema": 1, "rows": [{"ami_release": "v1"}]}, "rows[0].kubernetes: expected a non-empty string"),
        (
            {
                "schema": 1,
                "rows": [
                    dict(
                        ami_release="v1",
                        kubernetes="1.35.2",
                        containerd="2",
                        toolkit="1",
                        driver="1",
                        nodeadm="pre-#2705",
                    )
                ],
            },
            "expected a minor version",
        ),
        (
            {
                "schema": 1,
                "rows": [
                    dict(
                        ami_release="v1",
                        kubernetes="1.35",
                        containerd="2",
                        toolkit="1",
                        driver="1",
                        nodeadm="new",
                    )
                ],
            },
            "nodeadm: expected one of",
        ),
        (
            {
                "schema": 1,
                "rows": [
                    dict(
                        ami_release="v1",
                        kubernetes="1.35",
                        containerd="2",
                        toolkit="1",
                        driver="1",
                        nodeadm="#2705",
                        colour="blue",
                    )
                ],
            },
            "unknown key 'colour'",
        ),
    ],
)
def test_matrix_validation(data: Dict[str, Any], problem: str, tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    with pytest.raises(MatrixError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        compat.load_matrix(path)


def test_unreadable_matrix(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text("{")
    with pytest.raises(MatrixError, match="cannot read the compatibility matrix"):
        compat.load_matrix(tmp_path / "m.json")
