#!/usr/bin/env python3
"""Boot with the packaged agent's two passes, on a real systemd: daemon starts and time to kubelet.

    sudo .venv/bin/python bench/boot_time.py [--runs 5] [--json]

Builds the RPM and boots it the way tests/boot/test_boot.py does (tests/support/boot_helpers.py: the installed
unit files, nodeadm/cloud-init/driver-load stand-ins shaped like AL2023's units, containerd/kubelet
stand-ins; root only), ``--runs`` times per scenario, and reports medians of:

* daemon starts per boot, split into nodeadm's (the containerd/kubelet jobs that finish before
  nodeadm-run's) and the agent's (after it), from systemd's own ``JobRemoved`` signals;
* to kubelet: from the request to start the node's units (``gpu-node.target``) to kubelet's first
  ``ActiveEnterTimestamp``;
* to agent done: to the run pass's ``ExecMainExitTimestamp``;
* the boot timeline the agent recorded (agent/report/timeline.py, from systemd's own timestamps): when
  each milestone was reached, and the agent's share (how long nodeadm-run waited for the prepare
  pass alone, an EFA install before kubelet included). Goal: under 1 s on a converged or drifted
  boot without EFA work.

Scenarios: ``converged`` (nodeadm renders a good config), ``drift`` (nodeadm renders one without
SystemdCgroup), ``re-render`` (user data writes a nodeadm.d drop-in, so nodeadm-run renders the
drifted config again after the prepare pass), ``efa`` (EFA hardware, a cached pinned installer
that takes 0.5 s, ``efa.before_kubelet: true``) and ``efa-after`` (the same, ``false``).
Baselines, from the same boot without the prepare pass: ``today`` (the single pass after
nodeadm-run, as before it existed) and ``runbook`` (the runbook's bash user data: restart
containerd, then kubelet, after nodeadm, on every boot: 2 + 2 starts whatever the state).
Nothing is asserted. Goal printed: agent restarts 0 for converged and drift, 1+1 for re-render.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.boot_helpers import (  # noqa: E402
    AGENT,
    CONTAINERD,
    DRIFTED,
    HEALTHY,
    KUBELET,
    NODEADM_D,
    NODEADM_RUN,
    PREPARE,
    BootedNode,
    PackagedAgent,
)
from tests.support.efa_helpers import VERSION, add_rdma_device, installer_script, installer_tarball, sha256  # noqa: E402
from tests.support.systemd_harness import boot  # noqa: E402

# The boot timeline's milestones shown per scenario (seconds since systemd's start: the harness's
# systemd runs in a container, so it has no kernel timestamp; agent/report/timeline.py).
TIMELINE = ("nodeadm-config-finished", "prepare-started", "efa-installed", "prepare-finished",
            "nodeadm-run-started", "containerd-started", "kubelet-started", "nodeadm-run-finished",
            "containerd-restarted", "kubelet-restarted")
SCENARIOS = ("converged", "drift", "re-render", "efa", "efa-after", "today-drift", "runbook-drift")
GOAL = {"converged": 0, "drift": 0, "re-render": 2}


def measure(packaged: PackagedAgent, scenario: str) -> Dict[str, float]:
    node = BootedNode(packaged, boot)
    try:
        rendered = HEALTHY if scenario in ("converged", "efa", "efa-after") else DRIFTED
        extra = ""
        files = {}
        if scenario == "re-render":
            node.user_data.write_text(f"#!/bin/sh\nmkdir -p {node.root}{NODEADM_D}\n"
                                      f"echo 'kind: NodeConfig' > {node.root}{NODEADM_D}/20-user.yaml\n")
            node.user_data.chmod(0o755)
        if scenario.startswith("efa"):
            script = installer_script(node.root, node.work / "efa.log").replace("set -e\n", "set -e\nsleep 0.5\n", 1)
            tarball = installer_tarball(script)
            add_rdma_device(node.root, "rdmap0s6", "0x1d0f", "0xefa1")
            cache = node.root / f"var/cache/gpu-node-agent/aws-efa-installer-{VERSION}.tar.gz"
            cache.parent.mkdir(parents=True)
            cache.write_bytes(tarball)
            extra = f"efa:\n  sha256: {sha256(tarball)}\n  before_kubelet: {str(scenario == 'efa').lower()}\n"
        if scenario.startswith(("today", "runbook")):  # the boot without the prepare pass
            files[f"/run/test-units/{PREPARE}.d/90-off.conf"] = "[Unit]\nConditionPathExists=/nonexistent\n"
        if scenario.startswith("runbook"):
            # The runbook's user data: nodeadm (its run phase, the stand-in's closest to a full
            # `nodeadm init`), then restart containerd and kubelet; the agent's run pass follows.
            node.user_data.write_text("#!/bin/sh\nset -e\n/usr/bin/nodeadm init --skip config\n"
                                      "systemctl restart containerd.service\nsystemctl restart kubelet.service\n")
            node.user_data.chmod(0o755)
        node.boot(previous=HEALTHY, rendered=rendered, config_extra=extra, extra_files=files)
        jobs = node.start_target()
        split = max(i for i, j in enumerate(jobs) if j.unit == NODEADM_RUN)
        nodeadm = sum(1 for j in jobs[:split] if j.unit in (CONTAINERD, KUBELET))
        agent_starts = sum(1 for j in jobs[split:] if j.unit in (CONTAINERD, KUBELET))
        # JobRemoved times are host-monotonic; the target's start request is realtime µs.
        target_mono = node.target_started / 1e6 + (time.monotonic() - time.time())
        first_kubelet = min(j.at for j in jobs if j.unit == KUBELET)
        starts = node.daemons.wait_for_starts(2)
        agent = node.props(AGENT)
        timeline = json.loads(node.status_file.read_text()).get("timeline") or {}
        seen = timeline.get("milestones") or {}
        at = {name: seen[name]["seconds"] for name in TIMELINE if name in seen}
        return {
            **{f"t:{name}": value for name, value in at.items()},
            "agent_share": float(timeline.get("agent_share_seconds", 0.0)),
            "prepare": float(timeline.get("prepare_seconds", 0.0)),
            "starts_before_agent": float(nodeadm),
            "agent_restarts": float(agent_starts),
            "daemon_starts": float(len(starts)),
            "to_kubelet": first_kubelet - target_mono,
            "to_agent_done": (agent["ExecMainExitTimestamp"] - node.target_started) / 1e6,
        }
    finally:
        node.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the raw samples as JSON too")
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, default=list(SCENARIOS))
    args = parser.parse_args()
    packaged = PackagedAgent.build_and_install()
    results: Dict[str, Dict[str, List[float]]] = {}
    for name in args.only:
        samples: Dict[str, List[float]] = {}
        for _ in range(args.runs):
            for key, value in measure(packaged, name).items():
                samples.setdefault(key, []).append(value)
        results[name] = samples
    print(f"python {sys.version.split()[0]} (the launcher runs on /usr/bin/python3), {args.runs} runs each")
    print(f"{'scenario':<14} {'daemon starts':>14} {'before agent':>13} {'by agent':>9} "
          f"{'to kubelet':>11} {'to agent done':>14}")
    for name, s in results.items():
        med = {k: statistics.median(v) for k, v in s.items()}
        print(f"{name:<14} {med['daemon_starts']:>14.0f} {med['starts_before_agent']:>13.0f} "
              f"{med['agent_restarts']:>9.0f} {med['to_kubelet'] * 1000:>9.0f}ms "
              f"{med['to_agent_done'] * 1000:>12.0f}ms")
    print("\nboot timeline (median seconds since systemd's start; agent share: how long nodeadm-run waited "
          "for the prepare pass alone)")
    print(f"{'scenario':<14} {'agent share':>11} {'prepare':>8} " + " ".join(f"{n[:18]:>18}" for n in TIMELINE))
    for name, s in results.items():
        cells = [f"{statistics.median(s[f't:{n}']):>18.3f}" if len(s.get(f"t:{n}", [])) == len(s["prepare"])
                 else f"{'-':>18}" for n in TIMELINE]
        print(f"{name:<14} {statistics.median(s['agent_share']):>10.3f}s {statistics.median(s['prepare']):>7.3f}s "
              + " ".join(cells))
    for name in ("converged", "drift"):
        if name in results:
            share = statistics.median(results[name]["agent_share"])
            print(f"goal: {name}: the agent adds under 1 s: {share:.3f}s, {'met' if share < 1 else 'NOT met'}")
    for name, goal in GOAL.items():
        if name in results:
            got = statistics.median(results[name]["agent_restarts"])
            print(f"goal: {name}: agent restarts {goal}: {got:.0f}, {'met' if got == goal else 'NOT met'}")
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
