"""The IMDSv2 client against a loopback IMDS with EC2's token semantics."""

from typing import Iterator

import pytest

from agent.aws.imds import (
    DEFAULT_ENDPOINT,
    IPV6_ENDPOINT,
    TOKEN_REFRESH_MARGIN,
    TOKEN_TTL_SECONDS,
    ImdsClient,
    ImdsDisabled,
    ImdsError,
    disabled_by_env,
    resolve_endpoint,
)
from agent.config.settings import ImdsSettings
from tests.support.imds_server import ImdsServer
from tests.support.kube_helpers import FakeTime


@pytest.fixture
def t() -> FakeTime:
    return FakeTime()


@pytest.fixture
def imds(t: FakeTime) -> Iterator[ImdsServer]:
    with ImdsServer(now=t.clock) as server:  # the server's clock is the client's: TTLs line up
        yield server


def make(imds: ImdsServer, t: FakeTime, **kw: object) -> ImdsClient:
    return ImdsClient(imds.url, 1.0, clock=t.clock, sleep=t.sleep, random=t.random, **kw)  # type: ignore[arg-type]


def test_token_then_item(imds: ImdsServer, t: FakeTime) -> None:
    with make(imds, t) as c:
        assert c.get("local-hostname") == "ip-10-0-0-12.us-west-2.compute.internal"
    put, get = imds.requests
    assert (put.method, put.path, put.ttl) == ("PUT", "/latest/api/token", str(TOKEN_TTL_SECONDS))
    assert (get.method, get.path) == ("GET", "/latest/meta-data/local-hostname") and get.token


def test_token_reused_until_near_expiry(imds: ImdsServer, t: FakeTime) -> None:
    with make(imds, t) as c:
        c.get("instance-id")
        c.get("instance-type")
        t.advance(TOKEN_TTL_SECONDS - TOKEN_REFRESH_MARGIN - 1)
        c.get("placement/region")
        assert imds.puts() == 1
        t.advance(2)  # now inside the refresh margin
        c.get("instance-id")
        assert imds.puts() == 2
    tokens = [r.token for r in imds.requests if r.method == "GET"]
    assert tokens[0] == tokens[1] == tokens[2] != tokens[3]


def test_401_gets_a_new_token_once(imds: ImdsServer, t: FakeTime) -> None:
    with make(imds, t) as c:
        c.get("instance-id")
        imds.expire_tokens()  # IMDS restarted: the token is gone before its TTL
        assert c.get("instance-id") == "i-0123456789abcdef0"
    assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in imds.requests] == [
        ("PUT", "token"),
        ("GET", "instance-id"),
        ("GET", "instance-id"),
        ("PUT", "token"),
        ("GET", "instance-id"),
    ]


def test_404_is_none(imds: ImdsServer, t: FakeTime) -> None:
    with make(imds, t) as c:
        assert c.get("no/such/item") is None


def test_403_disabled(imds: ImdsServer, t: FakeTime) -> None:
    imds.disabled = True
    with make(imds, t) as c, pytest.raises(ImdsDisabled, match="403"):
        c.get("local-hostname")
    assert len(imds.requests) == 1 and t.sleeps == []


def test_503_retried_with_a_bound(imds: ImdsServer, t: FakeTime) -> None:
    imds.fail_next(503, times=2)
    with make(imds, t) as c:
        assert c.get("instance-type") == "p5.48xlarge"
    assert len(t.sleeps) == 2
    imds.fail_next(503, times=10)
    with make(imds, t, attempts=3) as c, pytest.raises(ImdsError, match="after 3 attempts"):
        c.get("instance-type")


def test_unreachable_is_bounded(t: FakeTime) -> None:
    server = ImdsServer().start()
    url = server.url
    server.stop()
    with (
        ImdsClient(url, 0.5, clock=t.clock, sleep=t.sleep, random=t.random) as c,
        pytest.raises(ImdsError, match="no answer after 3 attempts"),
    ):
        c.get("local-hostname")
    assert len(t.sleeps) == 2


def test_no_proxy_ever(imds: ImdsServer, t: FakeTime, monkeypatch: pytest.MonkeyPatch) -> None:
    # A node-wide proxy (nothing listens there) must not be used for the link-local service.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with make(imds, t) as c:
        assert c.get("instance-id") == "i-0123456789abcdef0"
        assert c.session.trust_env is False


def test_disabled_by_environment(imds: ImdsServer, t: FakeTime) -> None:
    assert disabled_by_env({"AWS_EC2_METADATA_DISABLED": "true"})
    assert disabled_by_env({"AWS_EC2_METADATA_DISABLED": "TRUE"})
    assert not disabled_by_env({"AWS_EC2_METADATA_DISABLED": "false"})
    c = ImdsClient.from_settings(ImdsSettings(endpoint=imds.url), {"AWS_EC2_METADATA_DISABLED": "true"})
    with c, pytest.raises(ImdsDisabled, match="AWS_EC2_METADATA_DISABLED"):
        c.get("instance-id")
    assert imds.requests == []


def test_endpoint_resolution() -> None:
    assert resolve_endpoint(ImdsSettings(), {}) == DEFAULT_ENDPOINT
    assert (
        resolve_endpoint(ImdsSettings(), {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://10.1.1.1:8080/"})
        == "http://10.1.1.1:8080"
    )
    assert (
        resolve_endpoint(ImdsSettings(), {"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6"}) == IPV6_ENDPOINT
    )
    # The agent's own config wins over the SDK variable.
    assert (
        resolve_endpoint(
            ImdsSettings(endpoint="http://127.0.0.1:1"),
            {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://10.1.1.1"},
        )
        == "http://127.0.0.1:1"
    )


def test_from_settings_uses_env_endpoint_and_timeout(imds: ImdsServer) -> None:
    c = ImdsClient.from_settings(
        ImdsSettings(timeout_seconds=0.7), {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url}
    )
    with c:
        assert c.timeout == 0.7
        assert c.get("instance-id") == "i-0123456789abcdef0"


def test_server_rejects_proxied_token_requests_and_bad_ttl(imds: ImdsServer) -> None:
    import urllib.error
    import urllib.request

    def put(headers: dict) -> int:
        req = urllib.request.Request(imds.url + "/latest/api/token", method="PUT", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    assert put({"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "1.2.3.4"}) == 403
    assert put({"X-aws-ec2-metadata-token-ttl-seconds": "0"}) == 400
    assert put({}) == 400
    assert put({"X-aws-ec2-metadata-token-ttl-seconds": "21600"}) == 200
