"""The one way the agent runs a program: no shell, a bounded time, its whole process group killed.

* ``run_tool`` (and ``run``, which raises ``OSError`` instead of answering None): for facts and
  small jobs (``nvidia-smi``, ``nvidia-ctk``, ``ctr``, ``fi_info``, ``gpgv``, a kubeconfig's exec
  plugin). Output is collected, each stream cut at 64 KiB as it arrives (the rest is read and
  dropped: a program that floods its output costs the agent no memory).
* ``run_streaming``: for long work whose output is news (the EFA installer): each line is handed to
  ``on_line`` as it arrives, the last lines are kept for an error message, a heartbeat logs the
  elapsed time while the program is silent (``agent/base/progress.py``); on timeout its group gets
  SIGTERM, then SIGKILL after a grace period; the program can be made to die with the agent
  (``PR_SET_PDEATHSIG``).

Each program gets its own session, so on timeout its children die with it (a shell wrapper that runs
``sleep`` would otherwise keep the pipes open). ``subprocess`` is imported on first use: a ``check``
on a node without the tools never pays for it.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Callable, Mapping, NamedTuple, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import subprocess

TOOL_TIMEOUT_SECONDS = 5.0
OUTPUT_LIMIT = 64 * 1024  # what a collected stream may hold before it is cut (version commands print a few lines)
LINE_LIMIT = 65536  # one streamed line, in bytes
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class ToolOutput(NamedTuple):
    argv: Tuple[str, ...]
    returncode: Optional[int]  # None: killed after the timeout
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def problem(self, timeout: float) -> str:
        """One line saying why the run did not succeed, for a check message."""
        name = os.path.basename(self.argv[0])
        if self.returncode is None:
            return f"{name} did not finish within {timeout:g}s"
        first = next((ln.strip() for ln in (self.stderr + "\n" + self.stdout).splitlines() if ln.strip()), "")
        return f"{name} exited with {self.returncode}" + (f": {first[:200]}" if first else "")


def run(
    argv: Sequence[str],
    timeout: float = TOOL_TIMEOUT_SECONDS,
    *,
    env: Optional[Mapping[str, str]] = None,
    stdin_text: Optional[str] = None,
    stdin_fd: Optional[int] = None,
) -> ToolOutput:
    """Run ``argv`` without a shell, at most ``timeout`` seconds; ``OSError`` when it cannot start.

    Its stdin: ``stdin_text``, or the open file descriptor ``stdin_fd``, or nothing.
    """
    import contextlib
    import signal
    import subprocess

    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if stdin_text is not None else (
            stdin_fd if stdin_fd is not None else subprocess.DEVNULL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        start_new_session=True,
    )
    code: Optional[int] = None
    try:
        out, err, finished = _collect(proc, stdin_text.encode() if stdin_text is not None else b"",
                                      time.monotonic() + timeout)
        if finished:
            code = proc.returncode
    finally:
        if proc.poll() is None or code is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)  # the program and whatever it started
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return ToolOutput(tuple(argv), code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


def _collect(proc: subprocess.Popen[bytes], stdin_data: bytes, deadline: float) -> Tuple[bytes, bytes, bool]:
    """A running program's stdout and stderr, each cut at ``OUTPUT_LIMIT`` *while* it runs (what comes
    after the limit is read and dropped, so a flood never grows the agent's memory and the program
    never blocks on a full pipe); ``stdin_data`` is written meanwhile. Returns both streams and
    whether the program exited (and closed its pipes) before ``deadline``."""
    import errno
    import selectors
    import subprocess

    assert proc.stdout is not None and proc.stderr is not None
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    kept = {out_fd: bytearray(), err_fd: bytearray()}
    in_fd = proc.stdin.fileno() if proc.stdin is not None else None
    with selectors.DefaultSelector() as sel:
        for fd in kept:
            sel.register(fd, selectors.EVENT_READ)
        if proc.stdin is not None and in_fd is not None:
            if stdin_data:
                os.set_blocking(in_fd, False)
                sel.register(in_fd, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
        sent = 0
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(kept[out_fd]), bytes(kept[err_fd]), False
            for key, _ in sel.select(left):
                if key.fd == in_fd:
                    try:
                        sent += os.write(key.fd, stdin_data[sent:sent + 65536])
                    except BlockingIOError:
                        pass
                    except OSError as exc:  # the program closed its stdin: it needs no more
                        if exc.errno != errno.EPIPE:
                            raise
                        sent = len(stdin_data)
                    if sent >= len(stdin_data):
                        sel.unregister(key.fd)
                        assert proc.stdin is not None
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = kept[key.fd]
                if len(buf) < OUTPUT_LIMIT:
                    buf += chunk[:OUTPUT_LIMIT - len(buf)]
    out, err = bytes(kept[out_fd]), bytes(kept[err_fd])
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:  # it closed its output but runs on
        return out, err, False
    return out, err, True


def run_tool(
    argv: Sequence[str],
    timeout: float = TOOL_TIMEOUT_SECONDS,
    *,
    env: Optional[Mapping[str, str]] = None,
    stdin_text: Optional[str] = None,
    stdin_fd: Optional[int] = None,
) -> Optional[ToolOutput]:
    """``run``, or None when ``argv`` cannot be executed (missing, not executable)."""
    try:
        return run(argv, timeout, env=env, stdin_text=stdin_text, stdin_fd=stdin_fd)
    except OSError:
        return None


# --- long work, output streamed --------------------------------------------------------------------


class Streamed(NamedTuple):
    pid: int  # also the process group id
    returncode: Optional[int]  # None: killed after the timeout
    tail: Tuple[str, ...]  # the last non-empty lines of its output (stdout and stderr together)


def run_streaming(
    argv: Sequence[str],
    timeout: float,
    *,
    cwd: Optional[os.PathLike[str]] = None,
    on_line: Callable[[str], None] = lambda line: None,
    on_start: Callable[[int], None] = lambda pid: None,
    heartbeat: str = "",
    heartbeat_seconds: Optional[float] = None,
    clock: Callable[[], float] = time.monotonic,
    kill_grace_seconds: float = 5.0,
    die_with_parent: bool = True,
    tail_lines: int = 20,
) -> Streamed:
    """Run ``argv`` without a shell, stdin closed, at most ``timeout`` seconds; ``OSError`` when it
    cannot start.

    ``on_start(pid)`` runs once the program is started (its pid is its process group's id);
    ``on_line`` gets every non-empty output line (at most ``LINE_LIMIT`` bytes each), from a reader
    thread. ``heartbeat`` names the program in ``progress.Heartbeat``'s "still running" events,
    which show its last line. ``die_with_parent``: the kernel kills it when the agent dies
    (``kill -9`` too); what it started runs on in its group, which the caller can watch
    (``group_alive``).
    """
    import collections
    import signal
    import subprocess
    import threading

    from agent.base import progress

    proc = subprocess.Popen(list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                            preexec_fn=_die_with_parent() if die_with_parent else None)
    on_start(proc.pid)
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)

    def pump() -> None:
        assert proc.stdout is not None
        for raw in iter(lambda: proc.stdout.readline(LINE_LIMIT), b""):  # type: ignore[union-attr]
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                tail.append(line)
                on_line(line)

    reader = threading.Thread(target=pump, name=f"{os.path.basename(argv[0])}-output", daemon=True)
    reader.start()
    beat = progress.Heartbeat(heartbeat or os.path.basename(argv[0]), lambda: tail[-1] if tail else None,
                              interval=heartbeat_seconds or progress.HEARTBEAT_SECONDS, clock=clock)
    code: Optional[int]
    try:
        with beat:
            code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for sig, grace in ((signal.SIGTERM, kill_grace_seconds), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        reader.join(1.0)
        return Streamed(proc.pid, None, tuple(tail))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(5.0)
    return Streamed(proc.pid, code, tuple(tail))


def _die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when the agent dies (kill -9 too)."""
    import ctypes
    import signal

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not in the child
    parent = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the agent died before prctl took effect
            os._exit(1)

    return in_child


def group_alive(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` still runs."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
