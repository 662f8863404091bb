"""The README's two commands on a fresh Debian/Ubuntu box, which has no Python 3.9: the demo needs
only the system Python; the test command finds a 3.9, obtains one with uv, or stops with one line
saying what to install."""

import subprocess
from pathlib import Path
from typing import Dict

import pytest

from tests.support.paths import REPO

FIND = REPO / "scripts" / "find-python39.sh"


def fresh_env(home: Path) -> Dict[str, str]:
    """No pyenv (another HOME), no python3.9 on PATH; where uv keeps its Pythons is empty too."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "UV_PYTHON_INSTALL_DIR": str(home / "uv-python"), "UV_CACHE_DIR": str(home / "uv-cache")}


def is39(python: str) -> bool:
    code = "import sys; sys.exit(sys.version_info[:2] != (3, 9))"
    return subprocess.run([python, "-c", code], check=False).returncode == 0


def test_a_python_39_is_found_where_there_is_one() -> None:
    proc = subprocess.run([str(FIND)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert is39(proc.stdout.strip())


def test_without_one_uv_obtains_it_or_one_line_says_what_to_install(tmp_path: Path) -> None:
    proc = subprocess.run([str(FIND)], capture_output=True, text=True, check=False, env=fresh_env(tmp_path),
                          timeout=600)
    if proc.returncode == 0:  # a machine that can reach uv's Python downloads (github.com)
        assert is39(proc.stdout.strip()) and str(tmp_path / "uv-python") in proc.stdout
    else:  # only PyPI reachable (as here): uv installs, its download fails
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1
        assert proc.stderr.startswith("find-python39: no Python 3.9 found, and `uv python install 3.9` could "
                                      "not download one: install one (e.g. `pyenv install 3.9`")


@pytest.mark.root
def test_the_demo_needs_only_the_system_python(need_root: None, tmp_path: Path) -> None:
    proc = subprocess.run(["scripts/demo.sh"], cwd=REPO, capture_output=True, text=True, check=False,
                          env=fresh_env(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # its setup fetched the 2.x daemon: `check` healthy; the last word is `status`, with the boot
    # timeline (what the demo shows: tests/cli/test_readme.py)
    assert "health: healthy\n(exit 0)" in proc.stdout and "time to GPU-ready:" in proc.stdout
    assert proc.stdout.rstrip().endswith("(exit 0)")
