"""How long `check` takes on a simulated healthy GPU node, without and with --report; and what the GPU
readiness checks add to it.

    .venv/bin/python bench/check_latency.py [--runs N]
    .venv/bin/python bench/check_latency.py --before REF [--runs N] [--kmsg-records N]

Default: builds the node (tests/support/gpu_node.py), starts the loopback HTTPS API server
(tests/support/kube_server.py) with a fake `aws` exec plugin on PATH, and times the real command line with
hyperfine: `check`, `check --format json`, `check --report` (exec plugin, GET node, merge patch,
strategic merge patch, status file).

`--before REF`: the cost of the GPU readiness checks (gpu-inventory, gpu-allocatable,
nvidia-fabricmanager, gpu-errors). On a simulated p5.48xlarge (8 GPUs, NVSwitch, fabric manager
stand-in, a kernel log of `--kmsg-records` boot records, no kubeconfig: plain `check` makes no API
call) it times `check` of the agent at REF (extracted with `git archive`, e.g. the commit before the
checks) against this checkout's, alternating run by run, and prints the medians of wall and CPU time
and their differences (goal: < 20 ms added, median wall). Measurements, not assertions: run it on
the machine you care about.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from tests.support.gpu_node import BOOT_KMSG, NODE_NAME, healthy_gpu_node, kmsg_record, write  # noqa: E402
from tests.support.kube_helpers import FAKE_AWS, sample_kubeconfig, write_node_file  # noqa: E402
from tests.support.kube_server import ApiServer  # noqa: E402

GOAL_MS = 20.0


def report_latency(runs: int) -> int:
    with tempfile.TemporaryDirectory(prefix="gna-bench-") as tmp:
        root = healthy_gpu_node(Path(tmp) / "node")
        api = ApiServer().start()
        try:
            api.add_node(NODE_NAME)
            for n in range(1, 10 * runs + 20):
                api.add_token(f"k8s-aws-v1.fake-{n}", f"system:node:{NODE_NAME}")
            write_node_file(root, "/etc/kubernetes/pki/ca.crt", api.ca_pem())
            write_node_file(root, "/var/lib/kubelet/kubeconfig", sample_kubeconfig(api.url), 0o600)
            write(root, "/etc/gpu-node-agent/config.yaml", "report:\n  timeout_seconds: 10\n")
            bin_dir = Path(tmp) / "bin"
            state = Path(tmp) / "aws-state"
            bin_dir.mkdir()
            state.mkdir()
            (bin_dir / "aws").write_text(FAKE_AWS.format(python=sys.executable))
            (bin_dir / "aws").chmod(0o755)
            env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_AWS_STATE=str(state))
            agent = f"{sys.executable} -m agent --root {root}"
            cmds = [f"{agent} check", f"{agent} check --format json", f"{agent} check --report"]
            proc = subprocess.run(
                ["hyperfine", "--warmup", "3", "--runs", str(runs), "-N", "-i", *cmds],
                env=env, cwd=REPO, check=False,
            )
            return proc.returncode
        finally:
            api.stop()


def boot_log(records: int) -> str:
    """A kernel log of ``records`` ordinary boot records (what a node has after boot: no XID)."""
    lines = [BOOT_KMSG]
    for i in range(records - 4):
        text = f"systemd[1]: Started unit-{i}.service - Bench unit {i}."
        lines.append(kmsg_record(500 + i, 6_000_000 + i * 997, text))
    return "".join(lines)


def gpu_readiness_cost(before: str, runs: int, kmsg_records: int, instructions: bool = False) -> int:
    from cli_latency import timed  # this directory: the same wall/CPU timing as the other benches

    with tempfile.TemporaryDirectory(prefix="gna-bench-") as tmp:
        base = Path(tmp)
        root = healthy_gpu_node(base / "node", gpus=8, instance_type="p5.48xlarge")
        write(root, "/dev/kmsg", boot_log(kmsg_records))
        write(root, "/etc/gpu-node-agent/config.yaml", "restart:\n  policy: never\n")
        old = base / "before"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", before, "agent"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        # The package first on sys.path, ahead of the working directory (the checkout: cli_latency runs there).
        start = "import sys; sys.path.insert(0, {!r}); from agent.cli import main; sys.exit(main())"
        commands = {label: [sys.executable, "-c", start.format(str(where)), "--root", str(root), "check"]
                    for label, where in (("before", old), ("after", REPO))}
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        for label, cmd in commands.items():
            probe = subprocess.run([*cmd, "--format", "json"], capture_output=True, text=True, check=False)
            names = [c["name"] for c in json.loads(probe.stdout)["checks"]]
            print(f"{label}: {len(names)} checks ({', '.join(names[-4:])} last)")
            for _ in range(3):  # warm-up: page cache, bytecode, the fabric manager's version
                timed(cmd, env)
        wall: Dict[str, List[float]] = {name: [] for name in commands}
        cpu: Dict[str, List[float]] = {name: [] for name in commands}
        for i in range(runs):  # alternating, so that load on the machine hits both alike
            for name in (("before", "after") if i % 2 == 0 else ("after", "before")):
                w, c = timed(commands[name], env)
                wall[name].append(w * 1000)
                cpu[name].append(c * 1000)
        return _summary(wall, cpu, runs, kmsg_records, commands if instructions else None, env)


def _summary(wall: Dict[str, List[float]], cpu: Dict[str, List[float]], runs: int, kmsg_records: int,
             commands: Optional[Dict[str, List[str]]], env: Dict[str, str]) -> int:
    instructions = commands is not None
    med = statistics.median
    added = med(wall["after"]) - med(wall["before"])
    paired = med([a - b for a, b in zip(wall["after"], wall["before"])])
    print(f"{runs} alternating runs each, {kmsg_records} kernel log records, {sys.executable}")
    print(f"median wall: before {med(wall['before']):.1f} ms, after {med(wall['after']):.1f} ms, "
          f"added {added:.1f} ms (median of paired differences {paired:.1f} ms)")
    print(f"median CPU (user + system): before {med(cpu['before']):.1f} ms, after {med(cpu['after']):.1f} ms, "
          f"added {med(cpu['after']) - med(cpu['before']):.1f} ms")
    print(f"fastest run: before {min(wall['before']):.1f} ms, after {min(wall['after']):.1f} ms, "
          f"added {min(wall['after']) - min(wall['before']):.1f} ms")
    print(f"goal: added < {GOAL_MS:g} ms (median wall): {'met' if added < GOAL_MS else 'NOT met'}")
    if instructions:  # load-independent: what a busy machine cannot disturb
        counted = {name: _instructions(cmd, env) for name, cmd in (commands or {}).items()}
        more = counted["after"] - counted["before"]
        print(f"instructions of the agent's process (valgrind callgrind): before {counted['before'] / 1e6:.1f} M, "
              f"after {counted['after'] / 1e6:.1f} M, added {more / 1e6:.1f} M ({100 * more / counted['before']:.1f}%)")
    return 0


def _instructions(cmd: List[str], env: Dict[str, str]) -> int:
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg", *cmd], env=env,
                              capture_output=True, text=True, check=False)
    found = re.search(r"Collected : ([\d,]+)", proc.stderr)
    if not found:
        raise SystemExit(f"valgrind gave no instruction count: {proc.stderr[-300:]}")
    return int(found.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--before", metavar="REF", help="compare check with the agent at this git ref")
    parser.add_argument("--kmsg-records", type=int, default=3000)
    parser.add_argument("--instructions", action="store_true",
                        help="with --before: also count the instructions of each (valgrind; immune to load)")
    args = parser.parse_args()
    if args.before:
        return gpu_readiness_cost(args.before, args.runs, args.kmsg_records, args.instructions)
    return report_latency(args.runs)


if __name__ == "__main__":
    sys.exit(main())
