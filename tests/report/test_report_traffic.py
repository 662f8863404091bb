"""What the API server is asked, counted on the loopback API server: plain ``check``, ``check --report``
and unchanged heartbeats. Every Node read carries ``resourceVersion=0`` (the API server's cache);
a heartbeat reads the Node at most once per ``report.heartbeat_minutes`` while ``gpu-allocatable``
passes, and afresh whenever it did not."""

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from agent import cli
from tests.support.gpu_node import NODE_NAME, healthy_gpu_node, write
from tests.support.kube_helpers import FakeAws, accept_fake_aws_tokens, write_kubeconfig
from tests.support.kube_server import ApiServer

READ_CACHE = "run/gpu-node-agent/node-read.json"


@pytest.fixture
def root(tmp_path: Path, api: ApiServer, aws: FakeAws) -> Path:
    accept_fake_aws_tokens(api, 19, f"system:node:{NODE_NAME}")
    api.set_allocatable(NODE_NAME, {"nvidia.com/gpu": "8"})
    root = healthy_gpu_node(tmp_path / "node", gpus=8, instance_type="p5.48xlarge")
    return write_kubeconfig(root, api)


class Counter:
    def __init__(self, api: ApiServer) -> None:
        self.api = api
        self.mark = len(api.requests)  # from now on

    def since_mark(self) -> Dict[str, Any]:
        reqs = self.api.requests[self.mark:]
        self.mark = len(self.api.requests)
        node = [r for r in reqs if "/events" not in r.path]
        return {"GET": [r.query for r in node if r.method == "GET"],
                "PATCH": [r.path.rsplit("/", 1)[-1] for r in node if r.method == "PATCH"]}


def check(root: Path, capsys: pytest.CaptureFixture, *extra: str) -> Dict[str, Dict[str, Any]]:
    cli.main(["--root", str(root), "-q", "check", "--format", "json", *extra])
    out = capsys.readouterr().out
    return {c["name"]: c for c in json.loads(out)["checks"]}


RV0 = {"resourceVersion": "0"}


def test_plain_check_then_report_then_three_unchanged_heartbeats(root: Path, api: ApiServer,
                                                                capsys: pytest.CaptureFixture) -> None:
    count = Counter(api)
    check(root, capsys)
    assert count.since_mark() == {"GET": [RV0], "PATCH": []}  # plain check: one cached read, nothing written
    checks = check(root, capsys, "--report")
    assert checks["gpu-allocatable"]["status"] == "pass" and checks["gpu-allocatable"]["details"]["reused"] is False
    # the boot report: one read (handed to the publish), the annotations and the condition written
    assert count.since_mark() == {"GET": [RV0], "PATCH": [NODE_NAME, "status"]}
    for _ in range(3):
        checks = check(root, capsys, "--report")
        assert checks["gpu-allocatable"]["status"] == "pass" and checks["gpu-allocatable"]["details"]["reused"]
    assert count.since_mark() == {"GET": [], "PATCH": []}  # three unchanged heartbeats: no request at all


def test_a_heartbeat_reads_again_once_the_last_read_is_heartbeat_minutes_old(root: Path, api: ApiServer,
                                                                            capsys: pytest.CaptureFixture) -> None:
    check(root, capsys, "--report")
    count = Counter(api)
    cache = root / READ_CACHE
    doc = json.loads(cache.read_text())
    doc["read_at"] -= 30 * 60  # report.heartbeat_minutes (30) ago
    cache.write_text(json.dumps(doc))
    check(root, capsys, "--report")
    assert count.since_mark()["GET"] == [RV0]
    check(root, capsys, "--report")
    assert count.since_mark()["GET"] == []


def test_a_heartbeat_reads_afresh_while_the_gpus_are_not_advertised(root: Path, api: ApiServer,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """A booting node: the device plugin has not advertised the GPUs. Every heartbeat asks, so the
    condition turns True at the first one that sees them; after that the read is reused."""
    api.set_allocatable(NODE_NAME, {"cpu": "192"})
    count = Counter(api)
    statuses: List[str] = []
    for _ in range(2):
        statuses.append(check(root, capsys, "--report")["gpu-allocatable"]["status"])
        assert count.since_mark()["GET"] == [RV0]
    api.set_allocatable(NODE_NAME, {"nvidia.com/gpu": "8"})
    statuses.append(check(root, capsys, "--report")["gpu-allocatable"]["status"])
    assert count.since_mark()["GET"] == [RV0]
    statuses.append(check(root, capsys, "--report")["gpu-allocatable"]["status"])
    assert count.since_mark()["GET"] == []
    assert statuses[:2] != ["pass", "pass"] and statuses[2:] == ["pass", "pass"]


def test_another_node_name_or_heartbeat_minutes_0_read_every_time(root: Path, api: ApiServer,
                                                                  capsys: pytest.CaptureFixture) -> None:
    write(root, "/etc/gpu-node-agent/config.yaml", "report:\n  heartbeat_minutes: 0\n")
    check(root, capsys, "--report")
    count = Counter(api)
    check(root, capsys, "--report")
    assert count.since_mark()["GET"] == [RV0]
    write(root, "/etc/gpu-node-agent/config.yaml", "report:\n  heartbeat_minutes: 30\n")
    check(root, capsys, "--report")
    doc = json.loads((root / READ_CACHE).read_text())
    doc["node"] = "another-node"
    (root / READ_CACHE).write_text(json.dumps(doc))
    count.since_mark()
    check(root, capsys, "--report")
    assert count.since_mark()["GET"] == [RV0]
