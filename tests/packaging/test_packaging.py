"""The RPM: built by packaging/build-rpm.sh with real rpmbuild, inspected with rpm, installed into a
scratch root and run there with the distribution's python3 against a simulated node."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from agent import __version__
from agent.config.load import parse_config
from agent.config.settings import AgentConfig, config_keys
from agent.pipeline.health import exit_code_for
from tests.support.packaging_helpers import (
    LIBDIR,
    LICENSES,
    SYSTEM_PYTHON,
    agent_sources,
    binary_rpm,
    build_rpm,
    built_rpm,
    install,
    launcher,
    pins,
    python39,
    rpm_query,
    run,
    scratch_dir,
    simulated_node,
    wheel_files,
    wheelhouse,
    with_bytecode,
    with_parents,
)
from tests.support.paths import REPO, which

DISTRO_REQUIRES = {"python3", "python3-requests", "python3-pyyaml", "python3-gobject-base", "systemd",
                   "/usr/bin/gpg", "/usr/bin/gpgv"}
UNITS = ("gpu-node-agent.service", "gpu-node-agent-prepare.service", "gpu-node-agent-check.service",
         "gpu-node-agent-check.timer")


@pytest.fixture(scope="module")
def rpm() -> Path:
    return built_rpm()


@pytest.fixture(scope="module")
def installed(rpm: Path) -> Path:
    return install(rpm, scratch_dir("root") / "node")


# --- what the package contains -------------------------------------------------------------------


def test_spec_version_is_the_agent_version() -> None:
    spec = (REPO / "rpm.spec").read_text()
    assert re.search(r"^Version:\s+(\S+)$", spec, re.MULTILINE).group(1) == __version__  # type: ignore[union-attr]


def test_file_list_is_exactly_the_agent_its_bundle_units_and_config(rpm: Path) -> None:
    bundled = set()
    for wheel in wheelhouse().glob("*.whl"):
        bundled |= {f"{LIBDIR}/{name}" for name in wheel_files(wheel)}
    agent = {f"{LIBDIR}/{rel}" for rel in agent_sources()}
    expected = with_parents(with_bytecode(bundled | agent), LIBDIR) | {
        "/usr/bin/gpu-node-agent",
        "/etc/gpu-node-agent",
        "/etc/gpu-node-agent/config.yaml",
        *(f"/usr/lib/systemd/system/{unit}" for unit in UNITS),
        "/usr/lib/systemd/system-preset/50-gpu-node-agent.preset",
        "/usr/share/doc/gpu-node-agent",
        "/usr/share/doc/gpu-node-agent/operations.md",
        *with_parents(LICENSES, "/usr/share/licenses/gpu-node-agent"),
        "/var/cache/gpu-node-agent",
    }
    listed = set(rpm_query(rpm, "-l"))
    assert listed - expected == set(), "unexpected files in the package"
    assert expected - listed == set(), "files missing from the package"


def test_file_modes_owners_and_config_flags(rpm: Path) -> None:
    rows = rpm_query(rpm, "--qf", "[%{FILENAMES} %{FILEMODES:perms} %{FILEUSERNAME} %{FILEFLAGS:fflags}\n]")
    files = {row.split()[0]: row.split()[1:] for row in rows}
    assert files["/usr/bin/gpu-node-agent"][:2] == ["-rwxr-xr-x", "root"]
    mode, owner, *flags = files["/etc/gpu-node-agent/config.yaml"]
    assert (mode, owner, flags) == ("-rw-r--r--", "root", ["cn"])  # %config(noreplace)
    for unit in UNITS:
        assert files[f"/usr/lib/systemd/system/{unit}"][:2] == ["-rw-r--r--", "root"]
    assert {row[1] for row in files.values()} == {"root"}
    assert rpm_query(rpm, "--configfiles") == ["/etc/gpu-node-agent/config.yaml"]


def test_requires_name_only_al2023_distro_packages(rpm: Path) -> None:
    query = "[%{REQUIRENAME}|%{REQUIREFLAGS:deptype}|%{REQUIREFLAGS:depflags}|%{REQUIREVERSION}\n]"
    requires = [row.split("|") for row in rpm_query(rpm, "--qf", query)]
    names = {name for name, *_ in requires}
    # rpm itself adds its payload-format capabilities and the scriptlets' interpreter; nothing else
    # may be generated (no python(abi), no /usr/bin/python3 file dependency, no python3dist()).
    automatic = {n for n in names if n.startswith("rpmlib(")} | {"/bin/sh"}
    assert names - automatic == DISTRO_REQUIRES
    assert ["python3", "manual", ">=", "3.9"] in requires
    interpreter = {kind for name, kind, *_ in requires if name == "/bin/sh"}
    assert interpreter == {"post,interp", "preun,interp", "postun,interp"}
    assert not [name for name, kind, *_ in requires if "post" in kind and name.startswith("python")]


def test_bundled_libraries_are_declared_at_their_pinned_versions(rpm: Path) -> None:
    provides = set(rpm_query(rpm, "--provides"))
    assert pins().keys() == {"pydbus", "structlog", "tomlkit", "typing-extensions"}
    for name, version in pins().items():
        assert f"bundled(python3dist({name})) = {version}" in provides
        assert any(p.startswith(f"{LIBDIR}/{name.replace('-', '_')}-{version}.dist-info/")
                   for p in rpm_query(rpm, "-l")), f"{name} {version} is declared but not bundled"


def test_default_config_lists_every_key_commented_out_at_its_default() -> None:
    text = (REPO / "packaging" / "config.yaml").read_text()
    assert parse_config(text, "config.yaml").settings() == AgentConfig().settings()  # all commented out
    # Removing the single "#" of every setting line (prose lines start with "##") gives the
    # documented defaults (README "Configuration"), spelled out: the file documents every key and each default.
    uncommented = "\n".join(
        line[1:] if line.startswith("#") and not line.startswith("##") else line
        for line in text.splitlines()
    )
    assert parse_config(uncommented, "config.yaml").settings() == AgentConfig().settings()
    listed = set()
    section = ""
    for line in uncommented.splitlines():
        match = re.match(r"^( *)([a-z0-9_]+):", line)
        if match and not match.group(1):
            section = match.group(2)
        elif match:
            listed.add(f"{section}.{match.group(2)}")
    assert listed == set(config_keys())


# --- building --------------------------------------------------------------------------------------


def test_offline_build_from_a_wheelhouse_matches_the_online_build(rpm: Path) -> None:
    which("unshare")
    outdir = scratch_dir("offline")
    # A network namespace with nothing but a down loopback: any download attempt fails.
    build_rpm(outdir, "--wheelhouse", str(wheelhouse()), prefix=["unshare", "--net"])
    offline = binary_rpm(outdir)
    assert rpm_query(offline, "-l") == rpm_query(rpm, "-l")
    assert rpm_query(offline, "--provides") == rpm_query(rpm, "--provides")
    digest = "[%{FILENAMES} %{FILEDIGESTS}\n]"
    assert rpm_query(offline, "--qf", digest) == rpm_query(rpm, "--qf", digest)


def test_source_rpm_rebuilds_offline_into_the_same_package(rpm: Path, tmp_path: Path) -> None:
    # What an AL2023 pipeline does with the .src.rpm: everything it needs is inside (no network).
    (srpm,) = rpm.parent.glob("gpu-node-agent-*.src.rpm")
    run(["unshare", "--net", "rpmbuild", "--rebuild", "--quiet", "--define", f"_topdir {tmp_path}",
         "--define", f"agent_python {python39()}", str(srpm)])
    (rebuilt,) = (tmp_path / "RPMS" / "noarch").glob("*.rpm")
    digest = "[%{FILENAMES} %{FILEDIGESTS} %{FILEMODES:perms}\n]"
    assert rpm_query(rebuilt, "--qf", digest) == rpm_query(rpm, "--qf", digest)
    assert rpm_query(rebuilt, "--requires") == rpm_query(rpm, "--requires")


def test_offline_build_uses_only_the_wheelhouse(tmp_path: Path) -> None:
    empty = tmp_path / "wheelhouse"
    empty.mkdir()
    proc = build_rpm(tmp_path / "out", "--wheelhouse", str(empty), check=False, prefix=["unshare", "--net"])
    assert proc.returncode != 0
    assert "pydbus==0.6.0" in proc.stderr
    assert not list((tmp_path / "out").glob("*.rpm"))


def test_wheelhouse_holds_exactly_the_pinned_wheels() -> None:
    names = sorted(w.name for w in wheelhouse().glob("*.whl"))
    assert names == sorted(
        f"{name.replace('-', '_')}-{version}-{'py2.py3' if name == 'pydbus' else 'py3'}-none-any.whl"
        for name, version in pins().items()
    )


def _copy_checkout(tmp_path: Path) -> Path:
    checkout = tmp_path / "checkout"
    for part in ("agent", "packaging", "systemd", "docs"):
        shutil.copytree(REPO / part, checkout / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "rpm.spec", checkout / "rpm.spec")
    shutil.copy(REPO / "LICENSE", checkout / "LICENSE")
    return checkout


def test_build_refuses_a_spec_whose_version_differs_from_the_agent(tmp_path: Path) -> None:
    checkout = _copy_checkout(tmp_path)
    spec = checkout / "rpm.spec"
    spec.write_text(re.sub(r"^Version:.*$", "Version:        9.9.9", spec.read_text(), flags=re.MULTILINE))
    proc = run(["bash", str(checkout / "packaging/build-rpm.sh"), "--outdir", str(tmp_path / "out")],
               check=False, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert proc.returncode == 1
    assert f"rpm.spec Version: 9.9.9, but agent/__init__.py says {__version__}" in proc.stderr


def test_build_refuses_a_pin_the_spec_does_not_declare(tmp_path: Path) -> None:
    checkout = _copy_checkout(tmp_path)
    requirements = checkout / "packaging/bundled-requirements.txt"
    requirements.write_text(requirements.read_text().replace("tomlkit==0.15.2", "tomlkit==0.15.1"))
    proc = run(["bash", str(checkout / "packaging/build-rpm.sh"), "--outdir", str(tmp_path / "out")],
               check=False, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert proc.returncode == 1
    assert "rpm.spec lacks 'Provides: bundled(python3dist(tomlkit)) = 0.15.1'" in proc.stderr


def test_spec_fallbacks_give_way_to_the_distributions_macros() -> None:
    which("rpmspec")

    def parsed(*defines: str) -> str:
        args = [a for d in defines for a in ("--define", d)]
        return run(["rpmspec", "-P", str(REPO / "rpm.spec"), *args]).stdout

    debian = parsed()
    assert "/usr/bin/systemctl --no-reload preset gpu-node-agent.service" in debian
    assert re.search(r"^install -d \S+/usr/lib/systemd/system$", debian, re.MULTILINE)
    # Where systemd's rpm macros exist (AL2023, Fedora), the spec uses them untouched.
    real = parsed(
        "_unitdir /opt/units", "_presetdir /opt/presets",
        "systemd_post() REAL-POST %{?*}", "systemd_preun() REAL-PREUN %{?*}",
        "systemd_postun() REAL-POSTUN %{?*}",
    )
    units = " ".join(UNITS)
    for scriptlet in ("POST", "PREUN", "POSTUN"):
        assert f"REAL-{scriptlet} {units}" in real
    assert "systemctl" not in real
    assert re.search(r"^install -d \S+/opt/units$", real, re.MULTILINE)
    assert "/opt/presets/50-gpu-node-agent.preset" in real


def _scriptlet(rpm: Path, tag: str, root: Path, recorder: Path) -> str:
    script = "\n".join(rpm_query(rpm, "--qf", f"%{{{tag}}}"))
    assert "/usr/bin/systemctl" in script
    # Run against the scratch root: its library directory, and a systemctl that only records.
    return script.replace("/usr/bin/systemctl", str(recorder)).replace(LIBDIR, str(root) + LIBDIR)


def test_scriptlets_preset_on_install_and_clean_up_on_removal(
    rpm: Path, tmp_path: Path
) -> None:
    root = install(rpm, tmp_path / "root")
    log = tmp_path / "systemctl.log"
    recorder = tmp_path / "systemctl"
    recorder.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    recorder.chmod(0o755)
    units = " ".join(UNITS)
    pycache = root / LIBDIR.lstrip("/") / "agent" / "__pycache__"

    def scriptlet(tag: str, arg: int) -> List[str]:
        log.write_text("")
        run(["sh", "-c", _scriptlet(rpm, tag, root, recorder), tag, str(arg)])
        return log.read_text().splitlines()

    assert scriptlet("POSTIN", 1) == [f"--no-reload preset {units}"]  # first install
    assert list(pycache.glob("cli.cpython-39.pyc")), "the package's own bytecode"
    assert "python" not in "\n".join(rpm_query(rpm, "--qf", "%{POSTIN}"))  # nothing compiled on the node
    assert scriptlet("POSTIN", 2) == []  # upgrade: the admin's enable/disable choices stand
    assert scriptlet("PREUN", 1) == []  # upgrade: keep running
    assert scriptlet("PREUN", 0) == [f"--no-reload disable --now {units}"]
    assert scriptlet("POSTUN", 1) == ["daemon-reload"]  # upgrade: reload, never restart the agent
    assert pycache.is_dir()
    # Erase: rpm removes the packaged files (bytecode included), then %postun removes bytecode that
    # 0.1.0-1 compiled in %post (unowned) and the directories left empty.
    (pycache / "cli.cpython-311.pyc").write_bytes(b"unowned")
    owned = set(rpm_query(rpm, "-l"))
    for path in sorted((root / LIBDIR.lstrip("/")).rglob("*"), reverse=True):
        if path.is_file() and "/" + str(path.relative_to(root)) in owned:
            path.unlink()
    assert scriptlet("POSTUN", 0) == ["daemon-reload"]
    assert not (root / LIBDIR.lstrip("/")).exists()


# --- the installed package on a simulated node ---------------------------------------------------


def test_installed_files_verify(installed: Path) -> None:
    proc = run(["rpm", "-V", "--root", str(installed), "--nodeps", "gpu-node-agent"], check=False)
    assert (proc.returncode, proc.stdout) == (0, "")


def test_installed_launcher_prints_the_version(installed: Path) -> None:
    proc = launcher(installed, "version")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"gpu-node-agent {__version__}\n", "")


def test_installed_default_config_validates(installed: Path) -> None:
    proc = launcher(installed, "config", "validate")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{installed}/etc/gpu-node-agent/config.yaml: valid\n"


def test_installed_check_reports_the_broken_node(installed: Path) -> None:
    simulated_node(installed, "containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml",
                   "nvidia-container-runtime-legacy.toml")
    proc = launcher(installed, "check", "--format", "json")
    report = json.loads(proc.stdout)
    assert proc.returncode == exit_code_for(report["health"]) == 1, proc.stderr
    checks: Dict[str, dict] = {c["name"]: c for c in report["checks"]}
    assert checks["containerd-config"]["status"] == "fail"
    assert "SystemdCgroup" in checks["containerd-config"]["message"]
    assert checks["nvidia-runtime-config"]["status"] == "fail"
    assert 'mode = "legacy"' in checks["nvidia-runtime-config"]["message"]
    assert checks["compatibility"]["details"]["matrix"].startswith(str(installed))  # package data shipped
    assert report["agent"] == __version__
    table = launcher(installed, "check")
    assert table.returncode == 1
    assert re.search(r"^containerd-config\s+fail\s", table.stdout, re.MULTILINE)


def test_installed_plan_shows_the_repair_and_changes_nothing(installed: Path) -> None:
    simulated_node(installed, "containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml",
                   "nvidia-container-runtime-legacy.toml")
    config = installed / "etc/containerd/config.toml"
    before = config.read_bytes()
    proc = launcher(installed, "plan")
    assert proc.returncode == 0, proc.stderr
    assert "\n+SystemdCgroup = true\n" in proc.stdout
    assert '\n+mode = "auto"\n' in proc.stdout
    assert config.read_bytes() == before


def test_bundled_libraries_are_what_the_installed_agent_imports(installed: Path) -> None:
    libdir = installed / LIBDIR.lstrip("/")
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import pydbus, structlog, tomlkit, typing_extensions; "
        "print('\\n'.join(m.__file__ for m in (pydbus, structlog, tomlkit, typing_extensions)))"
    )
    # The system python has none of them: the launcher can only be getting them from the bundle.
    for module in ("pydbus", "structlog", "tomlkit", "typing_extensions"):
        alone = run([SYSTEM_PYTHON, "-s", "-c", f"import {module}"], check=False)
        assert alone.returncode == 1 and "ModuleNotFoundError" in alone.stderr, module
    files = run([SYSTEM_PYTHON, "-s", "-c", probe, str(libdir)]).stdout.split()
    assert all(f.startswith(f"{libdir}/") for f in files), files


def test_bundle_runs_on_python_3_9_with_nothing_else_installed(installed: Path) -> None:
    python39_path = python39()
    libdir = installed / LIBDIR.lstrip("/")
    # -S: no site-packages at all. structlog needs typing_extensions below 3.11: from the bundle.
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); assert sys.version_info[:2] == (3, 9)\n"
        "import structlog, tomlkit, typing_extensions\n"
        "structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stdout),"
        " processors=[structlog.processors.JSONRenderer()])\n"
        "structlog.get_logger().info('bundled', structlog=structlog.__version__)\n"
        "doc = tomlkit.parse('[a]\\nb = 1 # kept\\n'); doc['a']['c'] = True; print(tomlkit.dumps(doc))\n"
        "print(typing_extensions.__file__)\n"
    )
    proc = run([python39_path, "-S", "-c", probe, str(libdir)])
    assert '{"structlog": "25.5.0", "event": "bundled"}' in proc.stdout
    assert "b = 1 # kept\nc = true\n" in proc.stdout
    assert proc.stdout.strip().endswith(f"{libdir}/typing_extensions.py")


def test_launcher_works_through_a_symlink_and_says_so_when_its_library_is_missing(
    installed: Path, tmp_path: Path
) -> None:
    link = tmp_path / "gpu-node-agent"
    link.symlink_to(installed / "usr/bin/gpu-node-agent")
    assert run([str(link), "version"]).stdout == f"gpu-node-agent {__version__}\n"
    # A broken install: one line naming the directory, no traceback.
    broken = tmp_path / "broken"
    shutil.copytree(installed / "usr/bin", broken / "usr/bin")
    proc = subprocess.run([str(broken / "usr/bin/gpu-node-agent"), "version"], capture_output=True, text=True)
    assert proc.returncode == 1
    libdir = broken / "usr/lib/gpu-node-agent"
    assert proc.stderr.startswith(f"gpu-node-agent: cannot load the agent from {libdir}: ")
    assert "Traceback" not in proc.stderr
