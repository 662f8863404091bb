#!/usr/bin/env python3
"""Boot a simulated EKS GPU node under a real systemd and watch the agent work (scripts/demo.sh).

What runs, and where its behaviour comes from:

* systemd: the host's own, booted as PID 1 of private namespaces (tests/support/systemd_harness.py);
* containerd: a real daemon (``--containerd``; default: a 2.x one fetched by
  scripts/fetch-containerd.sh when present, else Debian's /usr/bin/containerd), with a private root,
  state and socket; the agent asks it through the real ``ctr``;
* nodeadm-config and nodeadm-run: stand-ins doing what nodeadm's two boot phases do as far as the
  agent can tell (tests/support/boot_helpers.py ``NODEADM_SCRIPT``, after amazon-eks-ami's
  ``cmd/nodeadm/init``): render /etc/containerd/config.toml; re-render when a ``nodeadm.d``
  drop-in changed the config; restart containerd then kubelet over D-Bus and wait for them;
* kubelet: a stand-in that serves ``/healthz`` like kubelet (tests/support/systemd_harness.py), and a
  loopback Kubernetes API server (tests/support/kube_server.py) where the Node registers when kubelet
  starts and the device plugin advertises its GPU a second later;
* the agent: this checkout's, run by the shipped unit files (systemd/) with ``--root`` in a drop-in.

Everything lives in one directory under /var/lib (the units' PrivateTmp hides /tmp), removed at
the end, as is the systemd instance.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.boot_helpers import NODEADM_CACHE, NODEADM_CONFIG_UNIT, NODEADM_D, NODEADM_RUN_UNIT, NODEADM_SCRIPT  # noqa: E402
from tests.support.gpu_node import CONTAINERD_VERSION_TEXT, NODE_NAME, gpu_side, write  # noqa: E402
from tests.support.kube_helpers import write_kubeconfig  # noqa: E402
from tests.support.kube_server import ApiServer  # noqa: E402
from tests.support.systemd_harness import (  # noqa: E402
    REAL_CONTAINERD_FILES,
    BootedSystemd,
    FakeNodeDaemons,
    boot,
    free_port,
    real_containerd_unit,
)

AGENT_BIN = REPO / ".venv" / "bin" / "gpu-node-agent"
SAMPLES = REPO / "tests" / "samples"
NODE_UNITS = ("nodeadm-config.service", "gpu-node-agent-prepare.service", "nvidia-kmod-load.service",
              "nodeadm-run.service", "gpu-node-agent.service")
DAEMONS = ("containerd.service", "kubelet.service")
BOOT_ID = "/proc/sys/kernel/random/boot_id"
TOKEN = "demo-kubelet-token"  # noqa: S105 (the loopback API server's, for this demo only)


def say(text: str = "") -> None:
    print(text, flush=True)


def default_containerd() -> str:
    fetched = sorted(glob.glob(str(REPO / ".cache/containerd/2.*/usr/bin/containerd")))
    return fetched[-1] if fetched else "/usr/bin/containerd"


class DemoNode:
    def __init__(self, containerd: str) -> None:
        self.containerd = containerd
        self.ctr = str(Path(containerd).with_name("ctr"))
        self.base = Path(tempfile.mkdtemp(prefix="gna-demo-", dir="/var/lib"))  # short: a socket path
        self.root = self.base / "n"
        self.daemons = FakeNodeDaemons(self.base / "d").install()
        self.healthz = free_port()
        self.api = ApiServer().__enter__()
        self.api.add_token(TOKEN, f"system:node:{NODE_NAME}")
        self.run_log = self.base / "runs.log"  # the nodeadm stand-in's record of its phases
        self.sd: Optional[BootedSystemd] = None
        self.advertised = threading.Event()  # the device plugin advertised the GPU

    # --- the node's files ------------------------------------------------------------------------

    def version(self) -> str:
        return subprocess.run([self.containerd, "--version"], capture_output=True, text=True, check=True).stdout

    @property
    def major2(self) -> bool:
        return any(word.lstrip("v").startswith("2.") for word in self.version().split()[2:3])

    def build(self) -> None:
        v2 = (SAMPLES / "containerd-v2-nodeadm-nvidia.toml").read_text()
        # what nodeadm-config renders here: the nvidia runtime without SystemdCgroup, CDI off
        (self.base / "rendered.toml").write_text(v2.replace("SystemdCgroup = true\n", ""))
        write(self.root, "/etc/containerd/config.toml", v2)  # what the last boot left
        write(self.root, "/etc/nvidia-container-runtime/config.toml",
              (SAMPLES / "nvidia-container-runtime-legacy.toml").read_text())
        gpu_side(self.root, gpus=1, instance_type="g5.xlarge")  # the GPU side of the known-good AMI
        write(self.root, BOOT_ID, Path(BOOT_ID).read_text())  # this boot's
        # A 2.x daemon stands in for the AMI's 2.2.3 (the file is the AMI's); 1.x says what it is.
        write(self.root, "/etc/eks/containerd-version.txt", CONTAINERD_VERSION_TEXT if self.major2 else self.version())
        self.daemons.node_kubelet_config(self.root, self.healthz)
        shutil.copy2(self.ctr, self.root / "usr/bin/ctr")
        write_kubeconfig(self.root, self.api, {"token": TOKEN})
        write(self.root, "/etc/gpu-node-agent/config.yaml",
              "restart:\n  timeout_seconds: 20\nefa:\n  install: never\n"
              "report:\n  timeout_seconds: 10\n  gpu_ready_budget_seconds: 60\n")

    def units(self) -> Dict[str, str]:
        agent = {name: (REPO / "systemd" / name).read_text() for name in ("gpu-node-agent-prepare.service",
                                                                          "gpu-node-agent.service")}
        return {
            "nodeadm-config.service": NODEADM_CONFIG_UNIT,
            "nodeadm-run.service": NODEADM_RUN_UNIT,
            "nvidia-kmod-load.service": "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
            "containerd.service": real_containerd_unit(self.root / "etc/containerd/config.toml",
                                                       self.root / "run/containerd/containerd.sock",
                                                       self.base / "containerd.log").replace(
                "/usr/bin/containerd ", f"{self.containerd} ", 1),
            "kubelet.service": self.daemons.kubelet_unit(self.healthz),
            **agent,
            # what multi-user.target pulls in on a node (a target is ordered after what it wants)
            "gpu-node.target": f"[Unit]\nDescription=the node's boot\nWants={' '.join(NODE_UNITS)}\n",
        }

    def files(self) -> Dict[str, str]:
        nodeadm = NODEADM_SCRIPT.format(run_log=self.run_log, rendered=self.base / "rendered.toml",
                                        config=self.root / "etc/containerd/config.toml",
                                        nodeadm_d=self.root / NODEADM_D.lstrip("/"), cache=NODEADM_CACHE,
                                        method="RestartUnit")
        drop_ins = {f"/run/test-units/{unit}.d/50-demo.conf":
                    f"[Service]\nExecStart=\nExecStart={AGENT_BIN} --root {self.root} {verb}\n"
                    for unit, verb in (("gpu-node-agent-prepare.service", "prepare"),
                                       ("gpu-node-agent.service", "run"))}
        return {"/usr/bin/nodeadm": nodeadm, **REAL_CONTAINERD_FILES, **drop_ins}

    # --- running it ------------------------------------------------------------------------------

    def boot(self) -> BootedSystemd:
        self.sd = boot(self.units(), self.files(), binds=[self.base, REPO])
        return self.sd

    def kubelet_registers_the_node(self) -> None:
        """As kubelet does once it runs: register the Node; the device plugin advertises 1 s later."""
        def watch() -> None:
            assert self.sd is not None
            while self.sd.properties("kubelet.service")["ActiveState"] != "active":
                time.sleep(0.05)
            node = self.api.add_node(NODE_NAME)
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            node["metadata"]["creationTimestamp"] = now
            node["metadata"]["labels"]["node.kubernetes.io/instance-type"] = "g5.xlarge"
            for condition in node["status"]["conditions"]:  # kubelet posts them as it registers
                condition["lastHeartbeatTime"] = condition["lastTransitionTime"] = now
            time.sleep(1.0)
            self.api.set_allocatable(NODE_NAME, {"nvidia.com/gpu": "1"})
            self.advertised.set()
        threading.Thread(target=watch, daemon=True).start()

    def start(self, *units: str) -> List[Any]:
        assert self.sd is not None
        with self.sd.record_jobs() as jobs:
            self.sd.systemctl("start", *units, timeout=120)
        return jobs.jobs

    def agent(self, *args: str) -> int:
        assert self.sd is not None
        say(f"\n$ gpu-node-agent {' '.join(args)}")
        # PYTHONWARNINGS: the demo's venv may pair requests with a newer urllib3 than it names
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.sd.bus_address, "PYTHONWARNINGS": "ignore"}
        code = subprocess.run([str(AGENT_BIN), "--root", str(self.root), "--log-format", "console", "-q", *args],
                              env=env, check=False).returncode
        say(f"(exit {code})")
        return code

    def status(self) -> Dict[str, Any]:
        return dict(json.loads((self.root / "run/gpu-node-agent/status.json").read_text()))

    def cleanup(self) -> None:
        if self.sd is not None:
            self.sd.shutdown()
        self.api.__exit__(None, None, None)
        shutil.rmtree(self.base, ignore_errors=True)


def daemon_jobs(jobs: List[Any]) -> List[str]:
    return [j.unit for j in jobs if j.unit in DAEMONS and j.job and j.result == "done"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containerd", default=os.environ.get("CONTAINERD") or default_containerd(),
                        help="the containerd daemon to run (ctr beside it); default: a fetched 2.x, else "
                             "/usr/bin/containerd")
    parser.add_argument("--json", metavar="FILE", help="write what happened as JSON (for the test)")
    args = parser.parse_args()
    node = DemoNode(args.containerd)
    result: Dict[str, Any] = {}
    try:
        node.build()
        say(f"simulated node: {node.root}\ncontainerd: {node.version().strip()} ({args.containerd})")
        say("nodeadm-config will render a drifted config.toml (no SystemdCgroup, enable_cdi = false), and the "
            "toolkit config is in 'legacy' mode.\n\n== boot: systemd starts the node's units")
        node.boot()
        node.kubelet_registers_the_node()
        jobs = node.start("gpu-node.target")
        order = [j.unit for j in jobs if j.unit in (*NODE_UNITS, *DAEMONS)]
        say("jobs, in the order systemd finished them: " + " -> ".join(u.replace(".service", "") for u in order))
        status = node.status()
        prepare, run = status["passes"]["prepare"], status["passes"]["run"]
        say("\nprepare pass (before containerd's first start):")
        for action in prepare["actions"]:
            say(f"  {action}")
        boot_starts = {u: daemon_jobs(jobs).count(u) for u in DAEMONS}
        say(f"nodeadm-run started containerd and kubelet: {boot_starts}")
        say(f"run pass after nodeadm-run: {run['health']}, actions: {run['actions'] or 'none (converged)'}, "
            f"restarts: {sum(status['restarts_total'].values())}")
        result["boot"] = {"prepare_actions": prepare["actions"], "run_actions": run["actions"],
                          "restarts": sum(status["restarts_total"].values()), "daemon_starts": boot_starts}
        if not node.advertised.wait(30):
            raise SystemExit("demo: the Node was not registered within 30 s (kubelet did not start)")
        say("\nkubelet registered the Node; the device plugin advertised nvidia.com/gpu: 1")
        if not node.major2:
            say("\n(containerd 1.x is in no known-good AMI row: `compatibility` warns, so health is degraded, "
                "exit 2; with a 2.x daemon, scripts/fetch-containerd.sh, the node is healthy, exit 0)")
        result["check"] = node.agent("check")

        say("\n== a nodeadm.d drop-in: nodeadm-run renders config.toml again (drifted), restarts the daemons")
        write(node.root, f"{NODEADM_D}/20-user.yaml", "apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\n")
        node.start("nodeadm-run.service")
        assert node.sd is not None
        say("\n== the agent's run pass (as the heartbeat's next run, or `systemctl restart gpu-node-agent`)")
        with node.sd.record_jobs() as recorder:
            node.sd.systemctl("restart", "gpu-node-agent.service", timeout=120)
        status = node.status()
        repaired = {u: daemon_jobs(recorder.jobs).count(u) for u in DAEMONS}
        say("run pass: " + "; ".join(status["passes"]["run"]["actions"]) if status["passes"]["run"]["actions"]
            else "run pass: nothing to do")
        result["rerender"] = {"actions": status["passes"]["run"]["actions"], "restarts": repaired}
        result["check_after"] = node.agent("check")
        result["status"] = node.agent("status")
        last = node.status()
        result["health"] = last["health"]
        result["checks"] = {c["name"]: c["status"] for c in last["checks"]}
        result["timeline"] = last.get("timeline")
        result["containerd_major"] = 2 if node.major2 else 1
    finally:
        node.cleanup()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
