"""Boot test: the packaged agent on a real systemd, on a simulated GPU node (root only).

The RPM is built by packaging/build-rpm.sh and installed into a scratch root; its unit files boot
unchanged on a real systemd (tests/support/systemd_harness.py), next to stand-ins for the EKS AL2023
units they are ordered against (tests/support/boot_helpers.py explains each piece). Each test starts
``gpu-node.target``, the boot transaction of the node's units (as ``multi-user.target`` would pull
them in), once the instance's bus is up, so that every job systemd runs is recorded
(``JobRemoved``). The assertions use what systemd itself reports: job results and order, unit
timestamps, exit status, ``MainPID``; the stand-in daemons' start log (which configuration each
start loaded); and the bytes of the node's files.
"""

import json
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Dict, List, Tuple

import pytest

from agent import __version__
from tests.support.boot_helpers import (
    AGENT,
    CHECK,
    CONTAINERD,
    DRIFTED,
    DROP_IN,
    ETC_PROBE,
    HEALTHY,
    KMOD,
    KUBELET,
    NODEADM_CONFIG,
    NODEADM_D,
    NODEADM_RUN,
    PREPARE,
    PROBE_SCRIPT,
    PROBES,
    TARGET,
    TIMER,
    BootedNode,
    PackagedAgent,
    exec_start,
    hardening,
    index_of,
    parse_probe,
    probe_unit,
    units_of,
)
from tests.support.efa_helpers import VERSION, add_rdma_device, installer_script, installer_tarball, sha256
from tests.support.paths import SAMPLES
from tests.support.systemd_harness import JobRecord, digest

pytestmark = pytest.mark.root

# The shipped units' hardening (gpu-node-agent.service; the heartbeat has all of it and more), as
# systemd reports it once loaded. None of it is overridden: systemd sets all of it up inside the
# test's namespaces, and the agent does its whole job under it.
AGENT_HARDENING = {
    "PrivateTmp": True,
    "ProtectHome": "read-only",
    "ProtectControlGroups": True,
    "ProtectHostname": True,
    "RestrictRealtime": True,
    "LockPersonality": True,
}
CHECK_HARDENING = {
    **AGENT_HARDENING,
    "ProtectSystem": "full",
    "NoNewPrivileges": True,
    "ProtectKernelTunables": True,
    "ProtectKernelModules": True,
}
NODE_UNITS = (NODEADM_CONFIG, PREPARE, CONTAINERD, KUBELET, NODEADM_RUN, AGENT, TARGET)  # jobs whose order matters
CONTRACT_CHECKS = {"containerd-config", "containerd-running", "kubelet-running", "nvidia-runtime-config"}


@pytest.fixture
def node(booted_node: BootedNode) -> BootedNode:
    return booted_node  # the name these tests use (conftest.py's booted_node)


def sample_bytes(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def of(jobs: List[JobRecord], units: Tuple[str, ...] = NODE_UNITS) -> List[str]:
    return [j.unit for j in jobs if j.unit in units]


def assert_exited_ok(node: BootedNode, unit: str, status: int = 0) -> None:
    p = node.props(unit)
    state = (p["ActiveState"], p["SubState"], p["Result"], p["ExecMainCode"], p["ExecMainStatus"])
    # ExecMainCode 1 is CLD_EXITED: the process exited by itself (not killed), with ``status``.
    assert state == ("active", "exited", "success", 1, status), f"{unit}: {state}\n{node.diagnostics()}"


def assert_ran_after_nodeadm(node: BootedNode, jobs: List[JobRecord]) -> None:
    run, agent, kmod = node.props(NODEADM_RUN), node.props(AGENT), node.props(KMOD)
    # nodeadm-run is a oneshot without RemainAfterExit: done means inactive again, successfully.
    assert (run["ActiveState"], run["Result"], run["ExecMainStatus"]) == ("inactive", "success", 0)
    assert 0 < run["ExecMainExitTimestamp"] <= run["InactiveEnterTimestamp"] <= agent["ExecMainStartTimestamp"]
    assert 0 < kmod["ExecMainExitTimestamp"] <= agent["ExecMainStartTimestamp"]
    assert index_of(jobs, NODEADM_RUN) < index_of(jobs, AGENT)
    assert index_of(jobs, KMOD) < index_of(jobs, AGENT)
    assert node.runs().count("nodeadm-run") == 1 and node.runs().count("nodeadm-config") == 1


def assert_prepared_between_nodeadm_phases(node: BootedNode, jobs: List[JobRecord]) -> None:
    """The prepare pass ran after nodeadm-config and the driver load, and ended before nodeadm-run,
    the first daemon start and cloud-final's end did not matter (not ordered against cloud-init)."""
    config, prepare, run = node.props(NODEADM_CONFIG), node.props(PREPARE), node.props(NODEADM_RUN)
    assert 0 < config["ExecMainExitTimestamp"] <= prepare["ExecMainStartTimestamp"]
    assert node.props(KMOD)["ExecMainExitTimestamp"] <= prepare["ExecMainStartTimestamp"]
    assert prepare["ExecMainExitTimestamp"] <= run["ExecMainStartTimestamp"]
    assert index_of(jobs, NODEADM_CONFIG) < index_of(jobs, PREPARE) < index_of(jobs, NODEADM_RUN)
    manager_log = node.instance.nsenter("journalctl", "--no-pager", "-o", "cat", check=False).stdout
    assert "ordering cycle" not in manager_log + node.instance.console_log()


def daemon_jobs(jobs: List[JobRecord]) -> Tuple[List[str], List[str]]:
    """containerd/kubelet jobs that finished before nodeadm-run's (nodeadm's, or earlier) and after
    it (the agent's run pass)."""
    split = index_of(jobs, NODEADM_RUN)
    before = [j.unit for j in jobs[:split] if j.unit in (CONTAINERD, KUBELET)]
    after = [j.unit for j in jobs[split:] if j.unit in (CONTAINERD, KUBELET)]
    return before, after


def passes(node: BootedNode) -> Dict[str, Any]:
    return dict(json.loads(node.status_file.read_text())["passes"])


def assert_not_restarted_by_systemd(node: BootedNode) -> None:
    for unit in (CONTAINERD, KUBELET):
        p = node.props(unit)
        assert (p["ActiveState"], p["SubState"], p["NRestarts"]) == ("active", "running", 0), unit


# --- 1. nodeadm renders a drifted config: fixed before containerd's first start ----------------------


def test_drifted_render_is_fixed_before_containerd_first_starts_and_nothing_restarts(node: BootedNode) -> None:
    node.boot(previous=HEALTHY, rendered=DRIFTED)

    jobs = node.start_target()

    assert_exited_ok(node, PREPARE)
    assert_exited_ok(node, AGENT)
    assert_prepared_between_nodeadm_phases(node, jobs)
    assert_ran_after_nodeadm(node, jobs)
    assert "nodeadm-rerender" not in node.runs()
    # The config is what nodeadm renders plus SystemdCgroup = true, byte for byte.
    assert node.config_toml.read_bytes() == sample_bytes(HEALTHY)
    # Every job of the boot, all done: containerd and kubelet once each (nodeadm-run's), nothing else.
    assert sorted(units_of(jobs)) == sorted(
        (u, "done") for u in (TIMER, NODEADM_CONFIG, KMOD, PREPARE, "cloud-init.service", "cloud-config.service",
                              "cloud-final.service", CONTAINERD, KUBELET, NODEADM_RUN, AGENT, TARGET)
    )
    assert of(jobs) == [NODEADM_CONFIG, PREPARE, CONTAINERD, KUBELET, NODEADM_RUN, AGENT, TARGET]
    assert daemon_jobs(jobs) == ([CONTAINERD, KUBELET], [])
    # The daemons' own start log: one containerd, which loaded the fixed file, and one kubelet.
    starts = node.daemons.wait_for_starts(2)
    assert [(name, config) for name, _, config in starts] == [
        ("containerd", digest(sample_bytes(HEALTHY))),
        ("kubelet", "-"),
    ]
    prepare, c, k = node.props(PREPARE), node.props(CONTAINERD), node.props(KUBELET)
    assert (c["MainPID"], k["MainPID"]) == (starts[0][1], starts[1][1])
    edited = node.config_toml.stat().st_mtime * 1e6
    assert prepare["ExecMainStartTimestamp"] < edited < prepare["ExecMainExitTimestamp"] < c["ActiveEnterTimestamp"]
    assert_not_restarted_by_systemd(node)
    assert len(node.daemons.wait_for_starts(3, timeout=0.5)) == 2
    # The agent restarted nothing; the prepare pass reports its edit, on the console too.
    assert "action:" not in node.journal(AGENT, containing="health: healthy")
    prefix = f"gpu-node-agent[{prepare['ExecMainPID']}]:"
    console = node.console(containing=f"{prefix} health: healthy")
    assert any(prefix in line and "action: /" in line and "SystemdCgroup" in line for line in console.splitlines())
    recorded = passes(node)
    assert set(recorded) == {"prepare", "run"}
    assert recorded["prepare"]["health"] == recorded["run"]["health"] == "healthy"
    assert recorded["prepare"]["exit_code"] == recorded["run"]["exit_code"] == 0
    assert len(recorded["prepare"]["actions"]) == 1 and recorded["run"]["actions"] == []
    assert (recorded["prepare"]["unit"], recorded["run"]["unit"]) == (PREPARE, AGENT)
    assert recorded["run"]["unit_done"] is True
    # `gpu-node-agent status`, as SSM automation would call it right after launch.
    cli = ["/usr/bin/gpu-node-agent", "--root", str(node.root), "status"]
    waited = node.instance.nsenter(*cli, "--wait", "--timeout", "10", "--format", "json", check=False)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    view = json.loads(waited.stdout)
    assert view["status"] == "done" and view["health"] == "healthy"
    assert [name for name, p in view["passes"].items() if p["this_boot"]] == ["prepare", "run"]
    table = node.instance.nsenter(*cli, check=False)
    assert table.returncode == 0 and table.stdout.startswith("status: done\n"), table.stdout


# --- 2. nodeadm-run re-renders (a nodeadm.d drop-in from user data): one agent restart each ---------


def test_nodeadm_run_rerender_costs_exactly_one_agent_restart_of_each(node: BootedNode) -> None:
    node.user_data.write_text(
        "#!/bin/sh\n# user data: a NodeConfig drop-in for nodeadm-run (--config-source file://.../nodeadm.d/)\n"
        f"mkdir -p {node.root}{NODEADM_D}\n"
        f"printf 'apiVersion: node.eks.aws/v1alpha1\\nkind: NodeConfig\\n' > {node.root}{NODEADM_D}/20-user.yaml\n"
    )
    node.user_data.chmod(0o755)
    node.boot(previous=HEALTHY, rendered=DRIFTED)

    jobs = node.start_target()

    assert_exited_ok(node, PREPARE)
    assert_exited_ok(node, AGENT)
    assert_prepared_between_nodeadm_phases(node, jobs)
    assert node.runs().count("nodeadm-rerender") == 1
    assert node.config_toml.read_bytes() == sample_bytes(HEALTHY)
    assert of(jobs) == [NODEADM_CONFIG, PREPARE, CONTAINERD, KUBELET, NODEADM_RUN, CONTAINERD, KUBELET, AGENT, TARGET]
    assert all(result == "done" for _, result in units_of(jobs))
    assert daemon_jobs(jobs) == ([CONTAINERD, KUBELET], [CONTAINERD, KUBELET])
    starts = node.daemons.wait_for_starts(4)
    assert [(name, config) for name, _, config in starts] == [
        ("containerd", digest(sample_bytes(DRIFTED))),  # nodeadm-run's re-render
        ("kubelet", "-"),
        ("containerd", digest(sample_bytes(HEALTHY))),  # the agent's one restart, after its fix
        ("kubelet", "-"),
    ]
    agent, c, k = node.props(AGENT), node.props(CONTAINERD), node.props(KUBELET)
    assert agent["ExecMainStartTimestamp"] < c["ActiveEnterTimestamp"] < k["ActiveEnterTimestamp"]
    assert k["ActiveEnterTimestamp"] < agent["ExecMainExitTimestamp"]
    assert_not_restarted_by_systemd(node)
    assert len(node.daemons.wait_for_starts(5, timeout=0.5)) == 4
    journal = node.journal(AGENT, containing="action: restarted kubelet.service")
    assert journal.count("action: restarted containerd.service") == 1
    assert journal.count("action: restarted kubelet.service") == 1


def test_shipped_units_boot_unchanged_with_their_hardening(node: BootedNode, packaged: PackagedAgent) -> None:
    node.boot(previous=HEALTHY, rendered=HEALTHY)
    node.start_target()

    for unit, in_force in ((PREPARE, AGENT_HARDENING), (AGENT, AGENT_HARDENING), (CHECK, CHECK_HARDENING)):
        p = node.props(unit)
        assert p["LoadState"] == "loaded" and p["FragmentPath"] == f"/run/test-units/{unit}"
        assert p["DropInPaths"] == [f"/run/test-units/{unit}.d/{DROP_IN}"]
        assert {key: p[key] for key in in_force} == in_force
        assert p["SystemCallArchitectures"] == ["native"]
        # The drop-in changes the command line only: the shipped one, with --root.
        shipped = exec_start(packaged.unit(unit)).split()
        (argv,) = [cmd[1] for cmd in p["ExecStart"]]
        assert argv == [shipped[0], "--root", str(node.root), *shipped[1:]]
        drop_in = (node.instance.unit_dir / f"{unit}.d" / DROP_IN).read_text().splitlines()
        assert [line for line in drop_in if not line.startswith("#")] == [
            "[Service]", "ExecStart=", f"ExecStart={shipped[0]} --root {node.root} {' '.join(shipped[1:])}"
        ]
        assert (node.instance.unit_dir / unit).read_text() == packaged.unit(unit)
    assert_exited_ok(node, AGENT)
    for unit in (PREPARE, AGENT):
        p = node.props(unit)
        assert (p["StandardOutput"], p["StandardError"]) == ("journal+console", "journal+console")


def test_every_hardening_directive_of_the_units_is_in_force_here(node: BootedNode, packaged: PackagedAgent) -> None:
    """systemd can set up every sandboxing directive of the shipped units inside the test's
    namespaces (so the boot tests run the agent under all of them): a probe with none of them and
    a probe with each unit's own lines differ in exactly what each directive restricts."""
    script = node.work / "probe.sh"
    script.write_text(PROBE_SCRIPT.replace("{etc_probe}", ETC_PROBE))
    script.chmod(0o755)
    probes = {"probe-none.service": probe_unit(script, node.work / "none.out", [])}
    shipped = {}
    for unit in (PREPARE, AGENT, CHECK):
        shipped[unit] = hardening(packaged.unit(unit))
        unknown = [d for d in shipped[unit] if d not in PROBES]
        assert not unknown, f"{unit}: no probe for {unknown} (add one to PROBES, or to NOT_HARDENING)"
        probes[f"probe-{unit}"] = probe_unit(script, node.work / f"{unit}.out", shipped[unit])
    node.boot(previous=HEALTHY, rendered=HEALTHY, extra_files={f"{ETC_PROBE}/.keep": "", **{
        f"/run/test-units/{name}": text for name, text in probes.items()}})
    node.instance.nsenter("mount", "-t", "tmpfs", "tmpfs", ETC_PROBE)
    for name in probes:
        proc = node.instance.systemctl("start", name, check=False)
        assert proc.returncode == 0, f"{name}: {proc.stderr}\n{node.diagnostics()}"

    without = parse_probe((node.work / "none.out").read_text())
    assert {key: without[key] for key, _, _ in PROBES.values()} == {key: off for key, off, _ in PROBES.values()}
    for unit, directives in shipped.items():
        sandboxed = parse_probe((node.work / f"{unit}.out").read_text())
        expected = {key: (on if directive in directives else off) for directive, (key, off, on) in PROBES.items()}
        assert {key: sandboxed[key] for key in expected} == expected, unit
    # And the agent's own unit: its private /tmp lives on while the unit is active (exited).
    node.start_target()
    private = node.instance.nsenter("ls", "/tmp").stdout.split()
    assert any(AGENT in entry for entry in private), private


# --- 2. converged boot: nothing to fix, nothing restarted ----------------------------------------


def test_converged_boot_restarts_nothing(node: BootedNode) -> None:
    node.boot(previous=HEALTHY, rendered=HEALTHY)

    jobs = node.start_target()

    assert_exited_ok(node, AGENT)
    assert_ran_after_nodeadm(node, jobs)
    assert node.config_toml.read_bytes() == sample_bytes(HEALTHY)
    assert sorted(units_of(jobs)) == sorted(
        (u, "done") for u in (TIMER, NODEADM_CONFIG, KMOD, PREPARE, "cloud-init.service", "cloud-config.service",
                              "cloud-final.service", CONTAINERD, KUBELET, NODEADM_RUN, AGENT, TARGET)
    )
    assert of(jobs) == [NODEADM_CONFIG, PREPARE, CONTAINERD, KUBELET, NODEADM_RUN, AGENT, TARGET]
    starts = node.daemons.wait_for_starts(2)
    assert [(name, config) for name, _, config in starts] == [
        ("containerd", digest(sample_bytes(HEALTHY))),
        ("kubelet", "-"),
    ]
    assert (node.props(CONTAINERD)["MainPID"], node.props(KUBELET)["MainPID"]) == (starts[0][1], starts[1][1])
    assert node.props(CONTAINERD)["ActiveEnterTimestamp"] < node.props(AGENT)["ExecMainStartTimestamp"]
    assert_not_restarted_by_systemd(node)
    assert len(node.daemons.wait_for_starts(3, timeout=0.5)) == 2
    assert "action:" not in node.journal(AGENT, containing="health: healthy")


# --- 3. containerd already running when the prepare pass runs -------------------------------------


@pytest.mark.parametrize("method", ["RestartUnit", "StartUnit"])
def test_prepare_restarts_nothing_when_containerd_already_runs(node: BootedNode, method: str) -> None:
    """User data (or someone by hand) started containerd and kubelet before the boot got to the
    prepare pass. The pass fixes the file and restarts nothing; after nodeadm-run each daemon starts
    once more with the fixed file: nodeadm's restart (since amazon-eks-ami#2705), or, when nodeadm
    only starts units (before it: a no-op on a running daemon), the agent's run pass."""
    node.boot(previous=DRIFTED, rendered=DRIFTED, nodeadm_method=method)
    early = node.instance.systemctl("start", CONTAINERD, KUBELET, check=False)
    assert early.returncode == 0, early.stderr
    assert len(node.daemons.wait_for_starts(2)) == 2

    jobs = node.start_target()

    assert_exited_ok(node, PREPARE, status=2)  # degraded: containerd runs an older config, left to later
    assert_exited_ok(node, AGENT)
    assert_prepared_between_nodeadm_phases(node, jobs)
    assert node.config_toml.read_bytes() == sample_bytes(HEALTHY)
    before, after = daemon_jobs(jobs)
    assert before == [CONTAINERD, KUBELET]  # nodeadm-run's, none of the prepare pass
    assert after == ([] if method == "RestartUnit" else [CONTAINERD, KUBELET])
    starts = node.daemons.wait_for_starts(4)
    assert [(name, config) for name, _, config in starts] == [
        ("containerd", digest(sample_bytes(DRIFTED))),  # started early, with the previous boot's file
        ("kubelet", "-"),
        ("containerd", digest(sample_bytes(HEALTHY))),  # once more, after nodeadm-run, with the fix
        ("kubelet", "-"),
    ]
    assert node.props(PREPARE)["ExecMainExitTimestamp"] < node.props(CONTAINERD)["ActiveEnterTimestamp"]
    assert len(node.daemons.wait_for_starts(5, timeout=0.5)) == 4
    prepared = node.journal(PREPARE, containing="health: degraded")
    assert "action: restart left to the pass after nodeadm-run: containerd.service" in prepared
    assert passes(node)["prepare"]["exit_code"] == 2


# --- EFA before kubelet ---------------------------------------------------------------------------


@pytest.mark.parametrize("before_kubelet", [True, False])
def test_efa_userspace_is_installed_before_kubelet_first_starts_unless_opted_out(
    node: BootedNode, before_kubelet: bool
) -> None:
    installs = node.work / "efa-installs.log"
    script = installer_script(node.root, installs).replace("set -e\n", "set -e\nsleep 0.5\n", 1)
    tarball = installer_tarball(script)
    add_rdma_device(node.root, "rdmap0s6", "0x1d0f", "0xefa1")
    cache = node.root / f"var/cache/gpu-node-agent/aws-efa-installer-{VERSION}.tar.gz"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(tarball)
    node.boot(previous=HEALTHY, rendered=HEALTHY, config_extra=(
        f"efa:\n  sha256: {sha256(tarball)}\n  before_kubelet: {str(before_kubelet).lower()}\n"))

    jobs = node.start_target()

    assert_exited_ok(node, PREPARE)
    assert_exited_ok(node, AGENT)
    assert_prepared_between_nodeadm_phases(node, jobs)
    assert len(installs.read_text().splitlines()) == 1  # one install in the boot
    installed = (node.root / "opt/amazon/efa/bin/fi_info").stat().st_mtime * 1e6  # the installer's last write
    kubelet_first = node.props(KUBELET)["ActiveEnterTimestamp"]
    assert node.daemons.wait_for_starts(2) and len(node.daemons.wait_for_starts(3, timeout=0.5)) == 2
    prepare, agent = node.props(PREPARE), node.props(AGENT)
    recorded = passes(node)
    if before_kubelet:
        assert prepare["ExecMainStartTimestamp"] < installed < prepare["ExecMainExitTimestamp"] < kubelet_first
        assert any("aws-efa-installer" in a or "EFA" in a for a in recorded["prepare"]["actions"])
    else:
        assert kubelet_first < agent["ExecMainStartTimestamp"] < installed < agent["ExecMainExitTimestamp"]
        assert any(a.startswith("EFA userspace left to the pass after nodeadm-run") for a in
                   recorded["prepare"]["actions"])
    assert daemon_jobs(jobs) == ([CONTAINERD, KUBELET], [])


# --- 4. the opt-out switch ---------------------------------------------------------------------------


def test_disabled_node_boots_without_the_agent(node: BootedNode) -> None:
    node.boot(previous=HEALTHY, rendered=DRIFTED, extra_files={"/etc/gpu-node-agent/disabled": ""})

    jobs = node.start_target()

    p = node.props(AGENT)
    assert (p["ActiveState"], p["ConditionResult"], p["ExecMainStartTimestamp"]) == ("inactive", False, 0)
    assert Counter(node.runs()) == {"nodeadm-config": 1, "nodeadm-run": 1, "nvidia-kmod-load": 1,
                                    "cloud-init": 1, "cloud-config": 1, "cloud-final": 1}
    assert node.props(PREPARE)["ExecMainStartTimestamp"] == 0
    assert dict(units_of(jobs))[NODEADM_RUN] == "done"
    assert node.config_toml.read_bytes() == sample_bytes(DRIFTED)  # nodeadm's render stays
    assert [name for name, _, _ in node.daemons.wait_for_starts(2)] == ["containerd", "kubelet"]
    assert len(node.daemons.wait_for_starts(3, timeout=0.5)) == 2
    # The heartbeat honours the same switch.
    proc, _ = node.systemctl_recording("start", CHECK)
    assert proc.returncode == 0, proc.stderr
    assert (node.props(CHECK)["ConditionResult"], node.props(CHECK)["ExecMainStartTimestamp"]) == (False, 0)


# --- 5. the heartbeat -------------------------------------------------------------------------------


def test_heartbeat_timer_is_armed_and_its_service_writes_the_status_file(node: BootedNode) -> None:
    node.boot(previous=HEALTHY, rendered=DRIFTED)
    node.start_target()
    assert_exited_ok(node, AGENT)
    sd = node.instance

    # Armed by the boot (the preset enables the timer), first due 5 to 7 minutes after startup
    # (OnBootSec=5min plus RandomizedDelaySec=2min; in a container, OnBootSec counts from systemd's
    # start), so it has not run the heartbeat yet.
    t = node.props(TIMER)
    assert (t["ActiveState"], t["SubState"]) == ("active", "waiting")
    started = sd.manager_property("UserspaceTimestampMonotonic")
    due = node.timer_property(TIMER, "NextElapseUSecMonotonic")
    assert started + 300e6 <= due <= started + 420e6 + 1e6
    assert node.props(CHECK)["ExecMainStartTimestamp"] == 0

    # The boot-time run may have written the status file too: start from none.
    if node.status_file.exists():
        node.status_file.unlink()
    before = datetime.now(timezone.utc).replace(microsecond=0)
    proc, jobs = node.systemctl_recording("start", CHECK)
    after = datetime.now(timezone.utc)

    # report.publish is false on this node: status file only, no API server needed (README "What the cluster sees"),
    # so a healthy node's heartbeat succeeds.
    assert proc.returncode == 0, f"{proc.stderr}\n{node.diagnostics()}"
    assert units_of(jobs) == [(CHECK, "done")]  # the heartbeat restarts nothing
    p = node.props(CHECK)
    # Type=oneshot without RemainAfterExit: inactive again once done, exit 0 (healthy).
    assert (p["ActiveState"], p["Result"], p["ExecMainCode"], p["ExecMainStatus"]) == ("inactive", "success", 1, 0)
    # StandardOutput=journal: the table is in the journal, not on the console.
    assert "health: healthy" in node.journal(CHECK, containing="health: healthy")
    assert f"gpu-node-agent[{p['ExecMainPID']}]" not in node.console()

    # The status file (README, "What the cluster sees"): the report JSON with details,
    # written atomically to report.status_file under the node's root, publishing or not.
    # NOTE: `check --report` writes it only once the reporting code (status file, annotation,
    # condition) is in; this asserts the README, not the code present when it was written. It
    # also needs `check --report` to honour report.publish: false (no API server here).
    assert node.status_file.is_file(), f"check --report wrote no {node.status_file}\n{node.journal(CHECK)}"
    status = json.loads(node.status_file.read_text())
    assert status["v"] == 1 and status["agent"] == __version__
    when = datetime.strptime(status["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert before <= when <= after
    assert status["health"] == "healthy"
    names = [check["name"] for check in status["checks"]]
    assert set(names) >= CONTRACT_CHECKS and len(names) == len(set(names))
    assert all(check["status"] in ("pass", "skip") and check["message"] for check in status["checks"])
    assert status["actions"] == []  # check changes nothing
    (heartbeat,) = status["passes"].values()  # the boot passes' records went with the removed file
    assert (heartbeat["unit"], heartbeat["exit_code"], heartbeat["health"]) == (CHECK, 0, "healthy")
    assert node.status_file.stat().st_mode & 0o777 == 0o644


# --- 6. `systemctl restart gpu-node-agent` on a booted node -------------------------------------------


def test_restarting_the_agent_unit_runs_the_agent_alone_and_restarts_nothing(node: BootedNode) -> None:
    """No Wants= on nodeadm's oneshots: restarting the agent's unit re-runs neither nodeadm-config
    nor nodeadm-run (inactive once done), so nothing rewrites the config and the converged node
    restarts nothing. `gpu-node-agent run` by hand does the same."""
    node.boot(previous=HEALTHY, rendered=HEALTHY)
    node.start_target()
    assert_exited_ok(node, AGENT)
    before = Counter(node.runs())
    first = node.daemons.wait_for_starts(2)
    assert len(first) == 2

    proc, jobs = node.systemctl_recording("restart", AGENT)

    assert proc.returncode == 0, proc.stderr
    assert_exited_ok(node, AGENT)
    assert units_of(jobs) == [(AGENT, "done")]
    assert Counter(node.runs()) == before
    assert node.config_toml.read_bytes() == sample_bytes(HEALTHY)
    assert len(node.daemons.wait_for_starts(3, timeout=0.5)) == 2
    assert "action:" not in node.journal(AGENT, containing="health: healthy")

    with node.instance.record_jobs() as recorder:
        by_hand = node.instance.nsenter("/usr/bin/gpu-node-agent", "--root", str(node.root), "run", check=False)
    assert by_hand.returncode == 0, by_hand.stdout + by_hand.stderr
    assert recorder.jobs == []
    assert Counter(node.runs()) == before
    assert len(node.daemons.wait_for_starts(3, timeout=0.5)) == 2


# --- 7. the boot order has no cycle, as systemd itself computes it --------------------------------------


def verify_log(node: BootedNode) -> str:
    """`systemd-analyze verify` of the node's boot target inside the instance, every unit loaded from
    the instance's unit directory (the installed units byte for byte, the stand-ins shaped like
    AL2023's, every program they run present): it builds the target's start transaction, as PID 1
    would, and logs (at debug level) each job it installs and any ordering cycle it has to break.
    (With --recursive-errors=no it would load the named unit alone: no transaction to check.)"""
    proc = node.instance.nsenter("env", "SYSTEMD_LOG_LEVEL=debug", "SYSTEMD_UNIT_PATH=/run/test-units",
                                 "systemd-analyze", "verify", "--man=no", TARGET, check=False)
    return proc.stdout + proc.stderr


def manager_log(node: BootedNode) -> str:
    """What PID 1 logged: the journal and the console (it breaks an ordering cycle by deleting a
    job, and says so there, "Found ordering cycle ...")."""
    journal = node.instance.nsenter("journalctl", "--no-pager", "-o", "cat", check=False).stdout
    return journal + node.instance.console_log()


def test_the_boot_has_no_ordering_cycle_and_systemd_would_report_one(node: BootedNode) -> None:
    node.boot(previous=HEALTHY, rendered=HEALTHY)

    log = verify_log(node)
    for unit in (PREPARE, AGENT, NODEADM_CONFIG, NODEADM_RUN, KMOD, "cloud-init.service", "cloud-final.service"):
        assert f"Installed new job {unit}/start" in log, f"{unit} not in the transaction:\n{log[-3000:]}"
    assert "ordering cycle" not in log
    jobs = node.start_target()
    assert all(result == "done" for _, result in units_of(jobs))
    assert "ordering cycle" not in manager_log(node)

    # Both checks can fail: ordered after nodeadm-run as well, the prepare pass makes a cycle.
    (node.instance.unit_dir / f"{PREPARE}.d" / "99-cycle.conf").write_text("[Unit]\nAfter=nodeadm-run.service\n")
    assert "Found ordering cycle" in verify_log(node)
    node.instance.systemctl("daemon-reload")
    node.instance.systemctl("stop", TARGET, PREPARE)
    node.instance.systemctl("start", TARGET, check=False)
    assert "ordering cycle" in node.console(containing="ordering cycle")
