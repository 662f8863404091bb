"""Helpers for the Kubernetes client tests: a fake ``aws`` exec plugin, kubeconfigs, injected time."""

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

import yaml

if TYPE_CHECKING:
    from tests.support.kube_server import ApiServer

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
NODE = "ip-10-0-0-12.us-west-2.compute.internal"
NODE_USER = f"system:node:{NODE}"
KUBECONFIG = "/var/lib/kubelet/kubeconfig"  # nodeadm writes the kubelet's here
CLUSTER_CA = "/etc/kubernetes/pki/ca.crt"

# The fake `aws eks get-token`: prints an ExecCredential in the apiVersion KUBERNETES_EXEC_INFO asks
# for (as the real AWS CLI does), or misbehaves as $FAKE_AWS_STATE/mode says. Every call is logged
# to $FAKE_AWS_STATE/calls.jsonl with its argv and the KUBERNETES_EXEC_INFO it got.
FAKE_AWS = r"""#!{python}
import datetime, json, os, sys, time
state = os.environ["FAKE_AWS_STATE"]
def read(name, default):
    try:
        with open(os.path.join(state, name)) as f:
            return f.read().strip()
    except OSError:
        return default
count = int(read("count", "0")) + 1
with open(os.path.join(state, "count"), "w") as f:
    f.write(str(count))
with open(os.path.join(state, "calls.jsonl"), "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "exec_info": os.environ.get("KUBERNETES_EXEC_INFO"),
                        "extra_env": os.environ.get("FAKE_AWS_EXTRA")}}) + "\n")
mode = read("mode", "ok")
if mode == "fail":
    sys.stderr.write("\nAn error occurred (ExpiredToken) when calling the GetCallerIdentity operation\n")
    sys.exit(255)
if mode == "hang":
    time.sleep(3600)
if mode == "malformed":
    print('{{"kind": "ExecCredential", "status": {{"token": "k8s-aws-v1.SECRET-in-broken-output"')
    sys.exit(0)
info = json.loads(os.environ.get("KUBERNETES_EXEC_INFO") or "{{}}")
api = read("api", "") or info.get("apiVersion", "client.authentication.k8s.io/v1beta1")
ttl = int(read("ttl", "900"))
if mode == "expired":
    ttl = -60
expires = datetime.datetime.utcnow() + datetime.timedelta(seconds=ttl)
stamp = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
status = {{"expirationTimestamp": stamp, "token": "k8s-aws-v1.fake-%d" % count}}
if mode == "cert":
    status = {{"clientCertificateData": read("cert%d" % count, read("cert", "")),
              "clientKeyData": read("key%d" % count, read("key", ""))}}
print(json.dumps({{"kind": "ExecCredential", "apiVersion": api, "spec": {{}}, "status": status}}))
"""


@dataclass
class FakeAws:
    bin_dir: Path
    state: Path

    def set(self, name: str, value: str) -> None:
        (self.state / name).write_text(value)

    def mode(self, mode: str) -> None:
        self.set("mode", mode)

    def calls(self) -> List[Dict[str, Any]]:
        path = self.state / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]


def install_fake_aws(tmp: Path, monkeypatch: Any) -> FakeAws:
    bin_dir = tmp / "bin"
    state = tmp / "aws-state"
    bin_dir.mkdir(parents=True)
    state.mkdir()
    script = bin_dir / "aws"
    script.write_text(FAKE_AWS.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_AWS_STATE", str(state))
    return FakeAws(bin_dir, state)


def sample_kubeconfig(server: str) -> Dict[str, Any]:
    """The nodeadm kubeconfig sample, pointed at the test server (everything else as on a node)."""
    doc = yaml.safe_load((SAMPLES / "kubelet-kubeconfig.yaml").read_text())
    doc["clusters"][0]["cluster"]["server"] = server
    return dict(doc)


def accept_fake_aws_tokens(api: "ApiServer", count: int, user: str = NODE_USER) -> None:
    """The API server knows the first ``count`` tokens the fake ``aws`` plugin issues as ``user``
    (what the cluster's access entry for the node's IAM role does)."""
    for n in range(1, count + 1):
        api.add_token(f"k8s-aws-v1.fake-{n}", user)


def write_kubeconfig(root: Path, api: "ApiServer", user: Optional[Dict[str, Any]] = None) -> Path:
    """The cluster's CA and the kubelet's kubeconfig on the node under ``root``, pointed at ``api``:
    nodeadm's (credentials from ``aws eks get-token``) unless ``user`` gives others."""
    doc = sample_kubeconfig(api.url)
    if user is not None:
        doc["users"][0]["user"] = user
    write_node_file(root, CLUSTER_CA, api.ca_pem())
    write_node_file(root, KUBECONFIG, doc, 0o600)
    return root


def write_node_file(root: Path, node_path: str, data: Any, mode: int = 0o644) -> Path:
    path = root / node_path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    elif isinstance(data, str):
        path.write_text(data)
    else:
        path.write_text(yaml.safe_dump(data))
    path.chmod(mode)
    return path


@dataclass
class FakeTime:
    """Monotonic and wall clocks that move only when the code under test sleeps."""

    mono: float = 1000.0
    wall: float = field(default_factory=time.time)  # the fake aws plugin stamps expiries with real time
    sleeps: List[float] = field(default_factory=list)
    on_sleep: Optional[Callable[[int], None]] = None  # called with the number of sleeps so far

    def clock(self) -> float:
        return self.mono

    def wall_clock(self) -> float:
        return self.wall

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
        if self.on_sleep is not None:
            self.on_sleep(len(self.sleeps))

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds

    @staticmethod
    def random() -> float:
        return 0.5
