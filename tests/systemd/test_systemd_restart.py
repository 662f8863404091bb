"""containerd and kubelet restarts against a real systemd (booted in private namespaces, root only).

Each test builds a simulated node from tests/samples, boots systemd with stand-in containerd and
kubelet units that read that node's files, drives the real CLI (``run``/``plan``/``check`` with
``DBUS_SYSTEM_BUS_ADDRESS`` pointing at that systemd) and asserts on what systemd itself reports:
the jobs it ran (``JobRemoved`` results, in order), ``ActiveEnterTimestamp``, ``MainPID``, and the
daemons' own start log (which config each start loaded).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest

from tests.support.paths import REPO, sample
from tests.support.systemd_harness import BootedSystemd, JobRecord, digest
from tests.support.systemd_node import CONTAINERD, KUBELET, SystemdNode

pytestmark = pytest.mark.root

HEALTHY = "containerd-v3-nodeadm-nvidia.toml"
DRIFTED = "containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml"  # the agent adds SystemdCgroup = true


class GpuNode(SystemdNode):
    """A simulated node root plus a real systemd running its containerd and kubelet stand-ins."""

    def __init__(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        boot_systemd: Callable[..., BootedSystemd],
    ) -> None:
        super().__init__(tmp_path, tmp_path / "node", tmp_path / "daemons", monkeypatch, capsys, boot_systemd)
        self.tmp = tmp_path

    def write_node(self, containerd_sample: str = HEALTHY) -> "GpuNode":
        self.write_node_files(sample(containerd_sample))
        self.daemons.install_ctr(self.root)
        return self

    def agent_config(self, policy: str = "when-needed", timeout: float = 10) -> None:
        self.config_file.write_text(
            f"restart:\n  policy: {policy}\n  timeout_seconds: {timeout}\nreport:\n  publish: false\n"
        )

    def boot(
        self, *, kubelet: bool = True, restart_always: bool = True, start_timeout: str = "90s"
    ) -> BootedSystemd:
        units = {
            CONTAINERD: self.daemons.containerd_unit(
                self.containerd_config, restart_always=restart_always, start_timeout=start_timeout,
                socket=self.root / "run/containerd/containerd.sock",
            )
        }
        if kubelet:
            units[KUBELET] = self.daemons.kubelet_unit(self.healthz_port)
        return self.start(units)

    def agent(self, *args: str) -> Tuple[int, str, str]:
        """The real CLI, in process: (exit code, stdout, stderr)."""
        return self.cli(*args)

    def make_stale(self) -> None:
        """nodeadm before amazon-eks-ami#2705: config.toml rewritten after containerd started."""
        started = self.props(CONTAINERD)["ActiveEnterTimestamp"] / 1e6
        while time.time() <= started:
            time.sleep(0.01)
        text = self.containerd_config.read_text()
        self.containerd_config.write_text(text)  # same content, new mtime: what a re-render looks like
        assert self.containerd_config.stat().st_mtime > started


@pytest.fixture
def gpu_node(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    boot_systemd: Callable[..., BootedSystemd],
) -> GpuNode:
    node = GpuNode(tmp_path, monkeypatch, capsys, boot_systemd)
    node.agent_config()
    return node


def units_of(jobs: List[JobRecord]) -> List[Tuple[str, str]]:
    return [(j.unit, j.result) for j in jobs]


# --- 1. converged ---------------------------------------------------------------------------------


def test_converged_node_restarts_nothing(gpu_node: GpuNode) -> None:
    gpu_node.write_node(HEALTHY).boot()
    before = {u: gpu_node.props(u) for u in (CONTAINERD, KUBELET)}

    code, out, err = gpu_node.agent("plan")
    assert code == 0, out + err
    assert "nothing to do: the node is converged" in out
    code, out, jobs = gpu_node.run_recording()

    assert code == 0, out
    assert jobs == []
    for unit in (CONTAINERD, KUBELET):
        after = gpu_node.props(unit)
        assert after["ActiveEnterTimestamp"] == before[unit]["ActiveEnterTimestamp"]
        assert after["MainPID"] == before[unit]["MainPID"]
    assert [s[0] for s in gpu_node.daemons.wait_for_starts(2)] == ["containerd", "kubelet"]
    assert "containerd-running     pass" in out and "kubelet-running        pass" in out


# --- 2. stale daemon (pre-#2705 nodeadm) ----------------------------------------------------------


def messages(node: GpuNode) -> Dict[str, str]:
    """Each check's whole message (the table cuts them to 120 columns), from ``check --format json``."""
    _, out, _ = node.agent("check", "--format", "json")
    return {c["name"]: c["message"] for c in json.loads(out)["checks"]}


def test_stale_containerd_restarts_containerd_then_kubelet_once(gpu_node: GpuNode) -> None:
    gpu_node.write_node(HEALTHY).boot()
    before = {u: gpu_node.props(u) for u in (CONTAINERD, KUBELET)}
    gpu_node.make_stale()

    code, out, err = gpu_node.agent("check")
    assert code == 2, out + err  # degraded: the daemon runs an older configuration
    assert "containerd-running     warn" in out and "runs an older configuration" in messages(gpu_node)[
        "containerd-running"]
    code, out, _ = gpu_node.agent("plan")
    assert "restart containerd.service: containerd.service has run since" in out
    assert "/etc/containerd/config.toml changed at" in out
    assert "restart kubelet.service: after containerd.service" in out
    assert out.index("restart containerd.service") < out.index("restart kubelet.service")

    code, out, jobs = gpu_node.run_recording()

    assert code == 0, out
    assert units_of(jobs) == [(CONTAINERD, "done"), (KUBELET, "done")]
    assert jobs[0].at < jobs[1].at
    c, k = gpu_node.props(CONTAINERD), gpu_node.props(KUBELET)
    assert c["MainPID"] != before[CONTAINERD]["MainPID"] and k["MainPID"] != before[KUBELET]["MainPID"]
    assert before[CONTAINERD]["ActiveEnterTimestamp"] < c["ActiveEnterTimestamp"] < k["ActiveEnterTimestamp"]
    assert c["ActiveEnterTimestamp"] > gpu_node.containerd_config.stat().st_mtime * 1e6
    starts = gpu_node.daemons.wait_for_starts(4)
    assert [s[0] for s in starts] == ["containerd", "kubelet", "containerd", "kubelet"]
    assert starts[2][1] == c["MainPID"] and starts[3][1] == k["MainPID"]

    code, out, jobs = gpu_node.run_recording()
    assert (code, jobs) == (0, []), out


# --- 3. the agent's own edit ----------------------------------------------------------------------


def test_agent_edit_restarts_both_once_and_second_run_nothing(gpu_node: GpuNode) -> None:
    gpu_node.write_node(DRIFTED).boot()
    old_text = gpu_node.containerd_config.read_text()

    code, out, jobs = gpu_node.run_recording()

    assert code == 0, out
    new_text = gpu_node.containerd_config.read_text()
    assert "SystemdCgroup = true" in new_text and new_text != old_text
    assert units_of(jobs) == [(CONTAINERD, "done"), (KUBELET, "done")]
    starts = gpu_node.daemons.wait_for_starts(4)
    assert [(s[0], s[2]) for s in starts] == [
        ("containerd", digest(old_text)),
        ("kubelet", "-"),
        ("containerd", digest(new_text)),
        ("kubelet", "-"),
    ]
    assert starts[2][1] == gpu_node.props(CONTAINERD)["MainPID"]
    assert "restarted containerd.service: this run changes its configuration" in out

    code, out, jobs = gpu_node.run_recording()
    assert (code, jobs) == (0, []), out
    assert len(gpu_node.daemons.wait_for_starts(5, timeout=0.5)) == 4


# --- 4. containerd rejects the new configuration --------------------------------------------------


@pytest.mark.parametrize(
    "restart_always", [False, True], ids=["start-fails", "restart-always-keeps-retrying"]
)
def test_containerd_failing_with_new_config_is_rolled_back(gpu_node: GpuNode, restart_always: bool) -> None:
    # With or without containerd's own Restart=always the start job fails (systemd 252 ends it when
    # the service enters auto-restart); with it, systemd would also keep retrying the bad config.
    gpu_node.agent_config(timeout=3)
    gpu_node.write_node(DRIFTED).boot(restart_always=restart_always)
    old_text = gpu_node.containerd_config.read_text()
    first_pid = gpu_node.props(CONTAINERD)["MainPID"]
    (gpu_node.daemons.control("containerd") / "fail-if-contains").write_text("SystemdCgroup = true")

    code, out, jobs = gpu_node.run_recording()

    assert code == 1, out
    assert gpu_node.containerd_config.read_text() == old_text
    c = gpu_node.props(CONTAINERD)
    assert (c["ActiveState"], c["SubState"]) == ("active", "running")
    assert c["MainPID"] not in (0, first_pid)
    containerd_jobs = [j.result for j in jobs if j.unit == CONTAINERD]
    assert containerd_jobs[-1] == "done"
    assert containerd_jobs[0] == "failed"
    assert units_of(jobs)[-1] == (KUBELET, "done")  # containerd was restarted, so kubelet follows
    starts = gpu_node.daemons.wait_for_start("kubelet", gpu_node.props(KUBELET)["MainPID"])
    assert starts[-1][:2] == ("kubelet", gpu_node.props(KUBELET)["MainPID"])
    assert starts[-2][0] == "containerd" and starts[-2][2] == digest(old_text)
    assert any(s[0] == "containerd" and s[2] != digest(old_text) for s in starts)
    assert "rolled back" in out
    assert "did not come back serving with this run's configuration change" in out
    assert "containerd-config      fail" in out  # the drift is still there, and reported


# --- 5. a unit that never becomes ready -----------------------------------------------------------


def test_restart_that_never_becomes_ready_is_bounded_by_timeout(gpu_node: GpuNode) -> None:
    gpu_node.agent_config(policy="always", timeout=2)
    gpu_node.write_node(HEALTHY).boot(start_timeout="infinity")
    (gpu_node.daemons.control("containerd") / "never-ready").touch()

    started = time.monotonic()
    code, out, jobs = gpu_node.run_recording()
    elapsed = time.monotonic() - started

    assert code == 1, out
    assert 2 <= elapsed < 12, elapsed
    assert "containerd.service: restart did not finish within 2s" in out
    assert "ActiveState activating (start)" in out
    assert "kubelet.service: not restarted: containerd.service is not active" in out
    assert [j for j in jobs if j.unit == KUBELET] == []
    assert gpu_node.props(CONTAINERD)["ActiveState"] == "activating"


def test_restart_job_done_but_containerd_not_running_is_a_failed_restart(gpu_node: GpuNode) -> None:
    # systemd ends the job "done", yet nothing runs: a oneshot that exits at once is inactive (dead)
    # after it (like a drop-in that replaced ExecStart). Only ActiveState says the restart failed.
    gpu_node.agent_config(policy="always")
    sd = gpu_node.write_node(HEALTHY).boot()
    sd.install_unit(CONTAINERD, "[Unit]\nDescription=exits at once\n[Service]\nType=oneshot\nExecStart=/bin/true\n")

    code, out, jobs = gpu_node.run_recording()

    assert units_of(jobs) == [(CONTAINERD, "done")], out
    assert "failed: containerd.service: restart job done but the unit is inactive (dead)" in out
    assert "kubelet.service: not restarted: containerd.service is not active" in out
    assert "restarted containerd.service" not in out
    assert code == 1, out


# --- 6. kubelet not loaded ------------------------------------------------------------------------


def test_kubelet_not_loaded_containerd_still_handled(gpu_node: GpuNode) -> None:
    gpu_node.write_node(DRIFTED).boot(kubelet=False)

    code, out, _ = gpu_node.agent("plan")
    assert "restart containerd.service: this run changes its configuration" in out
    assert "no restart of kubelet.service: kubelet.service is not loaded (not-found)" in out
    code, out, jobs = gpu_node.run_recording()

    assert units_of(jobs) == [(CONTAINERD, "done")], out
    assert "SystemdCgroup = true" in gpu_node.containerd_config.read_text()
    assert "containerd-running     pass" in out, out
    assert "kubelet-running        fail    kubelet.service is not loaded (not-found)" in out, out
    assert code == 1, out


# --- 7. no bus ------------------------------------------------------------------------------------


def test_no_bus_reconciles_files_and_reports_restart_pending(
    gpu_node: GpuNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu_node.write_node(DRIFTED)
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={gpu_node.tmp}/no-such-bus")

    code, out, err = gpu_node.agent("run", "--lock-wait", "5")

    assert code == 1, out + err
    assert "SystemdCgroup = true" in gpu_node.containerd_config.read_text()
    assert (
        "failed: restart pending: containerd.service: this run changes its configuration "
        "(/etc/containerd/config.toml); cannot restart it: system bus unix:path="
    ) in out
    # the unit's state cannot be read, but this run knows its restart is pending: the check says so
    assert "containerd-running     fail    containerd.service: restart pending: this run changes" in out
    assert "health: unhealthy" in out


def test_bus_without_systemd_is_unreachable_too(
    gpu_node: GpuNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message bus on which systemd is not registered (e.g. a container's own bus)."""
    gpu_node.write_node(DRIFTED)
    socket = tmp_path / "bus.sock"
    config = tmp_path / "bus.conf"
    config.write_text(
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" '
        '"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
        f"<busconfig><type>custom</type><listen>unix:path={socket}</listen>"
        '<auth>EXTERNAL</auth><policy context="default"><allow user="*"/><allow own="*"/>'
        '<allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/></policy></busconfig>\n'
    )
    daemon = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--nopidfile"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not socket.exists():
            assert time.monotonic() < deadline and daemon.poll() is None, "dbus-daemon did not start"
            time.sleep(0.02)
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={socket}")
        code, out, err = gpu_node.agent("run", "--lock-wait", "5")
    finally:
        daemon.terminate()
        daemon.wait(10)
    assert code == 1, out + err
    assert "systemd (org.freedesktop.systemd1) is not on it" in out
    assert "SystemdCgroup = true" in gpu_node.containerd_config.read_text()


# --- 8. policies ----------------------------------------------------------------------------------


def test_policy_never_restarts_nothing_and_reports_pending(gpu_node: GpuNode) -> None:
    gpu_node.agent_config(policy="never")
    gpu_node.write_node(DRIFTED).boot()
    before = gpu_node.props(CONTAINERD)

    code, out, jobs = gpu_node.run_recording()

    assert jobs == []
    assert gpu_node.props(CONTAINERD)["MainPID"] == before["MainPID"]
    assert "SystemdCgroup = true" in gpu_node.containerd_config.read_text()
    assert "restart pending: containerd.service: this run changes its configuration" in out
    assert "restart.policy: never" in out
    assert "containerd-running     warn" in out and "restart pending" in out
    assert code == 2  # degraded: a warning, nothing failed


def test_policy_always_restarts_a_converged_node(gpu_node: GpuNode) -> None:
    gpu_node.agent_config(policy="always")
    gpu_node.write_node(HEALTHY).boot()

    code, out, jobs = gpu_node.run_recording()

    assert code == 0, out
    assert units_of(jobs) == [(CONTAINERD, "done"), (KUBELET, "done")]
    assert "restarted containerd.service: restart.policy is always" in out
    assert [s[0] for s in gpu_node.daemons.wait_for_starts(4)] == [
        "containerd",
        "kubelet",
        "containerd",
        "kubelet",
    ]


# --- the command, as installed --------------------------------------------------------------------


def test_stale_node_through_python_dash_m_agent(gpu_node: GpuNode) -> None:
    """The same as ``run`` from a unit file: a separate process, the bus from the environment."""
    gpu_node.write_node(HEALTHY)
    sd = gpu_node.boot()
    gpu_node.make_stale()
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": sd.bus_address, "PYTHONPATH": str(REPO)}
    with sd.record_jobs() as recorder:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent",
                "--config",
                str(gpu_node.config_file),
                "--root",
                str(gpu_node.root),
                "run",
                "--lock-wait",
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=str(REPO),
            check=False,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert units_of(recorder.jobs) == [(CONTAINERD, "done"), (KUBELET, "done")]


def test_check_json_reports_unit_state(gpu_node: GpuNode) -> None:
    import json

    gpu_node.write_node(HEALTHY).boot()
    code, out, err = gpu_node.agent("check", "--format", "json")
    assert code == 0, out + err
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    running = checks["containerd-running"]
    assert running["status"] == "pass"
    assert running["details"]["main_pid"] == gpu_node.props(CONTAINERD)["MainPID"]
    assert checks["kubelet-running"]["status"] == "pass"
    gpu_node.sd.systemctl("stop", KUBELET)  # type: ignore[union-attr]
    code, out, _ = gpu_node.agent("check", "--format", "json")
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert code == 1
    assert checks["kubelet-running"]["status"] == "fail"
    assert checks["kubelet-running"]["message"] == "kubelet.service inactive (dead), expected active"


# --- 9. kubelet serves only when its healthz says so; what cannot be read warns -----------------------


def test_kubelet_active_but_not_healthy_fails_check_and_restart(gpu_node: GpuNode) -> None:
    gpu_node.agent_config(timeout=2)
    gpu_node.write_node(HEALTHY).boot()
    (gpu_node.daemons.control("kubelet") / "healthz").write_text("500 [-]syncloop failed")

    code, out, _ = gpu_node.agent("check")
    assert code == 1, out
    line = next(ln for ln in out.splitlines() if ln.startswith("kubelet-running"))
    assert line.split()[1] == "fail"
    url = f"http://127.0.0.1:{gpu_node.healthz_port}/healthz"
    assert f"but kubelet healthz {url}: HTTP 500 '[-]syncloop failed'" in messages(gpu_node)["kubelet-running"]

    gpu_node.make_stale()
    code, out, jobs = gpu_node.run_recording()
    assert code == 1, out
    assert units_of(jobs) == [(CONTAINERD, "done"), (KUBELET, "done")]
    assert "kubelet.service: restarted and active, but kubelet healthz" in out
    assert "(still so after waiting for kubelet's healthz" in out


def test_containerd_that_cannot_be_asked_warns_and_is_not_healthy(gpu_node: GpuNode) -> None:
    gpu_node.write_node(HEALTHY).boot()
    (gpu_node.root / "usr/bin/ctr").unlink()

    code, out, _ = gpu_node.agent("check")

    assert code == 2, out
    line = next(ln for ln in out.splitlines() if ln.startswith("containerd-running"))
    assert line.split()[1] == "warn"
    assert messages(gpu_node)["containerd-running"].endswith("but cannot ask containerd: /usr/bin/ctr not found")
    assert "health: degraded" in out


# --- a disabled node ----------------------------------------------------------------------------------


def snapshot(root: Path) -> dict:
    """Every path under the node root: its type, mode, mtime and (regular files) bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        out[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, data)
    return out


def test_run_and_prepare_on_a_disabled_node_change_no_byte_and_restart_nothing(gpu_node: GpuNode) -> None:
    gpu_node.write_node(DRIFTED).boot()
    (gpu_node.root / "etc/gpu-node-agent").mkdir(parents=True, exist_ok=True)
    (gpu_node.root / "etc/gpu-node-agent/disabled").write_text("")
    gpu_node.daemons.wait_for_starts(2)
    before = snapshot(gpu_node.root)

    code, out, jobs = gpu_node.run_recording()
    assert (code, jobs) == (0, []), out
    assert out.splitlines() == ["gpu-node-agent run: the agent is disabled on this node (/etc/gpu-node-agent/disabled "
                                "exists): nothing done; --force runs it anyway"]
    with gpu_node.sd.record_jobs() as recorder:  # type: ignore[union-attr]
        code, out, err = gpu_node.agent("prepare")
    assert (code, recorder.jobs, err) == (0, [], "")
    assert out.startswith("gpu-node-agent prepare: the agent is disabled on this node")
    assert snapshot(gpu_node.root) == before  # not the config, not the status file, not the lock

    code, out, _ = gpu_node.agent("check")  # still evaluates, read-only, and says so
    assert "containerd-config" in out and out.endswith(
        "note: the agent is disabled on this node (/etc/gpu-node-agent/disabled): run and prepare do nothing\n")
    own_state = "run/gpu-node-agent"  # check keeps its caches there (README "Health checks"), nothing else
    assert {k: v for k, v in snapshot(gpu_node.root).items() if not k.startswith(own_state)} == {
        k: v for k, v in before.items() if not k.startswith(own_state)}

    code, out, jobs = gpu_node.run_recording("--force")  # a hand run: the same node is repaired
    assert code == 0, out
    assert units_of(jobs) == [(CONTAINERD, "done"), (KUBELET, "done")]
    assert "SystemdCgroup = true" in gpu_node.containerd_config.read_text()
