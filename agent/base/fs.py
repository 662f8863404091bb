"""Node files: bounded reads, atomic (compare-and-swap) writes and the run lock.

Every path here comes from ``NodeRoot.path`` (``agent/base/noderoot.py``), which resolves node paths
under ``--root`` as ``chroot`` would (this module uses it, so ``from agent.base.fs import NodeRoot`` is
the same class); reads follow a symlink in the last component inside that tree.
"""


from __future__ import annotations

import difflib
import errno
import fcntl
import os
import stat
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, List, NamedTuple, Optional, Tuple

from agent.base import lockholder
from agent.base.errors import LockBusy, NodeFileError, NodeFileMissing
from agent.base.noderoot import NodeRoot, confined

LOCK_PATH = "/run/gpu-node-agent/lock"
# What the agent reads, at most (a larger file is refused with one line; real ones are far smaller).
MAX_NODE_FILE = 1 << 20  # node files: containerd/toolkit TOML, kubeconfig, version files, status file
MAX_CONFIG_FILE = 256 << 10  # the agent's own config.yaml
MAX_TOKEN_FILE = 64 << 10  # a kubeconfig tokenFile (and a credential from an exec plugin)


class FileEdit(NamedTuple):
    """A planned change to one node file: the text it has, the text it gets, and why."""

    path: Path
    old_text: str
    new_text: str
    reasons: Tuple[str, ...]
    resource: str  # which part of the node it belongs to: "containerd", "nvidia-runtime"

    def diff(self) -> str:
        return "".join(
            difflib.unified_diff(
                self.old_text.splitlines(True),
                self.new_text.splitlines(True),
                fromfile=f"{self.path} (current)",
                tofile=f"{self.path} (planned)",
            )
        )


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 and not limit % (1 << 20) else f"{limit >> 10} KiB"


def read_bytes(path: Path, *, limit: int = MAX_NODE_FILE, allow_symlink: bool = True) -> bytes:
    """A regular file's bytes, at most ``limit`` of them; every failure is one ``NodeFileError`` line.

    Opened without blocking (a FIFO cannot hang the agent) and checked with ``fstat`` on that very
    descriptor: a directory, FIFO, device or socket is refused, and so is a file over ``limit``.
    Under ``--root`` a symlink in the last component is followed inside the tree.
    """
    if not allow_symlink and path.is_symlink():
        raise NodeFileError(path, f"is a symlink (to {os.readlink(path)}); refusing to follow it")
    target = confined(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    if target is not path or not allow_symlink:
        flags |= os.O_NOFOLLOW
    try:
        f = _open_reading(target, flags)
    except FileNotFoundError:
        raise NodeFileMissing(path) from None
    except IsADirectoryError:
        raise NodeFileError(path, "is a directory, expected a file") from None
    except PermissionError:
        raise NodeFileError(path, "permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NodeFileError(path, "is a symlink; refusing to follow it") from None
        raise NodeFileError(path, exc.strerror or str(exc)) from None
    with f:
        try:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                kind = _kind(st.st_mode)
                raise NodeFileError(path, "is a directory, expected a file" if kind == "a directory"
                                    else f"is {kind}, expected a regular file; not read")
            if st.st_size > limit:
                raise NodeFileError(path, f"is {st.st_size} bytes, more than the {_size(limit)} limit "
                                    "for this file; not read")
            data = f.read(limit + 1)  # the size can change under us, or lie (as in /proc)
        except OSError as exc:
            raise NodeFileError(path, exc.strerror or str(exc)) from None
    if len(data) > limit:
        raise NodeFileError(path, f"is more than the {_size(limit)} limit for this file; not read")
    return data


def _open_reading(target: Path, flags: int) -> BinaryIO:
    if _real_os():
        return os.fdopen(os.open(target, flags), "rb")
    # A test's fake filesystem: its os.open changes an existing file's mode, and nothing there blocks.
    if flags & os.O_NOFOLLOW and target.is_symlink():
        raise OSError(errno.ELOOP, "Too many levels of symbolic links", str(target))
    return open(target, "rb")  # closed by the caller


def read_text(path: Path, *, allow_symlink: bool = True, allow_empty: bool = True,
              limit: int = MAX_NODE_FILE) -> str:
    """Read a UTF-8 node file (bounded, regular files only, see ``read_bytes``)."""
    data = read_bytes(path, limit=limit, allow_symlink=allow_symlink)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise NodeFileError(path, f"not UTF-8 (byte 0x{data[exc.start]:02x} on line {line})") from None
    if not allow_empty and not text.strip():
        raise NodeFileError(path, "is empty")
    return text


def _real_os() -> bool:
    """Raw syscalls (renameat2, xattrs) only on the real ``os`` (not under a test's fake filesystem)."""
    import types

    return isinstance(os, types.ModuleType)


RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two names atomically (``renameat2(RENAME_EXCHANGE)``, Linux >= 3.15, glibc >= 2.28).

    False when this kernel, libc or filesystem cannot; raises ``OSError`` for other failures.
    """
    if not _real_os():
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _copy_xattrs(source: Path, fd: int) -> None:
    """Every extended attribute of ``source`` (``security.selinux`` included) onto ``fd``."""
    if not _real_os():
        return
    try:
        names = os.listxattr(source, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for name in names:
        value = os.getxattr(source, name, follow_symlinks=False)
        try:
            if os.getxattr(fd, name) == value:  # e.g. the SELinux label the directory already gave it
                continue
        except OSError:
            pass
        os.setxattr(fd, name, value)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, expected: Optional[bytes] = None) -> None:
    """Replace ``path`` atomically: a new temp file in the same directory, fsync, rename, fsync dir.

    An existing file keeps its mode, owner and extended attributes (SELinux label included); a new
    file gets ``mode``. A symlink is never written through. With ``expected`` this is a
    compare-and-swap: the new file is exchanged in (``renameat2(RENAME_EXCHANGE)``) and the file it
    replaced must be byte-identical to ``expected``, else the two are swapped back and nothing is
    changed ("changed while the agent was writing"; ``_give_back`` says why no third writer's file
    can be lost in between); where the exchange is not supported it falls back to compare, then
    rename (a writer between the two is not detected there). For a moment between the exchange and
    the swap back, readers can see the refused new content. Every failure (read-only or full filesystem included) is one
    ``NodeFileError`` line; the temp file is removed and the original is untouched.
    """
    tmp: Optional[str] = None
    try:
        try:
            st: Optional[os.stat_result] = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise NodeFileError(path, "is a symlink; refusing to replace it")
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise NodeFileError(path, f"is {_kind(st.st_mode)}, expected a regular file; not replaced")
        if expected is not None and st is None:
            raise NodeFileError(path, "was removed while the agent was writing; nothing written")
        import tempfile  # only when writing: `check` never pays for it

        directory = path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)  # O_EXCL
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if st is not None:
                os.fchmod(f.fileno(), st.st_mode & 0o7777)
                if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
                _copy_xattrs(path, f.fileno())
            else:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
            ours = os.fstat(f.fileno())
        if expected is None:
            os.rename(tmp, path)
            tmp = None
        elif exchange(Path(tmp), path):
            try:  # what was there is now under the temp name: ours to check
                replaced: Optional[bytes] = Path(tmp).read_bytes()
            except OSError:
                replaced = None
            if replaced != expected:
                _give_back(Path(tmp), path, ours)
                if replaced is None:
                    raise NodeFileError(path, "cannot read back the file it replaced; nothing written")
                raise NodeFileError(path, "changed while the agent was writing; the other writer's "
                                    "version is kept, nothing written")
        else:
            if read_bytes(path) != expected:
                raise NodeFileError(path, "changed while the agent was writing; nothing written")
            os.rename(tmp, path)
            tmp = None
        fsync_dir(directory)
    except OSError as exc:
        raise NodeFileError(path, f"cannot write: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            with suppress(OSError):
                os.unlink(tmp)


MAX_GIVE_BACK = 100  # swaps; each extra one needs yet another writer within microseconds


def _give_back(held: Path, path: Path, ours: os.stat_result) -> None:
    """Undo a compare-and-swap that found another writer's file: ``held`` has that file, ``path``
    has ours, unless yet another writer replaced ours meanwhile.

    Swap back and look at what comes out: if it is our file (same inode), the other writer's file
    is back in place and nothing was lost. If it is not, a newer writer replaced ours after the
    exchange, and the swap just put the older file over the newer one: the newer one is what we hold
    now, so swap again, until what comes out is what we put in. No write that landed is ever lost:
    each swap hands back the newest file, and the loop ends as soon as no writer came in between
    (a plain swap-back would throw away a file written between the exchange and the swap-back).
    """
    put_in = ours
    for _ in range(MAX_GIVE_BACK):
        before = os.lstat(held)  # what we are about to put in
        if not exchange(held, path):
            raise OSError(errno.EOPNOTSUPP, "cannot exchange the file back", str(path))
        out = os.lstat(held)
        if (out.st_dev, out.st_ino) == (put_in.st_dev, put_in.st_ino):
            return
        put_in = before
    raise OSError(errno.EBUSY, "other writers keep replacing the file", str(path))


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: some filesystems refuse)."""
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def open_lock(lock_path: Path, what: str = "the run lock") -> int:
    """Open (creating) a lock file (``what``: the run lock, the status file's): never through a
    symlink, only a regular file owned by root that no other name links to."""
    try:
        lock_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_NOCTTY, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NodeFileError(lock_path, f"{what} is a symlink; refusing to open it") from None
        raise NodeFileError(lock_path, f"cannot open {what}: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = f"{what} is {_kind(st.st_mode)}, expected a regular file"
    elif st.st_uid != os.geteuid():
        problem = f"{what} is owned by uid {st.st_uid}, expected {os.geteuid()} (root)"
    elif st.st_nlink != 1:  # a hard link to another file (config.toml): writing the pid would truncate it
        problem = f"{what} has {st.st_nlink} links, it is another file's name too"
    if problem:
        os.close(fd)
        raise NodeFileError(lock_path, f"{problem}; refusing to use it")
    return fd


def _flock_within(fd: int, lock_path: Path, wait_seconds: float, clock: Callable[[], float],
                  sleep: Callable[[float], None], interval: float) -> bool:
    """Take an exclusive ``flock`` on ``fd``, trying every ``interval`` for ``wait_seconds``; False when
    another holder kept it that long."""
    deadline = clock() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise NodeFileError(lock_path, f"cannot lock: {exc.strerror}") from None
            if clock() >= deadline:
                return False
            sleep(interval)


@contextmanager
def run_lock(
    root: NodeRoot,
    wait_seconds: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Path]:
    """Hold ``/run/gpu-node-agent/lock`` (under the root), waiting at most ``wait_seconds``."""
    lock_path = root.path(LOCK_PATH)
    fd = open_lock(lock_path)
    try:
        if not _flock_within(fd, lock_path, wait_seconds, clock, sleep, 0.1):
            held = lockholder.holder_of(fd)
            raise LockBusy(
                f"{lock_path}: another gpu-node-agent run holds the lock "
                f"({held.describe() + '; ' if held else ''}waited {wait_seconds:g}s)"
            )
        with lockholder.recorded(fd):  # the holder's pid and command, for whoever finds the lock taken
            yield lock_path
    finally:
        os.close(fd)


@contextmanager
def file_lock(lock_path: Path, what: str, wait_seconds: float = 10.0) -> Iterator[None]:
    """Hold ``lock_path`` for one short read-merge-write (the status file), waiting at most
    ``wait_seconds`` for another holder (they hold it for milliseconds, never across a restart or a
    request, unlike the run lock)."""
    fd = open_lock(lock_path, what)
    try:
        if not _flock_within(fd, lock_path, wait_seconds, time.monotonic, time.sleep, 0.01):
            raise NodeFileError(lock_path, f"{what} is still held after {wait_seconds:g}s")
        yield
    finally:
        os.close(fd)


def remove_stale_temp_files(targets: Iterable[Path], older_than_seconds: float = 60.0) -> List[Path]:
    """Temp files of ``atomic_write`` left beside ``targets`` by a killed run (``.NAME.*.tmp``, regular,
    ours, and older than any write in progress could be); returns what was removed."""
    removed: List[Path] = []
    now = time.time()
    for target in targets:
        try:
            candidates = list(target.parent.glob(f".{target.name}.*.tmp"))
        except OSError:
            continue
        for tmp in candidates:
            try:
                st = os.lstat(tmp)
                if (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
                        and now - st.st_mtime > older_than_seconds):
                    os.unlink(tmp)
                    removed.append(tmp)
            except OSError:
                pass  # gone meanwhile: never fatal
    return removed
