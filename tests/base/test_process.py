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
