"""Restarts and checks against Debian's **real containerd daemon** (1.6) under a real systemd.

containerd runs as a ``Type=notify`` service of the test systemd with a private root, state and
socket (the socket where ``--root`` resolution expects it: ``NODE/run/containerd/containerd.sock``),
reading the simulated node's ``config.toml``; the agent asks it through the real ``ctr`` (hard-linked
to ``NODE/usr/bin/ctr``). The CRI plugin's verdicts below are containerd's own:

* ``registry.mirrors`` next to ``registry.config_path``: the daemon runs, the CRI plugin is in error;
* the deprecated CRI-level ``systemd_cgroup = true`` is valid while the default runtime is
  ``io.containerd.runtime.v1.linux``, and rejected once the default is a ``runc.v2`` runtime, which is
  what the agent's own edit (default runtime ``nvidia``) does: the rollback case, for real.

kubelet is the stand-in of ``tests/systemd_harness.py`` (no kubelet package here), serving healthz.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

import pytest

from tests.conftest import sample, which
from tests.systemd_harness import REAL_CONTAINERD_FILES, BootedSystemd, JobRecord, real_containerd_unit
from tests.systemd_node import CONTAINERD, KUBELET, SystemdNode

pytestmark = pytest.mark.root

V2 = sample("containerd-v2-nodeadm-nvidia.toml")
CONVERGED = V2.replace("enable_cdi = false", "enable_cdi = true")
DRIFTED = V2.replace("SystemdCgroup = true\n", "")
MIRRORS = '\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\nendpoint = ["https://mirror.example"]\n'
# A runc (v1 shim) default with the deprecated CRI-level systemd_cgroup, valid for containerd 1.6;
# the agent adds the nvidia runtime (runc.v2) and makes it the default, which the CRI plugin rejects.
LEGACY_RUNC = V2.replace('default_runtime_name = "nvidia"', 'default_runtime_name = "runc"').replace(
    'enable_cdi = false\n', 'enable_cdi = false\nsystemd_cgroup = true\n'
).split('[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]')[0] + (
    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n'
    'runtime_type = "io.containerd.runtime.v1.linux"\n\n'
    '[plugins."io.containerd.grpc.v1.cri".cni]\nbin_dir = "/opt/cni/bin"\nconf_dir = "/etc/cni/net.d"\n'
)
CRI_REJECTS_SYSTEMD_CGROUP = "`systemd_cgroup` only works for runtime io.containerd.runtime.v1.linux"
CRI_REJECTS_MIRRORS = "`mirrors` cannot be set when `config_path` is provided"


class RealContainerdNode(SystemdNode):
    """A simulated node root whose containerd is the real daemon, under a real systemd."""

    def __init__(self, base: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                 boot_systemd: Callable[..., BootedSystemd]) -> None:
        # base short: the socket path must fit a sockaddr_un
        super().__init__(base, base / "n", base / "d", monkeypatch, capsys, boot_systemd)

    @property
    def config(self) -> Path:
        return self.containerd_config

    @property
    def log(self) -> str:
        path = self.base / "containerd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def write_node(self, containerd_config: str) -> "RealContainerdNode":
        self.write_node_files(containerd_config)
        version = subprocess.run([which("containerd"), "--version"], capture_output=True, text=True,
                                 check=True).stdout
        (self.root / "etc/eks/containerd-version.txt").write_text(version)  # the daemon that runs: 1.6
        ctr = self.root / "usr/bin/ctr"
        try:
            os.link(which("ctr"), ctr)
        except OSError:
            shutil.copy2(which("ctr"), ctr)
        self.agent_config()
        return self

    def agent_config(self, extra: str = "") -> None:
        self.config_file.write_text(f"restart:\n  timeout_seconds: 20\n{extra}report:\n  publish: false\n")

    def containerd_unit(self, start_limit_burst: int = 5) -> str:
        return real_containerd_unit(self.config, self.root / "run/containerd/containerd.sock",
                                    self.base / "containerd.log", start_limit_burst=start_limit_burst)

    def boot(self, *, start_limit_burst: int = 5) -> BootedSystemd:
        units = {CONTAINERD: self.containerd_unit(start_limit_burst),
                 KUBELET: self.daemons.kubelet_unit(self.healthz_port)}
        return self.start(units, REAL_CONTAINERD_FILES, containerd_timeout=30)

    def ctr(self, *args: str) -> str:
        sock = self.root / "run/containerd/containerd.sock"
        return subprocess.run([which("ctr"), "--address", str(sock), *args], capture_output=True, text=True,
                              timeout=30, check=False).stdout

    def cri_status(self) -> str:
        row = next(ln for ln in self.ctr("plugins", "ls").splitlines() if " cri " in f" {ln} ")
        return row.split()[-1]

    def agent(self, *args: str) -> Tuple[int, str]:
        """The real CLI, in process: (exit code, stdout + stderr)."""
        code, out, err = self.cli(*args)
        return code, out + err

    def run(self) -> Tuple[int, str, List[JobRecord]]:
        return self.run_recording()

    def statuses(self, out: str) -> Dict[str, str]:
        """check's table: name -> status."""
        rows = [ln.split() for ln in out.splitlines() if ln[:1].islower() and len(ln.split()) > 1]
        return {r[0]: r[1] for r in rows if r[1] in ("pass", "warn", "fail", "skip")}


@pytest.fixture
def real_node(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
              boot_systemd: Callable[..., BootedSystemd]) -> Iterator[RealContainerdNode]:
    which("containerd")
    base = Path(tempfile.mkdtemp(prefix="gna-", dir="/tmp"))
    try:
        yield RealContainerdNode(base, monkeypatch, capsys, boot_systemd)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def only_compatibility_warns(statuses: Dict[str, str]) -> bool:
    # containerd 1.6 is not in the known-good matrix (2.2.3): the compatibility check warns, and only it.
    return {k: v for k, v in statuses.items() if v not in ("pass", "skip")} == {"compatibility": "warn"}


def test_drift_is_fixed_restart_waits_for_cri_ok_and_check_passes(real_node: RealContainerdNode) -> None:
    real_node.write_node(DRIFTED).boot()
    first = real_node.props(CONTAINERD)["MainPID"]

    code, out, jobs = real_node.run()

    assert code == 2, out  # degraded: the compatibility warning only
    assert "SystemdCgroup = true" in real_node.config.read_text()
    assert [(j.unit, j.result) for j in jobs] == [(CONTAINERD, "done"), (KUBELET, "done")]
    assert real_node.props(CONTAINERD)["MainPID"] != first
    assert real_node.cri_status() == "ok"
    assert "restarted containerd.service: this run changes its configuration" in out
    code, out = real_node.agent("check")
    statuses = real_node.statuses(out)
    assert only_compatibility_warns(statuses), out
    full = check_messages(real_node)  # the table cuts messages to 120 columns; the JSON has them whole
    assert "CRI plugin io.containerd.grpc.v1 cri: ok" in full["containerd-running"]
    assert "kubelet healthz http://127.0.0.1:" in full["kubelet-running"]


def check_messages(node: RealContainerdNode) -> Dict[str, str]:
    """Each check's whole message, from ``check --format json`` (one line, before the log lines)."""
    _, out = node.agent("check", "--format", "json")
    return {c["name"]: c["message"] for c in json.loads(out.splitlines()[0])["checks"]}


def test_cri_plugin_in_error_while_the_unit_is_active_fails_the_check(real_node: RealContainerdNode) -> None:
    real_node.write_node(CONVERGED + MIRRORS).boot()
    assert real_node.props(CONTAINERD)["ActiveState"] == "active"
    assert real_node.cri_status() == "error"  # containerd's own verdict

    code, out = real_node.agent("check")

    assert code == 1, out
    assert real_node.statuses(out)["containerd-running"] == "fail"
    assert "CRI plugin io.containerd.grpc.v1 cri: error: invalid plugin config: " + CRI_REJECTS_MIRRORS in \
        check_messages(real_node)["containerd-running"]
    assert "health: unhealthy" in out
    code, out = real_node.agent("check", "--format", "json")

    running = next(c for c in json.loads(out.split("\n{\"component\"")[0])["checks"]
                   if c["name"] == "containerd-running")
    assert running["details"]["plugins"] == {"io.containerd.grpc.v1 cri": "error"}
    assert CRI_REJECTS_MIRRORS in running["details"]["reason"]


def test_restart_into_a_latent_cri_error_fails_the_run(real_node: RealContainerdNode) -> None:
    """A stale daemon (its config rewritten after it started) whose new file the CRI plugin rejects:
    the agent did not write that file, so nothing is rolled back; the run fails with containerd's words."""
    real_node.write_node(CONVERGED).boot()
    started = real_node.props(CONTAINERD)["ActiveEnterTimestamp"] / 1e6
    while time.time() <= started:
        time.sleep(0.01)
    real_node.config.write_text(CONVERGED + MIRRORS)  # a re-render the running daemon never loaded

    code, out, jobs = real_node.run()

    assert code == 1, out
    assert "Traceback" not in out
    assert real_node.config.read_text() == CONVERGED + MIRRORS
    assert [(j.unit, j.result) for j in jobs] == [(CONTAINERD, "done")]  # kubelet: not for a broken CRI
    assert real_node.props(CONTAINERD)["ActiveState"] == "active"
    assert "containerd.service: restarted and active, but CRI plugin io.containerd.grpc.v1 cri: error: " in out
    assert CRI_REJECTS_MIRRORS in out
    assert "rolled back" not in out


@pytest.mark.parametrize("burst", [5, 2], ids=["default-start-limit", "start-limit-reached-by-the-rollback"])
def test_agent_edit_the_cri_plugin_rejects_is_rolled_back(real_node: RealContainerdNode, burst: int) -> None:
    """With StartLimitBurst=2 the boot and the agent's restart use up the limit: the rollback restart
    goes through only because the agent calls ResetFailedUnit first."""
    real_node.write_node(LEGACY_RUNC).boot(start_limit_burst=burst)
    assert real_node.cri_status() == "ok"
    old = real_node.config.read_bytes()

    code, out, jobs = real_node.run()

    assert code == 1, out
    assert real_node.config.read_bytes() == old  # the previous bytes are back
    assert real_node.cri_status() == "ok"  # and containerd serves with them
    assert [(j.unit, j.result) for j in jobs] == [(CONTAINERD, "done"), (CONTAINERD, "done"), (KUBELET, "done")]
    assert f"CRI plugin io.containerd.grpc.v1 cri: error: invalid plugin config: {CRI_REJECTS_SYSTEMD_CGROUP}" in out
    assert "containerd.service did not come back serving with this run's configuration change; the previous " \
           "configuration is restored and containerd.service serves again" in out
    assert CRI_REJECTS_SYSTEMD_CGROUP in real_node.log  # containerd logged the same reason


def test_start_limit_hit_is_named(real_node: RealContainerdNode) -> None:
    real_node.write_node(CONVERGED).boot(start_limit_burst=1)
    real_node.agent_config("  policy: always\n")

    code, out, jobs = real_node.run()

    assert code == 1, out
    assert [(j.unit, j.result) for j in jobs] == [(CONTAINERD, "failed")]
    assert "systemd's start-rate limit was hit (too many starts in a short time), not a problem of the " \
           "configuration" in out
