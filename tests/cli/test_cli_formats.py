"""What operators script against: `plan --format json` and `config show --format json` carry what the
text outputs do, and every command's --help says what it does, what each option means, and what its
exit codes mean."""

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import List

import pytest

from agent import cli
from agent.config.load import parse_config
from agent.pipeline.plan import Plan, Restart, plan_document
from tests.support.efa_helpers import converged_node, sha256
from tests.support.paths import REPO, SAMPLES

# --- --help -----------------------------------------------------------------------------------------


def commands() -> List[List[str]]:
    found: List[List[str]] = []

    def walk(parser: argparse.ArgumentParser, words: List[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append([*words, name])
                    walk(sub, [*words, name])

    walk(cli.build_parser(), [])
    return found


def test_every_command_is_walked() -> None:
    names = {" ".join(c) for c in commands()}
    assert {"run", "plan", "check", "efa", "efa fetch", "config", "config validate", "config show",
            "version"} <= names


@pytest.mark.parametrize("words", commands(), ids=lambda w: " ".join(w))
def test_help_has_a_description_option_help_and_exit_codes(words: List[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([*words, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    usage, description, *_ = out.split("\n\n")
    assert usage.startswith(f"usage: gpu-node-agent {' '.join(words)}")
    assert len(description.split()) >= 3, out
    assert out.rstrip().split("exit codes:\n")[1].splitlines()[0].split()[0] == "0"
    codes = [line.split()[0] for line in out.split("exit codes:\n")[1].splitlines() if line.strip()]
    assert all(code.isdigit() for code in codes) and ("64" in codes or words == ["version"]), out
    parser = cli.build_parser()
    for word in words:  # the sub-parser for these words
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    for action in parser._actions:
        if action.option_strings and action.help is not argparse.SUPPRESS:
            assert action.help, f"{words} {action.option_strings} has no help"


def sub_parser(words: List[str]) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    for word in words:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def own_arguments(parser: argparse.ArgumentParser) -> List[argparse.Action]:
    """What a command adds to the global options (which every sub-parser accepts too)."""
    globals_ = {s for a in cli.build_parser()._actions for s in a.option_strings}
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
            and not set(a.option_strings) & globals_]


def shows(text: str, action: argparse.Action) -> bool:
    """``text`` names the option (any of its spellings) or, for a positional argument, its METAVAR."""
    names = action.option_strings or [action.dest.upper()]
    return any(re.search(rf"(?<![\\w-]){re.escape(n)}(?![\\w-])", text) for n in names)


def test_the_readme_command_table_has_every_command_option_and_choice_argparse_has() -> None:
    section = (REPO / "README.md").read_text().split("\n## Command line\n")[1].split("\n## ")[0]
    usage = section.split("```")[1]
    for action in cli.build_parser()._actions:
        if action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            assert shows(usage, action), f"README's usage line does not show {action.option_strings}"
            assert not action.choices or "|".join(action.choices) in usage, action
    rows = {}
    for line in section.splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if cells and cells[0].startswith("`"):
            rows[cells[0].strip("`").split(" [")[0].split("`")[0]] = cells[0]
    leaves = [w for w in commands() if not any(isinstance(a, argparse._SubParsersAction)
                                               for a in sub_parser(w)._actions)]
    for words in leaves:
        name = " ".join(words)
        assert name in rows, f"README's command table has no row for {name}"
        for action in own_arguments(sub_parser(words)):
            assert shows(rows[name], action), f"{name}: README does not show {action.option_strings or action.dest}"
            assert not action.choices or "|".join(action.choices) in rows[name], f"{name}: {action.choices}"


def test_the_readme_exit_codes_are_the_ones_help_prints(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    printed = [line.split()[0] for line in capsys.readouterr().out.split("exit codes:\n")[1].splitlines() if line]
    table = (REPO / "README.md").read_text().split("\n### Exit codes\n")[1].strip().split("\n\n")[0]
    assert [row.split("|")[1].strip() for row in table.splitlines()[2:]] == printed


# --- plan --format json -------------------------------------------------------------------------------


@pytest.fixture
def drifted(tmp_path: Path) -> Path:
    root = converged_node(tmp_path / "node")  # EFA hardware, no EFA userspace yet
    shutil.copy(SAMPLES / "containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml", root / "etc/containerd/config.toml")
    shutil.copy(SAMPLES / "nvidia-container-runtime-legacy.toml", root / "etc/nvidia-container-runtime/config.toml")
    (root / "etc/gpu-node-agent").mkdir(parents=True, exist_ok=True)
    (root / "etc/gpu-node-agent/config.yaml").write_text(
        f"restart:\n  policy: never\nreport:\n  publish: false\nefa:\n  sha256: {sha256(b'x')}\n")
    return root


def test_plan_json_has_each_file_its_diff_and_reasons_the_restarts_and_the_efa_action(
    drifted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--root", str(drifted), "plan"]) == 0
    text = capsys.readouterr().out
    assert cli.main(["--root", str(drifted), "plan", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["v"] == 1 and document["changes"] is True and document["problems"] == []
    files = {f["path"]: f for f in document["files"]}
    containerd = files[f"{drifted}/etc/containerd/config.toml"]
    assert containerd["resource"] == "containerd" and "+SystemdCgroup = true" in containerd["diff"]
    nvidia = files[f"{drifted}/etc/nvidia-container-runtime/config.toml"]
    assert '+mode = "auto"' in nvidia["diff"]
    for f in document["files"]:  # the same diff and reasons as the text output
        assert f["diff"].rstrip("\n") in text and all(f"#   {r}" in text for r in f["reasons"]) and f["reasons"]
    (held, *_) = document["not_restarted"]
    assert held["unit"] == "containerd.service" and held["status"] == "warn"
    assert "restart.policy: never" in held["reason"] and held["reason"] in text
    efa = document["efa"]
    assert (efa["action"], efa["applicable"], efa["source"], efa["version"]) == ("install", True, "download", "1.48.0")
    assert efa["reason"].startswith("EFA userspace not installed") and f"efa: {efa['description']}" in text


def test_plan_json_restarts_carry_their_reasons() -> None:
    plan = Plan(restarts=(Restart("containerd.service", "this run changes its configuration (/etc/x)", True),
                          Restart("kubelet.service", "after containerd.service")))
    document = plan_document(plan)
    assert document["restarts"] == [
        {"unit": "containerd.service", "reason": "this run changes its configuration (/etc/x)",
         "rollback_on_failure": True},
        {"unit": "kubelet.service", "reason": "after containerd.service", "rollback_on_failure": False},
    ]
    assert document["changes"] is True and document["efa"] is None
    assert plan_document(Plan())["changes"] is False


def test_plan_json_on_a_converged_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = converged_node(tmp_path / "node", hardware=False)
    assert cli.main(["--root", str(root), "plan", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["files"] == [] and document["restarts"] == [] and document["changes"] is False
    assert document["efa"]["action"] == "none" and document["efa"]["applicable"] is False


# --- config show --format json ------------------------------------------------------------------------


def test_config_show_json_loads_back_to_the_same_configuration(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("efa:\n  install: never\n  gpg_fingerprint: 1234 5678 9ABC DEF0 1234 5678 9ABC DEF0 1234 5678\n"
                      "restart:\n  units: [containerd.service]\n")
    assert cli.main(["--config", str(config), "config", "show", "--format", "json"]) == 0
    shown = capsys.readouterr().out
    document = json.loads(shown)
    assert document["efa"]["install"] == "never" and document["restart"]["units"] == ["containerd.service"]
    assert document["report"]["condition"] == "GPUNodeAgentReady"  # defaults included
    assert parse_config(shown, "shown.json").settings() == parse_config(config.read_text(), "c").settings()


# --- output that fits SSM and scripts ------------------------------------------------------------------


def test_check_json_is_one_compact_line_and_pretty_indents(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    from tests.support.gpu_node import healthy_gpu_node

    root = healthy_gpu_node(tmp_path / "node", gpus=8, instance_type="p5.48xlarge")
    cli.main(["--root", str(root), "check", "--format", "json"])
    compact = capsys.readouterr().out
    cli.main(["--root", str(root), "check", "--format", "json", "--pretty"])
    pretty = capsys.readouterr().out
    assert compact.count("\n") == 1 and compact == json.dumps(json.loads(compact), separators=(",", ":")) + "\n"
    assert pretty.count("\n") > 50 and pretty.startswith('{\n  "v": 1,')
    a, b = json.loads(compact), json.loads(pretty)
    a.pop("time"), b.pop("time")
    assert a == b
    assert len(compact) < len(pretty) * 0.8


def test_table_messages_are_cut_to_120_columns_without_a_terminal_and_whole_in_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.gpu_node import healthy_gpu_node

    root = healthy_gpu_node(tmp_path / "node", instance_type="")  # a long "instance type unknown" message
    cli.main(["--root", str(root), "check"])
    table = capsys.readouterr().out
    cli.main(["--root", str(root), "check", "--format", "json"])
    whole = {c["name"]: c["message"] for c in json.loads(capsys.readouterr().out)["checks"]}
    assert len(whole["gpu-inventory"]) > 120
    assert max(len(line) for line in table.splitlines()) <= 120
    (row,) = [line for line in table.splitlines() if line.startswith("gpu-inventory")]
    assert len(row) == 120 and row.endswith("...") and whole["gpu-inventory"].startswith(row.split("  ")[-1][:-3])


def test_table_width_follows_the_terminal() -> None:
    from agent.pipeline.health import CheckResult
    from agent.report.document import render_table

    text = render_table([CheckResult("gpu-errors", "warn", "x" * 300)], ["a" * 300], columns=80)
    assert [len(line) for line in text.splitlines()] == [len("CHECK       STATUS  MESSAGE"), 80, 80,
                                                         len("health: degraded")]


def test_plan_detailed_exitcode(drifted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--root", str(drifted), "plan"]) == 0
    assert cli.main(["--root", str(drifted), "plan", "--detailed-exitcode"]) == 2
    assert cli.main(["--root", str(drifted), "plan", "--format", "json", "--detailed-exitcode"]) == 2
    converged = converged_node(tmp_path / "converged", hardware=False)
    assert cli.main(["--root", str(converged), "plan", "--detailed-exitcode"]) == 0
    capsys.readouterr()
