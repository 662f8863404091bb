"""Hostile credentials and kubeconfigs against the Kubernetes client (agent/kube/kubeconfig.py,
agent/kube/credentials.py, agent/kube/exec.py, agent/kube/client.py): tokens validated on load and never
shown, kubeconfig-relative paths confined under --root, bounded YAML, validated node names."""

import json
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from agent.base.noderoot import NodeRoot
from agent.base.retry import Deadline
from agent.kube.client import KubeClient
from agent.kube.errors import ExecPluginError, KubeconfigError, KubeError
from agent.kube.kubeconfig import load_kubeconfig
from agent.kube.tokens import redact
from tests.support.kube_helpers import NODE, NODE_USER, write_kubeconfig, write_node_file
from tests.support.kube_server import ApiServer

KUBECONFIG = "/var/lib/kubelet/kubeconfig"
CA = "/etc/kubernetes/pki/ca.crt"
SECRET = "k8s-aws-v1.SECRETaaaa"
BAD_TOKENS = {
    "carriage-return": SECRET + "\rSECRETbbbb",
    "nul": SECRET + "\x00SECRETbbbb",
    "inner-newline": SECRET + "\nSECRETbbbb",
    "escape": SECRET + "\x1b[2JSECRETbbbb",
    "huge": SECRET + "SECRETbbbb" * 20_000,
}


@pytest.fixture
def api(api: ApiServer) -> ApiServer:
    """The shared API server (tests/conftest.py), knowing the node's token."""
    api.add_token(SECRET, NODE_USER)
    return api


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "node"
    r.mkdir()
    return r


def kubeconfig(root: Path, api: ApiServer, user: Dict[str, Any]) -> NodeRoot:
    return NodeRoot(str(write_kubeconfig(root, api, user)))


def assert_secret_free(text: str) -> None:
    assert "SECRET" not in text, text[:300]


def get_node(node: NodeRoot) -> Dict[str, Any]:
    with KubeClient(load_kubeconfig(node, KUBECONFIG)) as client:
        return client.get_node(NODE, Deadline(10))


# --- tokens ---------------------------------------------------------------------------------------


def test_one_trailing_newline_is_dropped_as_kubectl_does(root: Path, api: ApiServer) -> None:
    node = kubeconfig(root, api, {"token": SECRET + "\n"})
    assert get_node(node)["metadata"]["name"] == NODE
    assert api.requests[-1].authorization == f"Bearer {SECRET}"


def test_a_whitespace_only_token_is_refused_never_sent() -> None:
    from agent.kube.tokens import checked_token

    for blank in ("    ", " ", "   \n"):
        with pytest.raises(KubeconfigError, match="^token: is empty$"):
            checked_token(blank, "token", KubeconfigError)
    assert checked_token(" x ", "token", KubeconfigError) == " x "


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_a_bad_kubeconfig_token_is_refused_on_load_without_its_value(root: Path, api: ApiServer, kind: str) -> None:
    node = kubeconfig(root, api, {"token": BAD_TOKENS[kind]})
    with pytest.raises(KubeconfigError) as info:
        load_kubeconfig(node, KUBECONFIG)
    message = str(info.value)
    assert "users[kubelet].user.token" in message and "the value is not shown" in message
    assert_secret_free(message)
    assert "\n" not in message and len(message) < 300
    assert not api.requests


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_a_bad_token_file_is_refused_without_its_value(root: Path, api: ApiServer, kind: str) -> None:
    write_node_file(root, "/var/lib/kubelet/token", BAD_TOKENS[kind])
    node = kubeconfig(root, api, {"tokenFile": "token"})
    with pytest.raises(KubeconfigError) as info:
        get_node(node)
    assert_secret_free(str(info.value))
    assert "tokenFile" in str(info.value) and not api.requests


def test_a_token_file_with_surrounding_whitespace_works(root: Path, api: ApiServer) -> None:
    write_node_file(root, "/var/lib/kubelet/token", f"  {SECRET}\r\n")
    assert get_node(kubeconfig(root, api, {"tokenFile": "token"}))["metadata"]["name"] == NODE


def exec_plugin(root: Path, token: str, *, fail: bool = False) -> str:
    path = "/usr/local/bin/cred"
    status = {"token": token}
    body = json.dumps({"kind": "ExecCredential", "apiVersion": "client.authentication.k8s.io/v1beta1",
                       "status": status})
    script = f"#!{sys.executable}\nimport sys\n"
    if fail:
        script += f"sys.stderr.write('could not sign: Authorization: Bearer ' + {token!r} + '\\n')\nsys.exit(3)\n"
    else:
        script += f"print({body!r})\n"
    write_node_file(root, path, script, 0o755)
    return path


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_a_bad_exec_token_is_refused_without_its_value(root: Path, api: ApiServer, kind: str) -> None:
    command = exec_plugin(root, BAD_TOKENS[kind])
    node = kubeconfig(root, api, {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                            "command": command}})
    with pytest.raises(ExecPluginError) as info:
        get_node(node)
    if kind == "huge":  # cut short by the process runner's output limit: not JSON, never echoed
        assert "printed invalid JSON" in str(info.value)
    else:
        assert "status.token" in str(info.value) and "the value is not shown" in str(info.value)
    assert_secret_free(str(info.value))
    assert not api.requests


def test_an_exec_plugins_stderr_is_redacted(root: Path, api: ApiServer) -> None:
    command = exec_plugin(root, SECRET + "SECRETcccccccccccccccccccccccccc", fail=True)
    node = kubeconfig(root, api, {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                            "command": command}})
    with pytest.raises(ExecPluginError) as info:
        get_node(node)
    assert "exited with 3: could not sign: Authorization: <redacted>" in str(info.value)
    assert_secret_free(str(info.value))


def test_redact_masks_what_can_be_a_credential() -> None:
    assert redact("Invalid header value b'Bearer abc\\n'") == "Invalid header value b'<redacted>"
    assert redact("token k8s-aws-v1.aHR0cHM6Ly9zdHMu rest") == "token <redacted> rest"
    assert redact("eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMyJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl") == "<redacted>"
    assert redact("connection refused (port 443)") == "connection refused (port 443)"


# --- paths the kubeconfig names ----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["tokenFile", "client-certificate"])
def test_relative_paths_may_not_climb_above_the_root(root: Path, api: ApiServer, key: str) -> None:
    user: Dict[str, Any] = {key: "../../../../../../etc/passwd"}
    if key == "client-certificate":
        user["client-key"] = "/etc/kubernetes/pki/ca.crt"
    node = kubeconfig(root, api, user)
    with pytest.raises(KubeconfigError, match=rf"users\[kubelet\]\.user\.{key}: .*climbs above --root"):
        load_kubeconfig(node, KUBECONFIG)


def test_an_absolute_symlinked_ca_resolves_inside_the_tree(root: Path, api: ApiServer, tmp_path: Path) -> None:
    host_ca = tmp_path / "host-ca.crt"
    host_ca.write_text("not the cluster's CA\n")
    write_node_file(root, str(host_ca), api.ca_pem())  # the image's own copy at the same path
    node = kubeconfig(root, api, {"token": SECRET})
    (root / CA.lstrip("/")).unlink()
    (root / CA.lstrip("/")).symlink_to(host_ca)
    config = load_kubeconfig(node, KUBECONFIG)
    assert config.cluster.ca_file == root / str(host_ca).lstrip("/")
    assert get_node(node)["metadata"]["name"] == NODE


def test_an_exec_command_may_not_climb_above_the_root(root: Path, api: ApiServer) -> None:
    node = kubeconfig(root, api, {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                            "command": "../../../../../../bin/sh"}})
    with pytest.raises(ExecPluginError, match="exec command: .*climbs above --root"):
        get_node(node)


def test_a_kubeconfig_alias_bomb_is_refused(root: Path, api: ApiServer) -> None:
    lines = ['x0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"x{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]" for n in range(1, 8)]
    write_node_file(root, KUBECONFIG, "\n".join(lines) + "\n")
    with pytest.raises(KubeconfigError, match="too many YAML nodes") as info:
        load_kubeconfig(NodeRoot(str(root)), KUBECONFIG)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("value", ["!!float abc", "!!int x", "!!timestamp yesterday", "!!bool maybe"])
def test_a_kubeconfig_value_yaml_cannot_construct_is_one_line(root: Path, value: str) -> None:
    write_node_file(root, KUBECONFIG, f"apiVersion: v1\nclusters: {value}\n")
    with pytest.raises(KubeconfigError, match="kubeconfig: invalid YAML: ") as info:
        load_kubeconfig(NodeRoot(str(root)), KUBECONFIG)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["", "UPPER", "a/b", "x" * 300, "node\n"])
def test_a_bad_node_name_is_never_sent(root: Path, api: ApiServer, name: str) -> None:
    node = kubeconfig(root, api, {"token": SECRET})
    with KubeClient(load_kubeconfig(node, KUBECONFIG)) as client:
        with pytest.raises(KubeError, match="is not a DNS subdomain"):
            client.get_node(name, Deadline(5))
    assert not api.requests


def test_a_token_is_checked_to_the_exact_character_and_length() -> None:
    """The bounds of what a bearer token may hold, with the exact one-line messages."""
    from agent.kube.tokens import MAX_TOKEN, checked_token

    def refused(token: str) -> str:
        with pytest.raises(KubeconfigError) as info:
            checked_token(token, "token", KubeconfigError)
        return str(info.value)

    assert checked_token("ab~" + "x" * (MAX_TOKEN - 3), "token", KubeconfigError).startswith("ab~")  # '~' and the limit
    assert refused("x" * (MAX_TOKEN + 1)) == (f"token: is {MAX_TOKEN + 1} characters long, more than {MAX_TOKEN}; "
                                              "refusing to send it (the value is not shown)")
    assert refused("ab\x7fc") == ("token: contains the control character U+007F at position 3; refusing to send it "
                                  "(the value is not shown)")
    assert refused("a\x80c") == ("token: contains a non-ASCII character at position 2; refusing to send it "
                                 "(the value is not shown)")
