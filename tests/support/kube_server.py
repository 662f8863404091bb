"""A loopback HTTPS Kubernetes API server for the Node calls the agent makes, with the real semantics.

There is no kube-apiserver binary on the test machines, so this one follows the documented behaviour
exactly where the agent depends on it (and has its own tests in test_kube_server.py):

* TLS with a test CA (trustme); clients authenticate with a bearer token (401 when unknown or
  expired) or a client certificate signed by the same CA (user = the certificate's common name);
* ``GET``/``PATCH /api/v1/nodes/{name}`` and ``PATCH /api/v1/nodes/{name}/status``; an unknown node
  is 404 until registered;
* ``application/merge-patch+json`` is RFC 7386: a list (such as ``status.conditions``) is replaced
  whole; ``application/strategic-merge-patch+json`` merges lists that have a patch merge key
  (conditions and addresses by ``type``) and honours ``$patch: delete|replace``; other types are 415;
* the main resource ignores changes to ``status``, the ``status`` subresource ignores changes to
  ``spec`` (as the Node registry strategies do);
* NodeRestriction: ``system:node:<name>`` may change only its own Node (403 otherwise);
* validation: annotation keys (qualified names), the 256 KiB annotation total, condition status
  values: 422 with a ``Status`` body;
* scripted failures for the next matching requests: 429 with ``Retry-After``, 5xx, anything; and a
  *storm*: for a few seconds, 429 with ``Retry-After`` to a share of all requests, as an API server
  under API Priority and Fairness sheds load;
* Events (core/v1): ``POST /api/v1/namespaces/{ns}/events`` creates (409 when the name exists),
  ``PATCH .../events/{name}`` merges (404 when absent); validated as kube-apiserver's
  ``ValidateEvent`` does for a core/v1 Event without ``eventTime``: a name that is a DNS subdomain,
  ``involvedObject`` with a kind and name, and for a cluster-scoped object (empty
  ``involvedObject.namespace``) the namespace ``default``. A node may create and patch Events, never
  get, list or delete them (the ``system:node`` role: ``events: create, update, patch``): 403;
* a ``GET`` may carry ``resourceVersion=0`` (served from the watch cache by the real server; here the
  same object), recorded apart from the path (``Recorded.query``);
* ``GET /api/v1/nodes`` lists Nodes in name order, as kube-apiserver pages a list: ``limit`` and
  an opaque ``continue`` token (``metadata.continue``, ``remainingItemCount``), ``continue``
  together with ``resourceVersion`` is 400; ``resourceVersion=0`` is served as the watch cache
  does, which (before the cache could page) ignored ``limit``: ``rv0_pages=False`` shows that;
* every Node has a ``metadata.uid``; every request is recorded with its arrival time and its size
  on the wire (request line, headers and body; status line, headers and body of the answer).

Every response to an error is a ``Status`` object like the real server's.
"""

import base64
import copy
import json
import random
import re
import ssl
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Type

import trustme

from tests.support.loopback import LoopbackServer

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
# Lists with a patch merge key in the Node type (k8s.io/api/core/v1 patchMergeKey tags).
MERGE_KEYS = {
    ("status", "conditions"): "type",
    ("status", "addresses"): "type",
    ("status", "volumesAttached"): "name",
    ("metadata", "ownerReferences"): "uid",
}
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_DNS1123 = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
ANNOTATIONS_LIMIT = 256 * 1024


class PatchError(Exception):
    pass


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, path: Tuple[str, ...] = ()) -> Any:
    """The subset of Kubernetes' strategic merge patch that the Node type needs."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    if directive is not None:
        raise PatchError(f"unknown patch directive {directive!r}")
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key == "$retainKeys":
            continue  # ordering hints: accepted, the order of this server's lists does not matter
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            result[name] = [v for v in result.get(name, []) if v not in (value or [])]
            continue
        if key.startswith("$"):
            raise PatchError(f"unknown patch directive {key!r}")
        if value is None:
            result.pop(key, None)
            continue
        merge_key = MERGE_KEYS.get((*path, key))
        if isinstance(value, list) and merge_key:
            result[key] = _merge_list(result.get(key) or [], value, merge_key, (*path, key))
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value, (*path, key))
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    return result


def _merge_list(current: List[Any], items: List[Any], key: str, path: Tuple[str, ...]) -> List[Any]:
    if any(isinstance(i, dict) and i.get("$patch") == "replace" and len(i) == 1 for i in items):
        return [copy.deepcopy(i) for i in items if not (isinstance(i, dict) and i.get("$patch") == "replace")]
    out = [copy.deepcopy(i) for i in current]
    for item in items:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"{'.'.join(path)}: every element needs the merge key {key!r}")
        index = next(
            (n for n, old in enumerate(out) if isinstance(old, dict) and old.get(key) == item[key]), None
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del out[index]
            continue
        if index is None:
            out.append({k: copy.deepcopy(v) for k, v in item.items() if k != "$patch"})
        else:
            out[index] = strategic_merge_patch(out[index], item, path)
    return out


def validate_node(node: Dict[str, Any]) -> Optional[str]:
    annotations = node.get("metadata", {}).get("annotations") or {}
    total = 0
    for k, v in annotations.items():
        prefix, _, name = k.rpartition("/")
        if (prefix and (len(prefix) > 253 or not re.fullmatch(_DNS1123, prefix))) or not re.fullmatch(
            _NAME, name
        ):
            return f"metadata.annotations: Invalid value: {k!r}: name part must consist of alphanumerics"
        if not isinstance(v, str):
            return f"metadata.annotations.{k}: Invalid value: must be a string"
        total += len(k) + len(v)
    if total > ANNOTATIONS_LIMIT:
        return f"metadata.annotations: Too long: must have at most {ANNOTATIONS_LIMIT} bytes"
    for c in node.get("status", {}).get("conditions") or []:
        if not c.get("type"):
            return "status.conditions.type: Required value"
        if c.get("status") not in ("True", "False", "Unknown"):
            return f"status.conditions[{c.get('type')}].status: Unsupported value: {c.get('status')!r}"
    return None


def validate_event(event: Dict[str, Any]) -> Optional[str]:
    """What kube-apiserver checks of a core/v1 Event without ``eventTime`` (ValidateEvent)."""
    meta = event.get("metadata") or {}
    name = meta.get("name") or ""
    if not name or len(name) > 253 or not re.fullmatch(_DNS1123, name):
        return f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain is required"
    involved = event.get("involvedObject") or {}
    if not involved.get("kind") or not involved.get("name"):
        return "involvedObject: Required value: kind and name"
    if not involved.get("namespace") and meta.get("namespace") not in ("", "default"):
        return "involvedObject.namespace: Invalid value: does not match event.namespace"
    if involved.get("namespace") and involved.get("namespace") != meta.get("namespace"):
        return "involvedObject.namespace: Invalid value: does not match event.namespace"
    return None


def new_node(name: str) -> Dict[str, Any]:
    """A Node as kubelet registers it: labels, an address, and kubelet's own conditions."""
    stamp = "2026-05-12T10:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "resourceVersion": "1",
            "uid": str(uuid.uuid4()),
            "labels": {"kubernetes.io/hostname": name, "node.kubernetes.io/instance-type": "p5.48xlarge"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"providerID": f"aws:///us-west-2a/i-0123456789abcdef0/{name}"},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "10.0.0.12"},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [
                {
                    "type": t,
                    "status": "False",
                    "reason": f"KubeletHas{r}",
                    "message": "kubelet is posting",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
                for t, r in (
                    ("MemoryPressure", "SufficientMemory"),
                    ("DiskPressure", "NoDiskPressure"),
                    ("PIDPressure", "SufficientPID"),
                )
            ]
            + [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
            ],
        },
    }


@dataclass
class Scripted:
    method: str
    path: str  # exact request path
    status: int
    headers: Dict[str, str] = field(default_factory=dict)
    message: str = "scripted failure"


@dataclass
class Recorded:
    method: str
    path: str
    peer_cn: Optional[str]  # the client certificate's common name, when one was presented
    content_type: Optional[str]
    body: Any
    status: int
    authorization: Optional[str]
    at: float = 0.0  # time.monotonic() when it arrived
    bytes_in: int = 0  # the request as sent: request line, headers, body
    bytes_out: int = 0  # the answer: status line, headers, body
    query: Dict[str, str] = field(default_factory=dict)  # the query parameters (path is without them)


@dataclass
class Storm:
    until: float  # time.monotonic()
    share: float  # of requests answered 429
    retry_after: str
    rng: random.Random


class ApiServer(LoopbackServer):
    name = "api-server"

    def __init__(
        self,
        *,
        now: Callable[[], float] = time.time,
        ca: Optional[trustme.CA] = None,
        names: Tuple[str, ...] = ("127.0.0.1", "localhost"),  # in the server's certificate
    ) -> None:
        super().__init__()
        self.ca = ca or trustme.CA()
        self.names = names
        self.now = now
        self.nodes: Dict[str, Dict[str, Any]] = {}
        self.tokens: Dict[str, Tuple[str, Optional[float]]] = {}  # token -> (user, expires)
        self.revoked_cns: Set[str] = set()  # client certificates refused with 401
        self.script: List[Scripted] = []
        self.events: Dict[Tuple[str, str], Dict[str, Any]] = {}  # (namespace, name) -> Event
        self.storm_: Optional[Storm] = None
        self.requests: List[Recorded] = []
        self.lock = threading.Lock()
        self.rv0_pages = True  # False: resourceVersion=0 answers the whole list, as an older watch cache

    # -- setup --

    def add_node(self, name: str) -> Dict[str, Any]:
        with self.lock:
            self.nodes[name] = new_node(name)
            return self.nodes[name]

    def set_allocatable(self, name: str, resources: Dict[str, str]) -> None:
        """What kubelet reports from its device plugins: ``status.allocatable`` (quantities as strings)."""
        with self.lock:
            self.nodes[name].setdefault("status", {})["allocatable"] = dict(resources)

    def add_token(self, token: str, user: str, expires: Optional[float] = None) -> None:
        self.tokens[token] = (user, expires)

    def fail_next(self, method: str, path: str, status: int, times: int = 1, **headers: str) -> None:
        for _ in range(times):
            self.script.append(
                Scripted(method, path, status, {k.replace("_", "-"): v for k, v in headers.items()})
            )

    def storm(self, seconds: float, share: float = 0.8, retry_after: str = "1", seed: int = 15) -> None:
        """From now on, for ``seconds``: 429 with ``Retry-After`` to ``share`` of all requests."""
        self.storm_ = Storm(time.monotonic() + seconds, share, retry_after, random.Random(seed))

    def client_cert(self, user: str) -> "trustme.LeafCert":
        return self.ca.issue_cert(f"{user.replace(':', '-')}.client.test", common_name=user)

    def tls(self) -> ssl.SSLContext:
        server_cert = self.ca.issue_cert(*self.names)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_cert.configure_cert(ctx)
        self.ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_OPTIONAL  # tokens or client certificates
        return ctx

    def handler(self) -> Type[BaseHTTPRequestHandler]:
        return type("Handler", (_Handler,), {"api": self})

    def ca_pem(self) -> bytes:
        return bytes(self.ca.cert_pem.bytes())

    def calls(self, method: Optional[str] = None) -> List[Recorded]:
        return [r for r in self.requests if method is None or r.method == method]

    # -- request handling (called from the handler threads) --

    def handle(
        self, method: str, path: str, headers: Any, body: bytes, peer_cn: Optional[str],
        query: Optional[Dict[str, str]] = None,
    ) -> Tuple[int, Dict[str, str], Any]:
        user, auth_error = self._authenticate(headers.get("Authorization"), peer_cn)
        if auth_error:
            return 401, {}, _status(401, "Unauthorized", "Unauthorized")
        with self.lock:
            for i, s in enumerate(self.script):
                if s.method == method and s.path == path:
                    del self.script[i]
                    reason = {429: "TooManyRequests", 403: "Forbidden", 404: "NotFound"}.get(
                        s.status, "InternalError"
                    )
                    return s.status, dict(s.headers), _status(s.status, reason, s.message)
            storm = self.storm_
            if storm is not None and time.monotonic() < storm.until and storm.rng.random() < storm.share:
                return 429, {"Retry-After": storm.retry_after}, _status(
                    429, "TooManyRequests", "Too many requests, please try again later."
                )
        if path.startswith("/api/v1/namespaces/"):
            return self._events(method, path, headers, body, user)
        if method == "GET" and path == "/api/v1/nodes":
            return self._list_nodes(query or {}, user)
        m = re.fullmatch(r"/api/v1/nodes/([^/]+)(/status)?", path)
        if not m:
            return 404, {}, _status(404, "NotFound", "the server could not find the requested resource")
        name, sub = m.group(1), m.group(2)
        verb = {"GET": "get", "PATCH": "patch"}.get(method)
        if verb is None:
            return 405, {}, _status(405, "MethodNotAllowed", f"{method} is not supported")
        if user != "admin" and user != f"system:node:{name}":
            who = user.split(":")[-1]
            return (
                403,
                {},
                _status(
                    403,
                    "Forbidden",
                    f'nodes "{name}" is forbidden: User "{user}" cannot {verb} '
                    f'resource "nodes{sub or ""}" in API group "" at the cluster scope: node '
                    f'"{who}" is not allowed to modify node "{name}"',
                ),
            )
        with self.lock:
            node = self.nodes.get(name)
            if node is None:
                return 404, {}, _status(404, "NotFound", f'nodes "{name}" not found')
            if method == "GET":
                return 200, {}, copy.deepcopy(node)
            ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
            if ctype not in (MERGE, STRATEGIC):
                return (
                    415,
                    {},
                    _status(
                        415,
                        "UnsupportedMediaType",
                        f"the body of the request was in an unknown "
                        f"format - accepted media types include: {MERGE}, {STRATEGIC}",
                    ),
                )
            try:
                patch = json.loads(body)
            except ValueError as exc:
                return 400, {}, _status(400, "BadRequest", f"error decoding patch: {exc}")
            if not isinstance(patch, dict):
                return 400, {}, _status(400, "BadRequest", "patch must be a JSON object")
            try:
                updated = merge_patch(node, patch) if ctype == MERGE else strategic_merge_patch(node, patch)
            except PatchError as exc:
                return 400, {}, _status(400, "BadRequest", str(exc))
            if sub == "/status":
                updated["spec"] = copy.deepcopy(node.get("spec"))  # the status subresource ignores spec
            else:
                updated["status"] = copy.deepcopy(node.get("status"))  # the main resource ignores status
            updated.setdefault("metadata", {})["name"] = name
            problem = validate_node(updated)
            if problem:
                return 422, {}, _status(422, "Invalid", f'Node "{name}" is invalid: {problem}')
            if updated != node:
                updated["metadata"]["resourceVersion"] = str(int(node["metadata"]["resourceVersion"]) + 1)
                self.nodes[name] = updated
            return 200, {}, copy.deepcopy(self.nodes[name])

    def _list_nodes(self, query: Dict[str, str], user: str) -> Tuple[int, Dict[str, str], Any]:
        if user != "admin" and not user.startswith("system:node:"):
            return 403, {}, _status(403, "Forbidden", f'nodes is forbidden: User "{user}" cannot list resource '
                                    '"nodes" in API group "" at the cluster scope')
        token, version = query.get("continue"), query.get("resourceVersion")
        if token and version:
            return 400, {}, _status(400, "BadRequest", "specifying resource version is not allowed when using "
                                    "continue")
        try:
            limit = int(query.get("limit") or 0)
            after = json.loads(base64.urlsafe_b64decode(token.encode()))["after"] if token else None
        except (ValueError, KeyError, TypeError):
            return 400, {}, _status(400, "BadRequest", "invalid limit or continue token")
        if version == "0" and not self.rv0_pages:
            limit = 0
        with self.lock:  # the Node objects themselves: a patch replaces them, never changes them in place
            names = sorted(n for n in self.nodes if after is None or n > after)
            chosen = names[:limit] if limit > 0 else names
            items = [self.nodes[n] for n in chosen]
            rv = str(max([int(n["metadata"]["resourceVersion"]) for n in self.nodes.values()] + [1]))
        meta: Dict[str, Any] = {"resourceVersion": rv}
        if len(chosen) < len(names):
            meta["continue"] = base64.urlsafe_b64encode(json.dumps({"after": chosen[-1]}).encode()).decode()
            meta["remainingItemCount"] = len(names) - len(chosen)
        return 200, {}, {"kind": "NodeList", "apiVersion": "v1", "metadata": meta, "items": items}

    def _events(
        self, method: str, path: str, headers: Any, body: bytes, user: str
    ) -> Tuple[int, Dict[str, str], Any]:
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/events(?:/([^/]+))?", path)
        if not m:
            return 404, {}, _status(404, "NotFound", "the server could not find the requested resource")
        ns, name = m.group(1), m.group(2)
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(
            method, "get" if name else "list"
        )
        if user != "admin" and not (user.startswith("system:node:") and verb in ("create", "patch", "update")):
            return 403, {}, _status(
                403,
                "Forbidden",
                f'events{" " + repr(name) if name else ""} is forbidden: User "{user}" cannot {verb} '
                f'resource "events" in API group "" in the namespace "{ns}"',
            )
        try:
            doc = json.loads(body) if body else None
        except ValueError as exc:
            return 400, {}, _status(400, "BadRequest", f"error decoding body: {exc}")
        with self.lock:
            if method == "GET" and name is None:
                items = [copy.deepcopy(e) for (n, _), e in self.events.items() if n == ns]
                return 200, {}, {"kind": "EventList", "apiVersion": "v1", "items": items}
            if method == "GET":
                found = self.events.get((ns, name or ""))
                if found is None:
                    return 404, {}, _status(404, "NotFound", f'events "{name}" not found')
                return 200, {}, copy.deepcopy(found)
            if method == "POST" and name is None:
                if not isinstance(doc, dict):
                    return 400, {}, _status(400, "BadRequest", "expected an Event object")
                event = copy.deepcopy(doc)
                meta = event.setdefault("metadata", {})
                if meta.setdefault("namespace", ns) != ns:
                    return 400, {}, _status(
                        400, "BadRequest", "the namespace of the provided object does not match the namespace "
                        "sent on the request"
                    )
                problem = validate_event(event)
                if problem:
                    return 422, {}, _status(422, "Invalid", f'Event "{meta.get("name")}" is invalid: {problem}')
                key = (ns, meta["name"])
                if key in self.events:
                    return 409, {}, _status(409, "AlreadyExists", f'events "{meta["name"]}" already exists')
                meta["uid"] = str(uuid.uuid4())
                meta["resourceVersion"] = "1"
                self.events[key] = event
                return 201, {}, copy.deepcopy(event)
            if method == "PATCH" and name is not None:
                current = self.events.get((ns, name))
                if current is None:
                    return 404, {}, _status(404, "NotFound", f'events "{name}" not found')
                ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
                if ctype not in (MERGE, STRATEGIC) or not isinstance(doc, dict):
                    return 415, {}, _status(415, "UnsupportedMediaType", "expected a merge patch")
                updated = merge_patch(current, doc) if ctype == MERGE else strategic_merge_patch(current, doc)
                problem = validate_event(updated)
                if problem:
                    return 422, {}, _status(422, "Invalid", f'Event "{name}" is invalid: {problem}')
                self.events[(ns, name)] = updated
                return 200, {}, copy.deepcopy(updated)
        return 405, {}, _status(405, "MethodNotAllowed", f"{method} is not supported")

    def _authenticate(self, authorization: Optional[str], peer_cn: Optional[str]) -> Tuple[str, bool]:
        if authorization:
            if not authorization.startswith("Bearer "):
                return "", True
            entry = self.tokens.get(authorization[len("Bearer ") :])
            if entry is None:
                return "", True
            user, expires = entry
            if expires is not None and self.now() >= expires:
                return "", True
            return user, False
        if peer_cn:
            return peer_cn, peer_cn in self.revoked_cns
        return "", True


def _status(code: int, reason: str, message: str) -> Dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class _Handler(BaseHTTPRequestHandler):
    api: ApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _serve(self) -> None:
        at = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        cert = self.connection.getpeercert() if hasattr(self.connection, "getpeercert") else None
        peer_cn = None
        for rdn in (cert or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    peer_cn = value
        path, _, raw_query = self.path.partition("?")
        query = dict(urllib.parse.parse_qsl(raw_query, keep_blank_values=True))
        status, headers, payload = self.api.handle(self.command, path, self.headers, body, peer_cn, query)
        try:
            parsed_body: Any = json.loads(body) if body else None
        except ValueError:
            parsed_body = body
        auth = self.headers.get("Authorization")
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        head = sum(len(h) for h in getattr(self, "_headers_buffer", []))  # not sent yet
        self.api.requests.append(  # before the answer: a client that has it finds its request here
            Recorded(
                self.command, path, peer_cn, self.headers.get("Content-Type"), parsed_body, status, auth,
                at, len(self.requestline) + 2 + len(str(self.headers)) + len(body), head + 2 + len(data), query,
            )
        )
        self.end_headers()
        self.wfile.write(data)

    do_GET = _serve
    do_PATCH = _serve
    do_PUT = _serve
    do_POST = _serve
    do_DELETE = _serve
