"""Hostile and unlucky agent configuration files: bounded, one line naming file:line:key, exit 64."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.base.errors import ConfigError
from agent.base.fs import MAX_CONFIG_FILE
from agent.config.load import load_config, parse_config
from agent.config.rules import OUTPUT_DIRS
from tests.support.paths import REPO


def fails(text: str, match: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "/etc/gpu-node-agent/config.yaml")
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message[:500]
    assert match in message, message
    return message


def bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for n in range(1, levels):
        lines.append(f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_quickly_in_one_line() -> None:
    text = bomb(7)  # 9**7 = 4.8 million strings once expanded, from a few hundred bytes
    assert len(text) < 600
    start = time.monotonic()
    fails(text, "/etc/gpu-node-agent/config.yaml:1: too many YAML nodes (more than 10000")
    assert time.monotonic() - start < 5  # a generous bound, not a benchmark


def test_an_alias_bomb_in_a_value_never_reaches_an_error_message() -> None:
    text = bomb(5) + "containerd:\n  runtime: *a4\n"  # the expanded value: a 59049-item list
    fails(text, "too many YAML nodes")


@pytest.mark.parametrize(("value", "problem"), [
    (".inf", "must be a finite number of seconds, got inf"),
    ("-.inf", "must be a finite number of seconds"),
    (".nan", "must be a finite number of seconds, got nan"),
    ("-1", "must be greater than 0, got -1.0"),
])
@pytest.mark.parametrize("key", ["report.timeout_seconds", "restart.timeout_seconds", "efa.timeout_seconds",
                                 "imds.timeout_seconds"])
def test_timeouts_are_finite_and_positive(key: str, value: str, problem: str) -> None:
    section, name = key.split(".")
    fails(f"{section}:\n  {name}: {value}\n", f"config.yaml:2: {key}: {problem}")


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN"])
@pytest.mark.parametrize("key", ["report.heartbeat_minutes", "gpu.allocatable_grace_seconds"])
def test_durations_that_may_be_zero_are_finite_too(key: str, value: str) -> None:
    section, name = key.split(".")
    fails(f"{section}:\n  {name}: {value}\n", f"config.yaml:2: {key}: must be a finite number, got ")


@pytest.mark.parametrize("key", ["containerd.config_path", "nvidia_runtime.config_path", "report.kubeconfig",
                                 "containerd.binary_name"])
def test_node_paths_may_not_contain_dotdot(key: str) -> None:
    section, name = key.split(".")
    fails(f"{section}:\n  {name}: /../../../../tmp/x/config.toml\n",
          f"config.yaml:2: {key}: must not contain '..' (node paths resolve under --root)")


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("report.status_file", "/etc/containerd/config.toml", "must be inside /run/gpu-node-agent/ or"),
    ("report.status_file", "/run/gpu-node-agent/lock", "is (or holds) the run lock"),
    ("report.status_file", "/run/gpu-node-agent/toml-values.json", "is (or holds) the agent's state"),
    ("report.status_file", "/run/gpu-node-agent/", "must be inside"),
    ("report.metrics_file", "/etc/containerd/config.toml", "must be inside /var/lib/node_exporter/"),
    ("report.metrics_file", "/var/lib/node_exporter/textfile_collector/x.json", "must end in .prom"),
    ("report.metrics_file", "/run/gpu-node-agent/status.json", "must end in .prom"),
    ("efa.cache_dir", "/etc", "must be inside /var/cache/"),
    ("efa.cache_dir", "/var/cache", "must be inside /var/cache/"),
])
def test_outputs_stay_in_their_documented_directories(key: str, value: str, problem: str) -> None:
    section, name = key.split(".")
    fails(f"{section}:\n  {name}: {value}\n", f"config.yaml:2: {key}: ")
    fails(f"{section}:\n  {name}: {value}\n", problem)


def test_a_managed_input_may_not_be_an_output() -> None:
    fails("containerd:\n  config_path: /run/gpu-node-agent/status.json\n",
          "config.yaml:2: containerd.config_path: /run/gpu-node-agent/status.json is (or holds) report.status_file")
    fails("report:\n  kubeconfig: /var/lib/gpu-node-agent/kubeconfig\n"
          "  status_file: /var/lib/gpu-node-agent/kubeconfig\n",
          "report.status_file: /var/lib/gpu-node-agent/kubeconfig is (or holds) report.kubeconfig")
    fails("report:\n  status_file: /run/gpu-node-agent/a.prom\n  metrics_file: /run/gpu-node-agent/a.prom\n",
          "report.metrics_file: /run/gpu-node-agent/a.prom clashes with report.status_file")


def test_the_documented_output_directories_are_accepted() -> None:
    for key, dirs in OUTPUT_DIRS.items():
        section, name = key.split(".")
        for d in dirs:
            value = d + ("sub/gpu_node_agent.prom" if name == "metrics_file" else "gpu-node-agent")
            config = parse_config(f"{section}:\n  {name}: {value}\n", "c.yaml")
            assert getattr(getattr(config, section), name) == value


def test_a_long_value_is_shortened_in_the_error() -> None:
    message = fails("restart:\n  policy: " + "x" * 100_000 + "\n", "restart.policy: must be one of")
    assert "(100002 characters)" in message


def test_a_control_character_is_one_line_with_its_line() -> None:
    fails("restart:\n  policy: never\nefa:\n  install: \x01auto\n",
          "config.yaml:4: invalid YAML: unacceptable character #x0001")


def test_a_huge_config_is_refused_before_parsing(tmp_path: Path) -> None:
    big = tmp_path / "config.yaml"
    big.write_text("restart:\n" + "".join(f"  k{n}: 1\n" for n in range(60_000)))
    assert big.stat().st_size > MAX_CONFIG_FILE
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"config.yaml: is \d+ bytes, more than the 256 KiB limit"):
        load_config(str(big), default_path=big)
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_config_validate_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "config.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path = Path("/dev/zero")
    else:
        path.mkdir()
    proc = subprocess.run([sys.executable, "-m", "agent", "config", "validate", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    expected = {"fifo": "is a FIFO, expected a regular file",
                "dev-zero": "is a character device, expected a regular file",
                "directory": "is a directory, expected a YAML file"}[kind]
    assert proc.returncode == 64 and proc.stderr == f"gpu-node-agent: {path}: {expected}" + (
        "; not read\n" if kind != "directory" else "\n")


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "-inf"])
def test_lock_wait_must_be_finite_and_not_negative(tmp_path: Path, value: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "agent", "--root", str(tmp_path), "run", f"--lock-wait={value}"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 64
    assert proc.stderr.splitlines()[-1] == (
        f"gpu-node-agent run: error: argument --lock-wait: must be a finite number of seconds, at least 0, "
        f"got {value!r}")
    assert not (tmp_path / "run").exists()  # nothing touched


@pytest.mark.parametrize(("text", "match"), [
    ("restart:\n  policy: !!python/object:os.system x\n",
     "config.yaml:2:11: invalid YAML: could not determine a constructor for the tag"),
    ("restart:\n  timeout_seconds: !!float abc\n", "config.yaml:2: restart.timeout_seconds: invalid YAML value: "),
    ("gpu:\n  expected_count: !!int x\n", "config.yaml:2: gpu.expected_count: invalid YAML value: "),
    ("report:\n  timeout_seconds: !!timestamp yesterday\n",
     "config.yaml:2: report.timeout_seconds: invalid YAML value: "),
    ("report:\n  publish: !!bool maybe\n", "config.yaml:2: report.publish: invalid YAML value: "),
])
def test_a_value_yaml_cannot_construct_is_one_line_not_a_traceback(text: str, match: str) -> None:
    fails(text, match)


@pytest.mark.parametrize("state", ["gpu-errors.json", "published.json", "events.json", "efa-installer.pid",
                                   "instance-type", "fabricmanager-version.json", "status.lock"])
def test_an_output_may_not_be_one_of_the_agents_own_state_files(state: str) -> None:
    fails(f"report:\n  status_file: /run/gpu-node-agent/{state}\n",
          f"config.yaml:2: report.status_file: /run/gpu-node-agent/{state} is (or holds) the ")


def test_the_settings_know_every_state_file_of_the_agent() -> None:
    from agent.config.parse import OWN_STATE_FILES
    from agent.efa import install
    from agent.gpu import fabric, inventory, xid
    from agent.report import events, published, status

    assert sorted(OWN_STATE_FILES.values()) == sorted([
        xid.STATE, published.STATE_FILE, events.STATE_FILE, install.INSTALLER_PID_FILE, inventory.CACHE,
        fabric.VERSION_CACHE, status.STATUS_LOCK])
