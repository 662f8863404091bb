"""containerd config reconcile: exact minimal diffs on every sample and every shape nodeadm writes."""

from pathlib import Path

import pytest

from agent.config.settings import ContainerdSettings
from agent.containerd import config as containerd
from tests.support.containerd_helpers import changed_lines, converge, make_node, reconcile
from tests.support.paths import sample

CONFIG = "/etc/containerd/config.toml"
V3 = sample("containerd-v3-nodeadm-nvidia.toml")
V3_NO_CGROUP = sample("containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml")
V2 = sample("containerd-v2-nodeadm-nvidia.toml")


def test_healthy_v3_sample_changes_nothing(tmp_path: Path) -> None:
    root = make_node(tmp_path, {CONFIG: V3})
    result = reconcile(root)
    assert result.edits == () and result.problems == ()
    assert all(v.ok for v in result.effective.values)


def test_missing_systemd_cgroup_is_restored_to_the_healthy_sample_byte_for_byte(tmp_path: Path) -> None:
    root = make_node(tmp_path, {CONFIG: V3_NO_CGROUP})
    result = converge(root)
    assert [e.path for e in result.edits] == [root.path(CONFIG)]
    assert root.path(CONFIG).read_text() == V3
    assert changed_lines(V3_NO_CGROUP, V3) == ([], ["SystemdCgroup = true"])


@pytest.mark.parametrize("daemon_major", [1, 2])
def test_v2_sample_gets_enable_cdi_in_place_sub_table_before_parent_kept(tmp_path: Path, daemon_major: int) -> None:
    root = make_node(tmp_path, {CONFIG: V2}, daemon_major=daemon_major)
    converge(root)
    assert root.path(CONFIG).read_text() == V2.replace("enable_cdi = false", "enable_cdi = true")


def test_v2_sample_with_no_version_file_is_read_as_containerd_1(tmp_path: Path) -> None:
    root = make_node(tmp_path, {CONFIG: V2}, daemon_major=None)
    config_set = containerd.load(root, ContainerdSettings())
    assert config_set.daemon.major == 1 and "version = 2" in config_set.daemon.source
    converge(root)


def test_merged_reserialized_shape_keeps_single_quotes_and_sorted_keys(tmp_path: Path) -> None:
    text = sample("containerd-v3-nodeadm-merged.toml")
    root = make_node(tmp_path, {CONFIG: text})
    result = converge(root)
    new = root.path(CONFIG).read_text()
    assert changed_lines(text, new) == (
        ["enable_cdi = false", "BinaryName = '/usr/bin/nvidia-container-runtime.legacy'"],
        ["enable_cdi = true", "BinaryName = '/usr/bin/nvidia-container-runtime'", "SystemdCgroup = true"],
    )
    assert any(".legacy" in reason for reason in result.edits[0].reasons)


def test_long_migrated_shape_adds_one_line_with_the_file_indentation(tmp_path: Path) -> None:
    text = sample("containerd-v3-migrated.toml")
    root = make_node(tmp_path, {CONFIG: text})
    converge(root)
    new = root.path(CONFIG).read_text()
    assert changed_lines(text, new) == ([], ["            SystemdCgroup = true"])
    assert new.index("SystemdCgroup") > new.index("ShimCgroup = ''")
    assert new.index("SystemdCgroup") < new.index("[plugins.'io.containerd.cri.v1.runtime'.cni]")


def test_wrong_types_are_fixed_in_place(tmp_path: Path) -> None:
    text = V3.replace("SystemdCgroup = true", 'SystemdCgroup = "true"  # set by hand').replace(
        "enable_cdi = true", "enable_cdi = 1"
    )
    root = make_node(tmp_path, {CONFIG: text})
    converge(root)
    assert changed_lines(text, root.path(CONFIG).read_text()) == (
        ["enable_cdi = 1", 'SystemdCgroup = "true"  # set by hand'],
        ["enable_cdi = true", "SystemdCgroup = true  # set by hand"],
    )


def test_inline_tables_are_edited_inside_the_inline_table(tmp_path: Path) -> None:
    text = (
        "version = 3\n"
        "[plugins.'io.containerd.cri.v1.runtime'.containerd]\n"
        "default_runtime_name = 'nvidia'\n"
        "runtimes.nvidia = { runtime_type = 'io.containerd.runc.v2', "
        "options = { BinaryName = '/usr/bin/nvidia-container-runtime' } }\n"
    )
    root = make_node(tmp_path, {CONFIG: text})
    converge(root)
    new = root.path(CONFIG).read_text()
    removed, added = changed_lines(text, new)
    assert removed == [text.splitlines()[3]]
    assert added == [
        "runtimes.nvidia = { runtime_type = 'io.containerd.runc.v2', "
        "options = { BinaryName = '/usr/bin/nvidia-container-runtime', SystemdCgroup = true } }"
    ]


def test_dotted_keys_are_edited_as_dotted_keys(tmp_path: Path) -> None:
    text = (
        "version = 3\n\n"
        "[plugins.'io.containerd.cri.v1.runtime']\n"
        "containerd.default_runtime_name = \"nvidia\"\n\n"
        "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nvidia]\n"
        'runtime_type = "io.containerd.runc.v2"\n'
        'options.BinaryName = "/usr/bin/nvidia-container-runtime"\n'
        'options.SystemdCgroup = "yes"\n'
    )
    root = make_node(tmp_path, {CONFIG: text})
    converge(root)
    assert changed_lines(text, root.path(CONFIG).read_text()) == (
        ['options.SystemdCgroup = "yes"'],
        ["options.SystemdCgroup = true"],
    )


def test_missing_runtime_table_is_created_after_its_parent(tmp_path: Path) -> None:
    text = V3.split("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nvidia]")[0] + (
        "[plugins.'io.containerd.cri.v1.runtime'.cni]\nbin_dir = \"/opt/cni/bin\"\n"
    )
    root = make_node(tmp_path, {CONFIG: text})
    converge(root)
    new = root.path(CONFIG).read_text()
    removed, added = changed_lines(text, new)
    assert removed == []
    assert [line for line in added if line] == [
        "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nvidia]",
        'runtime_type = "io.containerd.runc.v2"',
        "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nvidia.options]",
        'BinaryName = "/usr/bin/nvidia-container-runtime"',
        "SystemdCgroup = true",
    ]
    assert new.index("runtimes.nvidia]") < new.index("[plugins.'io.containerd.cri.v1.runtime'.cni]")


def test_settings_turned_off_are_left_alone(tmp_path: Path) -> None:
    text = V3.replace("enable_cdi = true", "enable_cdi = false").replace("SystemdCgroup = true\n", "")
    root = make_node(tmp_path, {CONFIG: text})
    settings = ContainerdSettings(enable_cdi=False, systemd_cgroup=False)
    result = reconcile(root, settings)
    assert result.edits == () and result.problems == ()


def test_custom_binary_and_runtime_name(tmp_path: Path) -> None:
    root = make_node(tmp_path, {CONFIG: V3})
    settings = ContainerdSettings(runtime="gpu", binary_name="/opt/nvidia/bin/nvidia-container-runtime")
    converge(root, settings)
    new = root.path(CONFIG).read_text()
    assert 'default_runtime_name = "gpu"' in new
    assert "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.gpu.options]" in new
    assert "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nvidia]" in new  # kept


def test_non_table_in_the_way_is_reported_not_rewritten(tmp_path: Path) -> None:
    text = V3.replace(
        "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nvidia.options]\n"
        'BinaryName = "/usr/bin/nvidia-container-runtime"\nSystemdCgroup = true\n',
        "",
    ).replace('runtime_type = "io.containerd.runc.v2"\n', 'runtime_type = "io.containerd.runc.v2"\noptions = "x"\n')
    root = make_node(tmp_path, {CONFIG: text})
    result = reconcile(root)
    assert result.edits == ()
    assert any("options is not a table" in p for p in result.problems)


def test_check_reports_each_wrong_value_with_its_file(tmp_path: Path) -> None:
    root = make_node(tmp_path, {CONFIG: sample("containerd-v3-nodeadm-merged.toml")})
    result = containerd.check(containerd.load(root, ContainerdSettings()), ContainerdSettings())
    assert result.status == "fail"
    assert "enable_cdi = false in /etc/containerd/config.toml, want true" in result.message
    assert '.legacy" in /etc/containerd/config.toml' in result.message
    assert "SystemdCgroup is not set (containerd uses false), want true" in result.message


def test_containerd_1_cannot_load_a_version_3_file(tmp_path: Path) -> None:
    root = make_node(tmp_path, {CONFIG: V3_NO_CGROUP}, daemon_major=1)
    result = reconcile(root)
    assert result.edits == ()
    assert any("needs containerd 2.x" in p for p in result.problems)
