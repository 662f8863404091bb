"""End to end through the CLI, as an attacker or an unlucky operator would try it: odd tokens in
every credential path (grepped out of every output), a --root that symlinks point out of, a
symlinked lock, a read-only /etc/containerd, outputs aimed at managed files, unbounded input."""

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from agent import cli
from tests.support.gpu_node import NODE_NAME, SAMPLES, healthy_gpu_node, write
from tests.support.kube_helpers import write_kubeconfig, write_node_file
from tests.support.kube_server import ApiServer

REPO = Path(__file__).resolve().parent.parent.parent
DRIFTED = (SAMPLES / "containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml").read_text()
SECRET = "k8s-aws-v1.SECRETaaaa"
METRICS = "/var/lib/node_exporter/textfile_collector/gpu_node_agent.prom"
TOKENS = {
    "trailing-newline": SECRET + "\n",  # dropped, as kubectl does: publishing works
    "carriage-return": SECRET + "\r\nSECRETbbbb",
    "nul": SECRET + "\x00SECRETbbbb",
    "huge": SECRET + "SECRETbbbb" * 5_000,
}


@pytest.fixture(autouse=True)
def no_system_bus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return healthy_gpu_node(tmp_path / "node")


@pytest.fixture
def api(api: ApiServer) -> ApiServer:
    """The shared API server (tests/conftest.py), knowing the node's token."""
    api.add_token(SECRET, f"system:node:{NODE_NAME}")
    return api


def cli_run(capsys: pytest.CaptureFixture, *args: str) -> Tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


# --- 1. no secret in any output -----------------------------------------------------------------------


def credential(root: Path, path: str, token: str) -> Dict[str, Any]:
    if path == "kubeconfig":
        return {"token": token}
    if path == "tokenFile":
        write_node_file(root, "/var/lib/kubelet/token", token.encode())
        return {"tokenFile": "token"}
    status = json.dumps({"kind": "ExecCredential", "apiVersion": "client.authentication.k8s.io/v1beta1",
                         "status": {"token": token}})
    write(root, "/usr/local/bin/get-token", f"#!{sys.executable}\nprint({status!r})\n", 0o755)
    return {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "/usr/local/bin/get-token"}}


@pytest.mark.parametrize("kind", sorted(TOKENS))
@pytest.mark.parametrize("path", ["kubeconfig", "tokenFile", "exec"])
def test_no_token_in_any_output_log_status_or_metrics(
    root: Path, api: ApiServer, capsys: pytest.CaptureFixture, path: str, kind: str
) -> None:
    write_kubeconfig(root, api, credential(root, path, TOKENS[kind]))
    write(root, "/etc/gpu-node-agent/config.yaml",
          f"restart:\n  policy: never\nreport:\n  timeout_seconds: 5\n  metrics_file: {METRICS}\n")
    seen: List[str] = []
    for args in (["--log-format", "json", "-vvv", "check", "--report"],
                 ["--log-format", "console", "-vvv", "check", "--report", "--format", "json"],
                 ["--log-format", "json", "-vvv", "run", "--lock-wait", "1"]):
        code, out, err = cli_run(capsys, "--root", str(root), *args)
        seen += [out, err]
        status = (root / "run/gpu-node-agent/status.json").read_text()
        seen += [status, (root / METRICS.lstrip("/")).read_text()]
        published = json.loads(status)["publish"]
        if kind == "trailing-newline":
            assert published["ok"] is True, published
        else:
            assert published["ok"] is False and "the value is not shown" in published["error"], published
            assert code == 1
    for text in seen:
        assert "SECRET" not in text, text[:2000]


# --- 3. --root cannot be escaped --------------------------------------------------------------------


def test_a_symlinked_etc_containerd_never_reaches_the_build_hosts_files(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    host = tmp_path / "build-host-containerd"
    host.mkdir()
    (host / "config.toml").write_text(DRIFTED)
    image_copy = root / str(host).lstrip("/")
    image_copy.mkdir(parents=True)
    (image_copy / "config.toml").write_text(DRIFTED)
    real = root / "etc/containerd"
    for p in real.iterdir():
        p.unlink()
    real.rmdir()
    real.symlink_to(host)  # absolute: inside the image it means ROOT/<host>
    write(root, "/etc/gpu-node-agent/config.yaml", "restart:\n  policy: never\nreport:\n  publish: false\n")
    cli_run(capsys, "--root", str(root), "run", "--lock-wait", "1")
    assert (host / "config.toml").read_text() == DRIFTED  # the build host's file: untouched
    assert "SystemdCgroup = true" in (image_copy / "config.toml").read_text()  # the image's: repaired


def test_a_config_path_climbing_out_of_the_root_is_refused(root: Path) -> None:
    write(root, "/etc/gpu-node-agent/config.yaml", "containerd:\n  config_path: /../../../../tmp/x/config.toml\n")
    for command in (["config", "validate"], ["run"], ["check"]):
        proc = agent("--root", str(root), *command)
        assert proc.returncode == 64, proc.stderr
        assert proc.stderr == (f"gpu-node-agent: {root}/etc/gpu-node-agent/config.yaml:2: containerd.config_path: "
                               "must not contain '..' (node paths resolve under --root), got "
                               "'/../../../../tmp/x/config.toml'\n")


# --- 2. the lock ----------------------------------------------------------------------------------


def test_a_symlinked_lock_is_refused_and_its_target_untouched(root: Path, tmp_path: Path) -> None:
    victim = tmp_path / "precious"
    victim.write_text("keep me\n")
    lock = root / "run/gpu-node-agent/lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.symlink_to(victim)
    proc = agent("--root", str(root), "run", "--lock-wait", "0")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == f"gpu-node-agent: {lock}: the run lock is a symlink; refusing to open it"
    assert victim.read_text() == "keep me\n"


# --- issue 9 item 5: faults in our own writes ----------------------------------------------------------


def test_run_on_a_read_only_etc_containerd_is_one_line(root: Path, tmp_path: Path, need_root: None) -> None:
    write(root, "/etc/containerd/config.toml", DRIFTED)
    write(root, "/etc/gpu-node-agent/config.yaml", "restart:\n  policy: never\nreport:\n  publish: false\n")
    d = root / "etc/containerd"
    script = (f"mount --bind {d} {d}; mount -o remount,bind,ro {d}; "
              f"DBUS_SYSTEM_BUS_ADDRESS=unix:path={tmp_path}/no-bus {sys.executable} -m agent --root {root} run")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"{d}/config.toml: cannot write: Read-only file system" in proc.stdout
    assert (d / "config.toml").read_text() == DRIFTED


# --- 8. outputs never land on managed files -------------------------------------------------------------


@pytest.mark.parametrize("key", ["status_file", "metrics_file"])
def test_an_output_aimed_at_containerds_config_is_refused(root: Path, key: str) -> None:
    before = (root / "etc/containerd/config.toml").read_bytes()
    write(root, "/etc/gpu-node-agent/config.yaml", f"report:\n  {key}: /etc/containerd/config.toml\n")
    for command in (["config", "validate"], ["run"]):
        proc = agent("--root", str(root), *command)
        assert proc.returncode == 64 and f"config.yaml:2: report.{key}: must be inside" in proc.stderr
    assert (root / "etc/containerd/config.toml").read_bytes() == before


# --- 5. bounded input --------------------------------------------------------------------------------


def test_a_fifo_drop_in_does_not_hang_check(root: Path) -> None:
    text = (root / "etc/containerd/config.toml").read_text()
    write(root, "/etc/containerd/config.toml", 'imports = ["/etc/containerd/config.d/*.toml"]\n' + text)
    (root / "etc/containerd/config.d").mkdir()
    os.mkfifo(root / "etc/containerd/config.d/99-nvidia.toml")
    proc = agent("--root", str(root), "check", "--format", "json", timeout=30)
    doc = json.loads(proc.stdout)
    config_check = next(c for c in doc["checks"] if c["name"] == "containerd-config")
    assert config_check["status"] == "fail" and "is a FIFO, expected a regular file" in config_check["message"]


def test_a_drop_in_linked_to_dev_zero_is_refused(root: Path, need_root: None) -> None:
    text = (root / "etc/containerd/config.toml").read_text()
    write(root, "/etc/containerd/config.toml", 'imports = ["/etc/containerd/config.d/*.toml"]\n' + text)
    (root / "etc/containerd/config.d").mkdir()
    (root / "dev").mkdir(exist_ok=True)
    os.symlink("/dev/zero", root / "etc/containerd/config.d/99-nvidia.toml")
    os.mknod(root / "dev/zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5))  # the image's own /dev/zero
    proc = agent("--root", str(root), "check", "--format", "json", timeout=30)
    assert "MemoryError" not in proc.stderr and "Traceback" not in proc.stderr
    config_check = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "containerd-config")
    assert config_check["status"] == "fail" and "is a character device" in config_check["message"]


def test_a_huge_containerd_config_is_refused_quickly(root: Path) -> None:
    write(root, "/etc/containerd/config.toml", (root / "etc/containerd/config.toml").read_text()
          + "".join(f"# padding line {n}\n" for n in range(2_500_000)))
    start = time.monotonic()
    proc = agent("--root", str(root), "check", "--format", "json", timeout=60)
    assert time.monotonic() - start < 20
    config_check = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "containerd-config")
    assert "more than the 1 MiB limit for this file; not read" in config_check["message"]
    cache = root / "run/gpu-node-agent/toml-values.json"
    assert not cache.exists() or cache.stat().st_size < 1 << 20


def test_a_kubeconfig_alias_bomb_leaves_a_small_status_file(root: Path) -> None:
    lines = ['x0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"x{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]" for n in range(1, 8)]
    write(root, "/var/lib/kubelet/kubeconfig", "\n".join(lines) + "\n")
    start = time.monotonic()
    proc = agent("--root", str(root), "check", "--report", timeout=60)
    assert time.monotonic() - start < 20 and proc.returncode == 1
    status = root / "run/gpu-node-agent/status.json"
    assert status.stat().st_size < 64 << 10
    assert "too many YAML nodes" in json.loads(status.read_text())["publish"]["error"]


# --- 7. what killed runs left -------------------------------------------------------------------------


def test_run_removes_temp_files_and_extraction_directories_of_killed_runs(root: Path, tmp_path: Path) -> None:
    write(root, "/etc/gpu-node-agent/config.yaml", "restart:\n  policy: never\nreport:\n  publish: false\n")
    left = [root / "etc/containerd/.config.toml.k1ll3d.tmp", root / "run/gpu-node-agent/.status.json.k1ll3d.tmp",
            root / "var/cache/gpu-node-agent/.efa-installer-k1ll3d/aws-efa-installer/efa_installer.sh"]
    for p in left:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("partial")
        os.utime(p, (1, 1))
    proc = agent("--root", str(root), "run", "--lock-wait", "1", timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not any(p.exists() for p in left)
    assert not (root / "var/cache/gpu-node-agent/.efa-installer-k1ll3d").exists()
