#!/usr/bin/env python3
"""Reading containerd's and kubelet's unit state: the agent's discovery against pydbus and busctl.

    sudo .venv/bin/python bench/unit_state_latency.py [--python PATH] [--runs 30]

Boots a real systemd in private namespaces (tests/systemd_harness.py; root only) with
``containerd.service`` and ``kubelet.service`` running, then times, alternating, ``--runs`` fresh
processes of ``--python`` (default: this interpreter) each:

* ``python -c pass`` (the interpreter's own start);
* wire: ``systemd.discover([containerd, kubelet])``, what ``check`` does (agent/dbus_wire.py);
* pydbus: the same two ``UnitState``s through ``SystemdClient.unit_states`` (gi + pydbus);
* busctl: two ``busctl get-property`` runs (LoadState ActiveState SubState ActiveEnterTimestamp
  InvocationID, one per unit), what a shell script would do.

It prints the medians (wall and CPU time of the processes), each minus the bare interpreter start
where that applies, and, in process, the median of ``discover()`` itself once its module is loaded.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from cli_latency import timed  # noqa: E402  (this directory: the same wall/CPU timing)
from systemd_harness import boot  # noqa: E402

from agent import systemd  # noqa: E402

UNITS = ["containerd.service", "kubelet.service"]
DAEMON = "[Service]\nExecStart=/usr/bin/sleep infinity\n"
WIRE = "from agent import systemd; s = systemd.discover({units!r}); assert isinstance(s, systemd.UnitStates), s"
PYDBUS = ("from agent import systemd\nwith systemd.SystemdClient() as c:\n    c.unit_states({units!r})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure (default: this one)")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with boot({u: DAEMON for u in UNITS}, wants=UNITS) as sd:
        for unit in UNITS:
            sd.wait_until(unit, "active")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(PYTHONPATH=str(REPO), DBUS_SYSTEM_BUS_ADDRESS=sd.bus_address)
        busctl = [["busctl", f"--address={sd.bus_address}", "get-property", systemd.SYSTEMD_BUS_NAME,
                   f"/org/freedesktop/systemd1/unit/{unit.replace('.', '_2e')}", systemd.UNIT_IFACE,
                   "LoadState", "ActiveState", "SubState", "ActiveEnterTimestamp", "InvocationID"] for unit in UNITS]
        commands = {
            "python -c pass": [[args.python, "-c", "pass"]],
            "wire (discover)": [[args.python, "-c", WIRE.format(units=UNITS)]],
            "pydbus": [[args.python, "-c", PYDBUS.format(units=UNITS)]],
            "busctl x2": busctl,
        }
        for cmds in commands.values():  # warm caches, and fail early if a command does not work
            for cmd in cmds:
                timed(cmd, env)
        wall: Dict[str, List[float]] = {name: [] for name in commands}
        cpu: Dict[str, List[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, cmds in commands.items():
                runs = [timed(cmd, env) for cmd in cmds]
                wall[name].append(sum(r[0] for r in runs))
                cpu[name].append(sum(r[1] for r in runs))
        in_process = []
        for _ in range(max(args.runs, 50)):
            start = time.perf_counter()
            found = systemd.discover(UNITS, address=sd.bus_address)
            in_process.append(time.perf_counter() - start)
            assert isinstance(found, systemd.UnitStates), found
    version = subprocess.run([args.python, "-V"], capture_output=True, text=True, check=False).stdout.strip()
    print(f"interpreter: {args.python} ({version}), {args.runs} runs each, medians; reading {', '.join(UNITS)}")
    bare_wall, bare_cpu = statistics.median(wall["python -c pass"]), statistics.median(cpu["python -c pass"])
    print(f"  {'':<18} {'wall':>9} {'- start':>9}   {'cpu':>9} {'- start':>9}")
    for name in commands:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        subtract = name not in ("python -c pass", "busctl x2")
        print(f"  {name:<18} {w * 1000:6.1f} ms {(w - bare_wall) * 1000 if subtract else w * 1000:6.1f} ms"
              f"   {c * 1000:6.1f} ms {(c - bare_cpu) * 1000 if subtract else c * 1000:6.1f} ms")
    print(f"discover() in process, module loaded (this interpreter): {statistics.median(in_process) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
