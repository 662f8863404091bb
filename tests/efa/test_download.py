"""The downloader alone (agent/efa/download.py), not through the EFA cache: any file, any name, its
caller's wording and logger, against a real loopback HTTP server (tests/support/efa_helpers.py).

The EFA wording, retries, proxies, TLS and hostile servers: tests/efa/test_efa_fetch.py and
tests/efa/test_efa_hostile.py.
"""

import hashlib
import os
from pathlib import Path
from typing import Iterator, List

import pytest

from agent.efa import download
from agent.efa.download import DownloadOptions, DownloadPolicy, Wording
from tests.support.efa_helpers import InstallerServer

BODY = os.urandom(300 * 1024)
FAST = DownloadPolicy(attempts=3, connect_timeout=2.0, read_timeout=2.0, chunk_size=16 * 1024)


@pytest.fixture
def server() -> Iterator[InstallerServer]:
    with InstallerServer({"/data.bin": BODY}) as s:
        yield s


def options(sleeps: List[float]) -> DownloadOptions:
    return DownloadOptions(policy=FAST, sleep=sleeps.append, rand=lambda: 1.0)


def test_a_file_lands_whole_with_its_digest(tmp_path: Path, server: InstallerServer) -> None:
    target = tmp_path / "data.bin"
    seen: List[str] = []
    download.download(f"{server.base_url}/data.bin", target, hashlib.sha256(BODY).hexdigest().upper(),
                      options([]), verify=lambda tmp, digest: seen.append(digest))
    assert target.read_bytes() == BODY
    assert seen == [hashlib.sha256(BODY).hexdigest()]  # the digest computed while it streamed in
    assert os.listdir(tmp_path) == ["data.bin"]


def test_a_cut_is_resumed_where_it_stopped(tmp_path: Path, server: InstallerServer) -> None:
    server.behaviour.cuts.append(("reset", 100_000))
    sleeps: List[float] = []
    download.download(f"{server.base_url}/data.bin", tmp_path / "data.bin", None, options(sleeps))
    assert (tmp_path / "data.bin").read_bytes() == BODY
    first, second = server.gets()
    assert "Range" not in first.headers and second.headers["Range"].startswith("bytes=")
    assert len(sleeps) == 1


def test_the_callers_wording_names_the_pin_and_what_is_missing(tmp_path: Path, server: InstallerServer) -> None:
    wording = Wording(pin="model.sha256", not_found_hint=" (is model.version published?)",
                      discarded="discarded, nothing loaded")
    with pytest.raises(download.ChecksumMismatch) as err:
        download.download(f"{server.base_url}/data.bin", tmp_path / "data.bin", "0" * 64, options([]),
                          wording=wording)
    assert str(err.value) == (f"{server.base_url}/data.bin: sha256 {hashlib.sha256(BODY).hexdigest()} does not "
                              f"match model.sha256 {'0' * 64} ({len(BODY)} bytes received); discarded, nothing loaded")
    with pytest.raises(download.DownloadError) as missing:
        download.download(f"{server.base_url}/other.bin", tmp_path / "other.bin", None, options([]), wording=wording)
    assert str(missing.value) == f"{server.base_url}/other.bin: HTTP 404 Not Found (is model.version published?)"
    assert os.listdir(tmp_path) == []


def test_a_refusing_verify_keeps_nothing(tmp_path: Path, server: InstallerServer) -> None:
    def refuse(tmp: Path, digest: str) -> None:
        assert tmp.parent == tmp_path and tmp.read_bytes() == BODY
        raise download.ChecksumMismatch("refused by the caller")

    with pytest.raises(download.ChecksumMismatch, match="refused by the caller"):
        download.download(f"{server.base_url}/data.bin", tmp_path / "data.bin", None, options([]), verify=refuse)
    assert os.listdir(tmp_path) == []
