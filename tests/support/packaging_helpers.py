"""Building, installing and inspecting the RPM for the packaging tests (real rpmbuild, real rpm).

The RPM is built once per test process by ``packaging/build-rpm.sh`` and installed into scratch
roots with ``rpm -i --root R --nodeps --noscripts``, the way an AMI pipeline inspects an image.
"""

import atexit
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

from tests.support.paths import REPO, SAMPLES, which

BUILD_SCRIPT = REPO / "packaging" / "build-rpm.sh"
REQUIREMENTS = REPO / "packaging" / "bundled-requirements.txt"
LIBDIR = "/usr/lib/gpu-node-agent"
# The launcher's interpreter: Debian's, with the equivalents of the RPM's Requires (python3-yaml,
# python3-requests, python3-gi), standing in for AL2023's.
SYSTEM_PYTHON = "/usr/bin/python3"
# The licence texts the package installs: its own, and each bundled library's.
LICENSE_DIR = "/usr/share/licenses/gpu-node-agent"
LICENSES = {
    f"{LICENSE_DIR}/LICENSE",
    f"{LICENSE_DIR}/pydbus/COPYING",
    f"{LICENSE_DIR}/structlog/LICENSE-APACHE",
    f"{LICENSE_DIR}/structlog/LICENSE-MIT",
    f"{LICENSE_DIR}/structlog/NOTICE",
    f"{LICENSE_DIR}/tomlkit/LICENSE",
    f"{LICENSE_DIR}/typing_extensions/LICENSE",
}


def run(cmd: Sequence[str], *, check: bool = True, **kw: object) -> "subprocess.CompletedProcess[str]":
    """Run a command, capture its output; on an unexpected exit, fail with everything it printed."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        command = " ".join(map(str, cmd))
        raise AssertionError(
            f"{command} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc  # type: ignore[no-any-return]


def scratch_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"gna-pkg-{prefix}-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def build_rpm(outdir: Path, *args: str, env: Optional[Dict[str, str]] = None,
              check: bool = True, prefix: Sequence[str] = ()) -> "subprocess.CompletedProcess[str]":
    """packaging/build-rpm.sh with this interpreter's pip (any Python 3 with pip works)."""
    which("rpmbuild")
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    command = [*prefix, "bash", str(BUILD_SCRIPT), "--outdir", str(outdir), *args]
    return run(command, env=full_env, check=check)


def binary_rpm(outdir: Path) -> Path:
    rpms = sorted(outdir.glob("gpu-node-agent-*.noarch.rpm"))
    assert len(rpms) == 1, f"expected one noarch RPM in {outdir}, found {rpms}"
    return rpms[0]


@functools.cache
def built_rpm() -> Path:
    """The RPM as the default build makes it (pinned wheels from the package index); built once."""
    outdir = scratch_dir("dist")
    build_rpm(outdir)
    return binary_rpm(outdir)


@functools.cache
def wheelhouse() -> Path:
    """The pinned wheels, downloaded once with ``build-rpm.sh --fetch-wheels``."""
    path = scratch_dir("wheelhouse")
    build_rpm(scratch_dir("unused"), "--fetch-wheels", str(path))
    return path


def install(rpm: Path, root: Path) -> Path:
    """Install into a scratch root as an image pipeline would: no dependencies, no scriptlets."""
    which("rpm")
    root.mkdir(parents=True, exist_ok=True)
    run(["rpm", "-i", "--root", str(root), "--nodeps", "--noscripts", str(rpm)])
    return root


def rpm_query(rpm: Path, *args: str) -> List[str]:
    return run(["rpm", "-qp", *args, str(rpm)]).stdout.splitlines()


def pins() -> Dict[str, str]:
    """``{normalized name: version}`` from packaging/bundled-requirements.txt."""
    found = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", REQUIREMENTS.read_text(), re.MULTILINE)
    return {normalize(name): version for name, version in found}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_files(wheel: Path) -> Set[str]:
    """What installing ``wheel`` with pip puts in the target directory (no bytecode)."""
    with zipfile.ZipFile(wheel) as zf:
        record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        names = {line.split(",")[0] for line in zf.read(record).decode().splitlines() if line}
    dist_info = record.rsplit("/", 1)[0]
    # pip adds these two to every install; RECORD is rewritten but keeps its name.
    return {n for n in names if not n.endswith(".pyc")} | {f"{dist_info}/INSTALLER", f"{dist_info}/REQUESTED"}


def with_parents(paths: Set[str], top: str) -> Set[str]:
    """``paths`` plus every directory between them and ``top`` (rpm lists the directories it owns)."""
    out = set(paths)
    for p in paths:
        parent = os.path.dirname(p)
        while parent.startswith(top + "/"):
            out.add(parent)
            parent = os.path.dirname(parent)
    out.add(top)
    return out


def with_bytecode(paths: Set[str]) -> Set[str]:
    """``paths`` and the Python 3.9 bytecode of each module among them, as the build compiles it."""
    out = set(paths)
    for p in paths:
        if p.endswith(".py"):
            directory, name = os.path.split(p)
            out.add(f"{directory}/__pycache__/{name[:-3]}.cpython-39.pyc")
    return out


@functools.cache
def python39() -> str:
    """A bare Python 3.9 (not a venv), as scripts/setup.sh and packaging/build-rpm.sh find one."""
    import pytest

    candidates = [shutil.which("python3.9"), *Path.home().glob(".pyenv/versions/3.9*/bin/python3.9"),
                  "/usr/local/bin/python3.9"]
    for candidate in candidates:
        # A pyenv shim exists even when it cannot run 3.9: ask the interpreter itself.
        if candidate and run([str(candidate), "-S", "-c", "import sys; assert sys.version_info[:2] == (3, 9)"],
                             check=False).returncode == 0:
            return str(candidate)
    pytest.skip("no Python 3.9 (scripts/setup.sh needs one too)")


def agent_sources() -> Set[str]:
    """The agent package as the build ships it: every file under agent/ but bytecode."""
    return {
        str(p.relative_to(REPO))
        for p in (REPO / "agent").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def simulated_node(root: Path, containerd: str, nvidia: Optional[str]) -> Path:
    """Put node files from tests/samples under ``root`` (the scratch root the RPM went into)."""
    files = {"/etc/containerd/config.toml": containerd}
    if nvidia:
        files["/etc/nvidia-container-runtime/config.toml"] = nvidia
    for node_path, sample_name in files.items():
        target = root / node_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLES / sample_name, target)
    return root


def launcher(root: Path, *args: str, python: Optional[Sequence[str]] = None,
             env: Optional[Dict[str, str]] = None) -> "subprocess.CompletedProcess[str]":
    """Run the installed /usr/bin/gpu-node-agent of ``root`` against the node at ``root``.

    By default the launcher runs as on a node, through its ``#!/usr/bin/python3 -s`` line.
    """
    clean_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", **(env or {})}
    command = [*(python or ()), str(root / "usr/bin/gpu-node-agent"), "--root", str(root), *args]
    return run(command, env=clean_env, check=False)


def header_tags(rpm: Path) -> Dict[str, str]:
    """Every tag rpm knows, as ``rpm -qp --qf`` prints it for ``rpm`` (arrays: one element a line)."""
    tags = run(["rpm", "--querytags"]).stdout.split()
    fmt = "".join(f"@@tag {tag}\\n[%{{{tag}}}\\n]" for tag in tags)
    out = run(["rpm", "-qp", "--qf", fmt, str(rpm)]).stdout
    return dict(chunk.split("\n", 1) for chunk in out.split("@@tag ")[1:])


def header_differences(first: Path, second: Path) -> List[str]:
    """The header tags whose values differ between two packages, e.g. ``['SOURCEPKGID', 'SIGMD5']``."""
    a, b = header_tags(first), header_tags(second)
    return sorted(tag for tag in a.keys() | b.keys() if a.get(tag) != b.get(tag))
