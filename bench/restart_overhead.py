#!/usr/bin/env python3
"""Restart overhead: the agent's D-Bus restart against ``systemctl restart``, on the same real systemd.

    sudo .venv/bin/python bench/restart_overhead.py [--runs 30] [--json]

Boots a real systemd in private namespaces (tests/support/systemd_harness.py; root only) with a containerd
stand-in (``Type=notify``, like containerd: the start job ends at READY=1) and measures, alternating
the two, ``--runs`` times each:

* agent: ``SystemdClient.restart`` from the ``RestartUnit`` call to ``ActiveState`` confirmed
  ``active`` (``RestartOutcome.seconds``; the connection is made once per ``run``, as in the agent);
* agent, whole call: the same including the pre-restart state read and the JobRemoved subscription;
* systemctl: wall time of ``systemctl restart containerd.service`` (run inside the instance with
  nsenter; the nsenter cost, measured separately as ``nsenter true``, is subtracted).

It prints the medians and the ratio agent/systemctl (goal: <= 1.1), then the **verified** restart
on Debian's real containerd daemon (1.6) under the same kind of systemd: the agent's
``RestartUnit -> job done -> active -> CRI plugin ok`` (``SystemdClient.restart`` then
``serving.wait`` on ``agent.containerd.cri``'s probe, as ``run`` does) against ``systemctl restart containerd``
followed by polling ``ctr plugins ls`` until the CRI plugin is ``ok``, alternating, medians and
ratio (goal <= 1.1). Then, for each scenario, how many restarts ``gpu-node-agent run`` performs
(counted from systemd's own JobRemoved signals) next to the bash userdata it replaces, which
restarts containerd and kubelet on every boot.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.base.noderoot import NodeRoot  # noqa: E402
from agent.containerd import cri  # noqa: E402
from agent.daemons import serving  # noqa: E402
from agent.systemd import client as systemd  # noqa: E402
from tests.support.systemd_harness import (  # noqa: E402
    REAL_CONTAINERD_FILES,
    BootedSystemd,
    FakeNodeDaemons,
    boot,
    free_port,
    real_containerd_unit,
    wait_for_healthz,
)

CONTAINERD = "containerd.service"
KUBELET = "kubelet.service"
SAMPLES = REPO / "tests" / "samples"


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# A unit whose start costs next to nothing, so the restart machinery itself is what is timed.
MINIMAL = "minimal.service"
MINIMAL_UNIT = "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=/usr/bin/sleep infinity\n"


def boot_node(tmp: Path, containerd_sample: str) -> Tuple[BootedSystemd, FakeNodeDaemons, Path]:
    root = tmp / "node"
    files = {
        "etc/containerd/config.toml": (SAMPLES / containerd_sample).read_text(),
        "etc/nvidia-container-runtime/config.toml":
            (SAMPLES / "nvidia-container-runtime-default.toml").read_text(),
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    daemons = FakeNodeDaemons(tmp / "daemons").install()
    daemons.install_ctr(root)  # answers for the stand-in as the real ctr does: CRI plugin ok
    port = free_port()
    daemons.node_kubelet_config(root, port)
    units = {
        CONTAINERD: daemons.containerd_unit(root / "etc/containerd/config.toml", start_limit=False,
                                            socket=root / "run/containerd/containerd.sock"),
        KUBELET: daemons.kubelet_unit(port),
        MINIMAL: MINIMAL_UNIT,
    }
    sd = boot(units, wants=list(units), binds=[tmp])
    sd.wait_until(CONTAINERD, "active")
    sd.wait_until(KUBELET, "active")
    wait_for_healthz(port)
    return sd, daemons, root


def measure_verified_restart(runs: int) -> Dict[str, Any]:
    """Real containerd: the agent's verified restart vs systemctl restart + polling ctr until CRI ok."""
    import shutil
    import subprocess

    base = Path(tempfile.mkdtemp(prefix="gna-", dir="/tmp"))  # short: the socket path must fit
    try:
        root = base / "n"
        config = root / "etc/containerd/config.toml"
        config.parent.mkdir(parents=True)
        config.write_text((SAMPLES / "containerd-v2-nodeadm-nvidia.toml").read_text())
        version = subprocess.run(["containerd", "--version"], capture_output=True, text=True, check=True).stdout
        (root / "etc/eks").mkdir(parents=True)
        (root / "etc/eks/containerd-version.txt").write_text(version)
        (root / "usr/bin").mkdir(parents=True)
        shutil.copy2(shutil.which("ctr") or "/usr/bin/ctr", root / "usr/bin/ctr")
        sock = root / "run/containerd/containerd.sock"
        unit = real_containerd_unit(config, sock, base / "containerd.log", start_limit_interval="0")
        sd = boot({CONTAINERD: unit}, REAL_CONTAINERD_FILES, wants=[CONTAINERD], binds=[base])
        try:
            sd.wait_until(CONTAINERD, "active", timeout=30)
            from agent.config.settings import ContainerdSettings
            from agent.containerd import config as containerd

            probe = cri.probe(NodeRoot(str(root)), containerd.load(NodeRoot(str(root)), ContainerdSettings()))
            assert probe is not None

            def cri_ok() -> bool:
                out = subprocess.run([probe.ctr, "--address", str(sock), "plugins", "ls"], capture_output=True,
                                     text=True, timeout=30, check=False).stdout
                return any(ln.split()[1:2] == ["cri"] and ln.split()[-1] == "ok" for ln in out.splitlines())

            def systemctl_then_poll() -> None:
                sd.systemctl("restart", CONTAINERD)
                deadline = time.monotonic() + 30
                while not cri_ok():
                    if time.monotonic() > deadline:
                        raise RuntimeError("CRI plugin not ok after systemctl restart")
                    time.sleep(0.05)

            nsenter = [timed(lambda: sd.nsenter("true")) for _ in range(runs)]
            agent: List[float] = []
            manual: List[float] = []
            with systemd.connect(sd.bus_address, timeout=30) as client:
                def verified() -> None:
                    deadline = time.monotonic() + 30
                    client.restart(CONTAINERD, 30)
                    if not serving.wait(probe, deadline).ok:
                        raise RuntimeError("CRI plugin not ok after the agent's restart")

                verified()
                systemctl_then_poll()  # warm both paths once
                for i in range(runs):
                    order = (verified, systemctl_then_poll) if i % 2 == 0 else (systemctl_then_poll, verified)
                    for fn in order:
                        (agent if fn is verified else manual).append(timed(fn))
        finally:
            sd.shutdown()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ns = statistics.median(nsenter)
    manual_net = [max(0.0, m - ns) for m in manual]
    med_agent, med_manual = statistics.median(agent), statistics.median(manual_net)
    return {
        "unit": "containerd (real daemon, Debian 1.6)",
        "runs": runs,
        "median_seconds": {"agent_verified_restart": med_agent, "systemctl_restart_then_poll_ctr": med_manual,
                           "nsenter_true": ns},
        "ratio_agent_to_systemctl_and_poll": med_agent / med_manual,
        "median_paired_ratio": statistics.median(a / m for a, m in zip(agent, manual_net) if m > 0),
    }


def measure_overhead(runs: int, unit: str) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gna-bench-") as tmp:
        sd, _, _ = boot_node(Path(tmp), "containerd-v3-nodeadm-nvidia.toml")
        try:
            sd.systemctl("start", unit)
            nsenter = [timed(lambda: sd.nsenter("true")) for _ in range(runs)]
            agent: List[float] = []
            agent_call: List[float] = []
            systemctl: List[float] = []
            with systemd.connect(sd.bus_address, timeout=30) as client:
                # Warm both paths once (page cache, systemd's unit state) before measuring.
                client.restart(unit, 30)
                sd.systemctl("restart", unit)
                for i in range(runs):
                    order = ("agent", "systemctl") if i % 2 == 0 else ("systemctl", "agent")
                    for which in order:
                        if which == "agent":
                            start = time.perf_counter()
                            outcome = client.restart(unit, 30)
                            agent_call.append(time.perf_counter() - start)
                            agent.append(outcome.seconds)
                        else:
                            systemctl.append(timed(lambda: sd.systemctl("restart", unit)))
        finally:
            sd.shutdown()
    base = statistics.median(nsenter)
    systemctl_net = [max(0.0, s - base) for s in systemctl]
    med = {
        "agent_restartunit_to_active": statistics.median(agent),
        "agent_whole_call": statistics.median(agent_call),
        "systemctl_restart": statistics.median(systemctl_net),
        "systemctl_restart_with_nsenter": statistics.median(systemctl),
        "nsenter_true": base,
    }
    return {
        "unit": unit,
        "runs": runs,
        "median_seconds": med,
        "ratio_agent_to_systemctl": med["agent_restartunit_to_active"] / med["systemctl_restart"],
        "ratio_agent_whole_call_to_systemctl": med["agent_whole_call"] / med["systemctl_restart"],
        # Each iteration times both methods back to back: robust against load changing mid-run.
        "median_paired_ratio": statistics.median(a / s for a, s in zip(agent, systemctl_net) if s > 0),
    }


def count_restarts() -> List[Dict[str, Any]]:
    """How many units ``run`` restarts per scenario, from systemd's JobRemoved signals."""
    from agent import cli

    healthy = "containerd-v3-nodeadm-nvidia.toml"
    drifted = "containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml"
    scenarios = [
        # (name, containerd sample, policy, make the daemon older than its config)
        ("converged node (nodeadm with #2705 restarted everything itself)", healthy, "when-needed", False),
        ("stale daemon (nodeadm before #2705: StartUnit was a no-op)", healthy, "when-needed", True),
        ("drift the agent repairs (SystemdCgroup missing)", drifted, "when-needed", False),
        ("drift, restart.policy: never", drifted, "never", False),
        ("converged node, restart.policy: always", healthy, "always", False),
    ]
    out = []
    for name, containerd_sample, policy, stale in scenarios:
        with tempfile.TemporaryDirectory(prefix="gna-bench-") as tmp:
            sd, _, root = boot_node(Path(tmp), containerd_sample)
            try:
                config = Path(tmp) / "agent.yaml"
                config.write_text(f"restart:\n  policy: {policy}\nreport:\n  publish: false\n")
                if stale:
                    path = root / "etc/containerd/config.toml"
                    while time.time() * 1e6 <= sd.properties(CONTAINERD)["ActiveEnterTimestamp"]:
                        time.sleep(0.01)
                    path.write_text(path.read_text())
                os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = sd.bus_address
                with sd.record_jobs() as recorder, open(os.devnull, "w") as sink:
                    saved = sys.stdout, sys.stderr
                    sys.stdout = sys.stderr = sink
                    try:
                        code = cli.main(["--config", str(config), "--root", str(root), "-q", "run"])
                    finally:
                        sys.stdout, sys.stderr = saved
                jobs = [j.unit for j in recorder.jobs if j.result == "done"]
            finally:
                sd.shutdown()
        out.append({"scenario": name, "agent_restarts": len(jobs), "units": jobs, "exit": code,
                    "bash_userdata_restarts": 2})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="restarts measured per method (default 30)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root: it boots a real systemd in private namespaces")
    overheads = [measure_overhead(args.runs, CONTAINERD), measure_overhead(args.runs, MINIMAL)]
    verified = measure_verified_restart(args.runs)
    restarts = count_restarts()
    if args.json:
        print(json.dumps({"overhead": overheads, "verified": verified, "restarts": restarts}, indent=2))
        return 0
    labels = {CONTAINERD: "containerd stand-in, Type=notify (READY=1 after parsing its config)",
              MINIMAL: "minimal unit, Type=simple sleep (restart machinery only)"}
    for overhead in overheads:
        med = overhead["median_seconds"]
        print(f"{overhead['unit']}: {labels[overhead['unit']]}, median of {args.runs} runs each")
        agent_ms, call_ms = med["agent_restartunit_to_active"] * 1000, med["agent_whole_call"] * 1000
        print(f"  agent, RestartUnit call -> confirmed active  {agent_ms:8.2f} ms")
        print(f"  agent, whole restart() call                  {call_ms:8.2f} ms")
        print(f"  systemctl restart (nsenter cost removed)     {med['systemctl_restart'] * 1000:8.2f} ms"
              f"   (raw {med['systemctl_restart_with_nsenter'] * 1000:.2f} ms, "
              f"nsenter {med['nsenter_true'] * 1000:.2f} ms)")
        print(f"  ratio agent / systemctl (medians)            {overhead['ratio_agent_to_systemctl']:8.2f}x"
              f"   (whole call: {overhead['ratio_agent_whole_call_to_systemctl']:.2f}x; goal <= 1.10x)")
        print(f"  median of paired ratios (same iteration)     {overhead['median_paired_ratio']:8.2f}x")
    med = verified["median_seconds"]
    print(f"{verified['unit']}: verified restart, median of {args.runs} runs each")
    print(f"  agent: RestartUnit -> done -> active -> CRI ok   {med['agent_verified_restart'] * 1000:8.2f} ms")
    print(f"  systemctl restart, then ctr until CRI ok         {med['systemctl_restart_then_poll_ctr'] * 1000:8.2f} ms"
          f"   (nsenter {med['nsenter_true'] * 1000:.2f} ms removed)")
    print(f"  ratio (medians)                                  {verified['ratio_agent_to_systemctl_and_poll']:8.2f}x"
          f"   (median paired: {verified['median_paired_ratio']:.2f}x; goal <= 1.10x)")
    print()
    print(f"{'scenario':<66} {'bash userdata':>13} {'agent':>6}  exit")
    for row in restarts:
        bash, agent = row["bash_userdata_restarts"], row["agent_restarts"]
        print(f"{row['scenario']:<66} {bash:>13} {agent:>6}  {row['exit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
