#!/usr/bin/env python3
"""``gpu-node-agent fleet`` over 10,000 Nodes on the loopback API server: time and peak memory.

    .venv/bin/python bench/fleet_view.py [--nodes 10000] [--runs 3]

The API server (tests/support/kube_server.py, TLS on loopback) runs in this process with the fleet of
tests/support/fleet_helpers.py (every Node as kubelet registers it, plus the agent's annotations and
condition: about 2.3 KB of JSON each); the fleet command runs as its own process (the installed
console script, as an operator runs it), so its peak RSS (``wait4``'s ``ru_maxrss``) is the
command's alone. Reported: the median wall time, the peak RSS, the requests and bytes sent by the
server, and the same with ``rv0_pages=False`` (an API server whose cache answers the whole list at
once), to show what paging saves. Nothing is asserted.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import fleet_helpers  # noqa: E402
from tests.support.kube_server import ApiServer  # noqa: E402

CLI = REPO / ".venv" / "bin" / "gpu-node-agent"


def one_run(api: ApiServer, kubeconfig: Path) -> Dict[str, float]:
    before = len(api.requests)
    start = time.perf_counter()
    proc = subprocess.Popen([str(CLI), "fleet", "--kubeconfig", str(kubeconfig), "--context", "gpu",
                             "--format", "json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"fleet failed ({proc.returncode}): {proc.stderr.read().decode() if proc.stderr else ''}")
    calls = api.requests[before:]
    return {"seconds": elapsed, "max_rss_mib": usage.ru_maxrss / 1024, "requests": float(len(calls)),
            "mib_sent": sum(r.bytes_out for r in calls) / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with ApiServer() as api, tempfile.TemporaryDirectory() as tmp:
        fleet_helpers.add_fleet(api, args.nodes)
        kubeconfig = fleet_helpers.operator_kubeconfig(Path(tmp), api)
        print(f"{args.nodes} Nodes, {args.runs} runs each, python {sys.version.split()[0]}")
        print(f"{'mode':<26} {'seconds':>8} {'peak RSS':>10} {'requests':>9} {'MiB sent':>9}")
        for label, pages in (("paged (limit=500)", True), ("rv=0 answered whole", False)):
            api.rv0_pages = pages
            samples: List[Dict[str, float]] = [one_run(api, kubeconfig) for _ in range(args.runs)]
            med = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
            print(f"{label:<26} {med['seconds']:>8.2f} {med['max_rss_mib']:>7.1f}MiB {med['requests']:>9.0f} "
                  f"{med['mib_sent']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
