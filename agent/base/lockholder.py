"""Who holds the run lock: the holder's pid and command, written into the lock file once it is taken.

``/run/gpu-node-agent/lock`` holds one JSON line, ``{"pid", "start", "command"}``: ``start`` is the
process's start time (``/proc/PID/stat`` field 22, clock ticks after boot), ``command`` the agent's
command line (``gpu-node-agent run --lock-wait 60``). A second ``run`` that finds the lock taken names
its holder, and ``gpu-node-agent status`` tells a pass that is running from one that has finished.

The record is emptied when the lock is released. A killed pass leaves its record behind, and pids
are reused: a record is believed only while a process with that pid and that start time is alive
(this machine's ``/proc``, also under ``--root``: the holder runs here). The record is written
through the lock's own descriptor, never into a lock file with more than one link (a hard link to
another file is never truncated). It is read back through a descriptor too: the waiting run's own
(``agent/base/fs.py``'s ``run_lock``), or, for ``status``, the lock file opened without following a
symlink; anything but a regular file holding one record names no one.
"""


from __future__ import annotations

import json
import os
import stat
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

from agent.base.text import clip

PROG = "gpu-node-agent"
MAX_RECORD = 4096  # bytes of the lock file read back
MAX_COMMAND = 200  # characters of the command line kept


class Holder(NamedTuple):
    pid: int
    command: str

    def describe(self) -> str:
        return f"pid {self.pid}: {self.command}" if self.command else f"pid {self.pid}"


def _start_time(pid: int) -> Optional[int]:
    """Field 22 of ``/proc/PID/stat``: when the process started (None: no such process)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()  # the name, field 2, may hold spaces and parentheses
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _command() -> str:
    import shlex

    return clip(" ".join([PROG, *(shlex.quote(arg) for arg in sys.argv[1:])]), MAX_COMMAND)


@contextmanager
def recorded(fd: int) -> Iterator[None]:
    """This process named in the lock file ``fd`` (locked by us) while the lock is held; best effort."""
    _write(fd, json.dumps({"pid": os.getpid(), "start": _start_time(os.getpid()), "command": _command()}) + "\n")
    try:
        yield
    finally:
        _write(fd, "")


def _write(fd: int, text: str) -> None:
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return  # a lock file linked elsewhere: leave every name's content as it is
        os.ftruncate(fd, 0)
        if text:
            os.pwrite(fd, text.encode(), 0)
    except OSError:
        pass


def holder(lock_path: Path) -> Optional[Holder]:
    """The live process the lock file names, or None (no file, no record, or that process is gone)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    try:
        return holder_of(fd)
    finally:
        os.close(fd)


def holder_of(fd: int) -> Optional[Holder]:
    """The live process named in the open lock file ``fd`` (a regular file), or None."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.pread(fd, MAX_RECORD + 1, 0)
    except OSError:
        return None
    if len(data) > MAX_RECORD:
        return None
    try:
        doc = json.loads(data.decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    pid, start, command = doc.get("pid"), doc.get("start"), doc.get("command")
    if type(pid) is not int or pid <= 0 or type(start) is not int or _start_time(pid) != start:
        return None
    return Holder(pid, command if isinstance(command, str) else "")
