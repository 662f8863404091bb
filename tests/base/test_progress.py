"""Progress of long work: the EFA download (bytes, total, percent, rate at each 10 % or every 5 s; one
updating line on a TTY) and the installer's heartbeat (elapsed time and last output line), with the
clock injected. The download goes through the real loopback server; the installer is a real script."""

import io
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from agent.base import log, progress
from agent.base.noderoot import NodeRoot
from agent.config.settings import EfaSettings
from agent.efa import cache, download, install
from agent.efa.download import DownloadOptions
from tests.support.efa_helpers import VERSION, InstallerServer, installer_script, installer_tarball, sha256


@pytest.fixture
def events(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    log.setup("json", 0)

    def read(event: str) -> List[Dict[str, Any]]:
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
        return [e for e in lines if e["event"] == event]

    yield read
    log.setup("json", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_download_progress_every_ten_percent(events: Any) -> None:
    clock = Clock()
    shown = progress.Transfer("https://x/a.tar.gz", lambda: 1000, clock=clock, stream=io.StringIO())
    for received in range(0, 1001, 10):  # 1 % per step, 0.1 s apart: 100 B/s
        shown.update(received)
        clock.now += 0.1
    logged = events("download progress")
    assert [e["percent"] for e in logged] == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0]
    assert all(e["total"] == 1000 and e["url"] == "https://x/a.tar.gz" for e in logged)
    assert [e["bytes"] for e in logged][:2] == [100, 200]
    assert {e["rate_bytes_per_second"] for e in logged} == {100}


def test_download_progress_every_five_seconds_on_a_slow_link_or_without_a_total(events: Any) -> None:
    clock = Clock()
    shown = progress.Transfer("u", lambda: None, clock=clock, stream=io.StringIO())
    for received in range(0, 30_000, 1000):  # 1 kB every second, size unknown (chunked)
        shown.update(received)
        clock.now += 1.0
    logged = events("download progress")
    assert [e["bytes"] for e in logged] == [5000, 10000, 15000, 20000, 25000]
    assert all(e["percent"] is None and e["total"] is None and e["rate_bytes_per_second"] == 1000
               for e in logged)


def test_on_a_tty_progress_is_one_line_rewritten_in_place(events: Any) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, clock = Tty(), Clock()
    shown = progress.Transfer("aws-efa-installer-1.48.0.tar.gz", lambda: 4 << 20, clock=clock, stream=tty)
    for received in range(0, (4 << 20) + 1, 1 << 18):
        shown.update(received)
        clock.now += 0.5
    shown.finish()
    out = tty.getvalue()
    assert out.count("\r\033[K") >= 9 and out.endswith("\n") and out.count("\n") == 1
    assert out.rstrip("\n").split("\r\033[K")[-1] == \
        "aws-efa-installer-1.48.0.tar.gz: 4.0 MiB of 4.0 MiB (100%), 512.0 KiB/s"
    assert events("download progress") == []  # the line instead of log events


def test_a_real_download_logs_its_progress(tmp_path: Path, events: Any) -> None:
    root = tmp_path / "node"
    root.mkdir()
    data = installer_tarball(installer_script(root, tmp_path / "runs"), payload=os.urandom(1 << 20))
    with InstallerServer() as server:
        server.add(VERSION, data)
        settings = EfaSettings(base_url=server.base_url, sha256=sha256(data))
        policy = download.DownloadPolicy(chunk_size=16 * 1024)
        cache.fetch(settings, NodeRoot(str(root)), DownloadOptions(policy=policy, sleep=lambda s: None))
    logged = events("download progress")
    assert 9 <= len(logged) <= 11, logged
    assert logged[-1]["bytes"] == logged[-1]["total"] == len(data) and logged[-1]["percent"] == 100.0
    assert [e["percent"] for e in logged] == sorted(e["percent"] for e in logged)


def test_the_installer_sends_a_heartbeat_with_its_last_line(tmp_path: Path, events: Any) -> None:
    directory = tmp_path / "aws-efa-installer"
    directory.mkdir()
    script = directory / "efa_installer.sh"
    script.write_text('#!/bin/sh\necho "== Testing EFA installer =="\necho "Installing libfabric-aws"\n'
                      "sleep 1\necho done\n")
    script.chmod(0o755)
    clock = Clock()

    def ticking() -> float:  # 30 s of installer time per heartbeat
        clock.now += 30.0
        return clock.now

    install.run_installer(directory, ("-y",), 60.0, heartbeat_seconds=0.2, clock=ticking)
    beats = events("still running")
    assert len(beats) >= 2, beats
    assert beats[0]["what"] == "efa_installer.sh"
    assert beats[0]["last_output"] == "Installing libfabric-aws"
    assert [b["elapsed_seconds"] for b in beats[:2]] == [30, 60]


def test_heartbeat_stops_with_the_installer(events: Any) -> None:
    with progress.Heartbeat("x", lambda: None, interval=0.05) as beat:
        pass
    assert beat._thread is not None and not beat._thread.is_alive()
