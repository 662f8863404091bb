"""The test venvs hold what ships: the locks (scripts/lock/) agree with the bundled pins and AL2023's, every
pin is exact and hash-checked, and the running interpreter's venv holds exactly its lock."""

import importlib.metadata as md
import re
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from packaging.requirements import Requirement

from tests.support.packaging_helpers import REQUIREMENTS

REPO = Path(__file__).resolve().parent.parent.parent
LOCKS = REPO / "scripts" / "lock"
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)((?:\s*\\\s*\n\s*--hash=sha256:[0-9a-f]{64})*)", re.M)


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> Dict[str, Tuple[str, List[str]]]:
    """``{name: (version, [sha256, ...])}`` of a requirements file."""
    found = PIN.findall(path.read_text())
    return {norm(n): (v, re.findall(r"sha256:([0-9a-f]{64})", hashes)) for n, v, hashes in found}


def requirement_lines(path: Path) -> List[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith((" ", "#"))]


@pytest.mark.parametrize("lock", ["py311.txt", "py39.txt"])
def test_every_locked_requirement_is_exact_and_hashed(lock: str) -> None:
    lines = requirement_lines(LOCKS / lock)
    assert lines
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==\S+ \\", line), f"{lock}: not an exact pin: {line}"
    assert all(hashes for _, hashes in pins(LOCKS / lock).values())
    assert len(pins(LOCKS / lock)) == len(lines)


@pytest.mark.parametrize("lock", ["py311.txt", "py39.txt"])
def test_the_bundled_libraries_are_locked_at_the_rpm_s_pins_and_hashes(lock: str) -> None:
    locked = pins(LOCKS / lock)
    bundled = pins(REQUIREMENTS)
    assert set(bundled) == {"pydbus", "structlog", "tomlkit", "typing-extensions"}
    for name, (version, hashes) in bundled.items():
        assert locked[name][0] == version, f"{lock}: {name} {locked[name][0]}, the RPM bundles {version}"
        assert set(hashes) <= set(locked[name][1]), f"{lock}: {name}'s wheel hash differs from the RPM's"


def test_the_python39_lock_holds_al2023_s_distribution_libraries() -> None:
    locked = pins(LOCKS / "py39.txt")
    al2023 = {norm(n): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (LOCKS / "al2023.txt").read_text(), re.M)}
    assert {"requests", "urllib3", "pyyaml", "pygobject"} <= set(al2023)
    for name, version in al2023.items():
        assert locked[name][0] == version, f"py39.txt: {name} {locked[name][0]}, AL2023 ships {version}"


def test_the_build_constraints_agree_with_the_lock() -> None:
    locked = pins(LOCKS / "py39.txt")
    for line in requirement_lines(LOCKS / "build-py39.txt"):
        name, version = line.split("==")
        assert locked.get(norm(name), (version,))[0] == version, f"build-py39.txt: {line} against py39.txt"


@pytest.mark.parametrize("lock", ["py311.txt", "py39.txt"])
def test_pyproject_s_ranges_admit_the_locked_versions(lock: str) -> None:
    import tomlkit

    project = tomlkit.parse((REPO / "pyproject.toml").read_text())["project"]
    ranges = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    if lock == "py311.txt":
        ranges += [r for r in project["optional-dependencies"]["dev"] if not r.startswith("gpu-node-agent")]
    locked = pins(LOCKS / lock)
    python = "3.11" if lock == "py311.txt" else "3.9"
    for text in ranges:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"python_version": python}):
            continue
        version = locked[norm(req.name)][0]
        assert req.specifier.contains(version), f"{lock}: {req.name} {version} outside pyproject's {req.specifier}"


def test_this_venv_holds_exactly_its_lock() -> None:
    lock = LOCKS / ("py39.txt" if sys.version_info[:2] == (3, 9) else "py311.txt")
    if Path(sys.prefix) not in (REPO / ".venv", REPO / ".venv39"):
        pytest.skip(f"{sys.prefix} is not one of scripts/setup.sh's venvs (.venv, .venv39)")

    def installed(name: str) -> str:  # the one import finds first (the venv's before the system's)
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "missing"

    wrong = [f"{n} {installed(n)} (locked {v})" for n, (v, _) in sorted(pins(lock).items()) if installed(n) != v]
    assert not wrong, f"{sys.prefix} differs from {lock.name}: {', '.join(wrong)}"
