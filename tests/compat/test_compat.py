"""The compatibility matrix: the packaged rows (the EKS AMI CHANGELOG's releases and the runbook's),
the operator's rows in compatibility.d, the lookup, and the check's verdicts."""

import json
import re
from pathlib import Path
from typing import Any, Dict, List

import pytest

from agent.base.errors import ConfigError
from agent.base.noderoot import NodeRoot
from agent.cli import main
from agent.compat import matrix as compat
from agent.compat.matrix import KnownGood, Matrix, MatrixError
from agent.compat.versions import NodeVersions
from agent.pipeline.health import FAIL, PASS, SKIP, WARN
from tests.support.gpu_node import healthy_gpu_node, write

RUNBOOK = dict(kubernetes="1.35.2", containerd="2.2.3", toolkit="1.19.0", driver="580.159.03")
PACKAGED = compat.load_matrix()
# Every AL2023 NVIDIA AMI release the EKS AMI CHANGELOG lists from the one that brought toolkit 1.18
# (v20251023) to v20260714, [ABANDONED] ones (v20260128, v20260311) aside; and the runbook's v20260512.
RELEASES = ["v20251023", "v20251029", "v20251108", "v20251112", "v20251120", "v20251209", "v20251217",
            "v20260107", "v20260114", "v20260116", "v20260120", "v20260129", "v20260209", "v20260224",
            "v20260304", "v20260318", "v20260403", "v20260409", "v20260415", "v20260423", "v20260505",
            "v20260512", "v20260610", "v20260618", "v20260625", "v20260714"]


def node(**changes: Any) -> NodeVersions:
    values: Dict[str, Any] = {**RUNBOOK, **changes}
    notes = {k: f"{k} not found here" for k, v in values.items() if v is None}
    return NodeVersions(**values, notes=notes)


def row(release: str, **kw: str) -> KnownGood:
    base = dict(kubernetes="1.35", containerd="2.2.3", toolkit="1.19.0", driver="580.159.03", nodeadm="pre-#2705",
                source="test")
    return KnownGood(ami_release=release, **{**base, **kw})


ONE_ROW = Matrix((row("v20260512"),), "test")

# --- the packaged rows ------------------------------------------------------------------------------


def test_the_packaged_matrix_lists_every_public_release_since_toolkit_1_18() -> None:
    assert sorted({r.ami_release for r in PACKAGED.rows}) == RELEASES
    assert PACKAGED.source.endswith("agent/data/compatibility.json")
    for r in PACKAGED.rows:
        expected = "runbook" if r.ami_release == "v20260512" else f"EKS AMI CHANGELOG, AMI Release {r.ami_release}, "
        assert r.source.startswith(expected), r
    assert all(r.nodeadm == ("#2705" if r.ami_release >= "v20260520" else "pre-#2705") for r in PACKAGED.rows)
    doc = json.loads(compat.MATRIX_PATH.read_text())
    assert any("CHANGELOG" in note for note in doc["provenance"])  # where the rows come from, kept with them


def test_the_changelog_facts_the_rows_carry() -> None:
    rows = {(r.ami_release, r.kubernetes): r for r in PACKAGED.rows}
    newest = rows[("v20260714", "1.35")]
    assert (newest.containerd, newest.toolkit, newest.driver) == ("2.2.4", "1.19.1", "580.159.03")
    first_with = {v: min(r.ami_release for r in PACKAGED.rows if r.toolkit == v) for v in ("1.18.0", "1.19.0")}
    assert first_with == {"1.18.0": "v20251023", "1.19.0": "v20260318"}
    assert rows[("v20251029", "1.31")][2:5] == ("1.7.27", "1.18.0", "570.195.03")
    assert not any(r.ami_release in ("v20260128", "v20260311") for r in PACKAGED.rows)  # abandoned
    assert len(rows) == len(PACKAGED.rows)  # one row per release and Kubernetes minor


@pytest.mark.parametrize("known", PACKAGED.rows, ids=lambda r: r.label())
def test_every_shipped_row_matches_its_own_release(known: KnownGood) -> None:
    versions = NodeVersions(kubernetes=f"{known.kubernetes}.7", containerd=known.containerd, toolkit=known.toolkit,
                            driver=known.driver)
    r = compat.check(versions, PACKAGED)
    assert r.status == PASS, r.message
    assert known.label() in r.details["matching"]


def test_a_fleet_node_on_an_older_public_release_passes() -> None:
    """A g6 on k8s 1.31, containerd 1.7.27, toolkit 1.18.0, driver 570.195.03 (v20251023/v20251029)."""
    r = compat.check(node(kubernetes="1.31.13", containerd="1.7.27", toolkit="1.18.0", driver="570.195.03"), PACKAGED)
    assert r.status == PASS
    assert r.message == ("k8s 1.31, containerd 1.7.27, toolkit 1.18.0, driver 570.195.03: known-good row "
                         "v20251029 k8s 1.31 (EKS AMI CHANGELOG)")
    assert r.details["matching"] == ["v20251023 k8s 1.31", "v20251029 k8s 1.31"]


def test_the_runbook_node_passes_on_the_runbook_row() -> None:
    r = compat.check(node())
    assert r.status == PASS
    assert r.message == ("k8s 1.35, containerd 2.2.3, toolkit 1.19.0, driver 580.159.03: known-good row "
                         "v20260512 k8s 1.35 (runbook)")
    assert r.details["unknown"]["ami_release"] == "not found"


# --- the verdicts ---------------------------------------------------------------------------------


def test_unknown_combination_names_closest_row_and_differences() -> None:
    r = compat.check(node(containerd="2.2.4", driver="580.95.05"), ONE_ROW)
    assert r.status == WARN
    assert r.message == (
        "untested combination: closest known-good row v20260512 k8s 1.35 differs in containerd 2.2.4 "
        "(known-good 2.2.3), driver 580.95.05 (known-good 580.159.03)"
    )
    assert r.details["differs"] == [["containerd", "2.2.4", "2.2.3"], ["driver", "580.95.05", "580.159.03"]]


@pytest.mark.parametrize("setting", [PASS, FAIL])
def test_what_an_unknown_combination_is_is_a_setting(setting: str) -> None:
    r = compat.check(node(driver="580.95.05"), ONE_ROW, setting)
    assert r.status == setting
    assert r.message == (f"untested combination (compatibility.unknown: {setting}): closest known-good row "
                         "v20260512 k8s 1.35 differs in driver 580.95.05 (known-good 580.159.03)")
    assert compat.check(node(), ONE_ROW, setting).status == PASS  # a listed combination passes whatever it says


def test_kubernetes_matched_by_minor_version() -> None:
    assert compat.check(node(kubernetes="1.35.9"), ONE_ROW).status == PASS
    r = compat.check(node(kubernetes="1.36.0"), ONE_ROW)
    assert r.status == WARN and "k8s 1.36 (known-good 1.35)" in r.message


def test_undetected_component_is_a_warning_not_a_guess() -> None:
    r = compat.check(node(toolkit=None), ONE_ROW)
    assert r.status == WARN
    assert r.message == "toolkit unknown (toolkit not found here); the rest matches known-good v20260512 k8s 1.35"


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
    assert r.status == PASS and "known-good row v20260601 k8s 1.35 (test)" in r.message
    r = compat.check(node(containerd="2.2.4"), matrix)  # one difference from each of the newer two
    assert r.status == WARN and "closest known-good row v20260601 k8s 1.35 differs in driver" in r.message
    r = compat.check(node(kubernetes="1.34.3", containerd="2.1.4", toolkit="1.18.2", driver="1"), matrix)
    assert "row v20260401 k8s 1.34 differs in driver 1 " in r.message


def test_empty_matrix() -> None:
    r = compat.check(node(), Matrix((), "test"))
    assert r.status == WARN and "no rows" in r.message


# --- the operator's rows --------------------------------------------------------------------------

CUSTOM = {"ami_release": "custom-2026-07", "kubernetes": "1.35", "containerd": "2.2.9", "toolkit": "1.19.1",
          "driver": "590.48.01", "source": "platform team: CUDA smoke test on the custom AMI"}


def drop_in(root: Path, name: str, rows: List[Dict[str, Any]]) -> Path:
    return write(root, f"{compat.DROP_IN_DIR}/{name}", json.dumps({"schema": 1, "rows": rows}))


def test_a_drop_in_row_is_added_and_a_row_of_the_same_release_replaced(tmp_path: Path) -> None:
    drop_in(tmp_path, "10-custom.json", [CUSTOM])
    drop_in(tmp_path, "20-fix.json", [{**CUSTOM, "driver": "590.48.02"},
                                      {**CUSTOM, "ami_release": "v20260714", "kubernetes": "1.35", "driver": "1"}])
    write(tmp_path, f"{compat.DROP_IN_DIR}/notes.txt", "not a matrix")  # only *.json is read
    matrix = compat.with_drop_ins(PACKAGED, NodeRoot(str(tmp_path)))
    assert len(matrix.rows) == len(PACKAGED.rows) + 1
    assert matrix.source.endswith("compatibility.d/10-custom.json, " + str(tmp_path / "etc/gpu-node-agent/"
                                                                           "compatibility.d/20-fix.json"))
    custom = compat.check(node(containerd="2.2.9", toolkit="1.19.1", driver="590.48.02"), matrix)
    assert custom.status == PASS and custom.message.endswith("known-good row custom-2026-07 k8s 1.35 (platform team)")
    replaced = [r for r in matrix.rows if r.label() == "v20260714 k8s 1.35"]
    assert [r.driver for r in replaced] == ["1"]


@pytest.mark.parametrize(("rows", "problem"), [
    ([{**CUSTOM, "driver": ""}], "rows[0].driver: expected a non-empty string"),
    ([CUSTOM, {k: v for k, v in CUSTOM.items() if k != "source"}], "rows[1].source: expected a non-empty string"),
    ([{**CUSTOM, "kubernetes": "1.35.2"}], "rows[0].kubernetes: expected a minor version such as 1.35"),
    ([{**CUSTOM, "nodeadm": "new"}], "rows[0].nodeadm: expected one of pre-#2705, #2705"),
    ([{**CUSTOM, "colour": "blue"}], "rows[0]: unknown key 'colour'"),
])
def test_a_bad_drop_in_row_is_one_line_naming_file_and_row(tmp_path: Path, rows: List[Dict[str, Any]],
                                                           problem: str) -> None:
    path = drop_in(tmp_path, "10-custom.json", rows)
    with pytest.raises(ConfigError) as caught:
        compat.with_drop_ins(PACKAGED, NodeRoot(str(tmp_path)))
    assert str(caught.value) == f"{path}: {problem}"
    assert caught.value.exit_code == 64


def test_a_drop_in_that_is_not_json(tmp_path: Path) -> None:
    path = write(tmp_path, f"{compat.DROP_IN_DIR}/10-custom.json", '{"schema": 1, "rows": [')
    with pytest.raises(ConfigError, match=re.escape(f"{path}: not a JSON compatibility matrix: ")):
        compat.with_drop_ins(PACKAGED, NodeRoot(str(tmp_path)))


def test_config_validate_and_check_refuse_a_bad_drop_in(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = drop_in(tmp_path, "10-custom.json", [{**CUSTOM, "toolkit": 119}])
    for argv in (["config", "validate"], ["check"]):
        assert main(["--root", str(tmp_path), *argv]) == 64
        assert capsys.readouterr().err == f"gpu-node-agent: {path}: rows[0].toolkit: expected a non-empty string\n"
    drop_in(tmp_path, "10-custom.json", [CUSTOM])
    assert main(["--root", str(tmp_path), "config", "validate"]) == 0
    assert capsys.readouterr().out == f"{path}: valid\n"


def test_a_drop_in_row_turns_the_node_from_warn_to_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole `check` on a simulated node whose containerd no packaged row lists."""
    root = healthy_gpu_node(tmp_path / "node")
    write(root, "/etc/eks/containerd-version.txt", "containerd github.com/containerd/containerd/v2 2.2.9 0a1b2c3\n")

    def compatibility() -> Dict[str, Any]:
        main(["--root", str(root), "check", "--format", "json"])
        checks = json.loads(capsys.readouterr().out)["checks"]
        return next(c for c in checks if c["name"] == "compatibility")

    before = compatibility()
    assert before["status"] == WARN
    assert before["message"].startswith("untested combination: closest known-good row v20260512 k8s 1.35 differs in "
                                        "containerd 2.2.9 (known-good 2.2.3)")
    drop_in(root, "50-custom.json", [{**CUSTOM, "containerd": "2.2.9", "toolkit": "1.19.0", "driver": "580.159.03"}])
    after = compatibility()
    assert after["status"] == PASS
    assert after["message"].endswith("known-good row custom-2026-07 k8s 1.35 (platform team)")


# --- the packaged file's own validation -------------------------------------------------------------


@pytest.mark.parametrize(("data", "problem"), [
    ({"rows": []}, "schema"),
    ({"schema": 1, "rows": [{"ami_release": "v1"}]}, "rows[0].kubernetes: expected a non-empty string"),
    ({"schema": 1, "rows": [{**CUSTOM, "kubernetes": "1.35.2"}]}, "expected a minor version"),
])
def test_matrix_validation(data: Dict[str, Any], problem: str, tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    with pytest.raises(MatrixError, match=re.escape(problem)):
        compat.load_matrix(path)


def test_unreadable_matrix(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text("{")
    with pytest.raises(MatrixError, match="cannot read the compatibility matrix"):
        compat.load_matrix(tmp_path / "m.json")
