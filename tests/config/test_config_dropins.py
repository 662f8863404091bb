"""Configuration drop-ins: config.d/*.yaml merged over config.yaml in lexical order (mappings key by
key, the later file wins, lists replace), one line naming the file of a bad key, and `config show
--origins` saying which file set each value. Driven through the real command line on a node tree."""

import json
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

from agent.base.errors import ConfigError
from agent.cli import main
from agent.config.load import load_config
from agent.config.settings import DEFAULT_CONFIG_PATH, DEFAULT_DROP_IN_DIR

PIN = "ab" * 32
BASE = f'efa:\n  version: "1.48.0"\n  sha256: {PIN}\nrestart:\n  units: [containerd.service, kubelet.service]\n'


def node(tmp_path: Path, base: Optional[str] = BASE, drop_ins: Optional[Dict[str, str]] = None) -> Path:
    """A node tree with ``config.yaml`` (None: none) and ``config.d/<name>`` drop-ins."""
    etc = tmp_path / DEFAULT_CONFIG_PATH.lstrip("/")
    etc.parent.mkdir(parents=True)
    if base is not None:
        etc.write_text(base)
    for name, text in (drop_ins or {}).items():
        (tmp_path / DEFAULT_DROP_IN_DIR.lstrip("/")).mkdir(exist_ok=True)
        (tmp_path / DEFAULT_DROP_IN_DIR.lstrip("/") / name).write_text(text)
    return tmp_path


def agent(capsys: pytest.CaptureFixture[str], root: Path, *argv: str) -> Tuple[int, str, str]:
    code = main(["--root", str(root), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def shown(capsys: pytest.CaptureFixture[str], root: Path) -> Dict[str, object]:
    code, out, err = agent(capsys, root, "config", "show", "--format", "json", "--origins")
    assert code == 0, err
    return dict(json.loads(out))


def test_drop_ins_merge_in_lexical_order_key_by_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = node(tmp_path, drop_ins={
        "50-userdata.yaml": 'efa:\n  version: "1.49.0"\nrestart:\n  units: [containerd.service]\n',
        "10-site.yaml": 'efa:\n  version: "1.47.0"\n  install: never\nreport:\n  publish: false\n',
        "90-override.yaml": "efa:\n  install: always\n",
    })
    doc = shown(capsys, root)
    config, origins = doc["config"], doc["origins"]
    d = root / DEFAULT_DROP_IN_DIR.lstrip("/")
    assert config["efa"]["sha256"] == PIN and origins["efa.sha256"] == str(root / DEFAULT_CONFIG_PATH.lstrip("/"))
    assert (config["efa"]["version"], origins["efa.version"]) == ("1.49.0", str(d / "50-userdata.yaml"))  # 50 over 10
    assert (config["efa"]["install"], origins["efa.install"]) == ("always", str(d / "90-override.yaml"))
    assert (config["report"]["publish"], origins["report.publish"]) == (False, str(d / "10-site.yaml"))
    assert config["restart"]["units"] == ["containerd.service"]  # a list replaces, never appends
    assert "report.timeout_seconds" not in origins  # a default
    code, out, _ = agent(capsys, root, "config", "validate")
    assert (code, out) == (0, f"{root / DEFAULT_CONFIG_PATH.lstrip('/')}, {d / '10-site.yaml'}, "
                              f"{d / '50-userdata.yaml'}, {d / '90-override.yaml'}: valid\n")


def test_show_origins_as_yaml_comments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    drop_in_text = "checks:\n  efa:\n    max_status: warn\nxid:\n  45: {repeat: 3}\n"
    root = node(tmp_path, drop_ins={"50-userdata.yaml": drop_in_text})
    code, out, _ = agent(capsys, root, "config", "show", "--origins")
    assert code == 0
    lines = out.splitlines()
    drop_in = root / DEFAULT_DROP_IN_DIR.lstrip("/") / "50-userdata.yaml"
    assert f"  sha256: {PIN}  # {root / DEFAULT_CONFIG_PATH.lstrip('/')}" in lines
    assert "  timeout_seconds: 30.0  # default" in lines
    assert f"    max_status: warn  # {drop_in}" in lines and "    enabled: true  # default" in lines
    assert f"    repeat: 3  # {drop_in}" in lines
    reloaded = root / "reloaded.yaml"  # what it prints loads back as a configuration file
    reloaded.write_text(out)
    assert load_config(str(reloaded), default_path=reloaded).settings() == load_config(
        None, default_path=root / DEFAULT_CONFIG_PATH.lstrip("/")).settings()


@pytest.mark.parametrize(("drop_in", "line", "problem"), [
    ("efa:\n  instal: always\n", 2, "efa.instal: unknown key (did you mean 'install'?)"),
    ("report:\n  publish: false\nchecks:\n  gpu-allocatble: {enabled: false}\n", 4,
     "checks.gpu-allocatble: unknown check (did you mean 'gpu-allocatable'?)"),
    ("xid:\n  45:\n    class: deadly\n", 3,
     "xid.45.class: must be one of fatal, reset, application, ignore; got 'deadly'"),
    ("efa: [1, 2]\n", 1, "efa: expected a mapping of keys to values"),
    ("report:\n  metrics_file: /etc/gpu-node-agent/config.yaml\n", 2, "report.metrics_file: must be inside"),
])
def test_a_bad_key_in_a_drop_in_is_named_with_its_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       drop_in: str, line: int, problem: str) -> None:
    root = node(tmp_path, drop_ins={"50-userdata.yaml": drop_in})
    path = root / DEFAULT_DROP_IN_DIR.lstrip("/") / "50-userdata.yaml"
    for argv in (["config", "validate"], ["plan"], ["run"], ["check"]):
        code, _, err = agent(capsys, root, *argv)
        assert code == 64 and err.startswith(f"gpu-node-agent: {path}:{line}: {problem}"), (argv, err)


def test_a_cross_key_problem_names_the_file_of_the_key_that_makes_it(tmp_path: Path) -> None:
    """The base sets the status file, the drop-in a metrics file on the same path: the drop-in is wrong."""
    root = node(tmp_path, "report:\n  status_file: /run/gpu-node-agent/out.prom\n",
                drop_ins={"50-x.yaml": "report:\n  metrics_file: /run/gpu-node-agent/out.prom\n"})
    with pytest.raises(ConfigError) as caught:
        load_config(None, default_path=root / DEFAULT_CONFIG_PATH.lstrip("/"),
                    drop_in_dir=root / DEFAULT_DROP_IN_DIR.lstrip("/"))
    assert str(caught.value).startswith(f"{root / DEFAULT_DROP_IN_DIR.lstrip('/')}/50-x.yaml:2: report.metrics_file: ")


def test_only_yaml_files_count_and_no_base_means_defaults_under_the_drop_ins(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    root = node(tmp_path, None, drop_ins={"50-userdata.yaml": "efa:\n  install: never\n"})
    d = root / DEFAULT_DROP_IN_DIR.lstrip("/")
    (d / "60-x.yaml.rpmnew").write_text("efa: [broken\n")
    (d / ".70-editor.yaml").write_text("efa: [broken\n")
    (d / "README").write_text("not yaml")
    doc = shown(capsys, root)
    assert doc["config"]["efa"]["install"] == "never"  # type: ignore[index]
    assert doc["origins"] == {"efa.install": str(d / "50-userdata.yaml")}


def test_an_explicit_config_takes_the_drop_ins_beside_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "image" / "agent.yaml"
    (base.parent / "config.d").mkdir(parents=True)
    base.write_text(BASE)
    (base.parent / "config.d" / "50-x.yaml").write_text("efa:\n  install: never\n")
    code, out, _ = agent(capsys, tmp_path, "config", "validate", str(base))
    assert (code, out) == (0, f"{base}, {base.parent / 'config.d' / '50-x.yaml'}: valid\n")


def test_drop_ins_are_read_by_every_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Both boot passes and every command: the merged configuration decides (here, the status file path)."""
    root = node(tmp_path, drop_ins={"50-x.yaml": "report:\n  status_file: /run/gpu-node-agent/other.json\n"})
    agent(capsys, root, "prepare", "--lock-wait", "0")
    assert (root / "run/gpu-node-agent/other.json").exists()
    assert not (root / "run/gpu-node-agent/status.json").exists()
    _, out, _ = agent(capsys, root, "status", "--format", "json")
    assert json.loads(out)["passes"]["prepare"]["this_boot"] is True
