"""The RPM as Fedora/AL2023 conventions want it: licensed (every text installed and marked), reproducible
(two builds of one commit, different machines' state, same payload), its bytecode compiled at build
time for AL2023's Python 3.9 and owned, so `rpm -V` stays clean after the agent ran; and a launcher
that says which package to install when PyYAML or requests is missing or broken."""

import os
import re
import shutil
import subprocess
from itertools import zip_longest
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from agent import __version__
from tests.support.packaging_helpers import (
    LIBDIR,
    LICENSE_DIR,
    LICENSES,
    SYSTEM_PYTHON,
    binary_rpm,
    build_rpm,
    built_rpm,
    header_differences,
    header_tags,
    install,
    launcher,
    python39,
    rpm_query,
    run,
    scratch_dir,
    simulated_node,
)
from tests.support.paths import REPO, which


@pytest.fixture(scope="module")
def rpm() -> Path:
    return built_rpm()


@pytest.fixture
def installed(rpm: Path, tmp_path: Path) -> Path:
    return install(rpm, tmp_path / "node")


def verify(root: Path) -> "subprocess.CompletedProcess[str]":
    return run(["rpm", "-V", "--root", str(root), "--nodeps", "gpu-node-agent"], check=False)


# --- licences ------------------------------------------------------------------------------------------


def test_license_tag_names_the_agent_and_every_bundled_library(rpm: Path) -> None:
    # SPDX: the agent, then pydbus, structlog, tomlkit, typing_extensions
    assert rpm_query(rpm, "--qf", "%{LICENSE}") == [
        "Apache-2.0 AND LGPL-2.1-or-later AND (MIT OR Apache-2.0) AND MIT AND PSF-2.0"
    ]


# --- what the header says ------------------------------------------------------------------------------

SPEC = REPO / "rpm.spec"


def readme_build_section() -> str:
    readme = (REPO / "README.md").read_text()
    return readme[readme.index("## Build the RPM"):].split("\n## ", 1)[0]


def test_the_package_names_no_url_as_the_project_has_no_public_home(rpm: Path) -> None:
    assert not re.search(r"^URL:", SPEC.read_text(), re.MULTILINE | re.IGNORECASE)
    (srpm,) = rpm.parent.glob("*.src.rpm")
    assert rpm_query(rpm, "--qf", "%{URL}") == rpm_query(srpm, "--qf", "%{URL}") == ["(none)"]
    assert "The package has no `URL`: the project has no public\nhome." in readme_build_section()


def test_the_changelog_names_the_address_of_the_repositorys_commits(rpm: Path) -> None:
    authors = run(["git", "-C", str(REPO), "log", "--format=%an <%ae>"]).stdout.splitlines()
    address = max(set(authors), key=authors.count).split(" <")[1].rstrip(">")  # the maintainers'
    entries = [line for line in rpm_query(rpm, "--changelog") if line.startswith("* ")]
    assert len(entries) == len(re.findall(r"^\* ", SPEC.read_text(), re.MULTILINE)) >= 3
    for entry in entries:
        assert re.fullmatch(rf"\* \w{{3}} \w{{3}} \d\d \d{{4}} gpu-node-agent maintainers <{re.escape(address)}> - "
                            rf"{re.escape(__version__)}-\d+", entry), entry
    assert "localhost" not in SPEC.read_text()


@pytest.mark.parametrize("host_dist", [None, ".fc40", ".el9", ".amzn2023"])
def test_the_release_carries_al2023s_dist_tag_whatever_the_build_host_defines(host_dist: Optional[str]) -> None:
    which("rpmspec")
    number = re.search(r"^Release:\s+(\d+)%\{\?dist\}$", SPEC.read_text(), re.MULTILINE)
    assert number
    # What rpm would name the package on a host whose macros define dist so (None: Debian's, none).
    host = ["--define", f"dist {host_dist}"] if host_dist else []
    assert run(["rpmspec", "-q", "--srpm", "--qf", "%{RELEASE}\n", *host, str(SPEC)]).stdout == \
        f"{number.group(1)}.amzn2023\n"


def test_the_built_packages_are_named_with_the_dist_tag_as_readme_says(rpm: Path) -> None:
    number = re.search(r"^Release:\s+(\d+)", SPEC.read_text(), re.MULTILINE).group(1)  # type: ignore[union-attr]
    assert rpm.name == f"gpu-node-agent-{__version__}-{number}.amzn2023.noarch.rpm"
    assert [p.name for p in rpm.parent.glob("*.src.rpm")] == [f"gpu-node-agent-{__version__}-{number}.amzn2023.src.rpm"]
    section = readme_build_section()
    assert "dist/gpu-node-agent-<version>-<release>.amzn2023.noarch.rpm" in section
    assert "`.amzn2023`, on every build host" in section


def test_every_licence_text_is_installed_and_marked_as_a_licence(rpm: Path, installed: Path) -> None:
    flagged = {row.split()[0] for row in rpm_query(rpm, "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]")
               if row.split()[1:] == ["l"]}
    assert flagged == LICENSES
    text = {path: (installed / path.lstrip("/")).read_text() for path in LICENSES}
    assert text[f"{LICENSE_DIR}/LICENSE"] == (REPO / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text[f"{LICENSE_DIR}/LICENSE"]
    # pydbus's wheel has none: the LGPL 2.1 text from packaging/licenses/
    assert text[f"{LICENSE_DIR}/pydbus/COPYING"] == (REPO / "packaging/licenses/LGPL-2.1.txt").read_text()
    lgpl = text[f"{LICENSE_DIR}/pydbus/COPYING"]
    assert "GNU LESSER GENERAL PUBLIC LICENSE\n                       Version 2.1" in lgpl
    assert "Permission is hereby granted, free of charge" in text[f"{LICENSE_DIR}/tomlkit/LICENSE"]
    assert "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in text[f"{LICENSE_DIR}/typing_extensions/LICENSE"]
    # every licence file of every bundled wheel is among them
    for dist_info in (installed / LIBDIR.lstrip("/")).glob("*.dist-info"):
        name = dist_info.name.split("-")[0]
        for shipped in dist_info.rglob("*"):
            if re.match(r"(?i)(licen[cs]e|copying|notice)", shipped.name) and shipped.is_file():
                assert (installed / LICENSE_DIR.lstrip("/") / name / shipped.name).read_bytes() == \
                    shipped.read_bytes()


# --- reproducible --------------------------------------------------------------------------------------


def test_two_builds_of_one_commit_are_byte_identical(rpm: Path, tmp_path: Path) -> None:
    # The second build: another checkout path (files with fresh mtimes), another umask, time zone,
    # temporary directory and path of the Python 3.9; SOURCE_DATE_EPOCH as the first build took it,
    # from the commit.
    commit_time = run(["git", "-C", str(REPO), "log", "-1", "--format=%ct"]).stdout.strip()
    checkout = tmp_path / "elsewhere"
    for part in ("agent", "packaging", "systemd", "docs"):
        shutil.copytree(REPO / part, checkout / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("rpm.spec", "LICENSE"):
        shutil.copy(REPO / name, checkout / name)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp_path / "python3.9").symlink_to(python39())
    outdir = tmp_path / "out"
    run(["bash", "-c", 'umask 0002 && exec bash "$0" --outdir "$1"', str(checkout / "packaging/build-rpm.sh"),
         str(outdir)], env={**os.environ, "PYTHON": shutil.which("python3") or SYSTEM_PYTHON,
                            "PYTHON39": str(tmp_path / "python3.9"), "SOURCE_DATE_EPOCH": commit_time,
                            "TZ": "Pacific/Kiritimati", "TMPDIR": str(tmp)})
    (srpm,) = rpm.parent.glob("*.src.rpm")
    (srpm_again,) = outdir.glob("*.src.rpm")
    for first, second in ((srpm, srpm_again), (rpm, binary_rpm(outdir))):
        assert first.name == second.name
        same = first.read_bytes() == second.read_bytes()  # what `cmp` says
        assert same, f"{first.name}: two builds differ: {what_differs(first, second)}"
    dump = rpm_query(rpm, "--dump")  # path size mtime digest mode owner group ... for every file
    assert {line.split()[2] for line in dump} == {commit_time}  # every mtime is the commit's
    assert rpm_query(rpm, "--qf", "%{BUILDTIME}") == [commit_time]
    assert rpm_query(rpm, "--qf", "%{BUILDHOST}") == ["reproducible.build"]
    assert rpm_query(rpm, "--qf", "%{SOURCEPKGID}") == rpm_query(srpm, "--qf", "%{SIGMD5}")


# The digests of the header itself: they differ whenever anything else in it does.
HEADER_DIGESTS = {"HDRID", "HEADERIMMUTABLE", "PKGID", "SHA1HEADER", "SHA256HEADER", "SIGMD5"}


def what_differs(first: Path, second: Path) -> str:
    """Which header tags differ (their first differing lines), or that only the payload does."""
    tags = header_differences(first, second)
    if not tags:
        return "the header is the same: the payload differs"
    a, b = header_tags(first), header_tags(second)
    lines = []
    for tag in [t for t in tags if t not in HEADER_DIGESTS] or tags:
        left, right = a.get(tag, "").splitlines(), b.get(tag, "").splitlines()
        x, y = next((pair for pair in zip_longest(left, right, fillvalue="") if pair[0] != pair[1]), ("", ""))
        lines.append(f"{tag}: {x!r} != {y!r}")
    return f"header tags {', '.join(tags)} differ; " + "; ".join(lines)


def test_a_difference_is_named_by_its_header_tag(rpm: Path) -> None:
    (srpm,) = rpm.parent.glob("*.src.rpm")
    said = what_differs(rpm, srpm)
    assert said.startswith("header tags ") and " SOURCERPM: " in said
    assert f"SOURCERPM: {srpm.name!r} != ''" in said
    assert "HDRID" in said.split(";")[0] and "HDRID:" not in said  # the digests are listed, not shown


# --- bytecode ------------------------------------------------------------------------------------------


def python39_with_distro_modules(tmp_path: Path, modules: List[str]) -> Dict[str, str]:
    """PYTHONPATH for a bare Python 3.9 holding only ``modules`` of AL2023's versions (from .venv39)."""
    site = REPO / ".venv39/lib/python3.9/site-packages"
    path = tmp_path / "distro-site-packages"
    path.mkdir(exist_ok=True)
    for module in modules:
        for entry in site.glob(module):
            target = path / entry.name
            if not target.exists():
                target.symlink_to(entry)
    return {"PYTHONPATH": str(path)}


AL2023_MODULES = ["yaml", "_yaml*", "requests", "urllib3", "idna", "chardet", "certifi"]


def test_bytecode_is_compiled_for_python_3_9_and_used_as_installed(installed: Path, tmp_path: Path) -> None:
    libdir = installed / LIBDIR.lstrip("/")
    sources = sorted(libdir.rglob("*.py"))
    assert sources and all((p.parent / "__pycache__" / f"{p.stem}.cpython-39.pyc").is_file() for p in sources)
    simulated_node(installed, "containerd-v3-nodeadm-nvidia.toml", "nvidia-container-runtime-default.toml")
    env = python39_with_distro_modules(tmp_path, AL2023_MODULES)
    proc = launcher(installed, "check", python=[python39(), "-s", "-v"], env=env)
    assert proc.returncode in (0, 1, 2), proc.stderr
    loaded = set(re.findall(rf"^# code object from '?({re.escape(str(libdir))}/\S+?\.pyc)'?$", proc.stderr,
                            re.MULTILINE))
    assert f"{libdir}/agent/__pycache__/cli.cpython-39.pyc" in loaded
    assert f"{libdir}/agent/pipeline/__pycache__/resources.cpython-39.pyc" in loaded
    assert not re.search(rf"^# code object from '?{re.escape(str(libdir))}/\S+\.py'?$", proc.stderr, re.MULTILINE)


def test_rpm_verify_is_clean_after_the_agent_ran(installed: Path, tmp_path: Path) -> None:
    assert (verify(installed).returncode, verify(installed).stdout) == (0, "")
    simulated_node(installed, "containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml",
                   "nvidia-container-runtime-legacy.toml")
    env = python39_with_distro_modules(tmp_path, AL2023_MODULES)
    # AL2023's interpreter, which uses the packaged bytecode, and another one, which must write none.
    for python in ([python39(), "-s"], [SYSTEM_PYTHON, "-s"]):
        for command in (["check"], ["plan"], ["config", "show"], ["version"]):
            launcher(installed, *command, python=python, env=env if python[0] != SYSTEM_PYTHON else None)
    proc = verify(installed)
    assert (proc.returncode, proc.stdout) == (0, "")
    libdir = installed / LIBDIR.lstrip("/")
    owned = set(rpm_query(binary_rpm(built_rpm().parent), "-l"))
    unowned = [p for p in libdir.rglob("*") if f"/{p.relative_to(installed)}" not in owned]
    assert unowned == []


# --- the launcher without (the right) PyYAML or requests ------------------------------------------------


@pytest.mark.parametrize(("present", "missing", "package"), [
    ([], "yaml", "python3-pyyaml"),
    (["yaml", "_yaml*"], "requests", "python3-requests"),
    (["requests", "urllib3", "idna", "chardet", "certifi"], "yaml", "python3-pyyaml"),
])
@pytest.mark.parametrize("command", [["version"], ["check"], ["config", "validate"]])
def test_a_missing_distro_module_is_one_line_naming_the_package(
    installed: Path, tmp_path: Path, present: List[str], missing: str, package: str, command: List[str]
) -> None:
    env = python39_with_distro_modules(tmp_path, present)
    proc = launcher(installed, *command, python=[python39(), "-s"], env=env)
    assert proc.returncode == 1
    assert proc.stderr == f"gpu-node-agent: cannot load {missing}: No module named '{missing}' (install {package})\n"
    assert proc.stdout == ""


def test_a_broken_requests_is_one_line_when_a_command_needs_it(installed: Path, tmp_path: Path) -> None:
    env = python39_with_distro_modules(tmp_path, ["yaml", "_yaml*"])
    fake = Path(env["PYTHONPATH"]) / "requests"
    fake.mkdir()
    # what an old or half-installed requests does on import
    (fake / "__init__.py").write_text("from urllib3.util import Timeout  # urllib3 is not installed\n")
    config = installed / "etc/gpu-node-agent/config.yaml"
    config.write_text("efa:\n  sha256: " + "a" * 64 + "\n  base_url: http://127.0.0.1:9\n")
    assert launcher(installed, "version", python=[python39(), "-s"], env=env).returncode == 0  # no requests needed
    proc = launcher(installed, "efa", "fetch", python=[python39(), "-s"], env=env)
    assert proc.returncode == 1
    assert proc.stderr == "gpu-node-agent: cannot load urllib3: No module named 'urllib3' (install python3-requests)\n"


def test_the_agent_runs_on_the_distribution_python_of_the_package(installed: Path) -> None:
    proc = launcher(installed, "version")
    assert (proc.returncode, proc.stdout) == (0, f"gpu-node-agent {__version__}\n")


def test_build_without_a_python_39_says_what_to_install(tmp_path: Path) -> None:
    # Only the system Python on PATH, and no home with pyenv versions.
    proc = build_rpm(scratch_dir("no39"), env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path),
                                              "PYTHON39": ""}, check=False)
    if shutil.which("python3.9", path="/usr/bin:/bin") or Path("/usr/local/bin/python3.9").exists():
        pytest.skip("this machine has a system-wide Python 3.9")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("build-rpm: no Python 3.9 to compile the bytecode with")
