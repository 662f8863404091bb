"""One line naming file and line for every YAML error, the same for the configuration and the kubeconfig."""

from typing import Optional

import pytest
import yaml

from agent.base.yamlsafe import marked_yaml_error


def error_of(text: str) -> Exception:
    with pytest.raises(yaml.YAMLError) as info:
        yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 (a safe loader)
    return info.value


@pytest.mark.parametrize(("text", "column", "expected"), [
    ("a: [\n", True, "f.yaml:2:1: invalid YAML: did not find expected node content"),
    ("a: [\n", False, "f.yaml:2: invalid YAML: did not find expected node content"),
    ("a: 1\nb: !!python/object:os.system x\n", False,
     "f.yaml:2: invalid YAML: could not determine a constructor for the tag"),
    ("a: 1\nb: \x01x\n", True, "f.yaml:2: invalid YAML: unacceptable character #x0001 ("),
])
def test_each_yaml_error_is_one_line_with_its_line(text: str, column: bool, expected: str) -> None:
    message = marked_yaml_error(error_of(text), "f.yaml", text, column=column)
    assert "\n" not in message
    assert message.startswith(expected), message


def test_an_error_without_a_mark_still_names_the_file() -> None:
    message = marked_yaml_error(yaml.YAMLError("first line\nsecond line"), "f.yaml", "")
    assert message == "f.yaml: invalid YAML: 'first line'"


@pytest.mark.parametrize("reader", ["config", "kubeconfig"])
def test_the_configuration_and_the_kubeconfig_name_the_same_line(reader: str, tmp_path: object) -> None:
    from pathlib import Path

    text = "apiVersion: v1\nclusters: [\n"
    problem: Optional[str] = None
    if reader == "config":
        from agent.base.errors import ConfigError
        from agent.config.load import parse_config

        with pytest.raises(ConfigError) as info:
            parse_config(text, "f.yaml")
        problem = str(info.value)
    else:
        from agent.kube.errors import KubeconfigError
        from agent.kube.kubeconfig import _parse_yaml

        with pytest.raises(KubeconfigError) as kinfo:
            _parse_yaml(text, Path("f.yaml"))
        problem = str(kinfo.value)
    assert problem.startswith("f.yaml:3") and "invalid YAML: did not find expected node content" in problem


# --- a tab: PyYAML says "found character '\t' that cannot start any token" --------------------------

TAB_IN_INDENTATION = "a tab in the indentation: tabs are not allowed in YAML indentation, use spaces"


@pytest.mark.parametrize("loader", ["SafeLoader", "CSafeLoader"])
@pytest.mark.parametrize(("text", "where"), [
    ("report:\n\tpublish: false\n", "2:1"),
    ("report:\n  publish: false\n\tcondition: X\n", "3:1"),  # libyaml: "violates indentation"
    ("restart:\n  units:\n  \t- containerd.service\n", "3:3"),  # spaces, then a tab
    ("report:\n  status_file: |\n\tx\n", "3:1"),
])
def test_a_tab_in_the_indentation_is_named_as_such(loader: str, text: str, where: str) -> None:
    with pytest.raises(yaml.YAMLError) as info:
        yaml.load(text, Loader=getattr(yaml, loader))  # noqa: S506 (both safe loaders)
    message = marked_yaml_error(info.value, "f.yaml", text, column=True)
    assert message == f"f.yaml:{where}: invalid YAML: {TAB_IN_INDENTATION}"


def test_a_tab_between_tokens_pyyaml_refuses_is_named_too() -> None:
    text = "report:\n  publish:\tfalse\n"  # libyaml takes it; the pure-Python loader does not
    with pytest.raises(yaml.YAMLError) as info:
        yaml.load(text, Loader=yaml.SafeLoader)
    assert marked_yaml_error(info.value, "f.yaml", text) == \
        "f.yaml:2: invalid YAML: a tab between tokens: YAML (as PyYAML reads it) needs spaces here"


def test_another_error_at_a_line_with_a_tab_keeps_its_own_problem() -> None:
    text = "a:\tb\nc: [\n"
    message = marked_yaml_error(error_of(text), "f.yaml", text)
    assert message.startswith("f.yaml:3: invalid YAML: did not find expected node content"), message


def test_config_validate_says_a_tab_is_the_problem(tmp_path: object) -> None:
    import subprocess
    import sys
    from pathlib import Path

    from tests.support.paths import REPO

    path = Path(str(tmp_path)) / "config.yaml"
    path.write_text("report:\n  publish: false\ngpu:\n\tresource_per_gpu: 4\n")
    before = path.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "agent", "config", "validate", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stdout) == (64, "")
    assert proc.stderr == f"gpu-node-agent: {path}:4:1: invalid YAML: {TAB_IN_INDENTATION}\n"
    assert path.read_bytes() == before


def test_the_kubeconfig_says_a_tab_is_the_problem_the_same_way(tmp_path: object) -> None:
    from pathlib import Path

    from agent.kube.errors import KubeconfigError
    from agent.kube.kubeconfig import _parse_yaml

    text = "apiVersion: v1\nclusters:\n- name: c\n\tcluster: {}\n"
    with pytest.raises(KubeconfigError) as info:
        _parse_yaml(text, Path("/var/lib/kubelet/kubeconfig"))
    assert str(info.value) == f"/var/lib/kubelet/kubeconfig:4: invalid YAML: {TAB_IN_INDENTATION}"


def test_mapping_keys_count_in_the_node_budget() -> None:
    """An alias bomb in complex mapping keys (``? *i : 1``): tiny values, enormous keys."""
    import time

    from agent.base.yamlsafe import YamlRefused, load_budgeted, yaml_too_big

    lines = ["? &a [x, x, x, x, x, x, x, x, x, x]", ": 0"]
    for n, (prev, name) in enumerate(zip("abcdefg", "bcdefgh")):
        lines += [f"? &{name} [" + ", ".join([f"*{prev}"] * 10) + "]", f": {n + 1}"]
    text = "\n".join(lines) + "\n"
    node = yaml.SafeLoader(text).get_single_node()
    assert yaml_too_big(node, 10_000) is not None
    started = time.monotonic()
    with pytest.raises(YamlRefused, match="config.yaml: too many YAML nodes"):
        load_budgeted(text, "config.yaml", 10_000)
    assert time.monotonic() - started < 2


def test_the_node_budget_is_exact_and_says_why() -> None:
    from agent.base.yamlsafe import yaml_too_big

    node = yaml.SafeLoader("[a, b, c]\n").get_single_node()  # 4 nodes: the sequence and its 3 items
    assert yaml_too_big(node, 4) is None
    assert yaml_too_big(node, 3) == ("too many YAML nodes (more than 3, aliases counted each time they are used); "
                                     "refusing to read it")


def test_the_budgeted_loader_names_the_source_of_every_error() -> None:
    from agent.base.yamlsafe import YamlRefused, load_budgeted

    with pytest.raises(YamlRefused) as info:
        load_budgeted("a: 1\nb: \x07\n", "/etc/kubernetes/kubelet/config.json", 100)
    assert str(info.value).startswith("/etc/kubernetes/kubelet/config.json:2: invalid YAML: unacceptable character")
    with pytest.raises(YamlRefused) as info:
        load_budgeted("port: !!float abc\n", "kubelet.yaml", 100)
    assert str(info.value) == 'kubelet.yaml: invalid YAML: "could not convert string to float: \'abc\'"'
    assert load_budgeted("a: [1, 2]\n", "x", 100) == {"a": [1, 2]}
