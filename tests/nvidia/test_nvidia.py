"""NVIDIA Container Toolkit runtime config: drift by effective value, repair back to the defaults."""

from pathlib import Path
from typing import Optional

import pytest

from agent.base.errors import NodeFileError
from agent.base.noderoot import NodeRoot
from agent.config.settings import NvidiaRuntimeSettings
from agent.nvidia import toolkit as nvidia
from tests.support.paths import sample

PATH = "/etc/nvidia-container-runtime/config.toml"
DEFAULT = sample("nvidia-container-runtime-default.toml")
LEGACY = sample("nvidia-container-runtime-legacy.toml")
KNOB = "accept-nvidia-visible-devices-envvar-when-unprivileged"


def load(tmp_path: Path, text: Optional[str]) -> Optional[nvidia.NvidiaRuntimeConfig]:
    if text is not None:
        p = tmp_path / PATH.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return nvidia.load(NodeRoot(str(tmp_path)), NvidiaRuntimeSettings())


def test_the_packaged_default_is_clean(tmp_path: Path) -> None:
    cfg = load(tmp_path, DEFAULT)
    assert cfg is not None and nvidia.drift(cfg) == []
    assert nvidia.reconcile(cfg, NvidiaRuntimeSettings()) == (None, ())
    assert nvidia.check(cfg, NvidiaRuntimeSettings(), cfg.path).status == "pass"


def test_legacy_sample_is_repaired_to_the_packaged_default_byte_for_byte(tmp_path: Path) -> None:
    cfg = load(tmp_path, LEGACY)
    assert cfg is not None
    check = nvidia.check(cfg, NvidiaRuntimeSettings(), cfg.path)
    assert check.status == "fail" and 'mode = "legacy"' in check.message and KNOB in check.message
    edit, problems = nvidia.reconcile(cfg, NvidiaRuntimeSettings())
    assert problems == () and edit is not None
    assert edit.new_text == DEFAULT
    assert len(edit.reasons) == 2


def test_explicit_false_breaks_unprivileged_pods_and_is_restored_to_the_commented_default(tmp_path: Path) -> None:
    text = DEFAULT.replace(f"#{KNOB} = true", f"{KNOB} = false")
    cfg = load(tmp_path, text)
    assert cfg is not None
    (d,) = nvidia.drift(cfg)
    assert d.status == "fail" and "unprivileged pods cannot get GPUs" in d.problem
    edit, _ = nvidia.reconcile(cfg, NvidiaRuntimeSettings())
    assert edit is not None and edit.new_text == DEFAULT
    assert f"{KNOB} = false" not in edit.new_text  # never written, only commented back


def test_explicit_true_is_a_warning_and_commented_out(tmp_path: Path) -> None:
    cfg = load(tmp_path, DEFAULT.replace(f"#{KNOB} = true", f"{KNOB} = true"))
    assert cfg is not None
    (d,) = nvidia.drift(cfg)
    assert d.status == "warn"
    assert nvidia.check(cfg, NvidiaRuntimeSettings(), cfg.path).status == "warn"


def test_mode_written_as_a_dotted_key_is_judged_by_value(tmp_path: Path) -> None:
    text = 'nvidia-container-runtime.mode = "legacy"\nnvidia-container-runtime.log-level = "info"\n'
    cfg = load(tmp_path, text)
    assert cfg is not None
    edit, _ = nvidia.reconcile(cfg, NvidiaRuntimeSettings())
    assert edit is not None
    assert edit.new_text == text.replace('"legacy"', '"auto"')


def test_missing_mode_means_auto(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[nvidia-container-runtime]\nlog-level = "info"\n')
    assert cfg is not None and nvidia.drift(cfg) == []


@pytest.mark.parametrize("mode", ["jit-cdi", "auto"])
def test_jit_cdi_and_auto_are_fine(tmp_path: Path, mode: str) -> None:
    cfg = load(tmp_path, DEFAULT.replace('mode = "auto"', f'mode = "{mode}"'))
    assert cfg is not None and nvidia.drift(cfg) == []


@pytest.mark.parametrize("mode", ["cdi", "csv"])
def test_cdi_and_csv_are_reported_but_left_alone(tmp_path: Path, mode: str) -> None:
    cfg = load(tmp_path, DEFAULT.replace('mode = "auto"', f'mode = "{mode}"'))
    assert cfg is not None
    assert [d.status for d in nvidia.drift(cfg)] == ["warn"]
    assert nvidia.reconcile(cfg, NvidiaRuntimeSettings()) == (None, ())


@pytest.mark.parametrize("value", ['"legacyy"', "1", "true"])
def test_an_invalid_mode_fails_and_is_repaired(tmp_path: Path, value: str) -> None:
    cfg = load(tmp_path, DEFAULT.replace('mode = "auto"', f"mode = {value}"))
    assert cfg is not None
    assert nvidia.drift(cfg)[0].status == "fail"
    edit, _ = nvidia.reconcile(cfg, NvidiaRuntimeSettings())
    assert edit is not None and edit.new_text == DEFAULT


def test_repair_false_reports_and_changes_nothing(tmp_path: Path) -> None:
    cfg = load(tmp_path, LEGACY)
    assert cfg is not None
    settings = NvidiaRuntimeSettings(repair=False)
    assert nvidia.reconcile(cfg, settings) == (None, ())
    check = nvidia.check(cfg, settings, cfg.path)
    assert check.status == "fail" and check.message.endswith("(repair: false, reported only)")


def test_missing_file_means_built_in_defaults_and_a_warning(tmp_path: Path) -> None:
    assert load(tmp_path, None) is None
    check = nvidia.check(None, NvidiaRuntimeSettings(), tmp_path / PATH.lstrip("/"))
    assert check.status == "warn" and "not found" in check.message


def test_invalid_toml_is_one_line_with_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(NodeFileError, match=r"config.toml: invalid TOML at line 2, column \d+"):
        load(tmp_path, '[nvidia-container-runtime]\nmode = "auto\n')
