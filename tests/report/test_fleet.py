"""``gpu-node-agent fleet`` against the loopback API server: paging, grouping, percentiles, stale reports.

The fleet is tests/support/fleet_helpers.py's: every Node's health, versions, time to GPU-ready and heartbeat
age are functions of its index, so each figure below is recounted here from those functions.
"""

import json
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from agent import cli
from agent.report import fleet
from tests.support import fleet_helpers as fh
from tests.support.kube_server import ApiServer

COUNT = 10_000


@pytest.fixture
def server() -> Iterator[ApiServer]:
    with ApiServer() as api:
        yield api


def run_fleet(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    capsys.readouterr()
    code = cli.main(["--log-format", "json", "fleet", *args])
    out, err = capsys.readouterr()
    return code, out, err


def nearest_rank(values: List[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(p / 100 * len(ordered)) - 1]


def list_queries(api: ApiServer) -> List[Dict[str, str]]:
    return [dict(r.query) for r in api.calls("GET") if r.path == "/api/v1/nodes"]


def test_ten_thousand_nodes_in_pages(server: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fh.add_fleet(server, COUNT)
    kubeconfig = fh.operator_kubeconfig(tmp_path, server)
    code, out, err = run_fleet(capsys, "--kubeconfig", str(kubeconfig), "--context", "gpu", "--format", "json")
    assert code == 0, err
    view = json.loads(out)
    assert view["nodes"] == COUNT and view["pages"] == COUNT // fleet.PAGE_SIZE

    queries = list_queries(server)  # resourceVersion=0 first; then continue, which forbids it
    assert len(queries) == COUNT // fleet.PAGE_SIZE
    assert queries[0] == {"limit": "500", "resourceVersion": "0"}
    assert all(set(q) == {"limit", "continue"} for q in queries[1:])
    assert all(r.status == 200 for r in server.calls())

    groups = {(g["health"], g["reason"]): g["nodes"] for g in view["health"]}
    want: Dict[Any, int] = {}
    for i in range(COUNT):
        health = fh.health_of(i)
        key = (health, fh.REASONS[health]) if health else ("unknown", "no condition")
        want[key] = want.get(key, 0) + 1
    assert groups == want
    assert [g["health"] for g in view["health"]][:1] == ["unhealthy"]  # the worst first

    reported = [i for i in range(COUNT) if fh.health_of(i)]
    assert view["agent_versions"] == {
        "1.0.0": sum(1 for i in reported if fh.agent_of(i) == "1.0.0"),
        "0.9.0": sum(1 for i in reported if fh.agent_of(i) == "0.9.0"),
        "unknown": COUNT - len(reported)}
    tested = sum(1 for i in reported if not fh.untested(i))
    assert view["stack_versions"] == {fh.STACK: tested, "unknown": COUNT - tested}

    by_type: Dict[str, List[float]] = {}
    by_row: Dict[str, List[float]] = {}
    for i in range(COUNT):
        seconds: Optional[float] = fh.ready_seconds(i)
        if seconds is not None:
            by_type.setdefault(fh.INSTANCE_TYPES[i % 2], []).append(seconds)
            by_row.setdefault("untested" if fh.untested(i) else fh.ROW, []).append(seconds)
    for got, expected in ((view["gpu_ready_seconds"]["by_instance_type"], by_type),
                          (view["gpu_ready_seconds"]["by_ami_row"], by_row)):
        assert set(got) == set(expected)
        for key, values in expected.items():
            assert got[key] == {"nodes": len(values), "p50": nearest_rank(values, 50),
                                "p90": nearest_rank(values, 90), "max": max(values)}, key

    stale = {s["node"] for s in view["stale"]}
    assert stale == {fh.name_of(i) for i in range(COUNT) if fh.stale(i)}
    assert all(abs(s["heartbeat_age_seconds"] - fh.STALE_AGE) < 120 for s in view["stale"])


def test_percentiles_are_nearest_rank() -> None:
    assert fleet.percentiles([50.0, 10.0, 40.0, 30.0, 20.0]) == {"nodes": 5, "p50": 30.0, "p90": 50.0, "max": 50.0}
    assert fleet.percentiles([7.0]) == {"nodes": 1, "p50": 7.0, "p90": 7.0, "max": 7.0}
    assert fleet.percentiles([]) == {"nodes": 0, "p50": None, "p90": None, "max": None}


def test_an_api_server_that_does_not_page_resource_version_0(server: ApiServer, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    server.rv0_pages = False  # a watch cache that answers the whole list
    fh.add_fleet(server, 1200)
    code, out, _ = run_fleet(capsys, "--kubeconfig", str(fh.operator_kubeconfig(tmp_path, server)),
                             "--context", "gpu", "--format", "json")
    assert code == 0 and json.loads(out)["nodes"] == 1200
    assert len(list_queries(server)) == 1


def test_table_and_the_kubectl_plugin(server: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fh.add_fleet(server, 60)
    kubeconfig = fh.operator_kubeconfig(tmp_path, server)
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{kubeconfig}")  # kubectl's: the first that exists
    capsys.readouterr()
    assert cli.kubectl_plugin(["--context", "gpu"]) == 0  # `kubectl gpu-node-agent`: fleet by default
    out = capsys.readouterr().out
    assert out.startswith("nodes: 60 (1 pages)\n")
    assert "unhealthy  CheckFailed" in out and "known-good" not in out
    assert "time to GPU-ready by instance type" in out and "p5.48xlarge" in out
    assert f"stale reports: {sum(1 for i in range(60) if fh.stale(i))}" in out


def test_the_kubeconfig_is_the_operators(server: ApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         aws: Any) -> None:
    """An exec plugin (aws eks get-token, as on a workstation) and the current context; --root refused."""
    import yaml

    from tests.support.kube_helpers import accept_fake_aws_tokens

    fh.add_fleet(server, 3)
    accept_fake_aws_tokens(server, 2, user="admin")
    path = fh.operator_kubeconfig(tmp_path, server)
    doc = yaml.safe_load(path.read_text())
    doc["current-context"] = "gpu"
    doc["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "aws",
                                        "args": ["eks", "get-token", "--cluster-name", "gpu"]}}
    path.write_text(yaml.safe_dump(doc))
    code, out, err = run_fleet(capsys, "--kubeconfig", str(path), "--format", "json")
    assert code == 0, err
    assert json.loads(out)["nodes"] == 3
    assert all(r.authorization == "Bearer k8s-aws-v1.fake-1" for r in server.calls())

    code, _, err = run_fleet(capsys, "--root", str(tmp_path), "--kubeconfig", str(path))
    assert code == 64 and "--root does not apply" in err
    code, _, err = run_fleet(capsys, "--kubeconfig", str(tmp_path / "nope"))
    assert code == 1 and "nope" in err
