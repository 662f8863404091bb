"""The parsed-TOML cache in /run is not trusted as is, and a key defined twice names its line."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from agent import __version__
from agent.base.errors import NodeFileError
from agent.base.noderoot import NodeRoot
from agent.toml.cache import VALUES_CACHE, toml_values

TEXT = 'version = 3\n[plugins]\nmarker = "parsed"\n'


def plant(root: NodeRoot, *, agent: str = __version__, values: object = None) -> Path:
    digest = hashlib.sha256(TEXT.encode()).hexdigest()
    path = root.path(VALUES_CACHE)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"sha256": digest, "values": values or {"version": 3, "plugins": {"marker": "planted"}}}
    path.write_text(json.dumps({"v": 2, "agent": agent, "files": {"/c.toml": entry}}))
    return path


def test_a_cache_from_another_agent_version_is_not_used(tmp_path: Path) -> None:
    root = NodeRoot(str(tmp_path))
    plant(root, agent="0.0.0-other")
    assert toml_values(root, "/c.toml", TEXT)["plugins"]["marker"] == "parsed"
    plant(root)  # the same entry from this version is what the cache is for
    assert toml_values(root, "/c.toml", TEXT)["plugins"]["marker"] == "planted"


def test_a_cache_of_text_is_keyed_by_its_hash_not_kept(tmp_path: Path) -> None:
    root = NodeRoot(str(tmp_path))
    toml_values(root, "/c.toml", TEXT)
    cache = json.loads(root.path(VALUES_CACHE).read_text())
    assert cache["agent"] == __version__ and TEXT not in root.path(VALUES_CACHE).read_text()


def test_a_cache_that_is_a_symlink_or_not_ours_is_not_used(tmp_path: Path, need_root: None) -> None:
    root = NodeRoot(str(tmp_path))
    planted = plant(root)
    os.chown(planted, 1234, 1234)
    assert toml_values(root, "/c.toml", TEXT)["plugins"]["marker"] == "parsed"
    elsewhere = tmp_path / "elsewhere.json"
    plant(root).rename(elsewhere)
    root.path(VALUES_CACHE).symlink_to(elsewhere)
    assert toml_values(root, "/c.toml", TEXT)["plugins"]["marker"] == "parsed"


def test_an_oversized_cache_is_not_read(tmp_path: Path) -> None:
    root = NodeRoot(str(tmp_path))
    path = plant(root)
    with path.open("a") as f:
        f.write(" " * (1 << 20))
    assert toml_values(root, "/c.toml", TEXT)["plugins"]["marker"] == "parsed"


def test_a_key_defined_twice_in_a_table_names_its_line(tmp_path: Path) -> None:
    text = 'version = 3\n[plugins."io.containerd.cri.v1.runtime"]\nenable_cdi = true\n# x\n"enable_cdi" = false\n'
    with pytest.raises(NodeFileError, match=r"invalid TOML at line 5: key 'enable_cdi' is defined twice"):
        toml_values(NodeRoot(str(tmp_path)), "/c.toml", text)
