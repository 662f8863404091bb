"""The installed package as AL2023 runs it: the RPM's payload (launcher, the agent and its bundled
libraries under /usr/lib/gpu-node-agent, their bytecode), installed into a scratch root with
``rpm -i --root``, run by a bare Python 3.9 with ``-s`` (no user site, no virtual environment) on
simulated nodes (``--root``).

The distribution's libraries come from a site directory holding exactly the versions AL2023 ships
as RPMs (``AL2023_DISTRIBUTIONS``), linked from the 3.9 test environment: nothing else of that
environment (not its agent, not its bundled libraries) is on the path, so every command here runs
what the package ships. Each command's output, exit code and the node's files are checked; one
test runs ``plan``, ``run``, ``status`` and ``check`` against a real systemd over D-Bus (bundled
pydbus on AL2023's PyGObject), restarting the containerd and kubelet stand-ins
(tests/support/systemd_harness.py).
"""

import json
import re
import subprocess
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import pytest

from tests.support.gpu_node import healthy_gpu_node
from tests.support.packaging_helpers import LIBDIR, built_rpm, install, launcher, python39, run, scratch_dir
from tests.support.paths import REPO, sample
from tests.support.systemd_harness import BootedSystemd
from tests.support.systemd_node import CONTAINERD, KUBELET, SystemdNode

# What AL2023's python3 has from the RPMs the package requires (python3-requests, python3-pyyaml,
# python3-gobject-base) and their dependencies: distribution -> version, from their one source.
AL2023_DISTRIBUTIONS = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "scripts/lock/al2023.txt").read_text(),
                                       re.M))
# AL2023's python3-requests reads the system CA bundle (Fedora's patch to requests); requests from
# PyPI imports certifi for the same, so it is there too, at whatever version.
UNPINNED = ("certifi",)
TEST_SITE_PACKAGES = REPO / ".venv39/lib/python3.9/site-packages"
DRIFTED = "containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml"  # the agent adds SystemdCgroup = true
NODE_CONFIG = "restart:\n  policy: when-needed\n  timeout_seconds: 10\nreport:\n  publish: false\n"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions(site_packages: Path) -> Dict[str, Path]:
    """``{normalized name: its .dist-info}`` of ``site_packages``."""
    out = {}
    for info in site_packages.glob("*.dist-info"):
        name = re.search(r"^Name: (\S+)$", (info / "METADATA").read_text(), re.MULTILINE)
        assert name, f"{info}/METADATA: no Name"
        out[normalize(name.group(1))] = info
    return out


def version_of(info: Path) -> str:
    found = re.search(r"^Version: (\S+)$", (info / "METADATA").read_text(), re.MULTILINE)
    assert found, f"{info}/METADATA: no Version"
    return found.group(1)


def top_level_entries(info: Path) -> Iterable[str]:
    """What the distribution installed at the top of site-packages (modules, packages, its dist-info)."""
    for line in (info / "RECORD").read_text().splitlines():
        first = line.split(",")[0].split("/")[0]
        if first and first != ".." and first != "__pycache__":
            yield first


def site_dir(target: Path, names: Iterable[str], leave_out: Iterable[str] = ()) -> Path:
    """``target`` with a link to every top-level entry of each distribution ``names`` of the test
    environment, but the entries ``leave_out`` (e.g. ``yaml``: PyYAML half missing)."""
    distributions = installed_distributions(TEST_SITE_PACKAGES)
    target.mkdir(parents=True)
    for name in names:
        info = distributions.get(normalize(name))
        assert info, f"{TEST_SITE_PACKAGES}: no {name} (scripts/setup.sh installs AL2023's libraries)"
        for entry in set(top_level_entries(info)) - set(leave_out):
            source = TEST_SITE_PACKAGES / entry
            if source.exists() and not (target / entry).exists():
                (target / entry).symlink_to(source)
    return target


@pytest.fixture(scope="module")
def al2023_site() -> Path:
    """The distribution's libraries at AL2023's versions, and nothing else."""
    distributions = installed_distributions(TEST_SITE_PACKAGES)
    wrong = {name: version_of(distributions[normalize(name)]) if normalize(name) in distributions else "none"
             for name, version in AL2023_DISTRIBUTIONS.items()
             if normalize(name) not in distributions or version_of(distributions[normalize(name)]) != version}
    assert not wrong, (
        f"{TEST_SITE_PACKAGES} must hold AL2023's versions {AL2023_DISTRIBUTIONS}; it has {wrong} (scripts/setup.sh)"
    )
    return site_dir(scratch_dir("al2023-site") / "site-packages", [*AL2023_DISTRIBUTIONS, *UNPINNED])


@pytest.fixture(scope="module")
def rpm() -> Path:
    return built_rpm()


@pytest.fixture
def node(rpm: Path, tmp_path: Path) -> Path:
    """The package installed into a node root that is a known-good GPU node whose containerd config
    drifted (SystemdCgroup missing), with the packaged default configuration plus ``NODE_CONFIG``."""
    root = install(rpm, tmp_path / "node")
    healthy_gpu_node(root)
    (root / "etc/containerd/config.toml").write_text(sample(DRIFTED))
    config = root / "etc/gpu-node-agent/config.yaml"
    config.write_text(config.read_text() + NODE_CONFIG)
    return root


def agent(root: Path, *args: str, site: Path, bus: Optional[str] = None,
          python_flags: Iterable[str] = ()) -> "subprocess.CompletedProcess[str]":
    """The installed launcher of ``root`` on AL2023's interpreter: ``python3 -s``, the distribution's
    libraries from ``site``, the system bus at ``bus`` (default: none there)."""
    env = {"PYTHONPATH": str(site), "DBUS_SYSTEM_BUS_ADDRESS": bus or f"unix:path={root}/run/dbus/no-bus",
           "AWS_EC2_METADATA_DISABLED": "true"}
    return launcher(root, *args, python=[python39(), "-s", *python_flags], env=env)


def node_files(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "etc").rglob("*")) if p.is_file()}


# --- what runs ------------------------------------------------------------------------------------


def test_the_distribution_libraries_are_al2023s_versions(al2023_site: Path) -> None:
    probe = ("import sys, importlib.metadata as m\n"
             "for name in sys.argv[1:]: print(name, m.version(name), m.distribution(name).locate_file(''))")
    out = run([python39(), "-s", "-c", probe, *AL2023_DISTRIBUTIONS],
              env={"PYTHONPATH": str(al2023_site)}).stdout.splitlines()
    assert out == [f"{name} {version} {al2023_site}" for name, version in AL2023_DISTRIBUTIONS.items()]


def test_every_module_comes_from_the_payload_the_distribution_or_the_standard_library(
    node: Path, al2023_site: Path
) -> None:
    proc = agent(node, "run", site=al2023_site, python_flags=["-v"])
    # The file is repaired; restarting containerd fails: no system bus here (gi's own error, one line).
    assert proc.returncode == 1, proc.stdout
    assert b"SystemdCgroup = true" in (node / "etc/containerd/config.toml").read_bytes()
    assert re.search(r"^action: failed: restart pending: containerd\.service: .*cannot restart it: system bus "
                     r"\S+: Could not connect: No such file or directory$", proc.stdout, re.MULTILINE), proc.stdout
    stdlib = run([python39(), "-s", "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"]).stdout.strip()
    libdir = f"{node}{LIBDIR}"
    loaded = re.findall(r"^# code object from '?(\S+?)'?$", proc.stderr, re.MULTILINE)
    extensions = re.findall(r"^# extension module '\S+' loaded from '(\S+)'$", proc.stderr, re.MULTILINE)
    elsewhere = [f for f in loaded + extensions if not f.startswith((f"{libdir}/", f"{al2023_site}/", f"{stdlib}/"))]
    assert loaded and extensions and elsewhere == []
    # The agent and the bundled libraries: the package's bytecode, never their sources.
    from_payload = {f[len(libdir) + 1:].split("/")[0] for f in loaded if f.startswith(f"{libdir}/")}
    assert {"agent", "tomlkit", "structlog", "__pycache__"} <= from_payload  # __pycache__: typing_extensions
    assert f"{libdir}/__pycache__/typing_extensions.cpython-39.pyc" in loaded
    assert [f for f in loaded if f.startswith(f"{libdir}/") and not f.endswith(".cpython-39.pyc")] == []
    # The distribution's: PyYAML (and its C extension) and PyGObject (the D-Bus client's) from AL2023's site.
    from_site = {f[len(str(al2023_site)) + 1:].split("/")[0] for f in loaded + extensions
                 if f.startswith(f"{al2023_site}/")}
    assert {"yaml", "gi"} <= from_site
    assert any(re.fullmatch(rf"{re.escape(str(al2023_site))}/gi/_gi\.cpython-39-[^/]+\.so", f) for f in extensions)


# --- a run on a real systemd ----------------------------------------------------------------------


def test_plan_run_status_and_check_on_a_real_systemd(
    node: Path, al2023_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], boot_systemd: Callable[..., BootedSystemd]
) -> None:
    booted = SystemdNode(tmp_path, node, tmp_path / "daemons", monkeypatch, capsys, boot_systemd)
    booted.daemons.node_kubelet_config(node, booted.healthz_port)
    booted.daemons.install_ctr(node)
    sd = booted.start({
        CONTAINERD: booted.daemons.containerd_unit(booted.containerd_config,
                                                   socket=node / "run/containerd/containerd.sock"),
        KUBELET: booted.daemons.kubelet_unit(booted.healthz_port),
    })
    containerd_before = sd.properties(CONTAINERD)["MainPID"]
    drifted = booted.containerd_config.read_bytes()

    def cli(*args: str) -> "subprocess.CompletedProcess[str]":
        return agent(node, *args, site=al2023_site, bus=sd.bus_address)

    plan = cli("plan")
    assert plan.returncode == 0, plan.stderr
    assert "\n+SystemdCgroup = true\n" in plan.stdout
    assert re.search(r"^restart containerd\.service: ", plan.stdout, re.MULTILINE), plan.stdout
    assert booted.containerd_config.read_bytes() == drifted

    done = cli("run", "--lock-wait", "5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "health: healthy" in done.stdout.splitlines()
    assert b"SystemdCgroup = true" in booted.containerd_config.read_bytes()
    # containerd restarted over D-Bus into the repaired file, then kubelet
    assert sd.properties(CONTAINERD)["MainPID"] != containerd_before
    starts = [name for name, _pid, _digest in booted.daemons.wait_for_starts(4)]
    assert starts == ["containerd", "kubelet", "containerd", "kubelet"]

    status = cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "health: healthy" in status.stdout
    assert re.search(r"^run\s+\S+\s+\S+\s+healthy\s+0\s+this$", status.stdout, re.MULTILINE), status.stdout

    check = cli("check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert re.search(r"^containerd-running\s+pass\s", check.stdout, re.MULTILINE), check.stdout
    assert check.stdout.splitlines()[-1] == "health: healthy"
    assert cli("plan").stdout == "nothing to do: the node is converged\n"


# --- configuration and missing dependencies --------------------------------------------------------


def test_config_validate_accepts_the_packaged_config(node: Path, al2023_site: Path) -> None:
    proc = agent(node, "config", "validate", site=al2023_site)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"{node}/etc/gpu-node-agent/config.yaml: valid\n", "")


@pytest.mark.parametrize("command", [["config", "validate"], ["check"], ["plan"], ["run"], ["status"]])
def test_an_invalid_config_is_one_line_exit_64_and_the_node_unchanged(
    node: Path, al2023_site: Path, command: List[str]
) -> None:
    config = node / "etc/gpu-node-agent/config.yaml"
    config.write_text("efa:\n  instal: auto\n")
    before = node_files(node)
    proc = agent(node, *command, site=al2023_site)
    assert (proc.returncode, proc.stdout) == (64, ""), proc.stderr
    assert proc.stderr == f"gpu-node-agent: {config}:2: efa.instal: unknown key (did you mean 'install'?)\n"
    assert node_files(node) == before


@pytest.mark.parametrize("command", [["check"], ["run"], ["config", "validate"]])
def test_without_pyyaml_each_command_is_the_documented_line(
    node: Path, al2023_site: Path, tmp_path: Path, command: List[str]
) -> None:
    without_yaml = site_dir(tmp_path / "no-yaml", [*AL2023_DISTRIBUTIONS, *UNPINNED], leave_out=["yaml"])
    before = node_files(node)
    proc = agent(node, *command, site=without_yaml)
    # README "Build the RPM": one line naming the package to install
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == "gpu-node-agent: cannot load yaml: No module named 'yaml' (install python3-pyyaml)\n"
    assert node_files(node) == before


def test_without_pygobject_the_unit_checks_say_which_package_to_install(
    node: Path, al2023_site: Path, tmp_path: Path
) -> None:
    without_gi = site_dir(tmp_path / "no-gi", [name for name in (*AL2023_DISTRIBUTIONS, *UNPINNED)
                                               if name not in ("PyGObject", "pycairo")])
    proc = agent(node, "check", "--format", "json", site=without_gi)  # whole messages (the table cuts them)
    assert proc.returncode == 1, proc.stderr  # the drifted containerd config fails; the unit checks warn
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    for unit, name in ((CONTAINERD, "containerd-running"), (KUBELET, "kubelet-running")):
        assert checks[name]["status"] == "warn"
        assert re.fullmatch(rf"cannot read {unit}: .*cannot load the D-Bus client \(gi: ModuleNotFoundError\); "
                            r"install python3-gobject-base", checks[name]["message"])
    assert "Traceback" not in proc.stderr
