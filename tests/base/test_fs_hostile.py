"""Hostile and unlucky input against agent/base/fs.py: --root confinement, bounded reads, the run lock,
compare-and-swap writes, and writes on read-only or full filesystems (real mounts, as root)."""

import errno
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.base import fs
from agent.base.errors import NodeFileError, NodeFileMissing
from agent.base.fs import LOCK_PATH, atomic_write, read_bytes, read_text, remove_stale_temp_files, run_lock
from agent.base.noderoot import NodeRoot
from tests.support.paths import REPO


def tree(tmp_path: Path) -> "tuple[NodeRoot, Path, Path]":
    """A node root and, beside it, a directory standing for the build host's own files."""
    root, host = tmp_path / "image", tmp_path / "host"
    (root / "etc").mkdir(parents=True)
    host.mkdir()
    return NodeRoot(str(root)), root, host


# --- the resolver ---------------------------------------------------------------------------------


def test_an_absolute_symlinked_directory_resolves_inside_the_tree(tmp_path: Path) -> None:
    node, root, host = tree(tmp_path)
    (host / "config.toml").write_text("the build host's file\n")
    (root / "etc/containerd").symlink_to(host)  # absolute: on the image it means ROOT/<host>
    inside = root / str(host).lstrip("/")
    inside.mkdir(parents=True)
    (inside / "config.toml").write_text("the image's file\n")
    path = node.path("/etc/containerd/config.toml")
    assert path == inside / "config.toml"
    assert read_text(path) == "the image's file\n"


@pytest.mark.parametrize("target", ["../../../../../../../../tmp", "/../../../tmp", "/tmp"])
def test_dotdot_in_a_link_never_climbs_above_the_root(tmp_path: Path, target: str) -> None:
    node, root, _ = tree(tmp_path)
    (root / "etc/nvidia-container-runtime").symlink_to(target)
    assert node.path("/etc/nvidia-container-runtime/config.toml") == root / "tmp/config.toml"


def test_a_node_path_climbing_above_the_root_is_refused(tmp_path: Path) -> None:
    node, root, _ = tree(tmp_path)
    with pytest.raises(NodeFileError, match=r"/\.\./\.\./\.\./\.\./tmp/x/config\.toml climbs above --root"):
        node.path("/../../../../tmp/x/config.toml")
    assert node.path("/etc/../etc/containerd") == root / "etc/containerd"  # inside: fine


def test_a_symlinked_last_component_is_kept_but_read_inside_the_tree(tmp_path: Path) -> None:
    node, root, host = tree(tmp_path)
    (host / "dropin.toml").write_text("host\n")
    inside = root / str(host).lstrip("/")
    inside.mkdir(parents=True)
    (inside / "dropin.toml").write_text("image\n")
    (root / "etc/dropin.toml").symlink_to(host / "dropin.toml")
    path = node.path("/etc/dropin.toml")
    assert path == root / "etc/dropin.toml" and path.is_symlink()  # callers still see the link
    assert read_text(path) == "image\n"
    with pytest.raises(NodeFileError, match="is a symlink"):
        atomic_write(path, b"x\n")
    assert (host / "dropin.toml").read_text() == "host\n"


def test_a_symlink_loop_is_one_line(tmp_path: Path) -> None:
    node, root, _ = tree(tmp_path)
    (root / "etc/a").symlink_to("b")
    (root / "etc/b").symlink_to("/etc/a")
    with pytest.raises(NodeFileError, match="too many levels of symbolic links"):
        node.path("/etc/a/config.toml")


def test_the_host_root_is_unchanged() -> None:
    assert NodeRoot("/").path("/etc/containerd/config.toml") == Path("/etc/containerd/config.toml")


# --- bounded reads --------------------------------------------------------------------------------


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "dropin.toml"
    os.mkfifo(fifo)
    with pytest.raises(NodeFileError, match="dropin.toml: is a FIFO, expected a regular file"):
        read_text(fifo)


def test_a_device_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "dropin.toml"
    link.symlink_to("/dev/zero")
    with pytest.raises(NodeFileError, match="is a character device, expected a regular file"):
        read_text(link)


def test_a_file_over_its_limit_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "config.toml"
    big.write_bytes(b"#" * (fs.MAX_NODE_FILE + 1))
    with pytest.raises(NodeFileError, match=r"more than the 1 MiB limit for this file; not read"):
        read_text(big)
    assert len(read_bytes(big, limit=fs.MAX_NODE_FILE + 1)) == fs.MAX_NODE_FILE + 1


def test_a_missing_file_is_still_missing(tmp_path: Path) -> None:
    with pytest.raises(NodeFileMissing):
        read_text(tmp_path / "nope")


# --- the run lock ---------------------------------------------------------------------------------


def test_the_lock_never_follows_a_symlink(tmp_path: Path) -> None:
    node, root, host = tree(tmp_path)
    victim = host / "precious"
    victim.write_text("do not truncate me\n")
    lock = root / LOCK_PATH.lstrip("/")
    lock.parent.mkdir(parents=True)
    lock.symlink_to(victim)
    with pytest.raises(NodeFileError, match="the run lock is a symlink; refusing to open it"):
        with run_lock(node, 0):
            pass
    assert victim.read_text() == "do not truncate me\n"


def test_a_lock_that_is_not_a_regular_file_of_ours_is_refused(tmp_path: Path, need_root: None) -> None:
    node, root, _ = tree(tmp_path)
    lock = root / LOCK_PATH.lstrip("/")
    lock.parent.mkdir(parents=True)
    os.mkfifo(lock)
    with pytest.raises(NodeFileError, match="the run lock is a FIFO, expected a regular file"):
        with run_lock(node, 0):
            pass
    lock.unlink()
    lock.write_text("")
    os.chown(lock, 1234, 1234)
    with pytest.raises(NodeFileError, match="the run lock is owned by uid 1234"):
        with run_lock(node, 0):
            pass


# --- compare-and-swap writes ----------------------------------------------------------------------


def test_a_writer_racing_the_swap_keeps_its_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nodeadm re-renders the file after the agent compared it: the agent must not overwrite that."""
    from agent.base.fs import FileEdit
    from agent.pipeline.apply import write_edit

    target = tmp_path / "config.toml"
    target.write_text("planned-from\n")
    edit = FileEdit(target, "planned-from\n", "agent's edit\n", ("why",), "containerd")
    real_fsync = os.fsync
    raced = []

    def rival_renames_in_its_file(fd: int) -> None:  # runs after the compare, before the swap
        real_fsync(fd)
        if not raced:
            rival = tmp_path / "nodeadm.tmp"
            rival.write_text("nodeadm's render\n")
            os.rename(rival, target)
            raced.append(True)

    monkeypatch.setattr(fs.os, "fsync", rival_renames_in_its_file)
    with pytest.raises(NodeFileError, match="changed while the agent was writing"):
        write_edit(edit)
    assert raced and target.read_text() == "nodeadm's render\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_a_continuous_racer_never_loses_its_change(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    stop = threading.Event()
    lost = []

    def racer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            rival = tmp_path / f"rival-{n}"
            rival.write_text(f"rival {n}\n")
            os.rename(rival, target)

    for _ in range(30):
        target.write_text("old\n")
        thread = threading.Thread(target=racer)
        thread.start()
        try:
            try:
                atomic_write(target, b"new\n", expected=b"old\n")
                written = True
            except NodeFileError as exc:
                assert "changed while the agent was writing" in str(exc)
                written = False
        finally:
            stop.set()
            thread.join()
            stop.clear()
        # written: the racer's later renames replaced ours, fine; refused: a rival's file is there
        if not written and not target.read_text().startswith("rival"):
            lost.append(target.read_text())
    assert not lost


def test_mode_owner_and_xattrs_are_kept(tmp_path: Path, need_root: None) -> None:
    target = tmp_path / "config.toml"
    target.write_text("old\n")
    os.chmod(target, 0o640)
    os.chown(target, 1234, 5678)
    os.setxattr(target, "security.selinux", b"system_u:object_r:container_config_t:s0\x00")
    os.setxattr(target, "user.origin", b"nodeadm")
    atomic_write(target, b"new\r\nline\r\n", expected=b"old\n")
    st = target.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert os.getxattr(target, "security.selinux") == b"system_u:object_r:container_config_t:s0\x00"
    assert os.getxattr(target, "user.origin") == b"nodeadm"
    assert target.read_bytes() == b"new\r\nline\r\n"  # bytes as given: CRLF stays CRLF


# --- faults in our own writes -----------------------------------------------------------------------


@pytest.mark.parametrize("call", ["mkstemp", "lstat", "rename"])
def test_every_oserror_is_the_files_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    import tempfile

    target = tmp_path / "config.toml"
    target.write_text("old\n")

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile if call == "mkstemp" else fs.os, call, fail)
    with pytest.raises(NodeFileError, match=r"config.toml: cannot write: Read-only file system$"):
        atomic_write(target, b"new\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def in_mount_namespace(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


WRITE_SCRIPT = """
import sys
from pathlib import Path
from agent.base.errors import NodeFileError
from agent.base.fs import atomic_write
try:
    atomic_write(Path(sys.argv[1]), b"new\\n")
except NodeFileError as exc:  # anything else is a traceback, and fails the test
    sys.exit(str(exc))
"""
WRITE = f"{sys.executable} -c '{WRITE_SCRIPT}'"


def test_a_read_only_filesystem_is_one_line(tmp_path: Path, need_root: None) -> None:
    d = tmp_path / "etc-containerd"
    d.mkdir()
    (d / "config.toml").write_text("old\n")
    proc = in_mount_namespace(f"mount --bind {d} {d}; mount -o remount,bind,ro {d}; {WRITE} {d}/config.toml")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("config.toml: cannot write: Read-only file system")
    assert (d / "config.toml").read_text() == "old\n"


def test_a_full_filesystem_is_one_line(tmp_path: Path, need_root: None) -> None:
    d = tmp_path / "full"
    d.mkdir()
    proc = in_mount_namespace(
        f"mount -t tmpfs -o size=64k tmpfs {d}; echo old > {d}/config.toml; "
        f"dd if=/dev/zero of={d}/filler bs=4k 2>/dev/null || true; {WRITE} {d}/config.toml"
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "config.toml: cannot write: No space left on device" in proc.stderr


def test_run_start_removes_temp_files_of_killed_runs(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    target.write_text("x\n")
    old, fresh, other = (tmp_path / ".config.toml.abc123.tmp", tmp_path / ".config.toml.def456.tmp",
                         tmp_path / ".other.toml.abc.tmp")
    for p in (old, fresh, other):
        p.write_text("partial")
    os.utime(old, (1, 1))
    os.utime(other, (1, 1))
    assert remove_stale_temp_files([target]) == [old]
    assert fresh.exists() and other.exists() and target.exists()


def test_a_node_program_that_is_an_absolute_symlink_runs_from_the_tree(tmp_path: Path) -> None:
    """A mounted image's /usr/bin/nvidia-ctk -> /opt/ctk/nvidia-ctk is the image's program, never the
    build host's (which need not exist, or may be another program)."""
    from agent.compat import versions

    root = tmp_path / "node"
    (root / "opt/ctk").mkdir(parents=True)
    (root / "opt/ctk/nvidia-ctk").write_text("#!/bin/sh\necho 'NVIDIA Container Toolkit CLI version 9.8.7'\n")
    (root / "opt/ctk/nvidia-ctk").chmod(0o755)
    (root / "usr/bin").mkdir(parents=True)
    os.symlink("/opt/ctk/nvidia-ctk", root / "usr/bin/nvidia-ctk")
    assert not Path("/opt/ctk/nvidia-ctk").exists()
    node = fs.NodeRoot(str(root))
    assert node.executable("/usr/bin/nvidia-ctk") == root / "opt/ctk/nvidia-ctk"
    assert versions.toolkit_version(node) == ("9.8.7", "/usr/bin/nvidia-ctk --version")
    assert fs.NodeRoot("/").executable("/usr/bin/nvidia-ctk") == Path("/usr/bin/nvidia-ctk")


def test_a_write_landing_between_the_exchange_and_the_swap_back_is_not_lost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three writers: the agent's compare-and-swap finds nodeadm's file (not the one it planned
    from) and swaps it back; a third write lands between the exchange and the swap back. The newest
    file must be the one left in place, and none of the agent's."""
    target = tmp_path / "config.toml"
    target.write_text("nodeadm's render\n")
    real_exchange = fs.exchange
    calls = []

    def exchange_then_a_third_writer(a: Path, b: Path) -> bool:
        done = real_exchange(a, b)
        calls.append((a, b))
        if len(calls) == 1:
            rival = tmp_path / "operator.tmp"
            rival.write_text("operator's fix\n")
            os.rename(rival, target)
        return done

    monkeypatch.setattr(fs, "exchange", exchange_then_a_third_writer)
    with pytest.raises(NodeFileError, match="changed while the agent was writing"):
        atomic_write(target, b"agent's edit\n", expected=b"planned-from\n")
    assert target.read_text() == "operator's fix\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_a_continuous_racer_always_ends_with_its_last_write(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    stop = threading.Event()
    wrong = []
    for _ in range(40):
        target.write_text("old\n")
        last = [""]

        def racer(last: list = last) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                rival = tmp_path / f"rival-{n}"
                rival.write_text(f"rival {n}\n")
                os.rename(rival, target)
                last[0] = f"rival {n}\n"

        thread = threading.Thread(target=racer)
        thread.start()
        try:
            with pytest.raises(NodeFileError):
                atomic_write(target, b"new\n", expected=b"not what is there\n")
        finally:
            stop.set()
            thread.join()
            stop.clear()
        if target.read_text() != (last[0] or "old\n"):
            wrong.append((target.read_text(), last[0]))
    assert not wrong


def test_a_lock_hard_linked_to_another_file_is_refused_and_that_file_kept(tmp_path: Path) -> None:
    node, root, _ = tree(tmp_path)
    config = root / "etc/containerd/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('version = 3\n')
    lock = root / LOCK_PATH.lstrip("/")
    lock.parent.mkdir(parents=True)
    os.link(config, lock)
    with pytest.raises(NodeFileError, match="the run lock has 2 links, it is another file's name too"):
        with run_lock(node, 0):
            pass
    assert config.read_text() == 'version = 3\n'


def test_a_rollback_keeps_another_writers_newer_file(tmp_path: Path) -> None:
    from agent.base.fs import FileEdit
    from agent.pipeline.apply import rollback

    target = tmp_path / "config.toml"
    edit = FileEdit(target, "before\n", "agent's edit\n", ("why",), "containerd")
    target.write_text("nodeadm's newer render\n")
    problems = rollback([edit])
    assert target.read_text() == "nodeadm's newer render\n"
    assert len(problems) == 1 and "changed while the agent was writing" in problems[0]
    target.write_text("agent's edit\n")
    assert rollback([edit]) == [] and target.read_text() == "before\n"


def test_a_sibling_directory_sharing_the_roots_name_prefix_is_not_inside_it(tmp_path: Path) -> None:
    """With --root .../node, a path in .../node-config is the host's own: its symlink is followed as
    the host follows it, never re-read inside the node's tree."""
    from agent.base.noderoot import confined

    NodeRoot(str(tmp_path / "node"))
    (tmp_path / "node/etc").mkdir(parents=True)
    (tmp_path / "node/etc/target").write_text("the node's\n")
    sibling = tmp_path / "node-config"
    sibling.mkdir()
    (sibling / "target").write_text("the host's\n")
    link = sibling / "link"
    link.symlink_to(sibling / "target")
    assert confined(link) == link
    assert read_text(link) == "the host's\n"
    inside = tmp_path / "node/etc/link"
    inside.symlink_to("/etc/target")
    assert read_text(inside) == "the node's\n"
