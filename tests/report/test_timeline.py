"""The boot timeline: from a real systemd boot of the packaged agent, and time to GPU-ready from a
Node whose allocatable appears late on the loopback API server, with its Event sent once.

The boot tests compare the agent's milestones with systemd's own properties read by the harness's
independent D-Bus reader (tests/support/systemd_harness.py); the API tests drive ``check --report`` as the
heartbeat does.
"""

import json
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from agent import cli
from agent.base.timestamps import parse_rfc3339, rfc3339
from tests.support.boot_helpers import (
    AGENT,
    CONTAINERD,
    DRIFTED,
    HEALTHY,
    KMOD,
    KUBELET,
    NODEADM_CONFIG,
    NODEADM_D,
    NODEADM_RUN,
    PREPARE,
    BootedNode,
)
from tests.support.gpu_node import NODE_NAME, healthy_gpu_node, write
from tests.support.kube_helpers import FakeAws, accept_fake_aws_tokens, write_kubeconfig
from tests.support.kube_server import ApiServer

# --- from a real systemd boot (root) ---------------------------------------------------------------

# (milestone, unit, systemd property): what the agent must have copied from systemd.
FROM_SYSTEMD = (
    ("nodeadm-config-started", NODEADM_CONFIG, "InactiveExitTimestamp"),
    ("nodeadm-config-finished", NODEADM_CONFIG, "ExecMainExitTimestamp"),
    ("prepare-started", PREPARE, "InactiveExitTimestamp"),
    ("prepare-finished", PREPARE, "ExecMainExitTimestamp"),
    ("nvidia-kmod-loaded", KMOD, "ActiveEnterTimestamp"),
    ("cloud-final-finished", "cloud-final.service", "ExecMainExitTimestamp"),
    ("nodeadm-run-started", NODEADM_RUN, "InactiveExitTimestamp"),
    ("nodeadm-run-finished", NODEADM_RUN, "ExecMainExitTimestamp"),
)
# In boot order: each one at or after the one before (the units are ordered so).
CHAIN = ("systemd", "nodeadm-config-started", "nodeadm-config-finished", "prepare-started", "prepare-finished",
         "nodeadm-run-started", "containerd-started", "kubelet-started", "nodeadm-run-finished")
NOT_ON_THIS_NODE = ("kernel", "fabricmanager-started", "efa-installed", "node-registered", "node-ready",
                    "gpus-advertised", "gpu-ready")  # a container, no NVSwitch, EFA or cluster


@pytest.fixture
def booted(booted_node: BootedNode) -> BootedNode:
    return booted_node  # conftest.py's booted_node


def timeline_of(node: BootedNode) -> Dict[str, Any]:
    return dict(json.loads(node.status_file.read_text())["timeline"])


def since_userspace(node: BootedNode, unit: str, prop: str) -> float:
    userspace = node.instance.manager_property("UserspaceTimestampMonotonic")
    return round((node.props(unit)[f"{prop}Monotonic"] - userspace) / 1e6, 3)


@pytest.mark.root
def test_timeline_of_a_converged_boot(booted: BootedNode) -> None:
    booted.boot(previous=HEALTHY, rendered=HEALTHY)
    booted.start_target()
    timeline = timeline_of(booted)
    milestones = timeline["milestones"]

    # systemd in a container has no kernel timestamp: seconds count from systemd's own start
    assert timeline["boot"]["anchor"] == "systemd"
    assert timeline["boot"]["monotonic"] == booted.instance.manager_property("UserspaceTimestampMonotonic") / 1e6
    assert milestones["systemd"]["seconds"] == 0.0
    for name, unit, prop in FROM_SYSTEMD:
        assert milestones[name]["seconds"] == since_userspace(booted, unit, prop), name
        assert milestones[name]["source"] == f"{unit} {prop}"
    first_start = {"containerd-started": CONTAINERD, "kubelet-started": KUBELET}
    for name, unit in first_start.items():  # never restarted: their one start
        assert milestones[name]["seconds"] == since_userspace(booted, unit, "ActiveEnterTimestamp")
    seconds = [milestones[n]["seconds"] for n in CHAIN]
    assert seconds == sorted(seconds) and seconds[-1] > 0
    for name in (*NOT_ON_THIS_NODE, "containerd-restarted", "kubelet-restarted"):
        assert name not in milestones, name
    assert timeline["restarts"] == {CONTAINERD: {"by_agent": 0, "by_systemd": 0},
                                    KUBELET: {"by_agent": 0, "by_systemd": 0}}
    assert 0 <= timeline["agent_share_seconds"] <= timeline["prepare_seconds"] == round(
        milestones["prepare-finished"]["seconds"] - milestones["prepare-started"]["seconds"], 3)
    assert "time_to_gpu_ready_seconds" not in timeline  # no cluster here: never reached, not zero
    utc = milestones["nodeadm-run-finished"]["utc"]
    assert utc == rfc3339(booted.props(NODEADM_RUN)["ExecMainExitTimestamp"] / 1e6, millis=True)


@pytest.mark.root
def test_a_rerender_keeps_the_first_starts_and_adds_the_restarts(booted: BootedNode) -> None:
    booted.user_data.write_text(f"#!/bin/sh\nmkdir -p {booted.root}{NODEADM_D}\n"
                                f"echo 'kind: NodeConfig' > {booted.root}{NODEADM_D}/20-user.yaml\n")
    booted.user_data.chmod(0o755)
    booted.boot(previous=HEALTHY, rendered=DRIFTED)
    booted.start_target()
    timeline = timeline_of(booted)
    m = timeline["milestones"]
    assert timeline["restarts"] == {CONTAINERD: {"by_agent": 1, "by_systemd": 0},
                                    KUBELET: {"by_agent": 1, "by_systemd": 0}}
    # the run pass read the first starts before it restarted anything
    assert m["nodeadm-run-started"]["seconds"] < m["containerd-started"]["seconds"] < m["kubelet-started"]["seconds"]
    assert m["kubelet-started"]["seconds"] <= m["nodeadm-run-finished"]["seconds"]
    restarted = (m["containerd-restarted"]["seconds"], m["kubelet-restarted"]["seconds"])
    assert m["nodeadm-run-finished"]["seconds"] < restarted[0] < restarted[1]
    for name, unit in (("containerd-restarted", CONTAINERD), ("kubelet-restarted", KUBELET)):
        assert m[name]["seconds"] == since_userspace(booted, unit, "ActiveEnterTimestamp")
    ran = booted.props(AGENT)
    userspace = booted.instance.manager_property("UserspaceTimestampMonotonic")
    assert m["containerd-restarted"]["seconds"] < (ran["ExecMainExitTimestampMonotonic"] - userspace) / 1e6


# --- time to GPU-ready from the Node (loopback API server) -------------------------------------------


@pytest.fixture
def api(api: ApiServer) -> ApiServer:
    # every heartbeat runs the exec plugin for a new token: enough for a slow machine's many heartbeats
    accept_fake_aws_tokens(api, 500, f"system:node:{NODE_NAME}")
    return api


@pytest.fixture
def root(tmp_path: Path, api: ApiServer, aws: FakeAws, units_serving: None, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")  # no systemd: kernel anchor
    node = healthy_gpu_node(tmp_path / "node")  # 4 GPUs (g5.12xlarge)
    write_kubeconfig(node, api)
    write(node, "/etc/gpu-node-agent/config.yaml",
          "report:\n  timeout_seconds: 10\n  metrics_file: /run/gpu-node-agent/agent.prom\n"
          "  gpu_ready_budget_seconds: null\n")  # seconds here count from this host's kernel start
    registered = time.time() - 2
    api.nodes[NODE_NAME]["metadata"]["creationTimestamp"] = rfc3339(registered)
    return node


def heartbeat(root: Path, capsys: pytest.CaptureFixture[str]) -> Dict[str, Any]:
    capsys.readouterr()
    code = cli.main(["--root", str(root), "--log-format", "json", "check", "--report"])
    out, err = capsys.readouterr()
    assert code in (0, 2), out + err
    return dict(json.loads((root / "run/gpu-node-agent/status.json").read_text()))


def gpu_ready_events(api: ApiServer) -> List[Dict[str, Any]]:
    return [e for e in api.events.values() if e["reason"].startswith("GPUReady")]


def test_time_to_gpu_ready_from_a_late_allocatable(root: Path, api: ApiServer, capsys: pytest.CaptureFixture[str]
                                                   ) -> None:
    before = heartbeat(root, capsys)
    assert before["health"] == "degraded"  # gpu-allocatable: not yet advertised
    first = before["timeline"]["milestones"]
    assert "gpus-advertised" not in first and "gpu-ready" not in first and "gpu_ready_seconds" not in before
    created = parse_rfc3339(api.nodes[NODE_NAME]["metadata"]["creationTimestamp"])  # the API server's clock
    assert abs(first["node-registered"]["seconds"] - (created - (time.time() - time.monotonic()))) < 0.1
    assert "node-ready" in first and not gpu_ready_events(api)

    delay = 0.5
    plugin = threading.Timer(delay, api.set_allocatable, (NODE_NAME, {"nvidia.com/gpu": "4"}))
    started = time.monotonic()
    plugin.start()  # the device plugin advertises the GPUs after a while
    reports = []
    while "gpu-ready" not in reports[-1:][0]["timeline"]["milestones"] if reports else True:
        reports.append(heartbeat(root, capsys))
        assert time.monotonic() - started < 30
    ready = reports[-1]
    m = ready["timeline"]["milestones"]
    assert ready["health"] == "healthy"
    assert m["gpus-advertised"] == m["gpu-ready"] == m["first-healthy-report"]  # all three seen in one report
    assert m["gpu-ready"]["seconds"] >= round(started + delay, 3) - 0.001  # not before the plugin advertised
    assert m["gpu-ready"]["seconds"] <= time.monotonic()
    assert ready["timeline"]["time_to_gpu_ready_seconds"] == m["gpu-ready"]["seconds"]  # kernel start: 0
    assert m["node-registered"] == first["node-registered"]  # kept as first recorded
    annotation = json.loads(api.nodes[NODE_NAME]["metadata"]["annotations"]["gpu-node-agent/report"])
    assert annotation["gpu_ready_seconds"] == m["gpu-ready"]["seconds"]
    prom = (root / "run/gpu-node-agent/agent.prom").read_text()
    assert f'gpu_node_agent_time_to_gpu_ready_seconds {m["gpu-ready"]["seconds"]:.3f}' in prom
    assert 'gpu_node_agent_boot_milestone_seconds{milestone="gpus-advertised"} ' in prom

    (event,) = gpu_ready_events(api)
    assert (event["reason"], event["type"], event["count"]) == ("GPUReady", "Normal", 1)
    assert f"{m['gpu-ready']['seconds']:.1f}s after kernel start" in event["message"]

    for _ in range(2):  # later heartbeats: the same timeline, no second Event
        later = heartbeat(root, capsys)
        assert later["timeline"]["milestones"]["gpu-ready"] == m["gpu-ready"]
    assert gpu_ready_events(api) == [event]
    assert later["timeline"]["announced"]["reason"] == "GPUReady"

    capsys.readouterr()
    assert cli.main(["--root", str(root), "status", "--format", "json"]) in (0, 2)
    assert json.loads(capsys.readouterr().out)["timeline"]["time_to_gpu_ready_seconds"] == m["gpu-ready"]["seconds"]
    cli.main(["--root", str(root), "status"])
    table = capsys.readouterr().out
    assert "boot timeline (seconds since kernel start" in table and "time to GPU-ready: " in table


def test_late_over_the_budget_and_sent_once_after_a_failed_publish(root: Path, api: ApiServer,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    write(root, "/etc/gpu-node-agent/config.yaml", "report:\n  timeout_seconds: 5\n  gpu_ready_budget_seconds: 1\n")
    api.set_allocatable(NODE_NAME, {"nvidia.com/gpu": "4"})
    api.fail_next("PATCH", f"/api/v1/nodes/{NODE_NAME}", 403)  # the report that reaches GPU-ready fails
    capsys.readouterr()
    assert cli.main(["--root", str(root), "--log-format", "json", "check", "--report"]) == 1
    status = json.loads((root / "run/gpu-node-agent/status.json").read_text())
    assert "gpu-ready" in status["timeline"]["milestones"] and "announced" not in status["timeline"]
    assert not gpu_ready_events(api)

    again = heartbeat(root, capsys)
    assert again["timeline"]["milestones"]["gpu-ready"] == status["timeline"]["milestones"]["gpu-ready"]
    heartbeat(root, capsys)
    (event,) = gpu_ready_events(api)  # this host has been up for more than a second: late
    assert (event["reason"], event["type"]) == ("GPUReadyLate", "Warning")
    assert "over the 1s budget" in event["message"]


def test_every_milestone_is_documented() -> None:
    import re

    from agent.report.timeline import MILESTONES

    text = (Path(__file__).resolve().parent.parent.parent / "docs" / "reporting.md").read_text()
    table = text.split("## The boot timeline", 1)[1].split("Derived:", 1)[0]
    named = set()
    for cell in re.findall(r"^\| ([^|]+) \|", table, re.MULTILINE):
        words = re.findall(r"`([a-z-]+)`", cell)
        for word in words:  # `nodeadm-config-started`, `-finished`: the suffix completes the first
            named.add(words[0].rsplit("-", 1)[0] + word if word.startswith("-") else word)
    assert named == set(MILESTONES)
