"""What the heartbeat costs the API server: requests and bytes per `check --report`, and per fleet.

    .venv/bin/python bench/report_traffic.py [--before REV] [--images N]

Runs the real command line (`python -m agent check --report`, as the timer does) on a simulated
healthy GPU node (tests/support/gpu_node.py) against the loopback HTTPS API server (tests/support/kube_server.py),
whose Node is made as large as a GPU node's (`status.images`, capacity, node info), and counts the
requests and their bytes on the wire (request line, headers and body each way; TLS framing not
counted). Scenarios, in order on the same node:

* plain check (an operator over SSM: reads the Node for gpu-allocatable, writes nothing);
* boot report: the first report, with no memory in /run (one GET, then the writes);
* unchanged heartbeat (three of them);
* one change (the toolkit config switched to `mode = "cdi"`: a warning);
* heartbeat refresh (the remembered `lastHeartbeatTime` moved `heartbeat_minutes` back);
* a plain check, a first report and three unchanged heartbeats with the agent at `--before` (a git
  revision: before cached, spaced Node reads).

Then the fleet figures for 1,000 / 5,000 / 20,000 nodes next to kubelet's own Node traffic.
Measurements, not assertions. Goal: an unchanged heartbeat writes nothing; at most one Node write
per node per heartbeat interval.
"""

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.gpu_node import NODE_NAME, healthy_gpu_node, write  # noqa: E402
from tests.support.kube_helpers import FAKE_AWS, sample_kubeconfig, write_node_file  # noqa: E402
from tests.support.kube_server import ApiServer  # noqa: E402

BEFORE = "2dab651"  # the last commit before Node reads with resourceVersion=0, spaced by heartbeat_minutes
TIMER_MINUTES = 6.0  # gpu-node-agent-check.timer: every 5 min plus RandomizedDelaySec=2min (mean 1)
HEARTBEAT_MINUTES = 30.0  # report.heartbeat_minutes default
FLEETS = (1000, 5000, 20000)
# kubelet (pkg/kubelet/kubelet_node_status.go, tryUpdateNodeStatus; defaults of KubeletConfiguration):
# a GET of its Node (served from the API server's cache) every nodeStatusUpdateFrequency = 10 s, a
# PATCH of nodes/<name>/status on change or every nodeStatusReportFrequency = 5 min, and its Lease
# renewed every 10 s (nodeLeaseDurationSeconds 40 x 0.25).
KUBELET_GET_SECONDS = 10.0
KUBELET_STATUS_SECONDS = 300.0
KUBELET_LEASE_SECONDS = 10.0


def fatten(node: Dict, images: int) -> None:
    """A GPU node's Node: most of its bytes are status.images (CUDA, NCCL and model images)."""
    status = node["status"]
    status["images"] = [
        {"names": [f"123456789012.dkr.ecr.us-west-2.amazonaws.com/ml/train-{i}@sha256:{i:064x}",
                   f"123456789012.dkr.ecr.us-west-2.amazonaws.com/ml/train-{i}:v{i}.0.{i % 7}"],
         "sizeBytes": 9_000_000_000 + i}
        for i in range(images)
    ]
    resources = {"cpu": "192", "memory": "2097152000Ki", "nvidia.com/gpu": "8",
                 "vpc.amazonaws.com/efa": "32", "pods": "100", "ephemeral-storage": "3750000000Ki"}
    status["capacity"] = dict(resources)
    status["allocatable"] = dict(resources)
    status["nodeInfo"] = {"kubeletVersion": "v1.33.1-eks-1234567", "containerRuntimeVersion": "containerd://2.1.1",
                          "osImage": "Amazon Linux 2023.7.20250609", "kernelVersion": "6.12.31-amzn2023.x86_64",
                          "architecture": "amd64", "operatingSystem": "linux", "machineID": "ec2" + "0" * 29,
                          "bootID": "0" * 36, "systemUUID": "ec2" + "0" * 33}


class Traffic:
    def __init__(self, api: ApiServer) -> None:
        self.api = api
        self.mark = 0

    def since_mark(self) -> Dict[str, int]:
        reqs = self.api.requests[self.mark:]
        self.mark = len(self.api.requests)
        node = [r for r in reqs if "/events" not in r.path]
        return {
            "GET": sum(1 for r in node if r.method == "GET"),
            "cached GET": sum(1 for r in node if r.method == "GET"
                              and getattr(r, "query", {}).get("resourceVersion") == "0"),
            "Node writes": sum(1 for r in node if r.method in ("PATCH", "PUT")),
            "Events": sum(1 for r in reqs if "/events" in r.path),
            "bytes": sum(r.bytes_in + r.bytes_out for r in reqs),
        }


def extract(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev, "agent"],
                             check=True, capture_output=True).stdout
    into.mkdir(parents=True)
    tar = into / "before.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as tf:
        for member in tf.getmembers():
            if member.name.startswith("agent/") and ".." not in member.name and (member.isfile() or member.isdir()):
                tf.extract(member, into)
    return into


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default=BEFORE, help="git revision of the agent to compare with")
    parser.add_argument("--images", type=int, default=100, help="status.images entries on the Node")
    args = parser.parse_args()
    rows: List[Tuple[str, Dict[str, int]]] = []
    with tempfile.TemporaryDirectory(prefix="gna-bench-") as tmp:
        root = healthy_gpu_node(Path(tmp) / "node", gpus=8, instance_type="p5.48xlarge")  # as the Node says
        api = ApiServer().start()
        try:
            fatten(api.add_node(NODE_NAME), args.images)
            node_bytes = len(json.dumps(api.nodes[NODE_NAME]))
            for n in range(1, 40):
                api.add_token(f"k8s-aws-v1.fake-{n}", f"system:node:{NODE_NAME}")
            write_node_file(root, "/etc/kubernetes/pki/ca.crt", api.ca_pem())
            write_node_file(root, "/var/lib/kubelet/kubeconfig", sample_kubeconfig(api.url), 0o600)
            bin_dir, state = Path(tmp) / "bin", Path(tmp) / "aws-state"
            bin_dir.mkdir()
            state.mkdir()
            (bin_dir / "aws").write_text(FAKE_AWS.format(python=sys.executable))
            (bin_dir / "aws").chmod(0o755)
            env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_AWS_STATE=str(state))

            def check_report(cwd: Path = REPO, *, report: bool = True) -> None:
                subprocess.run([sys.executable, "-m", "agent", "--root", str(root), "-q", "check",
                                *(["--report"] if report else [])],
                               env=env, cwd=cwd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            traffic = Traffic(api)
            check_report(report=False)
            rows.append(("plain check", traffic.since_mark()))
            check_report()
            rows.append(("boot report (no memory: one GET)", traffic.since_mark()))
            for _ in range(3):
                check_report()
            unchanged = traffic.since_mark()
            unchanged_each = {k: v // 3 for k, v in unchanged.items()}
            rows.append(("unchanged heartbeat (each of 3)", unchanged_each))
            toolkit = root / "etc/nvidia-container-runtime/config.toml"
            write(root, "/etc/nvidia-container-runtime/config.toml",
                  toolkit.read_text().replace('mode = "auto"', 'mode = "cdi"'))
            check_report()
            rows.append(("one change (a check now warns)", traffic.since_mark()))
            memory_path = root / "run/gpu-node-agent/published.json"
            memory = json.loads(memory_path.read_text())
            old = datetime.now(timezone.utc) - timedelta(minutes=HEARTBEAT_MINUTES)
            memory["condition"]["lastHeartbeatTime"] = old.strftime("%Y-%m-%dT%H:%M:%SZ")
            memory_path.write_text(json.dumps(memory))
            for cond in api.nodes[NODE_NAME]["status"]["conditions"]:  # as the Node has it too
                if cond["type"] == memory["condition"]["type"]:
                    cond["lastHeartbeatTime"] = memory["condition"]["lastHeartbeatTime"]
            read_path = root / "run/gpu-node-agent/node-read.json"  # the last Node read is as old
            last_read = json.loads(read_path.read_text())
            last_read["read_at"] -= HEARTBEAT_MINUTES * 60
            read_path.write_text(json.dumps(last_read))
            check_report()
            refresh = traffic.since_mark()
            rows.append((f"heartbeat refresh (every {HEARTBEAT_MINUTES:g} min)", refresh))
            before = extract(args.before, Path(tmp) / "before")
            (root / "run/gpu-node-agent/published.json").unlink()
            (root / "run/gpu-node-agent/node-read.json").unlink(missing_ok=True)
            check_report(cwd=before, report=False)
            rows.append((f"plain check, agent at {args.before}", traffic.since_mark()))
            check_report(cwd=before)
            rows.append((f"boot report, agent at {args.before}", traffic.since_mark()))
            for _ in range(3):
                check_report(cwd=before)
            old_rows = traffic.since_mark()
            old_beat = {k: v // 3 for k, v in old_rows.items()}
            rows.append((f"unchanged heartbeat, agent at {args.before} (each of 3)", old_beat))
        finally:
            api.stop()

    print(f"Node object: {node_bytes / 1024:.1f} KiB ({args.images} images)\n")
    print("| report | Node GETs (with resourceVersion=0) | Node writes | Events | bytes |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['GET']} ({r['cached GET']}) | {r['Node writes']} | {r['Events']} | {r['bytes']:,} |")

    timer = TIMER_MINUTES * 60
    beat = HEARTBEAT_MINUTES * 60
    print(f"\nPer fleet, steady state (nothing changes; timer every {TIMER_MINUTES:g} min on average, "
          f"heartbeat_minutes {HEARTBEAT_MINUTES:g}):\n")
    print("| nodes | agent now: Node writes/s | GETs/s | bytes/s | agent before: Node GETs/s | their bytes/s | "
          "kubelet: Node writes/s | Node GETs/s | Lease writes/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    beats = beat / timer  # timer runs per heartbeat period: all unchanged but the refresh

    def rate(n: int, quiet: Dict[str, int], key: str) -> float:
        return n * ((beats - 1) * quiet[key] + refresh[key]) / beat

    for n in FLEETS:
        now_w, now_g, now_b = (rate(n, unchanged_each, k) for k in ("Node writes", "GET", "bytes"))
        old_g = n * old_beat["GET"] / timer  # the writes did not change (publish on change): the reads did
        old_b = n * old_beat["bytes"] / timer
        print(f"| {n:,} | {now_w:.1f} | {now_g:.1f} | {now_b / 1e6:.2f} MB | {old_g:.1f} | "
              f"{old_b / 1e6:.2f} MB | {n / KUBELET_STATUS_SECONDS:.1f} | {n / KUBELET_GET_SECONDS:.0f} | "
              f"{n / KUBELET_LEASE_SECONDS:.0f} |")
    ok = unchanged["Node writes"] == 0 and unchanged["GET"] == 0 and refresh["Node writes"] <= 1
    print(f"\ngoal (unchanged heartbeat: 0 requests; refresh: at most 1 Node write): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
