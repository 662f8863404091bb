"""The command line on a simulated node (pyfakefs): outputs, exit codes, and bad input.

Every bad input must give one clear line on stderr, the documented exit code, no traceback, and
leave every node file exactly as it was.
"""

import json
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pydbus  # noqa: F401  (these load before the fake filesystem is active)
import pytest
import tomlkit  # noqa: F401
import yaml  # noqa: F401
from gi.repository import Gio, GLib  # noqa: F401
from pyfakefs.fake_filesystem import FakeFilesystem
from pyfakefs.helpers import set_uid

import agent.compat.versions
import agent.gpu.allocatable
import agent.gpu.fabric
import agent.gpu.inventory
import agent.gpu.kmsg
import agent.gpu.xid
import agent.nvidia.driver  # before the fake filesystem is active, like every module the tests patch
from agent import cli
from tests.support.containerd_helpers import VERSION_TEXT
from tests.support.gpu_node import known_good_facts
from tests.support.paths import sample

# The unit checks as on a healthy node: these tests are about files, not systemd (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("units_serving")

ROOT = "/node"
CONTAINERD = "/etc/containerd/config.toml"
NVIDIA = "/etc/nvidia-container-runtime/config.toml"
VERSION = "/etc/eks/containerd-version.txt"
SAMPLES = {name: sample(name) for name in (
    "containerd-v3-nodeadm-nvidia.toml", "containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml",
    "containerd-v2-nodeadm-nvidia.toml", "containerd-v3-nodeadm-merged.toml", "containerd-v3-migrated.toml",
    "nvidia-container-runtime-default.toml", "nvidia-container-runtime-legacy.toml",
)}
AGENT_CONFIG = "/etc/gpu-node-agent/config.yaml"
HEALTHY = {
    CONTAINERD: SAMPLES["containerd-v3-nodeadm-nvidia.toml"],
    NVIDIA: SAMPLES["nvidia-container-runtime-default.toml"],
    VERSION: VERSION_TEXT[2],
    # These tests are about files: no systemd here (restarts are tested against a real one), no cluster.
    AGENT_CONFIG: "restart:\n  policy: never\nreport:\n  publish: false\n",
    # The instance type as every Nitro instance names it (known_good_facts: 4 GPUs).
    "/sys/devices/virtual/dmi/id/product_name": "g5.12xlarge\n",
}


@pytest.fixture
def node(fs: FakeFilesystem, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeFilesystem]:
    # pyfakefs cannot run nvidia-smi or nvidia-ctk: the GPU driver and component versions are the
    # known-good row's here (test_driver.py and test_compat.py test them on real files).
    driver, versions = known_good_facts()
    monkeypatch.setattr(agent.nvidia.driver, "discover", lambda root, **kw: driver)
    monkeypatch.setattr(agent.compat.versions, "discover", lambda root, *args: versions)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance metadata either
    fs.create_dir(ROOT)
    yield fs
    set_uid(0)


def write(fs: FakeFilesystem, files: Dict[str, str]) -> None:
    for path, text in files.items():
        fs.create_file(ROOT + path, contents=text)


def snapshot() -> Dict[str, Tuple[bytes, int]]:
    out = {}
    for dirpath, _dirs, files in os.walk(ROOT):
        if dirpath.startswith(ROOT + "/run/gpu-node-agent"):
            continue  # the agent's own state (run lock), not a node file
        for name in files:
            p = Path(dirpath, name)
            if p.is_symlink():
                out[str(p)] = (os.readlink(p).encode(), 0)
            else:
                try:
                    out[str(p)] = (p.read_bytes(), p.stat().st_mode)
                except PermissionError:
                    out[str(p)] = (b"<unreadable>", p.lstat().st_mode)
    return out


def run(capsys: pytest.CaptureFixture, *args: str) -> Tuple[int, str, List[str]]:
    code = cli.main(["--root", ROOT, *args])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


# --- every sample through plan and run -----------------------------------------------------------


@pytest.mark.parametrize(("name", "daemon", "changes"), [
    ("containerd-v3-nodeadm-nvidia.toml", 2, 0),
    ("containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml", 2, 1),
    ("containerd-v2-nodeadm-nvidia.toml", 1, 1),
    ("containerd-v3-nodeadm-merged.toml", 2, 3),
    ("containerd-v3-migrated.toml", 2, 1),
])
def test_plan_shows_the_diff_run_applies_it_and_a_second_run_changes_nothing(
    node: FakeFilesystem, capsys: pytest.CaptureFixture, name: str, daemon: int, changes: int
) -> None:
    write(node, {**HEALTHY, CONTAINERD: SAMPLES[name], VERSION: VERSION_TEXT[daemon]})
    before = snapshot()
    code, out, _ = run(capsys, "plan")
    assert code == 0 and snapshot() == before  # plan changes nothing
    if changes:
        assert f"--- {ROOT}{CONTAINERD} (current)" in out
        assert out.count("\n+") - out.count("\n+++") >= 1
        assert sum(1 for line in out.splitlines() if line.startswith("#   ")) == changes
    else:
        assert out == "nothing to do: the node is converged\n"

    code, out, _ = run(capsys, "run")
    # with restart.policy never, a change containerd has not loaded yet is a pending restart: degraded
    assert code == (2 if changes else 0), out
    assert ("health: degraded" if changes else "health: healthy") in out.splitlines()
    assert out.count(f"action: {ROOT}") == changes
    assert ("action: restart pending: containerd.service" in out) == bool(changes)
    if changes:
        assert "containerd-running     warn    containerd.service: restart pending: this run changes" in out
    after_first = snapshot()

    code, out, _ = run(capsys, "run")
    assert code == 0 and "action: " not in out
    assert snapshot() == after_first
    code, out, _ = run(capsys, "plan")
    assert out == "nothing to do: the node is converged\n"


def test_run_repairs_the_legacy_toolkit_config_to_the_packaged_default(
    node: FakeFilesystem, capsys: pytest.CaptureFixture
) -> None:
    write(node, {**HEALTHY, NVIDIA: SAMPLES["nvidia-container-runtime-legacy.toml"]})
    code, out, _ = run(capsys, "check")
    assert code == 1 and "nvidia-runtime-config  fail" in out
    code, out, _ = run(capsys, "run")
    assert code == 0
    assert Path(ROOT + NVIDIA).read_text() == SAMPLES["nvidia-container-runtime-default.toml"]


def test_atomic_write_keeps_mode(node: FakeFilesystem, capsys: pytest.CaptureFixture) -> None:
    write(node, {**HEALTHY, CONTAINERD: SAMPLES["containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml"]})
    os.chmod(ROOT + CONTAINERD, 0o600)
    assert run(capsys, "run")[0] == 2  # written; the containerd restart is pending (policy never)
    assert Path(ROOT + CONTAINERD).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in Path(ROOT + "/etc/containerd").iterdir()] == ["config.toml"]  # no temp left


def test_run_does_not_overwrite_a_file_rewritten_while_it_planned(
    node: FakeFilesystem, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.pipeline import plan

    write(node, {**HEALTHY, CONTAINERD: SAMPLES["containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml"]})
    nodeadm = SAMPLES["containerd-v3-nodeadm-merged.toml"]
    make_plan = plan.make_plan

    def nodeadm_rewrites_it_meanwhile(*args: object, **kw: object) -> plan.Plan:
        the_plan = make_plan(*args, **kw)  # type: ignore[arg-type]
        Path(ROOT + CONTAINERD).write_text(nodeadm)
        return the_plan

    monkeypatch.setattr(plan, "make_plan", nodeadm_rewrites_it_meanwhile)
    code, out, _ = run(capsys, "run")
    assert code == 1
    assert f"failed: {ROOT}{CONTAINERD}: changed while the agent was planning; nothing written" in out
    assert Path(ROOT + CONTAINERD).read_text() == nodeadm
    assert f"action: {ROOT}{CONTAINERD}" not in out


# --- check: formats and exit codes -----------------------------------------------------------------


def test_check_healthy_is_exit_0_with_a_table(node: FakeFilesystem, capsys: pytest.CaptureFixture) -> None:
    write(node, HEALTHY)
    code, out, err = run(capsys, "check")
    assert code == 0 and err == []
    assert out.splitlines()[0].split() == ["CHECK", "STATUS", "MESSAGE"]
    assert out.endswith("health: healthy\n")
    assert "\033[" not in out  # no colour when not a TTY


def test_check_degraded_is_exit_2(node: FakeFilesystem, capsys: pytest.CaptureFixture) -> None:
    write(node, {k: v for k, v in HEALTHY.items() if k != NVIDIA})  # no toolkit config: warn
    code, out, _ = run(capsys, "check")
    assert code == 2 and out.endswith("health: degraded\n")


def test_check_json_follows_the_report_schema(node: FakeFilesystem, capsys: pytest.CaptureFixture) -> None:
    write(node, {**HEALTHY, CONTAINERD: SAMPLES["containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml"]})
    code, out, _ = run(capsys, "check", "--format", "json")
    doc = json.loads(out)
    assert code == 1
    assert set(doc) == {"v", "agent", "time", "health", "checks", "actions"}
    assert doc["v"] == 1 and doc["health"] == "unhealthy" and doc["time"].endswith("Z")
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["containerd-config"]["status"] == "fail"
    assert "SystemdCgroup" in checks["containerd-config"]["message"]
    assert checks["nvidia-runtime-config"]["status"] == "pass"


def test_global_options_are_accepted_after_the_command(node: FakeFilesystem, capsys: pytest.CaptureFixture) -> None:
    write(node, HEALTHY)
    assert cli.main(["check", "--root", ROOT, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["health"] == "healthy"


# --- bad input: one line, documented exit code, nothing modified -------------------------------------

BAD_NODES = {
    "invalid TOML": ({CONTAINERD: 'version = 3\n[plugins\nx = 1\n'},
                     f"{ROOT}{CONTAINERD}: invalid TOML at line 2, column 9"),
    "empty file": ({CONTAINERD: "\n  \n"}, f"{ROOT}{CONTAINERD}: is empty"),
    "missing containerd config": ({}, f"{ROOT}{CONTAINERD}: does not exist (has nodeadm run?)"),
    "missing import": ({CONTAINERD: 'version = 3\nimports = ["/etc/containerd/gone.toml"]\n'},
                       f"{ROOT}/etc/containerd/gone.toml: is imported but does not exist; containerd refuses to start"),
    "import cycle": ({CONTAINERD: 'version = 3\nimports = ["/etc/containerd/a.toml"]\n',
                      "/etc/containerd/a.toml": 'version = 3\nimports = ["/etc/containerd/config.toml"]\n'},
                     "import cycle: /etc/containerd/config.toml -> /etc/containerd/a.toml -> "
                     "/etc/containerd/config.toml"),
    "version of the wrong type": ({CONTAINERD: 'version = "3"\n'}, "'version' must be an integer, got '3'"),
    "imports of the wrong type": ({CONTAINERD: 'version = 3\nimports = "/etc/x.toml"\n'},
                                  "'imports' must be an array of strings"),
    "invalid toolkit TOML": ({NVIDIA: "mode = \n"}, f"{ROOT}{NVIDIA}: invalid TOML at line 1"),
}


def assert_bad_node(capsys: pytest.CaptureFixture, expected: str, command: str) -> None:
    before = snapshot()
    code, out, err = run(capsys, command)
    assert snapshot() == before
    assert code == 1
    assert "Traceback" not in out + "".join(err)
    if command == "check":  # the table cuts a long message to 120 columns; the JSON has it whole
        _, whole, _ = run(capsys, "check", "--format", "json")
        assert any(expected in c["message"] for c in json.loads(whole)["checks"])
    else:
        assert any(expected in line for line in (out.splitlines() + err)), (out, err)


@pytest.mark.parametrize("case", list(BAD_NODES))
@pytest.mark.parametrize("command", ["check", "plan", "run"])
def test_bad_node_files(node: FakeFilesystem, capsys: pytest.CaptureFixture, case: str, command: str) -> None:
    files, expected = BAD_NODES[case]
    base = {k: v for k, v in HEALTHY.items() if k != CONTAINERD} if CONTAINERD not in files else dict(HEALTHY)
    write(node, {**base, **files})
    assert_bad_node(capsys, expected, command)


@pytest.mark.parametrize("command", ["check", "plan", "run"])
def test_non_utf8_file(node: FakeFilesystem, capsys: pytest.CaptureFixture, command: str) -> None:
    write(node, {k: v for k, v in HEALTHY.items() if k != CONTAINERD})
    node.create_file(ROOT + CONTAINERD, contents=b"version = 3\n# caf\xe9\n")
    assert_bad_node(capsys, f"{ROOT}{CONTAINERD}: not UTF-8 (byte 0xe9 on line 2)", command)


@pytest.mark.parametrize("command", ["check", "plan", "run"])
def test_symlinked_config(node: FakeFilesystem, capsys: pytest.CaptureFixture, command: str) -> None:
    write(node, {**{k: v for k, v in HEALTHY.items() if k != CONTAINERD},
                 "/etc/containerd/real.toml": SAMPLES["containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml"]})
    node.create_symlink(ROOT + CONTAINERD, "real.toml")
    assert_bad_node(capsys, f"{ROOT}{CONTAINERD}: is a symlink", command)


@pytest.mark.parametrize("command", ["check", "plan"])
def test_unreadable_file(node: FakeFilesystem, capsys: pytest.CaptureFixture, command: str) -> None:
    write(node, HEALTHY)
    os.chmod(ROOT + CONTAINERD, 0o000)
    set_uid(1000)
    assert_bad_node(capsys, f"{ROOT}{CONTAINERD}: permission denied", command)


@pytest.mark.parametrize(("config", "expected"), [
    ("restart:\n  policy: [\n", "invalid YAML"),
    ("restart:\n  timeout_seconds: soon\n", "/cfg.yaml:2: restart.timeout_seconds: expected a number of seconds"),
    ("efa:\n  instal: never\n", "/cfg.yaml:2: efa.instal: unknown key (did you mean 'install'?)"),
])
@pytest.mark.parametrize("command", ["check", "plan", "run", "config validate", "config show"])
def test_bad_agent_config_is_exit_64(
    node: FakeFilesystem, capsys: pytest.CaptureFixture, config: str, expected: str, command: str
) -> None:
    write(node, HEALTHY)
    node.create_file("/cfg.yaml", contents=config)
    before = snapshot()
    code = cli.main(["--root", ROOT, "--config", "/cfg.yaml", *command.split()])
    out, err = capsys.readouterr()
    assert code == 64 and out == ""
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err
    assert snapshot() == before


def test_default_config_is_read_under_root(node: FakeFilesystem, capsys: pytest.CaptureFixture) -> None:
    write(node, HEALTHY)
    code, out, _ = run(capsys, "config", "show")
    assert code == 0 and f"source: {ROOT}/etc/gpu-node-agent/config.yaml" in out and "policy: never" in out


def test_config_validate_names_the_file(node: FakeFilesystem, capsys: pytest.CaptureFixture) -> None:
    node.create_file("/ok.yaml", contents="efa:\n  install: never\n")
    assert cli.main(["config", "validate", "/ok.yaml"]) == 0
    assert capsys.readouterr().out == "/ok.yaml: valid\n"


@pytest.mark.parametrize("argv", [["frobnicate"], [], ["check", "--format", "xml"], ["config"],
                                  ["--root", "/does/not/exist", "check"]])
def test_bad_usage_is_exit_64(node: FakeFilesystem, capsys: pytest.CaptureFixture, argv: List[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(cli.main(argv))
    assert exited.value.code == 64
    assert "Traceback" not in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture) -> None:
    from agent import __version__

    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out == f"gpu-node-agent {__version__}\n"
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"gpu-node-agent {__version__}\n"


@pytest.mark.parametrize(("argv", "command"), [
    (["check"], "check"),
    (["--root", "/x", "--config", "/c.yaml", "-v", "plan"], "plan"),
    (["--log-format", "json", "config", "show"], "config"),
    (["--root=/x", "run", "--lock-wait", "1"], "run"),
    (["--version"], None),
    ([], None),
])
def test_the_command_word_is_found_after_global_options(argv: List[str], command: Optional[str]) -> None:
    assert cli.command_in(argv) == command


def test_help_lists_every_command(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    usage = capsys.readouterr().out
    assert all(name in usage for name in cli.COMMANDS)
