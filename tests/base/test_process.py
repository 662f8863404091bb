"""The one process runner (agent/base/process.py): a collected run, and the streaming run the EFA
installer uses (its end-to-end cases: tests/efa/test_efa_install.py, tests/efa/test_efa_hostile.py)."""

import os
import time
from pathlib import Path
from typing import List

import pytest

from agent.base import process


def test_run_says_why_it_cannot_start_and_run_tool_answers_none(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        process.run([str(tmp_path / "missing")], 1)
    assert process.run_tool([str(tmp_path / "missing")], 1) is None
    out = process.run(["/bin/sh", "-c", "read x; echo \"got $x\"; echo oops >&2; exit 3"], 5, stdin_text="it\n")
    assert (out.returncode, out.stdout, out.stderr) == (3, "got it\n", "oops\n")
    assert out.problem(5) == "sh exited with 3: oops"


def test_run_cuts_a_flood_of_output(tmp_path: Path) -> None:
    out = process.run(["/bin/sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x"], 5)
    assert out.ok and len(out.stdout) == process.OUTPUT_LIMIT


def test_streaming_hands_over_each_line_and_keeps_the_tail(tmp_path: Path) -> None:
    lines: List[str] = []
    started: List[int] = []
    script = "for i in 1 2 3 4 5; do echo line $i; done; echo; echo err >&2; exit 7"
    done = process.run_streaming(["/bin/sh", "-c", script], 10, cwd=tmp_path, on_line=lines.append,
                                 on_start=started.append, tail_lines=3)
    assert lines == ["line 1", "line 2", "line 3", "line 4", "line 5", "err"]  # empty lines dropped
    assert done.returncode == 7 and done.tail == ("line 4", "line 5", "err")
    assert started == [done.pid]


def test_streaming_kills_the_whole_group_at_the_timeout(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    # the child ignores SIGTERM, so the grace period runs out and SIGKILL takes the group
    script = f"trap '' TERM; sleep 60 & echo $! > {marker}; echo started; wait"
    start = time.monotonic()
    done = process.run_streaming(["/bin/sh", "-c", script], 0.5, kill_grace_seconds=0.3)
    assert done.returncode is None and done.tail == ("started",)
    assert time.monotonic() - start < 10
    child = int(marker.read_text())
    for _ in range(100):
        if not process.group_alive(done.pid):
            break
        time.sleep(0.05)
    assert not process.group_alive(done.pid)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_streaming_that_cannot_start_raises(tmp_path: Path) -> None:
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(PermissionError):
        process.run_streaming([str(script)], 5)


def test_a_flood_of_output_never_grows_the_agents_memory(tmp_path: Path) -> None:
    """A node program that writes 300 MB (a hostile or broken ``ctr``): the runner keeps 64 KiB of
    each stream as it arrives, so under a 160 MB address-space limit it still answers."""
    import subprocess
    import sys

    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (160 << 20, 160 << 20))\n"
        "from agent.base import process\n"
        "out = process.run(['/bin/sh', '-c', 'head -c 300000000 /dev/zero; head -c 300000000 /dev/zero >&2'], 60)\n"
        "print(out.returncode, len(out.stdout), len(out.stderr))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", str(process.OUTPUT_LIMIT), str(process.OUTPUT_LIMIT)]


def test_a_program_that_keeps_flooding_is_killed_at_its_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    out = process.run(["/bin/sh", "-c", "cat /dev/zero"], 1.0)
    assert out.returncode is None and len(out.stdout) == process.OUTPUT_LIMIT
    assert time.monotonic() - started < 5
    assert out.problem(1.0) == "sh did not finish within 1s"


def test_stdin_text_larger_than_a_pipe_is_written_while_the_output_is_read(tmp_path: Path) -> None:
    data = "x" * 300000 + "\n"
    out = process.run(["/bin/cat"], 10, stdin_text=data)
    assert out.ok and out.stdout == data[:process.OUTPUT_LIMIT]
