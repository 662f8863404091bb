#!/usr/bin/env python3
"""Restart overhead: the agent's D-Bus restart against ``systemctl restart``, on the same real systemd.

    sudo .venv/bin/python bench/restart_overhead.py [--runs 30] [--json]

Boots a real systemd in private namespaces (tests/systemd_harness.py; root only) with a containerd
stand-in (``Type=notify``, like containerd: the start job ends at READY=1) and measures, alternating
the two, ``--runs`` times each:

* agent: ``SystemdClient.restart`` from the ``RestartUnit`` call to ``ActiveState`` confirmed
  ``active`` (``RestartOutcome.seconds``; the connection is made once per ``run``, as in the agent);
* agent, whole call: the same including the pre-restart state read and the JobRemoved subscription;
* systemctl: wall time of ``systemctl restart containerd.service`` (run inside the instance with
  nsenter; the nsenter cost, measured separately as ``nsenter true``, is subtracted).

It prints the medians and the ratio agent/systemctl (goal: <= 1.1), then, for each scenario, how
many restarts ``gpu-node-agent run`` performs (counted from systemd's own JobRemoved signals) next
to the bash userdata it replaces, which restarts containerd and kubelet on every boot.
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
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from systemd_harness import BootedSystemd, FakeNodeDaemons, boot  # noqa: E402

from agent import systemd  # noqa: E402

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
    units = {
        CONTAINERD: daemons.containerd_unit(root / "etc/containerd/config.toml", start_limit=False),
        KUBELET: daemons.kubelet_unit(),
        MINIMAL: MINIMAL_UNIT,
    }
    sd = boot(units, wants=list(units), binds=[tmp])
    sd.wait_until(CONTAINERD, "active")
    sd.wait_until(KUBELET, "active")
    return sd, daemons, root


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
    restarts = count_restarts()
    if args.json:
        print(json.dumps({"overhead": overheads, "restarts": restarts}, indent=2))
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
    print()
    print(f"{'scenario':<66} {'bash userdata':>13} {'agent':>6}  exit")
    for row in restarts:
        bash, agent = row["bash_userdata_restarts"], row["agent_restarts"]
        print(f"{row['scenario']:<66} {bash:>13} {agent:>6}  {row['exit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
