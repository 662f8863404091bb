"""The Kubernetes client against the loopback HTTPS API server: kubeconfig, credentials, retries."""

import base64
import io
import json
import time
from pathlib import Path
from typing import Any, Dict

import pytest
import trustme

from agent.base import log
from agent.base.noderoot import NodeRoot
from agent.base.retry import Deadline
from agent.kube.client import KubeClient
from agent.kube.errors import (
    ExecPluginError,
    KubeconfigError,
    KubeError,
    KubeForbidden,
    KubeNotFound,
    KubeUnauthorized,
)
from agent.kube.http import bypass_proxy
from agent.kube.kubeconfig import Cluster, Kubeconfig, load_kubeconfig
from tests.support.kube_helpers import (
    NODE,
    NODE_USER,
    FakeAws,
    FakeTime,
    sample_kubeconfig,
    write_node_file,
)
from tests.support.kube_server import STRATEGIC, ApiServer

KUBECONFIG = "/var/lib/kubelet/kubeconfig"
CA = "/etc/kubernetes/pki/ca.crt"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "node"
    r.mkdir()
    return r


def node_with_kubeconfig(root: Path, api: ApiServer, doc: Any = None) -> NodeRoot:
    write_node_file(root, CA, api.ca_pem())
    write_node_file(root, KUBECONFIG, doc if doc is not None else sample_kubeconfig(api.url), 0o600)
    return NodeRoot(str(root))


def client(root: NodeRoot, t: FakeTime, **kw: Any) -> KubeClient:
    return KubeClient(
        load_kubeconfig(root, KUBECONFIG),
        clock=t.clock,
        wall_clock=t.wall_clock,
        sleep=t.sleep,
        **{"random": t.random, **kw},
    )


def issued(aws: FakeAws, n: int) -> str:
    return f"k8s-aws-v1.fake-{n}"


# --- kubeconfig ---------------------------------------------------------------------------------


def test_sample_kubeconfig_loads_with_paths_under_root(root: Path, api: ApiServer) -> None:
    cfg = load_kubeconfig(node_with_kubeconfig(root, api), KUBECONFIG)
    assert cfg.context == "kubelet" and cfg.cluster.server == api.url
    assert cfg.cluster.ca_file == root / "etc/kubernetes/pki/ca.crt"
    assert cfg.user.exec is not None
    assert cfg.user.exec.command == "aws"
    assert cfg.user.exec.args == ("eks", "get-token", "--cluster-name", "my-cluster", "--region", "us-west-2")
    assert cfg.user.exec.api_version == "client.authentication.k8s.io/v1beta1"


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda d: d["clusters"][0]["cluster"].update(server="http://127.0.0.1:1"),
            "must be an https:// URL",
        ),
        (
            lambda d: d["clusters"][0]["cluster"].update({"insecure-skip-tls-verify": True}),
            "always verifies TLS",
        ),
        (
            lambda d: d["clusters"][0]["cluster"].update({"certificate-authority": "/etc/missing/ca.crt"}),
            "certificate-authority: /etc/missing/ca.crt does not exist",
        ),
        (lambda d: d.update({"current-context": "other"}), "no context named 'other'"),
        (lambda d: d.pop("current-context"), "current-context is not set"),
        (
            lambda d: d["users"][0]["user"]["exec"].update(
                apiVersion="client.authentication.k8s.io/v1alpha1"
            ),
            "exec.apiVersion",
        ),
        (
            lambda d: d["users"][0]["user"]["exec"].update(apiVersion="client.authentication.k8s.io/v1"),
            "interactiveMode",
        ),
        (lambda d: d["users"][0].update(user={}), "no credentials"),
        (lambda d: d["users"][0].update(user={"client-certificate-data": "AAAA"}), "needs both"),
        (
            lambda d: d["users"][0].update(
                user={"client-certificate-data": "%%%", "client-key-data": "AAAA"}
            ),
            "not valid base64",
        ),
        (
            lambda d: d["users"][0]["user"].update({"auth-provider": {"name": "gcp"}}),
            "auth-provider: not supported",
        ),
    ],
)
def test_kubeconfig_problems_name_the_key(root: Path, api: ApiServer, change: Any, message: str) -> None:
    doc = sample_kubeconfig(api.url)
    change(doc)
    node = node_with_kubeconfig(root, api, doc)
    with pytest.raises(KubeconfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as exc:
        load_kubeconfig(node, KUBECONFIG)
    assert str(root) in str(exc.value)  # which file


def test_missing_and_invalid_kubeconfig(root: Path, api: ApiServer) -> None:
    with pytest.raises(KubeconfigError, match="does not exist"):
        load_kubeconfig(NodeRoot(str(root)), KUBECONFIG)
    write_node_file(root, KUBECONFIG, "clusters: [\n")
    with pytest.raises(KubeconfigError, match="invalid YAML"):
        load_kubeconfig(NodeRoot(str(root)), KUBECONFIG)


def test_relative_paths_resolve_against_the_kubeconfig_directory(root: Path, api: ApiServer) -> None:
    doc = sample_kubeconfig(api.url)
    doc["clusters"][0]["cluster"]["certificate-authority"] = "pki/ca.crt"
    write_node_file(root, "/var/lib/kubelet/pki/ca.crt", api.ca_pem())
    write_node_file(root, KUBECONFIG, doc)
    cfg = load_kubeconfig(NodeRoot(str(root)), KUBECONFIG)
    assert cfg.cluster.ca_file == root / "var/lib/kubelet/pki/ca.crt"


# --- tokens and TLS -----------------------------------------------------------------------------


def static_token_doc(api: ApiServer, **user: Any) -> Dict[str, Any]:
    doc = sample_kubeconfig(api.url)
    doc["users"][0]["user"] = user
    return doc


def test_static_token_get_and_patch(root: Path, api: ApiServer) -> None:
    api.add_token("static", NODE_USER)
    node = node_with_kubeconfig(root, api, static_token_doc(api, token="static"))
    t = FakeTime()
    with client(node, t) as c:
        got = c.get_node(NODE, Deadline(30, t.clock))
        assert got["metadata"]["name"] == NODE
        patched = c.patch_node(NODE, {"metadata": {"annotations": {"a/b": "c"}}}, Deadline(30, t.clock))
        assert patched["metadata"]["annotations"]["a/b"] == "c"
    assert api.requests[-1].content_type == "application/merge-patch+json"
    assert t.sleeps == []


def test_status_patch_is_strategic(root: Path, api: ApiServer) -> None:
    api.add_token("static", NODE_USER)
    node = node_with_kubeconfig(root, api, static_token_doc(api, token="static"))
    t = FakeTime()
    cond = {"type": "GPUNodeAgentReady", "status": "True", "reason": "AllChecksPassed", "message": "m"}
    with client(node, t) as c:
        out = c.patch_node_status(NODE, {"status": {"conditions": [cond]}}, Deadline(30, t.clock))
    assert api.requests[-1].content_type == STRATEGIC
    assert {c["type"] for c in out["status"]["conditions"]} >= {"Ready", "GPUNodeAgentReady"}


def test_static_token_refused_is_not_retried(root: Path, api: ApiServer) -> None:
    node = node_with_kubeconfig(root, api, static_token_doc(api, token="revoked"))
    t = FakeTime()
    with (
        client(node, t) as c,
        pytest.raises(KubeUnauthorized, match="refused the credential from kubeconfig token"),
    ):
        c.get_node(NODE, Deadline(30, t.clock))
    assert len(api.requests) == 1


def test_token_file_is_read_again_after_401(root: Path, api: ApiServer) -> None:
    api.add_token("old", NODE_USER)
    api.add_token("new", NODE_USER)
    token_file = write_node_file(root, "/var/lib/kubelet/token", "old\n", 0o600)
    node = node_with_kubeconfig(root, api, static_token_doc(api, tokenFile="/var/lib/kubelet/token"))
    t = FakeTime()
    with client(node, t) as c:
        c.get_node(NODE, Deadline(30, t.clock))
        del api.tokens["old"]  # rotated: the server stops accepting the old token...
        token_file.write_text("new\n")  # ...and the file has the new one
        assert c.get_node(NODE, Deadline(30, t.clock))["metadata"]["name"] == NODE
    assert [(r.status, r.authorization) for r in api.requests] == [
        (200, "Bearer old"),
        (401, "Bearer old"),
        (200, "Bearer new"),
    ]


def test_ca_data_and_client_certificate_data(root: Path, api: ApiServer) -> None:
    leaf = api.client_cert(NODE_USER)
    doc = sample_kubeconfig(api.url)
    cluster = doc["clusters"][0]["cluster"]
    del cluster["certificate-authority"]
    cluster["certificate-authority-data"] = base64.b64encode(api.ca_pem()).decode()
    doc["users"][0]["user"] = {
        "client-certificate-data": base64.b64encode(
            b"".join(b.bytes() for b in leaf.cert_chain_pems)
        ).decode(),
        "client-key-data": base64.b64encode(leaf.private_key_pem.bytes()).decode(),
    }
    write_node_file(root, KUBECONFIG, doc, 0o600)
    t = FakeTime()
    c = client(NodeRoot(str(root)), t)
    try:
        assert c.get_node(NODE, Deadline(30, t.clock))["metadata"]["name"] == NODE
        private_dir = Path(c._files._dir or "")
        assert private_dir.is_dir() and oct(private_dir.stat().st_mode & 0o777) == "0o700"
        assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in private_dir.iterdir())
    finally:
        c.close()
    assert not private_dir.exists()  # key material removed
    assert api.requests[-1].peer_cn == NODE_USER and api.requests[-1].authorization is None


def test_client_certificate_files_under_root(root: Path, api: ApiServer) -> None:
    leaf = api.client_cert(NODE_USER)
    write_node_file(
        root, "/var/lib/kubelet/pki/kubelet-client.crt", b"".join(b.bytes() for b in leaf.cert_chain_pems)
    )
    write_node_file(root, "/var/lib/kubelet/pki/kubelet-client.key", leaf.private_key_pem.bytes(), 0o600)
    doc = static_token_doc(
        api,
        **{
            "client-certificate": "/var/lib/kubelet/pki/kubelet-client.crt",
            "client-key": "/var/lib/kubelet/pki/kubelet-client.key",
        },
    )
    node = node_with_kubeconfig(root, api, doc)
    t = FakeTime()
    with client(node, t) as c:
        assert c.get_node(NODE, Deadline(30, t.clock))["metadata"]["name"] == NODE
    assert api.requests[-1].peer_cn == NODE_USER


def test_tls_verification_failure_is_not_retried(root: Path, api: ApiServer) -> None:
    api.add_token("static", NODE_USER)
    node = node_with_kubeconfig(root, api, static_token_doc(api, token="static"))
    write_node_file(root, CA, trustme.CA().cert_pem.bytes())  # some other cluster's CA
    t = FakeTime()
    with client(node, t) as c, pytest.raises(KubeError, match=r"TLS with .* failed"):
        c.get_node(NODE, Deadline(30, t.clock))
    assert t.sleeps == [] and api.requests == []


# --- retries and the deadline -------------------------------------------------------------------


@pytest.fixture
def token_node(root: Path, api: ApiServer) -> NodeRoot:
    api.add_token("static", NODE_USER)
    return node_with_kubeconfig(root, api, static_token_doc(api, token="static"))


def test_429_honours_retry_after(token_node: NodeRoot, api: ApiServer) -> None:
    api.fail_next("GET", f"/api/v1/nodes/{NODE}", 429, Retry_After="7")
    t = FakeTime()
    with client(token_node, t) as c:
        assert c.get_node(NODE, Deadline(30, t.clock))["metadata"]["name"] == NODE
    assert t.sleeps == [7.0 + 0.5 * 3.5]  # at least Retry-After, plus random() times half of it


@pytest.mark.parametrize("rand, retry_after, expected", [(0.0, 7, 7.0), (0.999, 7, 10.4965), (1.0, 30, 38.0)])
def test_retry_after_is_a_floor_with_jitter_above_it(
    token_node: NodeRoot, api: ApiServer, rand: float, retry_after: int, expected: float
) -> None:
    # A crowd told the same Retry-After must not come back as one wave: the wait is spread over
    # [Retry-After, 1.5 x Retry-After], the spread capped at 8 s.
    api.fail_next("GET", f"/api/v1/nodes/{NODE}", 429, Retry_After=str(retry_after))
    t = FakeTime()
    with client(token_node, t, random=lambda: rand) as c:
        c.get_node(NODE, Deadline(60, t.clock))
    assert t.sleeps == [pytest.approx(expected)]


def test_retry_after_as_http_date(token_node: NodeRoot, api: ApiServer) -> None:
    from email.utils import formatdate

    t = FakeTime()
    api.fail_next("GET", f"/api/v1/nodes/{NODE}", 503, Retry_After=formatdate(t.wall + 5, usegmt=True))
    with client(token_node, t) as c:
        c.get_node(NODE, Deadline(30, t.clock))
    assert len(t.sleeps) == 1 and 4.0 <= t.sleeps[0] <= 6.0 * 1.5


def test_5xx_backoff_grows_with_jitter(token_node: NodeRoot, api: ApiServer) -> None:
    api.fail_next("PATCH", f"/api/v1/nodes/{NODE}", 500, times=3)
    t = FakeTime()
    with client(token_node, t) as c:
        c.patch_node(NODE, {"metadata": {"annotations": {"a/b": "c"}}}, Deadline(30, t.clock))
    # equal jitter with random() = 0.5: 3/4 of 0.5, 1, 2 seconds
    assert t.sleeps == [0.375, 0.75, 1.5]
    assert [r.status for r in api.requests] == [500, 500, 500, 200]


def test_retry_after_past_the_deadline_gives_up_at_once(token_node: NodeRoot, api: ApiServer) -> None:
    api.fail_next("GET", f"/api/v1/nodes/{NODE}", 429, Retry_After="60")
    t = FakeTime()
    with (
        client(token_node, t) as c,
        pytest.raises(KubeError, match="Retry-After 60s is past the 30s deadline"),
    ):
        c.get_node(NODE, Deadline(30, t.clock))
    assert t.sleeps == []


def test_persistent_5xx_stops_at_the_deadline(token_node: NodeRoot, api: ApiServer) -> None:
    api.fail_next("GET", f"/api/v1/nodes/{NODE}", 503, times=100)
    t = FakeTime()
    with client(token_node, t) as c, pytest.raises(KubeError, match="HTTP 503"):
        c.get_node(NODE, Deadline(30, t.clock))
    assert sum(t.sleeps) <= 30
    assert 5 <= len(api.requests) < 20


def test_403_is_not_retried(token_node: NodeRoot, api: ApiServer) -> None:
    api.add_node("someone-else")
    t = FakeTime()
    with (
        client(token_node, t) as c,
        pytest.raises(KubeForbidden, match='403 Forbidden: nodes "someone-else" is'),
    ):
        c.patch_node("someone-else", {"metadata": {"annotations": {"a/b": "c"}}}, Deadline(30, t.clock))
    assert len(api.requests) == 1 and t.sleeps == []


def test_404_waits_for_registration(root: Path, api: ApiServer) -> None:
    api.add_token("late", "system:node:late-node")
    node = node_with_kubeconfig(root, api, static_token_doc(api, token="late"))
    t = FakeTime(on_sleep=lambda n: api.add_node("late-node") if n == 2 else None)
    with client(node, t) as c:
        assert (
            c.get_node("late-node", Deadline(30, t.clock), wait_registered=True)["metadata"]["name"]
            == "late-node"
        )
    assert [r.status for r in api.requests] == [404, 404, 200]


def test_404_bounded_by_the_deadline(root: Path, api: ApiServer) -> None:
    api.add_token("never", "system:node:never")
    node = node_with_kubeconfig(root, api, static_token_doc(api, token="never"))
    t = FakeTime()
    with client(node, t) as c, pytest.raises(KubeError, match="not registered"):
        c.get_node("never", Deadline(10, t.clock), wait_registered=True)
    assert sum(t.sleeps) <= 10
    with client(node, t) as c, pytest.raises(KubeNotFound):
        c.get_node("never", Deadline(10, t.clock))


def test_unreachable_server_retries_then_gives_up(root: Path, api: ApiServer) -> None:
    api.add_token("static", NODE_USER)
    doc = static_token_doc(api, token="static")
    api.stop()  # nothing listens on that port any more
    node = node_with_kubeconfig(root, api, doc)
    t = FakeTime()
    with client(node, t) as c, pytest.raises(KubeError, match="cannot reach"):
        c.get_node(NODE, Deadline(5, t.clock))
    assert len(t.sleeps) >= 2


# --- exec plugin --------------------------------------------------------------------------------


def test_exec_plugin_from_path_with_exec_info(root: Path, api: ApiServer, aws: FakeAws) -> None:
    api.add_token(issued(aws, 1), NODE_USER)
    node = node_with_kubeconfig(root, api)
    t = FakeTime()
    with client(node, t) as c:
        for _ in range(3):
            c.get_node(NODE, Deadline(30, t.clock))
        assert c.exec_runs == 1  # cached until near expiry
    (call,) = aws.calls()
    assert call["argv"] == ["eks", "get-token", "--cluster-name", "my-cluster", "--region", "us-west-2"]
    info = json.loads(call["exec_info"])
    assert info == {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "kind": "ExecCredential",
        "spec": {"interactive": False},
    }


def test_exec_v1_with_env_and_cluster_info(root: Path, api: ApiServer, aws: FakeAws) -> None:
    api.add_token(issued(aws, 1), NODE_USER)
    doc = sample_kubeconfig(api.url)
    ex = doc["users"][0]["user"]["exec"]
    ex.update(
        apiVersion="client.authentication.k8s.io/v1",
        interactiveMode="Never",
        provideClusterInfo=True,
        env=[{"name": "FAKE_AWS_EXTRA", "value": "from-kubeconfig"}],
    )
    node = node_with_kubeconfig(root, api, doc)
    t = FakeTime()
    with client(node, t) as c:
        c.get_node(NODE, Deadline(30, t.clock))
    (call,) = aws.calls()
    assert call["extra_env"] == "from-kubeconfig"
    info = json.loads(call["exec_info"])
    assert info["apiVersion"] == "client.authentication.k8s.io/v1"
    assert info["spec"]["interactive"] is False
    assert info["spec"]["cluster"]["server"] == api.url
    assert base64.b64decode(info["spec"]["cluster"]["certificate-authority-data"]) == api.ca_pem()


def test_exec_credential_refreshed_near_expiry(root: Path, api: ApiServer, aws: FakeAws) -> None:
    api.add_token(issued(aws, 1), NODE_USER)
    api.add_token(issued(aws, 2), NODE_USER)
    node = node_with_kubeconfig(root, api)
    t = FakeTime()
    with client(node, t) as c:
        c.get_node(NODE, Deadline(30, t.clock))
        t.advance(900 - 30)  # inside the refresh margin of the 15-minute token
        c.get_node(NODE, Deadline(30, t.clock))
        assert c.exec_runs == 2
    assert [r.authorization for r in api.requests] == [f"Bearer {issued(aws, 1)}", f"Bearer {issued(aws, 2)}"]


def test_exec_rerun_once_on_401(root: Path, api: ApiServer, aws: FakeAws) -> None:
    api.add_token(issued(aws, 2), NODE_USER)  # the first token is unknown to the server (revoked)
    node = node_with_kubeconfig(root, api)
    t = FakeTime()
    with client(node, t) as c:
        assert c.get_node(NODE, Deadline(30, t.clock))["metadata"]["name"] == NODE
        assert c.exec_runs == 2
    assert [r.status for r in api.requests] == [401, 200]


def test_exec_rerun_only_once(root: Path, api: ApiServer, aws: FakeAws) -> None:
    node = node_with_kubeconfig(root, api)
    t = FakeTime()
    with client(node, t) as c, pytest.raises(KubeUnauthorized, match="refreshed once, refused again"):
        c.get_node(NODE, Deadline(30, t.clock))
    assert len(aws.calls()) == 2 and len(api.requests) == 2


def test_exec_expired_credential(root: Path, api: ApiServer, aws: FakeAws) -> None:
    aws.mode("expired")
    # The server knows the tokens but they expired a minute ago.
    api.add_token(issued(aws, 1), NODE_USER, expires=time.time() - 60)
    api.add_token(issued(aws, 2), NODE_USER, expires=time.time() - 60)
    node = node_with_kubeconfig(root, api)
    t = FakeTime()
    with client(node, t) as c, pytest.raises(KubeUnauthorized, match=r"exec plugin aws expired at .*Z"):
        c.get_node(NODE, Deadline(30, t.clock))
    assert len(aws.calls()) == 2


def test_exec_malformed_output_is_not_echoed(root: Path, api: ApiServer, aws: FakeAws) -> None:
    aws.mode("malformed")
    node = node_with_kubeconfig(root, api)
    t = FakeTime()
    with client(node, t) as c, pytest.raises(ExecPluginError, match="printed invalid JSON") as exc:
        c.get_node(NODE, Deadline(30, t.clock))
    assert "SECRET" not in str(exc.value)
    assert api.requests == []


def test_exec_nonzero_exit(root: Path, api: ApiServer, aws: FakeAws) -> None:
    aws.mode("fail")
    node = node_with_kubeconfig(root, api)
    t = FakeTime()
    with client(node, t) as c, pytest.raises(ExecPluginError, match="exited with 255: An error occurred"):
        c.get_node(NODE, Deadline(30, t.clock))


def test_exec_hang_is_killed_at_the_timeout(root: Path, api: ApiServer, aws: FakeAws) -> None:
    aws.mode("hang")
    node = node_with_kubeconfig(root, api)
    t = FakeTime()
    started = time.monotonic()
    with (
        client(node, t, exec_timeout=0.5) as c,
        pytest.raises(ExecPluginError, match=r"no credential within 0.5s"),
    ):
        c.get_node(NODE, Deadline(30, t.clock))
    assert time.monotonic() - started < 5


def test_exec_command_not_on_path(root: Path, api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(root / "empty"))
    doc = sample_kubeconfig(api.url)
    doc["users"][0]["user"]["exec"]["installHint"] = "install the AWS CLI"
    node = node_with_kubeconfig(root, api, doc)
    t = FakeTime()
    with (
        client(node, t) as c,
        pytest.raises(ExecPluginError, match=r"not found on PATH \(install the AWS CLI\)"),
    ):
        c.get_node(NODE, Deadline(30, t.clock))


def test_exec_absolute_command_resolves_under_root(
    root: Path, api: ApiServer, aws: FakeAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    (aws.bin_dir / "aws").rename(aws.bin_dir / "moved")
    write_node_file(root, "/usr/local/bin/aws", (aws.bin_dir / "moved").read_text(), 0o755)
    doc = sample_kubeconfig(api.url)
    doc["users"][0]["user"]["exec"]["command"] = "/usr/local/bin/aws"
    api.add_token(issued(aws, 1), NODE_USER)
    node = node_with_kubeconfig(root, api, doc)
    t = FakeTime()
    with client(node, t) as c:
        c.get_node(NODE, Deadline(30, t.clock))
    assert len(aws.calls()) == 1


def test_exec_api_version_mismatch(root: Path, api: ApiServer, aws: FakeAws) -> None:
    aws.set("api", "client.authentication.k8s.io/v1")
    node = node_with_kubeconfig(root, api)
    t = FakeTime()
    with client(node, t) as c, pytest.raises(ExecPluginError, match="returned apiVersion"):
        c.get_node(NODE, Deadline(30, t.clock))


def test_exec_client_certificate_credential(root: Path, api: ApiServer, aws: FakeAws) -> None:
    leaf = api.client_cert(NODE_USER)
    aws.mode("cert")
    aws.set("cert", b"".join(b.bytes() for b in leaf.cert_chain_pems).decode())
    aws.set("key", leaf.private_key_pem.bytes().decode())
    node = node_with_kubeconfig(root, api)
    t = FakeTime()
    with client(node, t) as c:
        c.get_node(NODE, Deadline(30, t.clock))
    assert api.requests[-1].peer_cn == NODE_USER


def test_rotated_exec_client_certificate_is_presented_on_a_new_connection(
    root: Path, api: ApiServer, aws: FakeAws
) -> None:
    aws.mode("cert")
    for n, user in ((1, "system:node:revoked"), (2, NODE_USER)):
        leaf = api.client_cert(user)
        aws.set(f"cert{n}", b"".join(b.bytes() for b in leaf.cert_chain_pems).decode())
        aws.set(f"key{n}", leaf.private_key_pem.bytes().decode())
    api.revoked_cns.add("system:node:revoked")
    node = node_with_kubeconfig(root, api)
    t = FakeTime()
    with client(node, t) as c:
        c.get_node(NODE, Deadline(30, t.clock))
    assert [(r.status, r.peer_cn) for r in api.requests] == [(401, "system:node:revoked"), (200, NODE_USER)]


def test_tokens_never_reach_the_log(root: Path, api: ApiServer, aws: FakeAws) -> None:
    stream = io.StringIO()
    log.setup("json", verbosity=1, stream=stream)
    try:
        api.add_token(issued(aws, 2), NODE_USER)
        node = node_with_kubeconfig(root, api)
        t = FakeTime()
        with client(node, t) as c:
            c.get_node(NODE, Deadline(30, t.clock))
    finally:
        log.setup("auto", 0)
    text = stream.getvalue()
    assert "exec credential obtained" in text
    assert "fake-1" not in text and "fake-2" not in text


# --- small pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, no_proxy, bypass",
    [
        ("abc.gr7.us-west-2.eks.amazonaws.com", ".amazonaws.com", True),
        ("abc.gr7.us-west-2.eks.amazonaws.com", "amazonaws.com", True),
        ("abc.gr7.us-west-2.eks.amazonaws.com", "example.com,10.0.0.0/8", False),
        ("10.1.2.3", "10.0.0.0/8", True),
        ("abc.eks.amazonaws.com", "*", True),
        ("abc.eks.amazonaws.com", "abc.eks.amazonaws.com:8443", False),
    ],
)
def test_no_proxy_matching(host: str, no_proxy: str, bypass: bool) -> None:
    assert bypass_proxy(host, 443, no_proxy) is bypass


def test_proxy_from_env_never_for_loopback(root: Path, api: ApiServer) -> None:
    api.add_token("static", NODE_USER)
    node = node_with_kubeconfig(root, api, static_token_doc(api, token="static"))
    t = FakeTime()
    env = {"HTTPS_PROXY": "http://127.0.0.1:9", "PATH": "/usr/bin"}
    with client(node, t, env=env) as c:
        assert c.session.proxies == {}
        c.get_node(NODE, Deadline(30, t.clock))
    cfg = load_kubeconfig(node, KUBECONFIG)
    remote = Kubeconfig(
        **{**cfg.__dict__, "cluster": Cluster("https://abc.eks.amazonaws.com", None, None, None)}
    )
    with KubeClient(remote, env=env) as c:
        assert c.session.proxies == {"https": "http://127.0.0.1:9"}
    with KubeClient(remote, env={**env, "NO_PROXY": ".amazonaws.com"}) as c:
        assert c.session.proxies == {}


def test_server_certificate_for_another_name_is_refused(root: Path) -> None:
    api = ApiServer(names=("kube.example.com",)).start()  # trusted CA, but not this address's name
    try:
        api.add_token("static", NODE_USER)
        node = node_with_kubeconfig(root, api, static_token_doc(api, token="static"))
        t = FakeTime()
        with (
            client(node, t) as c,
            pytest.raises(KubeError, match=r"TLS with https://127\.0\.0\.1:\d+ failed"),
        ):
            c.get_node(NODE, Deadline(30, t.clock))
        assert t.sleeps == []
    finally:
        api.stop()
