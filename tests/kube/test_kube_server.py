"""The test API server's own semantics: the client tests are only as good as this server."""

import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Any, Dict, Optional, Tuple

import pytest

from agent.report import events
from tests.support.kube_helpers import NODE, NODE_USER
from tests.support.kube_server import MERGE, STRATEGIC, ApiServer, merge_patch, strategic_merge_patch


@pytest.fixture
def api(api: ApiServer) -> ApiServer:
    """The shared API server (tests/conftest.py), knowing the node's token."""
    api.add_token("node-token", NODE_USER)
    return api


def call(
    api: ApiServer,
    method: str,
    path: str,
    body: Any = None,
    ctype: str = MERGE,
    token: Optional[str] = "node-token",  # noqa: S107 - a test token
    context: Optional[ssl.SSLContext] = None,
) -> Tuple[int, Dict[str, Any], Any]:
    ctx = context or ssl.create_default_context(cadata=api.ca_pem().decode())
    req = urllib.request.Request(
        api.url + path, method=method, data=json.dumps(body).encode() if body is not None else None
    )
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def conditions(node: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {c["type"]: c for c in node["status"]["conditions"]}


OURS = {
    "type": "GPUNodeAgentReady",
    "status": "True",
    "reason": "AllChecksPassed",
    "message": "ok",
    "lastHeartbeatTime": "2026-05-12T11:00:00Z",
    "lastTransitionTime": "2026-05-12T11:00:00Z",
}


def test_get_node_and_unknown_node(api: ApiServer) -> None:
    code, node, _ = call(api, "GET", f"/api/v1/nodes/{NODE}")
    assert code == 200 and node["metadata"]["name"] == NODE
    assert "Ready" in conditions(node)
    api.add_token("admin-token", "admin")
    code, status, _ = call(api, "GET", "/api/v1/nodes/ip-10-9-9-9", token="admin-token")
    assert code == 404 and status["kind"] == "Status" and status["reason"] == "NotFound"


def test_tokens_missing_unknown_and_expired_are_401() -> None:
    now = [100.0]
    server = ApiServer(now=lambda: now[0]).start()
    try:
        server.add_node(NODE)
        server.add_token("short", NODE_USER, expires=150.0)
        assert call(server, "GET", f"/api/v1/nodes/{NODE}", token=None)[0] == 401
        assert call(server, "GET", f"/api/v1/nodes/{NODE}", token="nope")[0] == 401
        assert call(server, "GET", f"/api/v1/nodes/{NODE}", token="short")[0] == 200
        now[0] = 150.0
        assert call(server, "GET", f"/api/v1/nodes/{NODE}", token="short")[0] == 401
    finally:
        server.stop()


def test_client_certificate_authenticates_as_its_common_name(api: ApiServer, tmp_path: Any) -> None:
    ctx = ssl.create_default_context(cadata=api.ca_pem().decode())
    api.client_cert(NODE_USER).configure_cert(ctx)
    code, _, _ = call(api, "GET", f"/api/v1/nodes/{NODE}", token=None, context=ctx)
    assert code == 200
    assert api.requests[-1].peer_cn == NODE_USER


def test_node_restriction_forbids_other_nodes(api: ApiServer) -> None:
    api.add_node("ip-10-0-0-99.us-west-2.compute.internal")
    code, status, _ = call(
        api,
        "PATCH",
        "/api/v1/nodes/ip-10-0-0-99.us-west-2.compute.internal",
        {"metadata": {"annotations": {"a": "b"}}},
    )
    assert code == 403 and "is forbidden" in status["message"]


def test_merge_patch_sets_and_removes_annotations(api: ApiServer) -> None:
    code, node, _ = call(
        api, "PATCH", f"/api/v1/nodes/{NODE}", {"metadata": {"annotations": {"x/health": "ok"}}}
    )
    assert code == 200
    assert node["metadata"]["annotations"] == {"node.alpha.kubernetes.io/ttl": "0", "x/health": "ok"}
    assert node["metadata"]["resourceVersion"] == "2"
    code, node, _ = call(
        api, "PATCH", f"/api/v1/nodes/{NODE}", {"metadata": {"annotations": {"x/health": None}}}
    )
    assert node["metadata"]["annotations"] == {"node.alpha.kubernetes.io/ttl": "0"}


def test_merge_patch_on_status_replaces_the_whole_conditions_list(api: ApiServer) -> None:
    """The trap the agent must avoid: kubelet's Ready is gone."""
    code, node, _ = call(api, "PATCH", f"/api/v1/nodes/{NODE}/status", {"status": {"conditions": [OURS]}})
    assert code == 200
    assert list(conditions(node)) == ["GPUNodeAgentReady"]


def test_strategic_merge_patch_merges_conditions_by_type(api: ApiServer) -> None:
    code, node, _ = call(
        api, "PATCH", f"/api/v1/nodes/{NODE}/status", {"status": {"conditions": [OURS]}}, ctype=STRATEGIC
    )
    assert code == 200
    assert set(conditions(node)) == {
        "MemoryPressure",
        "DiskPressure",
        "PIDPressure",
        "Ready",
        "GPUNodeAgentReady",
    }
    changed = dict(OURS, status="False", reason="CheckFailed")
    code, node, _ = call(
        api, "PATCH", f"/api/v1/nodes/{NODE}/status", {"status": {"conditions": [changed]}}, ctype=STRATEGIC
    )
    assert conditions(node)["GPUNodeAgentReady"]["status"] == "False"
    assert len(node["status"]["conditions"]) == 5
    assert conditions(node)["Ready"]["status"] == "True"


def test_strategic_merge_patch_delete_directive(api: ApiServer) -> None:
    call(api, "PATCH", f"/api/v1/nodes/{NODE}/status", {"status": {"conditions": [OURS]}}, ctype=STRATEGIC)
    code, node, _ = call(
        api,
        "PATCH",
        f"/api/v1/nodes/{NODE}/status",
        {"status": {"conditions": [{"type": "GPUNodeAgentReady", "$patch": "delete"}]}},
        ctype=STRATEGIC,
    )
    assert code == 200
    assert "GPUNodeAgentReady" not in conditions(node) and "Ready" in conditions(node)


def test_subresources_ignore_what_they_do_not_own(api: ApiServer) -> None:
    # The main resource ignores status; the status subresource ignores spec.
    code, node, _ = call(
        api, "PATCH", f"/api/v1/nodes/{NODE}", {"status": {"conditions": [OURS]}}, ctype=STRATEGIC
    )
    assert code == 200 and "GPUNodeAgentReady" not in conditions(node)
    code, node, _ = call(
        api, "PATCH", f"/api/v1/nodes/{NODE}/status", {"spec": {"unschedulable": True}}, ctype=STRATEGIC
    )
    assert code == 200 and "unschedulable" not in node["spec"]


def test_unsupported_media_type_and_invalid_bodies(api: ApiServer) -> None:
    assert call(api, "PATCH", f"/api/v1/nodes/{NODE}", {"metadata": {}}, ctype="application/json")[0] == 415
    code, status, _ = call(
        api, "PATCH", f"/api/v1/nodes/{NODE}", {"metadata": {"annotations": {"bad key!": "x"}}}
    )
    assert code == 422 and status["reason"] == "Invalid"
    code, status, _ = call(
        api,
        "PATCH",
        f"/api/v1/nodes/{NODE}/status",
        {"status": {"conditions": [dict(OURS, status="yes")]}},
        ctype=STRATEGIC,
    )
    assert code == 422
    code, _, _ = call(
        api, "PATCH", f"/api/v1/nodes/{NODE}", {"metadata": {"annotations": {"big": "x" * (256 * 1024)}}}
    )
    assert code == 422


def test_scripted_failures_come_first_then_normal_service(api: ApiServer) -> None:
    path = f"/api/v1/nodes/{NODE}"
    api.fail_next("GET", path, 429, Retry_After="3")
    api.fail_next("GET", path, 503)
    code, status, headers = call(api, "GET", path)
    assert code == 429 and headers["Retry-After"] == "3" and status["reason"] == "TooManyRequests"
    assert call(api, "GET", path)[0] == 503
    assert call(api, "GET", path)[0] == 200


def test_node_registered_later(api: ApiServer) -> None:
    api.add_token("late-token", "system:node:late")
    assert call(api, "GET", "/api/v1/nodes/late", token="late-token")[0] == 404
    api.add_node("late")
    assert call(api, "GET", "/api/v1/nodes/late", token="late-token")[0] == 200


def test_tls_is_real(api: ApiServer) -> None:
    other = ssl.create_default_context()  # the system store does not know the test CA
    with pytest.raises(urllib.error.URLError):
        call(api, "GET", f"/api/v1/nodes/{NODE}", context=other)


def test_patch_functions_directly() -> None:
    assert merge_patch({"a": [1, 2], "b": {"c": 1}}, {"a": [3], "b": {"c": None, "d": 2}}) == {
        "a": [3],
        "b": {"d": 2},
    }
    assert merge_patch({"a": 1}, ["x"]) == ["x"]
    target = {"status": {"conditions": [{"type": "A", "status": "True"}], "images": [1]}}
    assert strategic_merge_patch(
        target, {"status": {"conditions": [{"type": "B", "status": "False"}], "images": [2]}}
    ) == {
        "status": {
            "conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "False"}],
            "images": [2],
        }
    }
    assert strategic_merge_patch(target, {"status": {"$patch": "replace", "images": []}}) == {
        "status": {"images": []}
    }
    assert strategic_merge_patch(
        target, {"status": {"conditions": [{"$patch": "replace"}, {"type": "C"}]}}
    ) == {"status": {"conditions": [{"type": "C"}], "images": [1]}}


# --- Events, uid, storm, sizes ---------------------------------------------------------------------------


EVENTS = "/api/v1/namespaces/default/events"


def test_a_node_may_create_and_patch_events_and_nothing_more(api: ApiServer) -> None:
    body = events.event_object(events.EventSpec("Normal", "UnitRestarted", "m"), f"{NODE}.1a", NODE, "u", "t")
    assert call(api, "POST", EVENTS, body, "application/json")[0] == 201
    assert call(api, "POST", EVENTS, body, "application/json")[0] == 409
    status, _, _ = call(api, "PATCH", f"{EVENTS}/{NODE}.1a", {"count": 2}, "application/strategic-merge-patch+json")
    assert status == 200 and api.events[("default", f"{NODE}.1a")]["count"] == 2
    assert call(api, "PATCH", f"{EVENTS}/nope", {"count": 2}, "application/strategic-merge-patch+json")[0] == 404
    for method, path in (("GET", EVENTS), ("GET", f"{EVENTS}/{NODE}.1a"), ("DELETE", f"{EVENTS}/{NODE}.1a")):
        status, doc, _ = call(api, method, path)
        assert status == 403 and f'User "{NODE_USER}" cannot' in doc["message"]


@pytest.mark.parametrize("change, problem", [
    (lambda e: e["metadata"].update(name="Not_A_Name"), "metadata.name"),
    (lambda e: e["involvedObject"].pop("kind"), "involvedObject"),
    (lambda e: e["metadata"].update(namespace="kube-system"), "does not match"),
])
def test_event_validation(api: ApiServer, change: Any, problem: str) -> None:
    body = events.event_object(events.EventSpec("Normal", "R", "m"), f"{NODE}.1b", NODE, "u", "t")
    change(body)
    ns = body["metadata"]["namespace"]
    status, doc, _ = call(api, "POST", f"/api/v1/namespaces/{ns}/events", body, "application/json")
    assert status in (400, 422) and problem in doc["message"]


def test_every_node_has_a_uid_of_its_own(api: ApiServer) -> None:
    other = api.add_node("ip-10-0-0-13.us-west-2.compute.internal")
    status, node, _ = call(api, "GET", f"/api/v1/nodes/{NODE}")
    assert status == 200 and len(node["metadata"]["uid"]) == 36 and node["metadata"]["uid"] != other["metadata"]["uid"]


def test_a_storm_answers_429_with_retry_after_to_a_share_then_ends(api: ApiServer) -> None:
    api.storm(0.6, share=0.5, retry_after="3")
    answers = [call(api, "GET", f"/api/v1/nodes/{NODE}") for _ in range(20)]
    throttled = [h for s, _, h in answers if s == 429]
    assert 3 <= len(throttled) <= 17 and all(h["Retry-After"] == "3" for h in throttled)
    time.sleep(0.7)
    assert [call(api, "GET", f"/api/v1/nodes/{NODE}")[0] for _ in range(5)] == [200] * 5


def test_requests_are_recorded_with_their_time_and_size(api: ApiServer) -> None:
    before = time.monotonic()
    _, node, _ = call(api, "GET", f"/api/v1/nodes/{NODE}")
    (r,) = api.requests
    assert r.at >= before and r.status == 200
    assert len(json.dumps(node)) < r.bytes_out < len(json.dumps(node)) + 400  # body and headers
    assert 100 < r.bytes_in < 1000
