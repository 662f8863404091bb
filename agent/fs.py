"""Node paths under ``--root``, safe reads, atomic writes and the run lock.

Every node path the agent touches goes through ``NodeRoot.path`` so that ``--root DIR`` works like
``rpm --root``: the agent can inspect and repair a mounted image, and tests use a simulated node.
"""


from __future__ import annotations

import difflib
import errno
import fcntl
import os
import time
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, NamedTuple, Optional, Tuple

from agent.errors import LockBusy, NodeFileError, NodeFileMissing

LOCK_PATH = "/run/gpu-node-agent/lock"


class NodeRoot:
    """Resolves absolute node paths (``/etc/...``) under the root directory."""

    def __init__(self, root: str = "/") -> None:
        self.root = Path(root)

    def path(self, node_path: str) -> Path:
        pure = PurePosixPath(node_path)
        if not pure.is_absolute():
            raise ValueError(f"node path must be absolute: {node_path!r}")
        return self.root.joinpath(*pure.parts[1:])

    def node_path(self, host_path: Path) -> str:
        """The inverse of ``path``: how the node itself names ``host_path``."""
        try:
            rel = Path(host_path).relative_to(self.root)
        except ValueError:
            return str(host_path)
        return "/" + rel.as_posix() if str(rel) != "." else "/"

    def __repr__(self) -> str:
        return f"NodeRoot({str(self.root)!r})"


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


def read_text(path: Path, *, allow_symlink: bool = True, allow_empty: bool = True) -> str:
    """Read a UTF-8 node file; every failure becomes one ``NodeFileError`` line naming the file."""
    try:
        if not allow_symlink and path.is_symlink():
            raise NodeFileError(path, f"is a symlink (to {os.readlink(path)}); refusing to follow it")
        data = path.read_bytes()
    except FileNotFoundError:
        raise NodeFileMissing(path) from None
    except IsADirectoryError:
        raise NodeFileError(path, "is a directory, expected a file") from None
    except PermissionError:
        raise NodeFileError(path, "permission denied") from None
    except OSError as exc:
        raise NodeFileError(path, exc.strerror or str(exc)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise NodeFileError(path, f"not UTF-8 (byte 0x{data[exc.start]:02x} on line {line})") from None
    if not allow_empty and not text.strip():
        raise NodeFileError(path, "is empty")
    return text


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` atomically: temp file in the same directory, fsync, rename, fsync dir.

    An existing file keeps its mode and owner; a new file gets ``mode``. A symlink is never written
    through (the caller refuses earlier; this is the last guard). On any failure the temp file is
    removed and the original is untouched.
    """
    if path.is_symlink():
        raise NodeFileError(path, "is a symlink; refusing to replace it")
    try:
        st: Optional[os.stat_result] = path.stat()
    except FileNotFoundError:
        st = None
    import tempfile  # only when writing: `check` never pays for it

    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if st is not None:
                os.fchmod(f.fileno(), st.st_mode & 0o7777)
                if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
            else:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException as exc:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise NodeFileError(path, f"cannot write: {exc.strerror or exc}") from None
        raise
    fsync_dir(directory)


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
    try:
        lock_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise NodeFileError(lock_path, f"cannot open the run lock: {exc.strerror or exc}") from None
    try:
        deadline = clock() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise NodeFileError(lock_path, f"cannot lock: {exc.strerror}") from None
                if clock() >= deadline:
                    raise LockBusy(
                        f"{lock_path}: another gpu-node-agent run holds the lock "
                        f"(waited {wait_seconds:g}s)"
                    ) from None
                sleep(0.1)
        try:  # the holder's pid, for whoever finds the lock taken; informational only
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        yield lock_path
    finally:
        os.close(fd)
