"""``gpu-allocatable``: the Node's status.allocatable (loopback HTTPS API server) against the GPUs seen.

The Node is read with the kubelet's kubeconfig and the fake ``aws eks get-token`` plugin, as in the
report tests; kubelet's start time comes from its unit state (built here: the grace period is about
time, and the D-Bus reading of units is tested against a real systemd elsewhere).
"""

import json
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from agent import cli
from agent.base.noderoot import NodeRoot
from agent.config.load import parse_config
from agent.config.settings import AgentConfig
from agent.gpu import allocatable, inventory
from agent.kube import node as kube_node
from agent.nvidia import driver
from agent.pipeline.health import FAIL, PASS, SKIP, WARN
from agent.systemd.state import UnitState, UnitStates
from tests.support.gpu_node import NODE_NAME, healthy_gpu_node, write
from tests.support.kube_helpers import FakeAws, accept_fake_aws_tokens, write_kubeconfig
from tests.support.kube_server import ApiServer

NOW = 1_800_000_000.0


@pytest.fixture
def api(api: ApiServer) -> ApiServer:
    """The shared API server (tests/conftest.py), knowing what the fake aws plugin issues."""
    accept_fake_aws_tokens(api, 19, f"system:node:{NODE_NAME}")
    return api


@pytest.fixture
def root(tmp_path: Path, api: ApiServer, aws: FakeAws) -> Path:
    root = healthy_gpu_node(tmp_path / "node", gpus=8, instance_type="p5.48xlarge")
    return write_kubeconfig(root, api)


def kubelet(started_ago: Optional[float]) -> UnitStates:
    stamp = int((NOW - started_ago) * 1e6) if started_ago is not None else 0
    state = UnitState("kubelet.service", "loaded", "active" if started_ago is not None else "inactive",
                      "running" if started_ago is not None else "dead", stamp, 4242 if started_ago is not None else 0)
    return UnitStates("unix:path=/run/dbus/system_bus_socket", (state,))


def evaluate(root: Path, config: AgentConfig = AgentConfig(), *, started_ago: Optional[float] = 30.0,
             efa_devices: int = 0) -> Any:
    node = NodeRoot(str(root))
    read = kube_node.read_node(node, config)
    seen = driver.gpus_seen(driver.discover(node))
    expected = inventory.discover_instance(node, config).expected
    return allocatable.check(read, config, gpus=seen, efa_devices=efa_devices, units=kubelet(started_ago),
                             kubelet_unit="kubelet.service", now=NOW, gpus_expected=expected)


def test_advertised_as_expected(root: Path, api: ApiServer) -> None:
    api.set_allocatable(NODE_NAME, {"cpu": "191450m", "nvidia.com/gpu": "8", "vpc.amazonaws.com/efa": "32"})
    r = evaluate(root, efa_devices=32)
    assert r.status == PASS
    assert r.message == "nvidia.com/gpu: 8 = 8 GPUs; vpc.amazonaws.com/efa: 32 = 32 EFA devices"
    assert [c.method for c in api.calls()] == ["GET"]  # one read, nothing written


def test_not_yet_advertised_within_the_grace_period(root: Path, api: ApiServer) -> None:
    api.set_allocatable(NODE_NAME, {"cpu": "191450m", "memory": "2097152Mi"})
    r = evaluate(root, started_ago=40)
    assert r.status == WARN and r.details["event_reason"] == "GPUNotYetAdvertised"
    assert r.message == "nvidia.com/gpu not yet advertised (expected 8: 8 GPUs) (kubelet started 40s ago, grace 300s)"


def test_not_advertised_after_the_grace_period(root: Path, api: ApiServer) -> None:
    api.set_allocatable(NODE_NAME, {"cpu": "191450m", "nvidia.com/gpu": "0"})
    r = evaluate(root, started_ago=900)
    assert r.status == FAIL and r.details["event_reason"] == "GPUNotAdvertised"
    assert r.message.startswith("nvidia.com/gpu not advertised (expected 8: 8 GPUs) (kubelet started 900s ago")


def test_fewer_than_seen(root: Path, api: ApiServer) -> None:
    api.set_allocatable(NODE_NAME, {"nvidia.com/gpu": "7"})
    r = evaluate(root, started_ago=900)
    assert r.status == FAIL and r.message.startswith("nvidia.com/gpu: 7 allocatable, expected 8 (8 GPUs)")


def test_kubelet_start_unknown_counts_as_past_the_grace_period(root: Path, api: ApiServer) -> None:
    r = evaluate(root, started_ago=None)
    assert r.status == FAIL and r.message.endswith("(kubelet's start time unknown)")


def test_time_slicing_without_the_factor_warns_and_with_it_passes(root: Path, api: ApiServer) -> None:
    api.set_allocatable(NODE_NAME, {"nvidia.com/gpu": "32"})
    r = evaluate(root)
    assert r.status == WARN and "(time-slicing or MIG? set gpu.resource_per_gpu)" in r.message
    r = evaluate(root, parse_config("gpu:\n  resource_per_gpu: 4\n", "c"))
    assert r.status == PASS and r.message == "nvidia.com/gpu: 32 = 8 GPUs x 4"


def check_on(root: Path, capsys: pytest.CaptureFixture) -> Any:
    cli.main(["--root", str(root), "check", "--format", "json"])
    return {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}


def test_a_gpu_fell_off_the_count_advertised_before_is_named_not_time_slicing(
        tmp_path: Path, api: ApiServer, aws: FakeAws, capsys: pytest.CaptureFixture) -> None:
    # p5.48xlarge has 8 GPUs; nvidia-smi shows 7; the device plugin still advertises the 8 it counted.
    root = write_kubeconfig(healthy_gpu_node(tmp_path / "node", gpus=7, instance_type="p5.48xlarge"), api)
    api.set_allocatable(NODE_NAME, {"nvidia.com/gpu": "8"})
    checks = check_on(root, capsys)
    assert checks["gpu-inventory"]["status"] == FAIL
    assert checks["gpu-inventory"]["message"].startswith("7 of 8 GPUs visible: 1 missing")
    assert checks["gpu-allocatable"]["status"] == WARN
    assert checks["gpu-allocatable"]["message"] == (
        "nvidia.com/gpu: 8 allocatable, more than 7 (7 GPUs): advertised before 1 GPU fell off "
        "(gpu-inventory: 7 of 8 visible)")
    assert "time-slicing" not in checks["gpu-allocatable"]["message"]


def test_more_than_seen_with_every_gpu_there_suggests_time_slicing(root: Path, api: ApiServer,
                                                                   capsys: pytest.CaptureFixture) -> None:
    api.set_allocatable(NODE_NAME, {"nvidia.com/gpu": "16"})
    checks = check_on(root, capsys)
    assert checks["gpu-inventory"]["status"] == PASS
    assert checks["gpu-allocatable"]["message"] == \
        "nvidia.com/gpu: 16 allocatable, more than 8 (8 GPUs) (time-slicing or MIG? set gpu.resource_per_gpu)"


def test_more_than_seen_on_an_unknown_instance_type_names_both_causes(root: Path, api: ApiServer) -> None:
    api.set_allocatable(NODE_NAME, {"nvidia.com/gpu": "16"})
    node = NodeRoot(str(root))
    read = kube_node.read_node(node, AgentConfig())
    r = allocatable.check(read, AgentConfig(), gpus=8, efa_devices=0, units=kubelet(30.0),
                          kubelet_unit="kubelet.service", now=NOW, gpus_expected=None)
    assert r.status == WARN
    assert r.message.endswith("(time-slicing or MIG: set gpu.resource_per_gpu; or GPUs that fell off since: "
                              "see gpu-inventory)")


def test_mig_resource_name(root: Path, api: ApiServer) -> None:
    api.set_allocatable(NODE_NAME, {"nvidia.com/mig-1g.10gb": "56"})
    r = evaluate(root, parse_config("gpu:\n  resource_name: nvidia.com/mig-1g.10gb\n  resource_per_gpu: 7\n", "c"))
    assert r.status == PASS


def test_efa_not_advertised(root: Path, api: ApiServer) -> None:
    api.set_allocatable(NODE_NAME, {"nvidia.com/gpu": "8"})
    r = evaluate(root, started_ago=900, efa_devices=32)
    assert r.status == FAIL and r.details["event_reason"] == "EFANotAdvertised"
    assert r.message.startswith("vpc.amazonaws.com/efa not advertised (expected 32: 32 EFA devices)")
    off = parse_config("gpu:\n  efa_resource_name: null\n", "c")
    assert evaluate(root, off, started_ago=900, efa_devices=32).status == PASS


def test_turned_off(root: Path, api: ApiServer) -> None:
    r = evaluate(root, parse_config("gpu:\n  allocatable: false\n", "c"))
    assert r.status == SKIP and r.message == "turned off (gpu.allocatable: false)"
    assert api.calls() == []


def test_no_kubeconfig_means_no_api_call(root: Path, api: ApiServer) -> None:
    (root / "var/lib/kubelet/kubeconfig").unlink()
    r = evaluate(root)
    assert r.status == SKIP and r.message.startswith("no kubeconfig at /var/lib/kubelet/kubeconfig")
    assert api.calls() == []


def test_a_kubeconfig_that_does_not_work_warns_with_why(root: Path, api: ApiServer, aws: FakeAws) -> None:
    aws.mode("fail")
    r = evaluate(root)
    assert r.status == WARN and r.details["event_reason"] == "NodeUnreadable"
    assert r.message.startswith("cannot read the Node's allocatable: exec plugin aws: exited with 255")


def test_node_not_registered(root: Path, api: ApiServer) -> None:
    del api.nodes[NODE_NAME]
    r = evaluate(root)
    assert r.status == WARN
    assert r.message == f"cannot read the Node's allocatable: node {NODE_NAME} is not registered (yet)"


def test_plain_check_reads_the_node_and_its_instance_type_label(root: Path, api: ApiServer,
                                                                capsys: pytest.CaptureFixture) -> None:
    (root / "run/gpu-node-agent/instance-type").unlink()
    write(root, "/etc/gpu-node-agent/config.yaml", "report:\n  timeout_seconds: 10\n")
    api.set_allocatable(NODE_NAME, {"nvidia.com/gpu": "8"})
    started = time.monotonic()
    cli.main(["--root", str(root), "check", "--format", "json"])
    assert time.monotonic() - started < 10
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert (checks["gpu-allocatable"]["status"], checks["gpu-allocatable"]["message"]) == \
        (PASS, "nvidia.com/gpu: 8 = 8 GPUs")
    # the Node's node.kubernetes.io/instance-type label (p5.48xlarge in the test server) named the type
    assert checks["gpu-inventory"]["details"]["instance_type_source"] == \
        "the Node's node.kubernetes.io/instance-type label"
    assert (root / "run/gpu-node-agent/instance-type").read_text() == "p5.48xlarge\n"
    assert [c.method for c in api.calls()] == ["GET"]


def test_plain_check_takes_the_node_name_from_the_hostname_not_imds_and_says_so(
        root: Path, api: ApiServer, imds: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import socket

    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
    write(root, "/etc/eks/kubelet/environment", "NODEADM_KUBELET_ARGS=--node-ip=10.0.0.12\n")
    cli.main(["--root", str(root), "check", "--format", "json"])
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    alloc = checks["gpu-allocatable"]
    host = socket.gethostname().strip().lower()
    assert alloc["details"]["node_source"] == "hostname" and alloc["details"]["node"] == host
    assert alloc["status"] == WARN and alloc["message"].endswith(
        "(node name from the hostname; set report.node_name if that is not the Node's)")
    assert imds.requests == []
