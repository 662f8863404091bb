"""The parsed-values cache that spares `check` a TOML parse of files that did not change."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.base.errors import NodeFileError
from agent.base.noderoot import NodeRoot
from agent.toml.cache import VALUES_CACHE, toml_values
from agent.toml.edit import parse_toml
from tests.support.paths import REPO, sample

TEXT = sample("containerd-v3-nodeadm-nvidia.toml")


def cache_of(root: NodeRoot) -> dict:
    return json.loads(root.path(VALUES_CACHE).read_text())


def test_values_come_from_the_cache_only_for_byte_identical_text(tmp_path: Path) -> None:
    root = NodeRoot(str(tmp_path))
    first = toml_values(root, "/etc/containerd/config.toml", TEXT)
    assert first == parse_toml(TEXT, "x").unwrap()
    entry = cache_of(root)["files"]["/etc/containerd/config.toml"]
    assert entry["sha256"] == hashlib.sha256(TEXT.encode()).hexdigest() and "text" not in entry
    # a cache entry that lies is believed only for its own text: prove the hit path is used...
    cache = cache_of(root)
    cache["files"]["/etc/containerd/config.toml"]["values"]["marker"] = 1
    root.path(VALUES_CACHE).write_text(json.dumps(cache))
    assert toml_values(root, "/etc/containerd/config.toml", TEXT)["marker"] == 1
    # ...and that any change of the text, even one byte of the same length, parses afresh
    changed = TEXT.replace("SystemdCgroup = true", "SystemdCgroup = 1234")
    assert len(changed) == len(TEXT)
    values = toml_values(root, "/etc/containerd/config.toml", changed)
    assert "marker" not in values
    assert values["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["nvidia"]["options"][
        "SystemdCgroup"] == 1234


@pytest.mark.parametrize("content", ["not json", '{"v": 1, "files": []}', '{"v": 2}', '{"v": 1, "files": {"/x": 3}}'])
def test_a_corrupt_cache_is_ignored_and_replaced(tmp_path: Path, content: str) -> None:
    root = NodeRoot(str(tmp_path))
    root.path(VALUES_CACHE).parent.mkdir(parents=True)
    root.path(VALUES_CACHE).write_text(content)
    assert toml_values(root, "/x", TEXT) == parse_toml(TEXT, "x").unwrap()
    assert cache_of(root)["v"] == 2


def test_an_unwritable_cache_only_costs_the_parse(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("a file where the state directory should be")
    root = NodeRoot(str(tmp_path))
    assert toml_values(root, "/x", TEXT) == parse_toml(TEXT, "x").unwrap()


def test_dates_are_not_cached(tmp_path: Path) -> None:
    root = NodeRoot(str(tmp_path))
    values = toml_values(root, "/x", "when = 2026-11-22T07:00:00Z\n")
    assert values["when"].year == 2026
    assert not root.path(VALUES_CACHE).exists()


def test_invalid_toml_is_still_an_error(tmp_path: Path) -> None:
    with pytest.raises(NodeFileError, match="invalid TOML at line 1"):
        toml_values(NodeRoot(str(tmp_path)), "/x", "a = \n")


def test_a_second_check_does_not_load_tomlkit(tmp_path: Path) -> None:
    node = tmp_path / "node"
    for rel, name in (("etc/containerd/config.toml", "containerd-v3-nodeadm-nvidia.toml"),
                      ("etc/nvidia-container-runtime/config.toml", "nvidia-container-runtime-default.toml")):
        (node / rel).parent.mkdir(parents=True, exist_ok=True)
        (node / rel).write_text(sample(name))
    code = (
        "import sys, io, contextlib\nfrom agent.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()): main(['--root', sys.argv[1], 'check'])\n"
        "print('tomlkit' in sys.modules)"
    )
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus"}

    def loads_tomlkit() -> str:
        return subprocess.run([sys.executable, "-c", code, str(node)], cwd=REPO, env=env, capture_output=True,
                              text=True, check=True).stdout.strip().splitlines()[-1]

    assert loads_tomlkit() == "True"
    assert loads_tomlkit() == "False"
