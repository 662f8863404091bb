"""Node files and node-supplied paths that try to hang, flood or derail the agent: every node file
goes through the bounded reader (agent/base/fs.py), every YAML through the budgeted loader
(agent/base/yamlsafe.py), every path a daemon's own config supplies through the confined resolver
(agent/base/noderoot.py), and what cannot be read fails its own check only."""

import json
import os
import time
from pathlib import Path
from typing import Tuple

import pytest

from agent import cli
from agent.base.fs import NodeRoot
from agent.containerd import cri
from agent.daemons import kubelet
from agent.daemons.serving import UNKNOWN, Unprobed
from agent.gpu import fabric, kmsg
from tests.support.gpu_node import healthy_gpu_node, write

BOMB = "\n".join([
    "a: &a [x, x, x, x, x, x, x, x, x, x]",
    "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]",
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]",
    "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]",
    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]",
    "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]",
    "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]",
    "healthzPort: *g",
]) + "\n"


@pytest.fixture(autouse=True)
def no_system_bus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")


def kubelet_node(tmp_path: Path, args: str, config: str = '{"healthzPort": 10248}') -> Path:
    node = tmp_path / "node"
    write(node, "/etc/eks/kubelet/environment", f'NODEADM_KUBELET_ARGS="{args}"\n')
    write(node, "/etc/kubernetes/kubelet/config.json", config)
    return node


# --- D6: kubelet's config through the budgeted YAML loader ------------------------------------------


def test_a_kubelet_config_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    node = kubelet_node(tmp_path, "--config=/etc/kubernetes/kubelet/config.json", BOMB)
    started = time.monotonic()
    found = kubelet.probe(NodeRoot(str(node)))
    assert time.monotonic() - started < 2
    assert isinstance(found, Unprobed)
    assert "config.json: too many YAML nodes" in found.reason, found.reason


# --- D7: node-supplied paths, each failing its own check --------------------------------------------


@pytest.mark.parametrize("flag, value, expected", [
    ("--config-dir", "conf.d", "--config-dir: 'conf.d' is not an absolute path; not used"),
    ("--config-dir", "/../../../etc", "climbs above --root"),
    ("--config", "kubelet.json", "--config: 'kubelet.json' is not an absolute path; not used"),
])
def test_a_bad_kubelet_flag_path_fails_the_healthz_lookup_only(tmp_path: Path, flag: str, value: str,
                                                               expected: str) -> None:
    node = kubelet_node(tmp_path, f"--config=/etc/kubernetes/kubelet/config.json {flag}={value}"
                        if flag == "--config-dir" else f"{flag}={value}")
    found = kubelet.probe(NodeRoot(str(node)))
    assert isinstance(found, Unprobed) and expected in found.reason, found
    assert found.read(1).state == UNKNOWN


def grpc_node(tmp_path: Path, address: str) -> Path:
    from tests.support.gpu_node import SAMPLES

    node = healthy_gpu_node(tmp_path / "node")
    text = (SAMPLES / "containerd-v3-nodeadm-nvidia.toml").read_text()
    assert 'address = "/run/containerd/containerd.sock"' in text
    write(node, "/etc/containerd/config.toml",
          text.replace('address = "/run/containerd/containerd.sock"', f'address = "{address}"'))
    return node


@pytest.mark.parametrize("address, expected", [
    ("run/containerd/containerd.sock", "is not an absolute path"),
    ("/../../../run/containerd.sock", "climbs above --root"),
])
def test_a_bad_grpc_address_is_one_line_in_the_probe(tmp_path: Path, address: str, expected: str) -> None:
    from agent.config.settings import ContainerdSettings
    from agent.containerd import files as containerd

    node = grpc_node(tmp_path, address)
    config_set = containerd.load(NodeRoot(str(node)), ContainerdSettings())
    found = cri.probe(NodeRoot(str(node)), config_set)
    assert isinstance(found, Unprobed)
    assert "[grpc] address in /etc/containerd/config.toml" in found.reason and expected in found.reason, found
    assert found.what == "containerd's CRI plugins"


@pytest.mark.parametrize("address", ["run/containerd/containerd.sock", "/../../../run/containerd.sock"])
@pytest.mark.parametrize("command", ["check", "plan"])
def test_a_bad_grpc_address_never_aborts_a_command(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   address: str, command: str) -> None:
    node = grpc_node(tmp_path, address)
    code = cli.main([command, "--root", str(node), "--format", "json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert code in (0, 1, 2), err
    json.loads(out)


# --- D8: reads that used to bypass the bounded reader -----------------------------------------------


def fabric_node(tmp_path: Path) -> Tuple[NodeRoot, Path]:
    node = tmp_path / "node"
    binary = node / "usr/bin/nv-fabricmanager"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\necho 'Fabric Manager version is : 550.90.07'\n")
    binary.chmod(0o755)
    cache = node / fabric.VERSION_CACHE.lstrip("/")
    cache.parent.mkdir(parents=True)
    return NodeRoot(str(node)), cache


def test_a_fabric_manager_version_cache_that_is_a_fifo_does_not_hang(tmp_path: Path) -> None:
    root, cache = fabric_node(tmp_path)
    os.mkfifo(cache)
    started = time.monotonic()
    assert fabric.fabricmanager_version(root)[0] == "550.90.07"
    assert time.monotonic() - started < 5


def test_a_fabric_manager_version_cache_linked_to_dev_zero_is_not_read(tmp_path: Path) -> None:
    root, cache = fabric_node(tmp_path)
    cache.symlink_to("/dev/zero")
    assert fabric.fabricmanager_version(root)[0] == "550.90.07"


def test_an_rdma_vendor_file_that_is_a_fifo_does_not_hang(tmp_path: Path) -> None:
    from agent.efa import facts as efa_facts
    from tests.support.efa_helpers import add_rdma_device

    node = tmp_path / "node"
    add_rdma_device(node, "rdmap0s6", "0x1d0f", "0xefa1")
    bad = node / "sys/class/infiniband/mlx5_0/device"
    bad.mkdir(parents=True)
    os.mkfifo(bad / "vendor")
    (bad / "device").write_text("0x1017\n")
    problems: list = []
    started = time.monotonic()
    found = efa_facts._efa_devices(NodeRoot(str(node)), problems)
    assert time.monotonic() - started < 5
    assert found == ("rdmap0s6",)
    assert any("is a FIFO" in p for p in problems), problems


def test_a_kmsg_record_with_a_5000_digit_number_is_unreadable_not_a_traceback(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    log.write_bytes(b"3," + b"9" * 5000 + b",100,-;NVRM: Xid (PCI:0000:00:1e): 79, GPU fallen off\n"
                    b"3,12,200,-;NVRM: Xid (PCI:0000:00:1e): 48, DBE\n")
    read = kmsg.read(log, b"NVRM: Xid")
    assert read.unreadable == 1 and [r.seq for r in read.records] == [12]


def test_16_mib_of_kmsg_without_a_newline_is_read_in_linear_time(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    log.write_bytes(b"x" * (16 << 20) + b"\n3,12,200,-;NVRM: Xid (PCI:0000:00:1e): 48, DBE\n")
    started = time.monotonic()
    read = kmsg.read(log, b"NVRM: Xid", max_bytes=32 << 20)
    assert time.monotonic() - started < 3
    assert [r.seq for r in read.records] == [12] and read.unreadable == 1
