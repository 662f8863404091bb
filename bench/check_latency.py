"""How long `check` takes on a simulated healthy GPU node, without and with --report.

    .venv/bin/python bench/check_latency.py [--runs N]

Builds the node (tests/gpu_node.py), starts the loopback HTTPS API server (tests/kube_server.py)
with a fake `aws` exec plugin on PATH, and times the real command line with hyperfine:
`check`, `check --format json`, `check --report` (exec plugin, GET node, merge patch, strategic
merge patch, status file). Measurements, not assertions: run it on the machine you care about.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.gpu_node import NODE_NAME, healthy_gpu_node, write  # noqa: E402
from tests.kube_helpers import FAKE_AWS, sample_kubeconfig, write_node_file  # noqa: E402
from tests.kube_server import ApiServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gna-bench-") as tmp:
        root = healthy_gpu_node(Path(tmp) / "node")
        api = ApiServer().start()
        try:
            api.add_node(NODE_NAME)
            for n in range(1, 10 * args.runs + 20):
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
                ["hyperfine", "--warmup", "3", "--runs", str(args.runs), "-N", "-i", *cmds],
                env=env, cwd=REPO, check=False,
            )
            return proc.returncode
        finally:
            api.stop()


if __name__ == "__main__":
    sys.exit(main())
