"""A fleet of Nodes as agents leave them, for the fleet view's tests and bench/fleet_view.py.

Each Node is ``kube_server.new_node`` (as kubelet registers it) plus what the agent publishes:
``gpu-node-agent/health``, the ``gpu-node-agent/report`` annotation (compact JSON, with the
compatibility check's message as ``agent/compat.py`` words it and ``gpu_ready_seconds``) and the
``GPUNodeAgentReady`` condition. The mix is a function of the node's index, so tests can count it.
"""

import json
import time
from typing import Any, Dict, List, Optional

from agent.base.timestamps import rfc3339
from tests.support.kube_server import ApiServer, new_node

STACK = "k8s 1.35, containerd 2.2.3, toolkit 1.19.0, driver 580.159.03"
ROW = "v20260512"
REASONS = {"healthy": "AllChecksPassed", "degraded": "ChecksWarned", "unhealthy": "CheckFailed"}
INSTANCE_TYPES = ("p5.48xlarge", "g5.xlarge")
STALE_AGE = 2 * 3600.0
FRESH_AGE = 300.0


def name_of(i: int) -> str:
    return f"ip-10-{i // 65536}-{i // 256 % 256}-{i % 256}.us-west-2.compute.internal"


def health_of(i: int) -> Optional[str]:
    """None: no agent report on this Node."""
    k = i % 10
    return None if k == 0 else "healthy" if k <= 6 else "degraded" if k <= 8 else "unhealthy"


def agent_of(i: int) -> str:
    return "0.9.0" if i % 3 == 0 else "1.0.0"


def untested(i: int) -> bool:
    return i % 7 == 0


def ready_seconds(i: int) -> Optional[float]:
    return None if health_of(i) in (None, "unhealthy") else 60.0 + i % 100


def stale(i: int) -> bool:
    return health_of(i) is not None and i % 50 == 1


def fleet_node(i: int, now: float) -> Dict[str, Any]:
    node = new_node(name_of(i))
    node["metadata"]["labels"]["node.kubernetes.io/instance-type"] = INSTANCE_TYPES[i % 2]
    health = health_of(i)
    if health is None:
        return node
    compat = ({"name": "compatibility", "status": "warn",
               "message": f"untested combination: closest known-good row {ROW} differs in containerd (2.1.0 vs 2.2.3)"}
              if untested(i) else
              {"name": "compatibility", "status": "pass", "message": f"{STACK}: known-good row {ROW}"})
    report: Dict[str, Any] = {"v": 1, "agent": agent_of(i), "time": rfc3339(now - 3600), "health": health}
    if ready_seconds(i) is not None:
        report["gpu_ready_seconds"] = ready_seconds(i)
    report["checks"] = [{"name": "containerd-config", "status": "pass", "message": "as desired"}, compat]
    report["actions"] = []
    node["metadata"]["annotations"].update({"gpu-node-agent/health": health,
                                            "gpu-node-agent/report": json.dumps(report, separators=(",", ":"))})
    beat = rfc3339(now - (STALE_AGE if stale(i) else FRESH_AGE))
    node["status"]["conditions"].append({
        "type": "GPUNodeAgentReady", "status": "False" if health == "unhealthy" else "True",
        "reason": REASONS[health], "message": "m", "lastHeartbeatTime": beat, "lastTransitionTime": beat})
    return node


def add_fleet(api: ApiServer, count: int, now: Optional[float] = None) -> List[str]:
    at = time.time() if now is None else now
    names = []
    with api.lock:
        for i in range(count):
            node = fleet_node(i, at)
            api.nodes[node["metadata"]["name"]] = node
            names.append(node["metadata"]["name"])
    return names


def operator_kubeconfig(directory: Any, api: ApiServer, token: str = "operator-token") -> Any:  # noqa: S107
    """A workstation kubeconfig: a context other than current-context, the CA beside it by a
    relative path (as ``aws eks update-kubeconfig`` does not, but kubectl allows), a bearer token."""
    import yaml

    api.add_token(token, "admin")
    (directory / "ca.crt").write_bytes(api.ca_pem())
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "other",
        "clusters": [{"name": "gpu", "cluster": {"server": api.url, "certificate-authority": "ca.crt"}},
                     {"name": "nowhere", "cluster": {"server": "https://127.0.0.1:1"}}],
        "contexts": [{"name": "gpu", "context": {"cluster": "gpu", "user": "operator"}},
                     {"name": "other", "context": {"cluster": "nowhere", "user": "operator"}}],
        "users": [{"name": "operator", "user": {"token": token}}],
    }
    path = directory / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path
