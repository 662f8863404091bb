"""Atomic writes and the run lock, on the real filesystem and with real processes."""

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.base import lockholder
from agent.base.errors import LockBusy, NodeFileError
from agent.base.fs import LOCK_PATH, atomic_write, read_text, run_lock
from agent.base.noderoot import NodeRoot
from tests.support.lock_helpers import HOLDER_COMMAND, holding_the_lock
from tests.support.paths import REPO, sample


def test_atomic_write_keeps_mode_and_owner(tmp_path: Path, need_root: None) -> None:
    target = tmp_path / "config.toml"
    target.write_text("old\n")
    os.chmod(target, 0o640)
    os.chown(target, 1234, 5678)
    atomic_write(target, b"new\n")
    st = target.stat()
    assert target.read_text() == "new\n"
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_a_failed_write_leaves_the_original_and_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "config.toml"
    target.write_text("old\n")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(NodeFileError, match="config.toml: cannot write: No space left on device"):
        atomic_write(target, b"new\n")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_a_symlink_is_never_written_through(tmp_path: Path) -> None:
    real = tmp_path / "real.toml"
    real.write_text("x\n")
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    with pytest.raises(NodeFileError) as err:
        atomic_write(link, b"y\n")
    assert str(err.value) == f"{link}: is a symlink; refusing to replace it"
    assert real.read_text() == "x\n" and link.is_symlink()


def test_while_writing_the_new_text_is_a_hidden_file_beside_the_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Beside it: the rename is atomic only within one filesystem. Hidden and not *.toml: containerd's
    # `imports = ["/etc/containerd/conf.d/*.toml"]` must never load a half-written file.
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    target = conf_d / "10-agent.toml"
    target.write_text("old\n")
    seen = []
    fsync = os.fsync

    def look(fd: int) -> None:
        seen.append(sorted(p.name for p in conf_d.iterdir()))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", look)
    atomic_write(target, b"new\n")
    during = seen[0]
    assert len(during) == 2 and "10-agent.toml" in during
    (temp,) = [name for name in during if name != "10-agent.toml"]
    assert temp.startswith(".") and not temp.endswith(".toml")
    assert sorted(p.name for p in conf_d.iterdir()) == ["10-agent.toml"] and target.read_text() == "new\n"


def test_a_directory_removed_while_writing_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    directory = tmp_path / "containerd"
    directory.mkdir()
    target = directory / "config.toml"
    target.write_text("old\n")
    fsync = os.fsync

    def removed_meanwhile(fd: int) -> None:
        fsync(fd)
        shutil.rmtree(directory)  # e.g. an image build step replacing the directory

    monkeypatch.setattr(os, "fsync", removed_meanwhile)
    with pytest.raises(NodeFileError) as err:
        atomic_write(target, b"new\n")
    assert str(err.value) == f"{target}: cannot write: No such file or directory"


def test_read_text_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(NodeFileError, match="dir: is a directory, expected a file"):
        read_text(tmp_path / "dir")
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(NodeFileError, match="empty: is empty"):
        read_text(tmp_path / "empty", allow_empty=False)


def test_node_root_resolves_under_the_root() -> None:
    root = NodeRoot("/mnt/image")
    assert root.path("/etc/containerd/config.toml") == Path("/mnt/image/etc/containerd/config.toml")
    assert root.node_path(Path("/mnt/image/etc/eks")) == "/etc/eks"
    with pytest.raises(ValueError):
        root.path("etc/containerd")


def test_lock_waits_a_bounded_time_then_gives_up(tmp_path: Path) -> None:
    root = NodeRoot(str(tmp_path))
    now = [0.0]
    sleeps = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    lock_file = root.path(LOCK_PATH)
    lock_file.parent.mkdir(parents=True)
    holder = os.open(lock_file, os.O_RDWR | os.O_CREAT)
    # a lock held through another open file description behaves like another process's lock
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(LockBusy, match=r"another gpu-node-agent run holds the lock \(waited 2s\)"):
            with run_lock(root, 2.0, clock=lambda: now[0], sleep=sleep):
                pass
    finally:
        os.close(holder)
    assert 19 <= len(sleeps) <= 21
    with run_lock(root, 2.0, clock=lambda: now[0], sleep=sleep) as path:
        record = json.loads(path.read_text())
        assert record["pid"] == os.getpid() and record["command"].startswith("gpu-node-agent")
        assert lockholder.holder(path) == lockholder.Holder(os.getpid(), record["command"])
    assert path.read_text() == ""  # released: no holder to name


def test_a_second_run_exits_75_naming_the_pid_and_command_holding_the_lock(tmp_path: Path) -> None:
    node = tmp_path / "node"
    (node / "etc/containerd").mkdir(parents=True)
    (node / "etc/containerd/config.toml").write_text(sample("containerd-v3-nodeadm-nvidia.toml"))
    with holding_the_lock(node) as holder:
        result = subprocess.run(
            [sys.executable, "-m", "agent", "--root", str(node), "run", "--lock-wait", "0.3"],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 75
    assert result.stderr.strip().splitlines() == [
        f"gpu-node-agent: {node}/run/gpu-node-agent/lock: another gpu-node-agent run holds the lock "
        f"(pid {holder.pid}: {HOLDER_COMMAND}; waited 0.3s)"
    ]


def test_a_lock_file_without_a_live_holder_names_no_one(tmp_path: Path) -> None:
    with holding_the_lock(tmp_path) as holder:
        lock = tmp_path / LOCK_PATH.lstrip("/")
        assert lockholder.holder(lock) == lockholder.Holder(holder.pid, HOLDER_COMMAND)
        record = json.loads(lock.read_text())
    # The holder is gone: its record stays in the file, and is no longer believed.
    assert json.loads(lock.read_text()) == record and lockholder.holder(lock) is None
    # A live process with that pid but another start time is a reused pid, not the holder.
    lock.write_text(json.dumps({**record, "pid": os.getpid()}) + "\n")
    assert lockholder.holder(lock) is None
    # An earlier agent's plain pid, or anything else, names no one.
    for text in (f"{os.getpid()}\n".encode(), b"", b"[]", b'{"pid": true, "start": 1}', b"\xff"):
        lock.write_bytes(text)
        assert lockholder.holder(lock) is None


def test_a_lock_path_that_is_a_symlink_or_a_fifo_names_no_one(tmp_path: Path) -> None:
    """``status`` reads the record without following a symlink and without blocking on a FIFO."""
    with holding_the_lock(tmp_path) as holder:
        lock = tmp_path / LOCK_PATH.lstrip("/")
        assert lockholder.holder(lock) == lockholder.Holder(holder.pid, HOLDER_COMMAND)
        link = tmp_path / "lock-link"
        link.symlink_to(lock)
        assert lockholder.holder(link) is None
        fifo = tmp_path / "lock-fifo"
        os.mkfifo(fifo)
        assert lockholder.holder(fifo) is None
        assert lockholder.holder(tmp_path / "no-such-lock") is None


def test_the_holder_record_never_truncates_a_lock_file_with_another_link(tmp_path: Path) -> None:
    """A lock file hard-linked to another file (config.toml): the record is not written at all."""
    config = tmp_path / "config.toml"
    config.write_text(sample("containerd-v3-nodeadm-nvidia.toml"))
    lock = tmp_path / "lock"
    os.link(config, lock)
    fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)
    try:
        with lockholder.recorded(fd):
            assert config.read_text() == sample("containerd-v3-nodeadm-nvidia.toml")
        assert config.read_text() == sample("containerd-v3-nodeadm-nvidia.toml")  # nor emptied on release
        os.unlink(config)  # one link left: now it is written, through the lock's own descriptor
        with lockholder.recorded(fd):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert lock.read_text() == ""
    finally:
        os.close(fd)


def test_a_new_file_is_readable_by_all_and_writable_by_root_only(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # the mode is the agent's choice, not the umask's
    try:
        atomic_write(tmp_path / "status.json", b"{}\n")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "status.json").stat().st_mode & 0o7777 == 0o644
