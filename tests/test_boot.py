"""Boot test: the packaged agent on a real systemd, on a simulated GPU node (root only).

The RPM is built by packaging/build-rpm.sh and installed into a scratch root; its unit files boot
unchanged on a real systemd (tests/systemd_harness.py), next to stand-ins for the EKS AL2023
units they are ordered against (tests/boot_helpers.py explains each piece). Each test starts
``gpu-node.target``, the boot transaction of the node's units (as ``multi-user.target`` would pull
them in), once the instance's bus is up, so that every job systemd runs is recorded
(``JobRemoved``). The assertions use what systemd itself reports: job results and order, unit
timestamps, exit status, ``MainPID``; the stand-in daemons' start log (which configuration each
start loaded); and the bytes of the node's files.
"""

import json
from collections import Counter
from datetime import datetime, timezone
from typing import Callable, Iterator, List, Tuple

import pytest

from agent import __version__
from tests.boot_helpers import (
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
    NODEADM_RUN,
    PROBE_SCRIPT,
    PROBES,
    TARGET,
    TIMER,
    BootedNode,
    PackagedAgent,
    containerd_first_drop_in,
    digest,
    exec_start,
    hardening,
    index_of,
    parse_probe,
    probe_unit,
    units_of,
)
from tests.conftest import SAMPLES
from tests.systemd_harness import BootedSystemd, JobRecord

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
NODE_UNITS = (CONTAINERD, KUBELET, NODEADM_RUN, AGENT, TARGET)  # the jobs whose order matters here
CONTRACT_CHECKS = {"containerd-config", "containerd-running", "kubelet-running", "nvidia-runtime-config"}


@pytest.fixture(scope="session")
def packaged() -> PackagedAgent:
    return PackagedAgent.build_and_install()


@pytest.fixture
def node(packaged: PackagedAgent, boot_systemd: Callable[..., BootedSystemd]) -> Iterator[BootedNode]:
    booted = BootedNode(packaged, boot_systemd)
    try:
        yield booted
    finally:
        booted.cleanup()


def sample_bytes(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def of(jobs: List[JobRecord], units: Tuple[str, ...] = NODE_UNITS) -> List[str]:
    return [j.unit for j in jobs if j.unit in units]


def assert_exited_ok(node: BootedNode, unit: str) -> None:
    p = node.props(unit)
    state = (p["ActiveState"], p["SubState"], p["Result"], p["ExecMainCode"], p["ExecMainStatus"])
    # ExecMainCode 1 is CLD_EXITED: the process exited by itself (not killed), with status 0.
    assert state == ("active", "exited", "success", 1, 0), f"{unit}: {state}\n{node.diagnostics()}"


def assert_ran_after_nodeadm(node: BootedNode, jobs: List[JobRecord]) -> None:
    run, agent, kmod = node.props(NODEADM_RUN), node.props(AGENT), node.props(KMOD)
    # nodeadm-run is a oneshot without RemainAfterExit: done means inactive again, successfully.
    assert (run["ActiveState"], run["Result"], run["ExecMainStatus"]) == ("inactive", "success", 0)
    assert 0 < run["ExecMainExitTimestamp"] <= run["InactiveEnterTimestamp"] <= agent["ExecMainStartTimestamp"]
    assert 0 < kmod["ExecMainExitTimestamp"] <= agent["ExecMainStartTimestamp"]
    assert index_of(jobs, NODEADM_RUN) < index_of(jobs, AGENT)
    assert index_of(jobs, KMOD) < index_of(jobs, AGENT)
    assert node.runs().count("nodeadm-run") == 1 and node.runs().count("nodeadm-config") == 1


def assert_not_restarted_by_systemd(node: BootedNode) -> None:
    for unit in (CONTAINERD, KUBELET):
        p = node.props(unit)
        assert (p["ActiveState"], p["SubState"], p["NRestarts"]) == ("active", "running", 0), unit


# --- 1. nodeadm renders a drifted config: the agent fixes it and restarts each daemon once --------


def test_boot_fixes_nodeadm_drift_and_restarts_containerd_then_kubelet_once(node: BootedNode) -> None:
    node.boot(previous=HEALTHY, rendered=DRIFTED)

    jobs = node.start_target()

    assert_exited_ok(node, AGENT)
    assert_ran_after_nodeadm(node, jobs)
    # The config is what nodeadm renders plus SystemdCgroup = true, byte for byte.
    assert node.config_toml.read_bytes() == sample_bytes(HEALTHY)
    # Every job of the boot, all done: nothing else started or restarted.
    assert sorted(units_of(jobs)) == sorted(
        [(u, "done") for u in (TIMER, NODEADM_CONFIG, KMOD, NODEADM_RUN, AGENT, TARGET)]
        + [(CONTAINERD, "done"), (KUBELET, "done")] * 2
    )
    # nodeadm-run starts containerd, then kubelet, and finishes; the agent then restarts
    # containerd, then kubelet, once each, and finishes.
    assert of(jobs) == [CONTAINERD, KUBELET, NODEADM_RUN, CONTAINERD, KUBELET, AGENT, TARGET]
    # The daemons' own start log: the first containerd loaded nodeadm's render, the second the fix.
    starts = node.daemons.wait_for_starts(4)
    assert [(name, config) for name, _, config in starts] == [
        ("containerd", digest(sample_bytes(DRIFTED))),
        ("kubelet", "-"),
        ("containerd", digest(sample_bytes(HEALTHY))),
        ("kubelet", "-"),
    ]
    agent, c, k = node.props(AGENT), node.props(CONTAINERD), node.props(KUBELET)
    assert (c["MainPID"], k["MainPID"]) == (starts[2][1], starts[3][1])
    # Restarted during the agent's run, after its edit, containerd before kubelet.
    edited = node.config_toml.stat().st_mtime * 1e6
    assert agent["ExecMainStartTimestamp"] < edited < c["ActiveEnterTimestamp"] < k["ActiveEnterTimestamp"]
    assert k["ActiveEnterTimestamp"] < agent["ExecMainExitTimestamp"]
    assert_not_restarted_by_systemd(node)
    assert len(node.daemons.wait_for_starts(5, timeout=0.5)) == 4
    # StandardOutput=journal+console: the result table is on the serial console too.
    prefix = f"gpu-node-agent[{agent['ExecMainPID']}]:"
    console = node.console(containing=f"{prefix} health: healthy")
    agent_lines = [line for line in console.splitlines() if prefix in line]
    assert any(line.endswith("health: healthy") for line in agent_lines), console[-3000:]
    assert any("action: restarted containerd.service" in line for line in agent_lines)


def test_shipped_units_boot_unchanged_with_their_hardening(node: BootedNode, packaged: PackagedAgent) -> None:
    node.boot(previous=HEALTHY, rendered=HEALTHY)
    node.start_target()

    for unit, in_force in ((AGENT, AGENT_HARDENING), (CHECK, CHECK_HARDENING)):
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
    p = node.props(AGENT)
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
    for unit in (AGENT, CHECK):
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
        (u, "done") for u in (TIMER, NODEADM_CONFIG, KMOD, CONTAINERD, KUBELET, NODEADM_RUN, AGENT, TARGET)
    )
    assert of(jobs) == [CONTAINERD, KUBELET, NODEADM_RUN, AGENT, TARGET]
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


# --- 3. nodeadm before #2705: containerd already runs an older config -----------------------------


def test_containerd_running_before_nodeadm_render_is_restarted_once_then_kubelet(node: BootedNode) -> None:
    # containerd comes up with what the previous boot left; nodeadm then renders (a config the agent
    # has nothing to change in) and its start of containerd is a no-op: the daemon is stale.
    node.boot(previous=DRIFTED, rendered=HEALTHY, containerd_enabled=True, extra_files=containerd_first_drop_in())

    jobs = node.start_target()

    assert_exited_ok(node, AGENT)
    assert_ran_after_nodeadm(node, jobs)
    assert node.config_toml.read_bytes() == sample_bytes(HEALTHY)
    # containerd: started by the target, then nodeadm's start (a no-op job on a running unit), then
    # the agent's restart; kubelet: nodeadm's start, then the agent's restart.
    assert of(jobs) == [CONTAINERD, CONTAINERD, KUBELET, NODEADM_RUN, CONTAINERD, KUBELET, AGENT, TARGET]
    assert all(result == "done" for _, result in units_of(jobs))
    starts = node.daemons.wait_for_starts(4)
    assert [(name, config) for name, _, config in starts] == [
        ("containerd", digest(sample_bytes(DRIFTED))),  # the stale daemon
        ("kubelet", "-"),
        ("containerd", digest(sample_bytes(HEALTHY))),  # exactly one restart, with nodeadm's render
        ("kubelet", "-"),
    ]
    agent, c, k = node.props(AGENT), node.props(CONTAINERD), node.props(KUBELET)
    assert (c["MainPID"], k["MainPID"]) == (starts[2][1], starts[3][1])
    assert agent["ExecMainStartTimestamp"] < c["ActiveEnterTimestamp"] < k["ActiveEnterTimestamp"]
    assert k["ActiveEnterTimestamp"] < agent["ExecMainExitTimestamp"]
    assert_not_restarted_by_systemd(node)
    assert len(node.daemons.wait_for_starts(5, timeout=0.5)) == 4
    assert "the daemon runs an older configuration" in node.journal(AGENT, containing="older configuration")


# --- 4. the opt-out switch ---------------------------------------------------------------------------


def test_disabled_node_boots_without_the_agent(node: BootedNode) -> None:
    node.boot(previous=HEALTHY, rendered=DRIFTED, extra_files={"/etc/gpu-node-agent/disabled": ""})

    jobs = node.start_target()

    p = node.props(AGENT)
    assert (p["ActiveState"], p["ConditionResult"], p["ExecMainStartTimestamp"]) == ("inactive", False, 0)
    assert Counter(node.runs()) == {"nodeadm-config": 1, "nodeadm-run": 1, "nvidia-kmod-load": 1}
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

    # report.publish is false on this node: status file only, no API server needed (contract.md),
    # so a healthy node's heartbeat succeeds.
    assert proc.returncode == 0, f"{proc.stderr}\n{node.diagnostics()}"
    assert units_of(jobs) == [(CHECK, "done")]  # the heartbeat restarts nothing
    p = node.props(CHECK)
    # Type=oneshot without RemainAfterExit: inactive again once done, exit 0 (healthy).
    assert (p["ActiveState"], p["Result"], p["ExecMainCode"], p["ExecMainStatus"]) == ("inactive", "success", 1, 0)
    # StandardOutput=journal: the table is in the journal, not on the console.
    assert "health: healthy" in node.journal(CHECK, containing="health: healthy")
    assert f"gpu-node-agent[{p['ExecMainPID']}]" not in node.console()

    # The status file (contract.md, "What the cluster sees"): the report JSON with details,
    # written atomically to report.status_file under the node's root, publishing or not.
    # NOTE: `check --report` writes it only once the reporting code (status file, annotation,
    # condition) is in; this asserts the contract, not the code present when it was written. It
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
    assert node.status_file.stat().st_mode & 0o777 == 0o644


# --- 6. `systemctl restart gpu-node-agent` on a booted node -------------------------------------------


def test_restarting_the_agent_unit_reruns_nodeadm_and_restarts_the_daemons(node: BootedNode) -> None:
    """What the unit's comment says: with Wants=nodeadm-run.service, a restart of the agent's unit
    also starts nodeadm-run again (an inactive oneshot once done), and with it nodeadm-config
    (nodeadm-run Requires= it). nodeadm re-renders config.toml; even when the render is the same,
    the file is newer than the running containerd, so the agent restarts containerd and kubelet.
    `gpu-node-agent run` by hand re-runs neither and restarts nothing on a converged node."""
    node.boot(previous=HEALTHY, rendered=HEALTHY)
    node.start_target()
    assert_exited_ok(node, AGENT)
    assert node.runs().count("nodeadm-run") == 1
    first = node.daemons.wait_for_starts(2)
    assert len(first) == 2

    proc, jobs = node.systemctl_recording("restart", AGENT)

    assert proc.returncode == 0, proc.stderr
    assert_exited_ok(node, AGENT)
    # nodeadm-config and nodeadm-run ran again; the driver load (RemainAfterExit=true) did not.
    assert Counter(node.runs()) == {"nodeadm-config": 2, "nodeadm-run": 2, "nvidia-kmod-load": 1}
    assert node.runs()[-2:] == ["nodeadm-config", "nodeadm-run"]
    assert units_of(jobs) == [
        (NODEADM_CONFIG, "done"),
        (CONTAINERD, "done"),  # nodeadm's start: a no-op on the running daemon
        (KUBELET, "done"),
        (NODEADM_RUN, "done"),
        (CONTAINERD, "done"),  # the agent: containerd is older than nodeadm's new render
        (KUBELET, "done"),
        (AGENT, "done"),
    ]
    assert node.config_toml.read_bytes() == sample_bytes(HEALTHY)
    starts = node.daemons.wait_for_starts(4)
    assert [name for name, _, _ in starts] == ["containerd", "kubelet", "containerd", "kubelet"]
    assert "the daemon runs an older configuration" in node.journal(AGENT, containing="older configuration")

    # The documented way to re-run the agent by hand: nothing re-runs, nothing restarts.
    with node.instance.record_jobs() as recorder:
        by_hand = node.instance.nsenter("/usr/bin/gpu-node-agent", "--root", str(node.root), "run", check=False)
    assert by_hand.returncode == 0, by_hand.stdout + by_hand.stderr
    assert recorder.jobs == []
    assert node.runs().count("nodeadm-run") == 2
    assert len(node.daemons.wait_for_starts(5, timeout=0.5)) == 4
