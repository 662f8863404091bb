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
