"""containerd `imports`: load order, path rules, and how each containerd major merges drop-ins."""

from pathlib import Path

import pytest

from agent.base.errors import NodeFileError
from agent.config.settings import ContainerdSettings
from agent.containerd import config as containerd
from tests.support.containerd_helpers import converge, make_node, reconcile
from tests.support.paths import sample

CONFIG = "/etc/containerd/config.toml"
DROPIN = "/etc/containerd/conf.d/99-nvidia.toml"
V3 = sample("containerd-v3-nodeadm-nvidia.toml")
V2 = sample("containerd-v2-nodeadm-nvidia.toml")
NVIDIA_CTK_DROPIN = sample("containerd-conf.d-99-nvidia.toml")
IMPORT_CONFD = 'imports = ["/etc/containerd/conf.d/*.toml"]\n'


def with_imports(text: str, *paths: str) -> str:
    listed = ", ".join(f'"{p}"' for p in paths)
    first, rest = text.split("\n", 1)
    return f"{first}\nimports = [{listed}]\n{rest}"


def order(root, config_path: str = CONFIG) -> "list[str]":
    return [f.node_path for f in containerd.load(root, ContainerdSettings(config_path=config_path)).files]


# --- load order and path rules (the same in containerd 1.x and 2.x) -----------------------------------


def test_breadth_first_order_main_then_imports_then_theirs(tmp_path: Path) -> None:
    root = make_node(tmp_path, {
        CONFIG: with_imports(V3, "/etc/containerd/a.toml", "/etc/containerd/b.toml"),
        "/etc/containerd/a.toml": 'version = 3\nimports = ["/etc/containerd/c.toml"]\n',
        "/etc/containerd/b.toml": "version = 3\n",
        "/etc/containerd/c.toml": "version = 3\n",
    })
    assert order(root) == [CONFIG, "/etc/containerd/a.toml", "/etc/containerd/b.toml", "/etc/containerd/c.toml"]


def test_relative_imports_resolve_against_the_importing_files_directory(tmp_path: Path) -> None:
    root = make_node(tmp_path, {
        CONFIG: with_imports(V3, "conf.d/x.toml"),
        "/etc/containerd/conf.d/x.toml": 'version = 3\nimports = ["../extra/./y.toml"]\n',
        "/etc/containerd/extra/y.toml": "version = 3\n",
    })
    assert order(root) == [CONFIG, "/etc/containerd/conf.d/x.toml", "/etc/containerd/extra/y.toml"]


def test_glob_matches_are_sorted_include_dotfiles_and_no_match_is_silent(tmp_path: Path) -> None:
    root = make_node(tmp_path, {
        CONFIG: with_imports(V3, "/etc/containerd/conf.d/*.toml", "/etc/containerd/none.d/*.toml"),
        "/etc/containerd/conf.d/b.toml": "version = 3\n",
        "/etc/containerd/conf.d/a.toml": "version = 3\n",
        "/etc/containerd/conf.d/.hidden.toml": "version = 3\n",
        "/etc/containerd/conf.d/notes.txt": "not toml at all [",
    })
    assert order(root) == [
        CONFIG,
        "/etc/containerd/conf.d/.hidden.toml",
        "/etc/containerd/conf.d/a.toml",
        "/etc/containerd/conf.d/b.toml",
    ]


def test_only_paths_with_a_star_are_globbed(tmp_path: Path) -> None:
    root = make_node(tmp_path, {
        CONFIG: with_imports(V3, "/etc/containerd/x?.toml"),
        "/etc/containerd/x1.toml": "version = 3\n",
    })
    with pytest.raises(NodeFileError, match=r"x\?\.toml: is imported but does not exist; containerd refuses"):
        containerd.load(root, ContainerdSettings())


def test_repeated_imports_are_loaded_once(tmp_path: Path) -> None:
    root = make_node(tmp_path, {
        CONFIG: with_imports(V3, DROPIN, "/etc/containerd/conf.d/*.toml", DROPIN),
        DROPIN: "version = 3\n",
    })
    assert order(root) == [CONFIG, DROPIN]


def test_an_import_cycle_is_one_clear_error(tmp_path: Path) -> None:
    root = make_node(tmp_path, {
        CONFIG: with_imports(V3, "/etc/containerd/a.toml"),
        "/etc/containerd/a.toml": 'version = 3\nimports = ["/etc/containerd/b.toml"]\n',
        "/etc/containerd/b.toml": 'version = 3\nimports = ["/etc/containerd/a.toml"]\n',
    })
    with pytest.raises(NodeFileError, match="import cycle: /etc/containerd/config.toml -> /etc/containerd/a.toml"
                                             " -> /etc/containerd/b.toml -> /etc/containerd/a.toml"):
        containerd.load(root, ContainerdSettings())


def test_a_missing_plain_import_is_fatal_like_in_containerd(tmp_path: Path) -> None:
    root = make_node(tmp_path, {CONFIG: with_imports(V3, "/etc/containerd/gone.toml")})
    with pytest.raises(NodeFileError, match="gone.toml: is imported but does not exist"):
        containerd.load(root, ContainerdSettings())


# --- containerd 2.x: deep merge, later explicit values win ------------------------------------------------


def test_2x_nvidia_ctk_dropin_without_systemd_cgroup_keeps_the_main_files_value(tmp_path: Path) -> None:
    root = make_node(tmp_path, {CONFIG: with_imports(V3, "/etc/containerd/conf.d/*.toml"), DROPIN: NVIDIA_CTK_DROPIN})
    result = reconcile(root)
    assert result.edits == () and result.problems == ()
    by_key = {v.setting.key[-1]: v for v in result.effective.values}
    assert by_key["SystemdCgroup"].value is True and by_key["SystemdCgroup"].source.node_path == CONFIG
    assert by_key["BinaryName"].source.node_path == DROPIN  # the later explicit value


def test_2x_fix_goes_into_the_last_file_that_sets_the_key(tmp_path: Path) -> None:
    dropin = NVIDIA_CTK_DROPIN.replace(
        'BinaryName = "/usr/bin/nvidia-container-runtime"',
        'BinaryName = "/usr/bin/nvidia-container-runtime"\n            SystemdCgroup = false',
    )
    main = with_imports(V3, "/etc/containerd/conf.d/*.toml")
    root = make_node(tmp_path, {CONFIG: main, DROPIN: dropin})
    result = converge(root)
    assert [e.path for e in result.edits] == [root.path(DROPIN)]
    assert root.path(CONFIG).read_text() == main
    assert root.path(DROPIN).read_text() == dropin.replace("SystemdCgroup = false", "SystemdCgroup = true")


def test_2x_key_set_by_no_file_goes_into_the_main_file(tmp_path: Path) -> None:
    main = with_imports(V3.replace("SystemdCgroup = true\n", ""), "/etc/containerd/conf.d/*.toml")
    root = make_node(tmp_path, {CONFIG: main, DROPIN: NVIDIA_CTK_DROPIN})
    result = converge(root)
    assert [e.path for e in result.edits] == [root.path(CONFIG)]
    assert root.path(DROPIN).read_text() == NVIDIA_CTK_DROPIN


def test_2x_enable_cdi_unset_everywhere_is_already_on(tmp_path: Path) -> None:
    root = make_node(tmp_path, {CONFIG: V3.replace("enable_cdi = true\n", "")})
    result = reconcile(root)
    assert result.edits == ()
    cdi = next(v for v in result.effective.values if v.setting.key == ("enable_cdi",))
    assert cdi.value is True and cdi.source is None


def test_2x_later_false_beats_earlier_true(tmp_path: Path) -> None:
    root = make_node(tmp_path, {
        CONFIG: with_imports(V3, DROPIN),
        DROPIN: "version = 3\n[plugins.'io.containerd.cri.v1.runtime']\nenable_cdi = false\n",
    })
    result = converge(root)
    assert [e.path for e in result.edits] == [root.path(DROPIN)]


# --- containerd 1.x: a later plugin table replaces the whole table ----------------------------------------

V2_DROPIN = (
    "version = 2\n\n"
    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]\n'
    'runtime_type = "io.containerd.runc.v2"\n\n'
    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]\n'
    'BinaryName = "/usr/bin/nvidia-container-runtime"\n'
)


def test_1x_dropin_table_replaces_the_main_table_so_the_fix_goes_into_the_dropin(tmp_path: Path) -> None:
    main = with_imports(V2.replace("enable_cdi = false", "enable_cdi = true"), "/etc/containerd/conf.d/*.toml")
    root = make_node(tmp_path, {CONFIG: main, DROPIN: V2_DROPIN}, daemon_major=1)
    first = reconcile(root)
    by_key = {v.setting.key[-1]: v for v in first.effective.values}
    # the main file's values are not in effect at all: the drop-in's table replaced them
    assert by_key["enable_cdi"].value is False and by_key["enable_cdi"].source is None
    assert by_key["default_runtime_name"].value == "runc"
    (warning,) = first.effective.warnings
    assert "uses only the [plugins.\"io.containerd.grpc.v1.cri\"] table of " + DROPIN in warning
    assert "settings in /etc/containerd/config.toml are ignored: cni.bin_dir, " in warning
    assert "containerd.discard_unpacked_layers" in warning
    result = converge(root)
    assert [e.path for e in result.edits] == [root.path(DROPIN)]
    assert root.path(CONFIG).read_text() == main
    assert containerd.check(containerd.load(root, ContainerdSettings()), ContainerdSettings()).status == "warn"


def test_1x_without_dropin_tables_the_main_file_decides(tmp_path: Path) -> None:
    root = make_node(tmp_path, {
        CONFIG: with_imports(V2, "/etc/containerd/conf.d/*.toml"),
        DROPIN: 'version = 2\n[grpc]\naddress = "/run/containerd/containerd.sock"\n',
    }, daemon_major=1)
    result = converge(root)
    assert [e.path for e in result.edits] == [root.path(CONFIG)]


def test_1x_enable_cdi_unset_everywhere_is_off_and_gets_set(tmp_path: Path) -> None:
    root = make_node(tmp_path, {CONFIG: V2.replace("enable_cdi = false\n", "")}, daemon_major=1)
    result = converge(root)
    assert any(r.startswith("enable_cdi = true (was not set)") for r in result.edits[0].reasons)


# --- what is reported and never edited ---------------------------------------------------------------------


@pytest.mark.parametrize("dropin_header", ["version = 2\n", ""])
def test_mixed_version_dropins_are_reported_never_edited(tmp_path: Path, dropin_header: str) -> None:
    dropin = dropin_header + '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]\nx = 1\n'
    root = make_node(tmp_path, {CONFIG: with_imports(V3.replace("SystemdCgroup = true\n", ""), DROPIN),
                                DROPIN: dropin})
    result = reconcile(root)
    assert result.edits == ()
    assert len(result.problems) == 1 and "mixed-version drop-ins" in result.problems[0]


def test_dropin_without_plugins_may_have_any_version(tmp_path: Path) -> None:
    root = make_node(tmp_path, {CONFIG: with_imports(V3, DROPIN), DROPIN: '[grpc]\naddress = "/x.sock"\n'})
    assert reconcile(root).problems == ()


def test_a_symlinked_dropin_is_read_but_never_written(tmp_path: Path) -> None:
    dropin = "version = 3\n[plugins.'io.containerd.cri.v1.runtime']\nenable_cdi = false\n"
    root = make_node(tmp_path, {CONFIG: with_imports(V3, DROPIN), "/etc/containerd/real.toml": dropin})
    root.path(DROPIN).parent.mkdir(parents=True)
    root.path(DROPIN).symlink_to("../real.toml")
    result = reconcile(root)
    assert result.edits == ()
    assert result.problems == (f"{DROPIN} decides enable_cdi but is a symlink; fix it by hand",)
