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
