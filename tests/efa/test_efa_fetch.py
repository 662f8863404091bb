"""EFA installer download against real loopback servers: cache, retries, resume, TLS, proxies, faults.

Every failure must be one clear line, and the cache must never hold a partial or unverified file.
Retries use an injected sleep (recorded, never slept) and a fixed jitter.
"""

import os
import subprocess
from pathlib import Path
from typing import Iterator, List

import pytest

from agent.base.noderoot import NodeRoot
from agent.base.retry import backoff
from agent.cli import main
from agent.config.settings import EfaSettings
from agent.efa import cache, download
from agent.efa import facts as efa_facts
from agent.efa.download import DownloadOptions
from tests.support.efa_helpers import (
    VERSION,
    ConnectProxy,
    InstallerServer,
    free_port,
    installer_script,
    installer_tarball,
    sha256,
)

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
FAST = download.DownloadPolicy(attempts=4, connect_timeout=2.0, read_timeout=2.0, chunk_size=64 * 1024)


@pytest.fixture(autouse=True)
def clean_network_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads honour proxy/CA variables; the test machine's own must not leak in."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "node"
    r.mkdir()
    return r


@pytest.fixture
def tarball(root: Path, tmp_path: Path) -> bytes:
    # ~1.5 MiB, mostly incompressible, so bodies span many reads and a cut lands mid-body
    return installer_tarball(installer_script(root, tmp_path / "installer-runs.log"),
                             payload=os.urandom(1536 * 1024))


@pytest.fixture
def server(tarball: bytes) -> Iterator[InstallerServer]:
    with InstallerServer() as s:
        s.add(VERSION, tarball)
        yield s


@pytest.fixture(params=["zero-copy", "copying"])
def body_reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of reading the body: http.client's readinto, and urllib3's public read()."""
    monkeypatch.setattr(download, "_ZERO_COPY_READ", request.param == "zero-copy")
    return str(request.param)


class Sleeps(List[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def settings_for(base_url: str, data: bytes, **kw: object) -> EfaSettings:
    return EfaSettings(base_url=base_url, sha256=sha256(data), **kw)  # type: ignore[arg-type]


def cache_dir(root: Path) -> Path:
    return root / "var/cache/gpu-node-agent"


def cached(root: Path) -> List[str]:
    d = cache_dir(root)
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def fetch(root: Path, settings: EfaSettings, sleeps: Sleeps, policy: download.DownloadPolicy = FAST) -> Path:
    return cache.fetch(settings, NodeRoot(str(root)), DownloadOptions(policy=policy, sleep=sleeps, rand=lambda: 1.0))


# --- the normal path -------------------------------------------------------------------------------


@pytest.mark.usefixtures("body_reader")
def test_fresh_download_lands_verified_in_the_cache(
    root: Path, server: InstallerServer, tarball: bytes
) -> None:
    sleeps = Sleeps()
    path = fetch(root, settings_for(server.base_url, tarball), sleeps)
    assert path == cache_dir(root) / f"aws-efa-installer-{VERSION}.tar.gz"
    assert path.read_bytes() == tarball
    assert path.stat().st_mode & 0o777 == 0o644
    assert cached(root) == [path.name]  # no temporary file left beside it
    (request,) = server.gets()
    assert request.path == f"/aws-efa-installer-{VERSION}.tar.gz"
    assert request.headers["Accept-Encoding"] == "identity"
    assert "Range" not in request.headers
    assert sleeps == []


def test_a_cached_verified_tarball_needs_no_network(
    root: Path, server: InstallerServer, tarball: bytes
) -> None:
    settings = settings_for(server.base_url, tarball)
    fetch(root, settings, Sleeps())
    server.stop()
    assert fetch(root, settings, Sleeps()).read_bytes() == tarball
    assert len(server.gets()) == 1


def test_a_corrupted_cache_file_is_downloaded_again(
    root: Path, server: InstallerServer, tarball: bytes
) -> None:
    settings = settings_for(server.base_url, tarball)
    path = fetch(root, settings, Sleeps())
    with open(path, "r+b") as f:  # one flipped byte on disk
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert fetch(root, settings, Sleeps()).read_bytes() == tarball
    assert len(server.gets()) == 2


def test_a_corrupted_cache_file_with_the_server_down_is_one_clear_error(
    root: Path, server: InstallerServer, tarball: bytes
) -> None:
    settings = settings_for(server.base_url, tarball)
    path = fetch(root, settings, Sleeps())
    path.write_bytes(tarball[:-10])
    server.stop()
    with pytest.raises(download.DownloadError) as err:
        fetch(root, settings, Sleeps(), FAST._replace(attempts=2))
    message = str(err.value)
    assert "cached copy had sha256" in message and "not efa.sha256 (removed)" in message
    assert "download failed after 2 attempts" in message and "\n" not in message
    assert cached(root) == []


# --- faults ----------------------------------------------------------------------------------------


def test_wrong_checksum_keeps_nothing(root: Path, server: InstallerServer, tarball: bytes) -> None:
    settings = settings_for(server.base_url, tarball)._replace(sha256="0" * 64)
    with pytest.raises(download.ChecksumMismatch) as err:
        fetch(root, settings, Sleeps())
    assert str(err.value) == (
        f"{server.base_url}/aws-efa-installer-{VERSION}.tar.gz: sha256 {sha256(tarball)} does not match "
        f"efa.sha256 {'0' * 64} ({len(tarball)} bytes received); discarded, nothing installed")
    assert cached(root) == []


def near_miss(pin: str, position: int) -> str:
    """``pin`` with the hex digit at ``position`` changed: a tarball that is not the pinned one."""
    return pin[:position] + ("1" if pin[position] == "0" else "0") + pin[position + 1:]


@pytest.mark.parametrize("position", [8, 40, 63])
def test_a_pin_that_differs_only_after_the_first_8_hex_digits_is_rejected(
    root: Path, server: InstallerServer, tarball: bytes, position: int
) -> None:
    # A pin that agrees with the download's SHA-256 on a prefix is still another tarball.
    pin = near_miss(sha256(tarball), position)
    with pytest.raises(download.ChecksumMismatch) as err:
        fetch(root, settings_for(server.base_url, tarball)._replace(sha256=pin), Sleeps())
    assert f"sha256 {sha256(tarball)} does not match efa.sha256 {pin} " in str(err.value)
    assert cached(root) == []


def test_a_cached_copy_must_match_every_digit_of_the_pin(
    root: Path, server: InstallerServer, tarball: bytes
) -> None:
    settings = settings_for(server.base_url, tarball)
    fetch(root, settings, Sleeps())  # cached and verified for the right pin
    pin = near_miss(sha256(tarball), 63)
    with pytest.raises(download.ChecksumMismatch) as err:  # the pin changed in its last digit
        fetch(root, settings._replace(sha256=pin), Sleeps())
    assert str(err.value).startswith(f"{cache_dir(root)}/aws-efa-installer-{VERSION}.tar.gz: cached copy "
                                     f"had sha256 {sha256(tarball)}, not efa.sha256 (removed); ")
    assert cached(root) == []
    assert len(server.gets()) == 2  # not served from the cache: downloaded again, and refused again


def test_retry_after_500_with_exponential_backoff(
    root: Path, server: InstallerServer, tarball: bytes
) -> None:
    server.behaviour.statuses.extend([500, 503, 502])
    sleeps = Sleeps()
    assert fetch(root, settings_for(server.base_url, tarball), sleeps).read_bytes() == tarball
    assert len(server.gets()) == 4
    assert sleeps == [1.0, 2.0, 4.0]  # rand() == 1.0: the top of each jitter window


def test_jitter_spreads_the_wait() -> None:
    policy = download.DownloadPolicy(backoff_seconds=2.0, backoff_cap_seconds=10.0)

    def delay(attempt: int, rand: float) -> float:
        return backoff(attempt, policy.backoff_seconds, policy.backoff_cap_seconds, lambda: rand)

    assert delay(1, 0.0) == 1.0
    assert delay(2, 0.5) == 3.0
    assert delay(9, 1.0) == 10.0  # capped


def test_500_forever_gives_up_after_the_bounded_attempts(
    root: Path, server: InstallerServer, tarball: bytes
) -> None:
    server.behaviour.statuses.extend([500] * 10)
    sleeps = Sleeps()
    with pytest.raises(download.DownloadError) as err:
        fetch(root, settings_for(server.base_url, tarball), sleeps)
    assert str(err.value) == (f"{server.base_url}/aws-efa-installer-{VERSION}.tar.gz: download failed after "
                              "4 attempts: HTTP 500 Internal Server Error")
    assert len(server.gets()) == 4 and len(sleeps) == 3
    assert cached(root) == []


def test_404_is_not_retried(root: Path, server: InstallerServer, tarball: bytes) -> None:
    sleeps = Sleeps()
    settings = settings_for(server.base_url, tarball)._replace(version="1.99.0")
    with pytest.raises(download.DownloadError) as err:
        fetch(root, settings, sleeps)
    assert str(err.value) == (f"{server.base_url}/aws-efa-installer-1.99.0.tar.gz: HTTP 404 Not Found "
                              "(is efa.version published at efa.base_url?)")
    assert len(server.gets()) == 1 and sleeps == []
    assert cached(root) == []


@pytest.mark.usefixtures("body_reader")
def test_resume_after_a_reset_mid_body(root: Path, server: InstallerServer, tarball: bytes) -> None:
    server.behaviour.cuts.append(("reset", 700_000))
    sleeps = Sleeps()
    path = fetch(root, settings_for(server.base_url, tarball), sleeps)
    assert path.read_bytes() == tarball
    _, second = server.gets()
    offset = int(second.headers["Range"].split("=")[1].rstrip("-"))
    assert 0 < offset <= 700_000  # only the missing part was asked for
    assert second.headers["If-Range"] == '"efa-test-etag"'
    assert len(sleeps) == 1


@pytest.mark.usefixtures("body_reader")
def test_resume_after_a_clean_close_mid_body(root: Path, server: InstallerServer, tarball: bytes) -> None:
    server.behaviour.cuts.extend([("close", 300_000), ("close", 300_000)])
    path = fetch(root, settings_for(server.base_url, tarball), Sleeps())
    assert path.read_bytes() == tarball
    ranges = [r.headers.get("Range") for r in server.gets()]
    assert ranges == [None, "bytes=300000-", "bytes=600000-"]  # each time, exactly what is missing


@pytest.mark.usefixtures("body_reader")
def test_a_server_without_range_support_is_downloaded_from_the_start(
    root: Path, server: InstallerServer, tarball: bytes
) -> None:
    server.behaviour.range_support = False
    server.behaviour.cuts.append(("close", 300_000))
    path = fetch(root, settings_for(server.base_url, tarball), Sleeps())
    assert path.read_bytes() == tarball  # the 200 restarted the file and the hash
    assert server.gets()[1].headers["Range"] == "bytes=300000-"


@pytest.mark.usefixtures("body_reader")
def test_truncated_download_fails_and_keeps_nothing(
    root: Path, server: InstallerServer, tarball: bytes
) -> None:
    server.behaviour.range_support = False
    server.behaviour.cuts.extend([("close", 100_000)] * 4)
    with pytest.raises(download.DownloadError) as err:
        fetch(root, settings_for(server.base_url, tarball), Sleeps())
    assert str(err.value).endswith(f"download failed after 4 attempts: connection closed after 100000 of "
                                   f"{len(tarball)} bytes")
    assert cached(root) == []


def test_a_truncated_file_on_the_server_fails_the_checksum(
    root: Path, server: InstallerServer, tarball: bytes
) -> None:
    server.add(VERSION, tarball[: len(tarball) // 2])
    with pytest.raises(download.ChecksumMismatch, match=r"does not match efa\.sha256"):
        fetch(root, settings_for(server.base_url, tarball), Sleeps())
    assert cached(root) == []


@pytest.mark.usefixtures("body_reader")
def test_connection_reset_on_every_attempt(root: Path, server: InstallerServer, tarball: bytes) -> None:
    server.behaviour.range_support = False
    server.behaviour.cuts.extend([("reset", 200_000)] * 2)
    with pytest.raises(download.DownloadError) as err:
        fetch(root, settings_for(server.base_url, tarball), Sleeps(), FAST._replace(attempts=2))
    message = str(err.value)
    assert "download failed after 2 attempts" in message and "\n" not in message
    assert "reset" in message.lower() or "broken" in message.lower()
    assert cached(root) == []


@pytest.mark.usefixtures("body_reader")
def test_slow_server_times_out(root: Path, server: InstallerServer, tarball: bytes) -> None:
    server.behaviour.stall_seconds = 30
    policy = FAST._replace(attempts=2, read_timeout=0.3)
    with pytest.raises(download.DownloadError) as err:
        fetch(root, settings_for(server.base_url, tarball), Sleeps(), policy)
    assert "download failed after 2 attempts" in str(err.value)
    assert "timed out" in str(err.value)
    assert cached(root) == []


def test_whole_download_is_bounded_in_time(root: Path, server: InstallerServer, tarball: bytes) -> None:
    ticks = iter(range(0, 10_000, 100))
    with pytest.raises(download.DownloadError, match=r"download took longer than 250s"):
        cache.fetch(settings_for(server.base_url, tarball), NodeRoot(str(root)),
                    DownloadOptions(policy=FAST._replace(total_seconds=250), sleep=Sleeps(),
                                    clock=lambda: float(next(ticks))))
    assert cached(root) == []


def test_server_down_fails_after_the_retries(root: Path, tarball: bytes) -> None:
    sleeps = Sleeps()
    with pytest.raises(download.DownloadError) as err:
        dead = f"http://127.0.0.1:{free_port()}"
        fetch(root, settings_for(dead, tarball), sleeps, FAST._replace(attempts=3))
    assert "download failed after 3 attempts" in str(err.value)
    assert "refused" in str(err.value).lower()
    assert sleeps == [1.0, 2.0]


def test_an_oversized_download_is_refused(root: Path, server: InstallerServer, tarball: bytes) -> None:
    with pytest.raises(download.DownloadError, match="more than the 1000 an installer tarball can be"):
        fetch(root, settings_for(server.base_url, tarball), Sleeps(), FAST._replace(max_bytes=1000))
    server.behaviour.chunked = True  # no Content-Length: caught while streaming
    with pytest.raises(download.DownloadError, match="more than 1000 bytes; not an installer tarball"):
        fetch(root, settings_for(server.base_url, tarball), Sleeps(), FAST._replace(max_bytes=1000))
    assert cached(root) == []


@pytest.mark.usefixtures("body_reader")
def test_chunked_download_without_content_length(root: Path, server: InstallerServer, tarball: bytes) -> None:
    server.behaviour.chunked = True
    assert fetch(root, settings_for(server.base_url, tarball), Sleeps()).read_bytes() == tarball


def test_durable_download_is_synced_before_the_rename(
    root: Path, server: InstallerServer, tarball: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: List[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(download.os, "fsync", fsync)
    cache.fetch(settings_for(server.base_url, tarball), NodeRoot(str(root)), DownloadOptions(durable=True))
    (part, directory) = synced
    assert Path(part).name.endswith(".part") and Path(part).parent == cache_dir(root)
    assert directory == str(cache_dir(root))


def test_interrupted_downloads_are_cleaned_up(root: Path, server: InstallerServer, tarball: bytes) -> None:
    cache = cache_dir(root)
    cache.mkdir(parents=True)
    old = cache / f".aws-efa-installer-{VERSION}.tar.gz.k1ll3d.part"
    old.write_bytes(b"half")
    os.utime(old, (1_000_000, 1_000_000))
    live = cache / f".aws-efa-installer-{VERSION}.tar.gz.l1ve.part"  # another download, still going
    live.write_bytes(b"x")
    fetch(root, settings_for(server.base_url, tarball), Sleeps())
    assert cached(root) == sorted([live.name, f"aws-efa-installer-{VERSION}.tar.gz"])


def test_without_sha256_nothing_is_downloaded(root: Path, server: InstallerServer) -> None:
    with pytest.raises(efa_facts.EfaError, match=r"neither efa\.sha256 nor efa\.gpg_fingerprint is set"):
        fetch(root, EfaSettings(base_url=server.base_url), Sleeps())
    assert server.gets() == []


# --- disk full (a real, small tmpfs as the cache) -----------------------------------------------------


@pytest.fixture
def small_cache(root: Path, need_root: None) -> Iterator[Path]:
    d = cache_dir(root)
    d.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "gna-efa-test", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


def test_disk_full_is_seen_before_downloading(
    root: Path, server: InstallerServer, tarball: bytes, small_cache: Path
) -> None:
    with pytest.raises(download.DownloadError) as err:
        fetch(root, settings_for(server.base_url, tarball), Sleeps())
    assert str(err.value).startswith(
        f"{small_cache}: {len(tarball)} more bytes needed for the download, only ")
    assert os.listdir(small_cache) == []


def test_disk_full_while_downloading_keeps_nothing(
    root: Path, server: InstallerServer, tarball: bytes, small_cache: Path
) -> None:
    server.behaviour.chunked = True  # no length announced: the write itself hits ENOSPC
    sleeps = Sleeps()
    with pytest.raises(download.DownloadError) as err:
        fetch(root, settings_for(server.base_url, tarball), sleeps)
    assert str(err.value) == (
        f"{small_cache}: cannot write the download: No space left on device; nothing kept")
    assert os.listdir(small_cache) == []
    assert sleeps == []  # a full disk is not retried


# --- TLS and proxies -------------------------------------------------------------------------------


@pytest.fixture
def tls(tmp_path: Path):  # type: ignore[no-untyped-def]
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return context, bundle


@pytest.mark.usefixtures("body_reader")
def test_https_download_verified_against_the_ca_bundle(
    root: Path, tarball: bytes, tls, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    context, bundle = tls
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    with InstallerServer(ssl_context=context) as server:
        server.add(VERSION, tarball)
        server.behaviour.cuts.append(("close", 500_000))  # resume works over TLS too
        path = fetch(root, settings_for(server.base_url, tarball), Sleeps())
        assert path.read_bytes() == tarball
        assert server.base_url.startswith("https://")
        assert [r.headers.get("Range") for r in server.gets()] == [None, "bytes=500000-"]


def test_https_with_an_unknown_ca_fails_without_retrying(
    root: Path, tarball: bytes, tls  # type: ignore[no-untyped-def]
) -> None:
    context, _ = tls
    sleeps = Sleeps()
    with InstallerServer(ssl_context=context) as server:
        server.add(VERSION, tarball)
        with pytest.raises(download.DownloadError) as err:
            fetch(root, settings_for(server.base_url, tarball), sleeps)
        assert server.gets() == []  # no request was sent over an unverified connection
    message = str(err.value)
    assert "TLS verification failed" in message and "CERTIFICATE_VERIFY_FAILED" in message
    assert "REQUESTS_CA_BUNDLE" in message and "\n" not in message
    assert sleeps == [] and cached(root) == []


def test_https_proxy_is_honoured(
    root: Path, tarball: bytes, tls, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    context, bundle = tls
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    with InstallerServer(ssl_context=context) as server, ConnectProxy() as proxy:
        server.add(VERSION, tarball)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        assert fetch(root, settings_for(server.base_url, tarball), Sleeps()).read_bytes() == tarball
        assert proxy.targets == [f"127.0.0.1:{server.port}"]


def test_no_proxy_bypasses_the_proxy(
    root: Path, server: InstallerServer, tarball: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HTTP_PROXY", dead_proxy)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert fetch(root, settings_for(server.base_url, tarball), Sleeps()).read_bytes() == tarball
    monkeypatch.delenv("NO_PROXY")
    cache_dir(root).joinpath(f"aws-efa-installer-{VERSION}.tar.gz").unlink()
    with pytest.raises(download.DownloadError, match=r"(?i)proxy"):  # without NO_PROXY, the dead proxy is used
        fetch(root, settings_for(server.base_url, tarball), Sleeps(), FAST._replace(attempts=1))


def test_http_proxy_sees_the_absolute_url(
    root: Path, server: InstallerServer, tarball: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", server.base_url)  # the loopback server doubles as the proxy
    settings = settings_for("http://efa-installer.invalid", tarball)
    assert fetch(root, settings, Sleeps()).read_bytes() == tarball
    (request,) = server.gets()
    assert request.path == f"http://efa-installer.invalid/aws-efa-installer-{VERSION}.tar.gz"


# --- `gpu-node-agent efa fetch` ------------------------------------------------------------------------


def test_efa_fetch_command(root: Path, server: InstallerServer, tarball: bytes, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"efa:\n  base_url: {server.base_url}\n  sha256: {sha256(tarball)}\n"
                      "  install: never\n")  # fetching for an AMI bake works whatever install says
    argv = ["--root", str(root), "--config", str(config), "efa", "fetch"]
    assert main(argv) == 0
    assert capsys.readouterr().out == (f"/var/cache/gpu-node-agent/aws-efa-installer-{VERSION}.tar.gz: "
                                       f"aws-efa-installer {VERSION}, sha256 verified\n")
    assert main(argv) == 0  # again: verified from the cache, no request
    assert len(server.gets()) == 1


def test_efa_fetch_without_sha256_is_one_line(root: Path, server: InstallerServer, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"efa:\n  base_url: {server.base_url}\n")
    assert main(["--root", str(root), "--config", str(config), "efa", "fetch"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gpu-node-agent: efa fetch: nothing to fetch: neither efa.sha256 nor "
                          "efa.gpg_fingerprint is set") and err.count("\n") == 1
    assert server.gets() == []


def test_efa_without_an_action_is_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["efa"]) == 64
