#!/usr/bin/env python3
"""Boot to agent done: how long the packaged agent adds to a GPU node's boot, on a real systemd.

    sudo .venv/bin/python bench/boot_time.py [--runs 10] [--json]

Builds the RPM and boots it the way tests/test_boot.py does (tests/boot_helpers.py: the installed
unit files, nodeadm/driver-load stand-ins, containerd/kubelet stand-ins; root only), ``--runs``
times per scenario, and reports medians (min-max) of:

* instance: booting systemd in its namespaces up to its bus answering (the harness, not the node);
* to agent done: from the request to start the node's units (``gpu-node.target``) to the agent
  unit's ``ExecMainExitTimestamp``;
* nodeadm-run: the stand-in's own run (render the config, start containerd and kubelet);
* agent run: the agent unit's ``ExecMainStartTimestamp`` to ``ExecMainExitTimestamp`` (the
  launcher's interpreter start, the reconcile, the restarts it decides, the checks).

Scenarios: ``drift`` (nodeadm renders a config without SystemdCgroup: one edit, containerd and
kubelet restarted once) and ``converged`` (nothing to do). Nothing is asserted: the goal printed is
that a converged boot's agent run stays under 1 s (it runs once per boot, after nodeadm).
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

from tests.boot_helpers import AGENT, DRIFTED, HEALTHY, NODEADM_RUN, BootedNode, PackagedAgent  # noqa: E402
from tests.systemd_harness import boot  # noqa: E402

SCENARIOS = {"drift": (HEALTHY, DRIFTED), "converged": (HEALTHY, HEALTHY)}
GOAL_SECONDS = 1.0


def measure(packaged: PackagedAgent, previous: str, rendered: str) -> Dict[str, float]:
    node = BootedNode(packaged, boot)
    try:
        started = time.monotonic()
        node.boot(previous=previous, rendered=rendered)
        instance = time.monotonic() - started
        node.start_target()
        agent, run = node.props(AGENT), node.props(NODEADM_RUN)
        assert agent["ExecMainStatus"] == 0 and agent["ActiveState"] == "active", agent["ActiveState"]
        return {
            "instance": instance,
            "to_agent_done": (agent["ExecMainExitTimestamp"] - node.target_started) / 1e6,
            "nodeadm_run": (run["ExecMainExitTimestamp"] - run["ExecMainStartTimestamp"]) / 1e6,
            "agent_run": (agent["ExecMainExitTimestamp"] - agent["ExecMainStartTimestamp"]) / 1e6,
        }
    finally:
        node.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the raw samples as JSON too")
    args = parser.parse_args()
    packaged = PackagedAgent.build_and_install()
    results: Dict[str, Dict[str, List[float]]] = {}
    for name, (previous, rendered) in SCENARIOS.items():
        samples: Dict[str, List[float]] = {}
        for _ in range(args.runs):
            for key, value in measure(packaged, previous, rendered).items():
                samples.setdefault(key, []).append(value)
        results[name] = samples
    print(f"python {sys.version.split()[0]} (the launcher runs on /usr/bin/python3), {args.runs} runs each")
    print(f"{'scenario':<10} {'instance':>18} {'to agent done':>18} {'nodeadm-run':>18} {'agent run':>18}")
    for name, samples in results.items():
        cells = []
        for key in ("instance", "to_agent_done", "nodeadm_run", "agent_run"):
            values = samples[key]
            cells.append(f"{statistics.median(values) * 1000:6.0f} ({min(values) * 1000:.0f}-{max(values) * 1000:.0f})")
        print(f"{name:<10} " + " ".join(f"{c:>18}" for c in cells) + "  ms")
    converged = statistics.median(results["converged"]["agent_run"])
    print(f"goal: converged agent run < {GOAL_SECONDS:g} s: {converged:.3f} s, "
          f"{'met' if converged < GOAL_SECONDS else 'NOT met'}")
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
