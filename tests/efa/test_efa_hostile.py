"""A hostile download server and killed runs against agent/efa/download.py and agent/efa/install.py: the
overall deadline bounds every socket read, the installer dies with the agent, a live one from an
earlier run is never raced."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from agent.base.noderoot import NodeRoot
from agent.config.settings import EfaSettings
from agent.efa import download, install
from tests.support.paths import REPO


class TrickleServer:
    """HTTP/1.1 on loopback that promises 10 MB, then sends one byte every ``gap`` seconds: each read
    sees data well within its read timeout, so only an overall deadline can end the download."""

    def __init__(self, gap: float = 0.2) -> None:
        self.gap = gap
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/aws-efa-installer-1.48.0.tar.gz"

    def serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self.trickle, args=(conn,), daemon=True).start()

    def trickle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
                for _ in range(200):  # 40 s at most, then the test would have failed anyway
                    if self.stop.is_set():
                        return
                    conn.sendall(b"x")
                    time.sleep(self.gap)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(2)


@pytest.fixture
def trickle() -> Iterator[TrickleServer]:
    server = TrickleServer()
    yield server
    server.close()


def test_the_overall_deadline_bounds_a_trickling_server(trickle: TrickleServer, tmp_path: Path) -> None:
    policy = download.DownloadPolicy(attempts=3, connect_timeout=2.0, read_timeout=5.0, total_seconds=1.5,
                                chunk_size=1 << 20)
    start = time.monotonic()
    with pytest.raises(download.DownloadError, match=r"download took longer than 1\.5s"):
        download.download(trickle.url, tmp_path / "aws-efa-installer-1.48.0.tar.gz", "0" * 64,
                          download.DownloadOptions(policy=policy))
    elapsed = time.monotonic() - start
    assert elapsed < 4.0, f"the 1.5s deadline held the download for {elapsed:.1f}s"
    assert list(tmp_path.iterdir()) == []  # nothing kept


# --- the installer's life ---------------------------------------------------------------------------

AGENT = """
import sys
from pathlib import Path
from agent.efa import install
install.run_installer(Path(sys.argv[1]), (), 600, pid_file=Path(sys.argv[2]))
"""


def installer_dir(tmp_path: Path) -> Path:
    d = tmp_path / "aws-efa-installer"
    d.mkdir()
    script = d / "efa_installer.sh"
    # the script (the direct child) and what it starts, like yum, in its process group
    script.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {tmp_path}/grandchild\nwait\n")
    script.chmod(0o755)
    return d


def wait_for(predicate: "object", seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].split()[0] != "Z"
    except OSError:
        return False


def test_kill_9_of_the_agent_kills_the_installer_and_the_next_run_waits(tmp_path: Path) -> None:
    root = tmp_path / "node"
    root.mkdir()
    node = NodeRoot(str(root))
    pid_file = node.path(install.INSTALLER_PID_FILE)
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(installer_dir(tmp_path)), str(pid_file)],
                             cwd=REPO)
    try:
        wait_for(lambda: pid_file.exists() and (tmp_path / "grandchild").exists())
        script = int(pid_file.read_text())
        grandchild = int((tmp_path / "grandchild").read_text())
        assert alive(script) and alive(grandchild)
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        wait_for(lambda: not alive(script), 5)  # PR_SET_PDEATHSIG: the script dies with the agent
        # what it started runs on in its group: the next run finds it and does not start a second one
        assert install.earlier_installer(node) == script
        with pytest.raises(install.InstallerFailed, match=rf"process group {script}\) is still running after 0\.3s"):
            install.wait_for_earlier_installer(node, 0.3)
        stale = root / "var/cache/gpu-node-agent/.efa-installer-abc"
        stale.mkdir(parents=True)
        install.clean_stale(node, EfaSettings())
        assert stale.exists()  # never removed under a live installer
        threading.Timer(0.5, os.kill, (grandchild, signal.SIGTERM)).start()
        install.wait_for_earlier_installer(node, 10)  # waits for it to end
        assert not alive(grandchild) and not pid_file.exists()
        install.clean_stale(node, EfaSettings())
        assert not stale.exists()  # what the killed run left is gone once nothing uses it
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        agent.kill()
        agent.wait()


def test_an_installer_that_ends_removes_its_pid_file(tmp_path: Path) -> None:
    d = tmp_path / "aws-efa-installer"
    d.mkdir()
    (d / "efa_installer.sh").write_text("#!/bin/sh\necho done\n")
    (d / "efa_installer.sh").chmod(0o755)
    pid_file = tmp_path / "run/efa-installer.pid"
    install.run_installer(d, (), 30, pid_file=pid_file)
    assert not pid_file.exists()
