"""Every containerd layout in tests/samples, as the real daemons read it: ``containerd --config FILE
config dump`` of the matching major (``version = 2`` files: 1.6, 1.7 and 2.x, which migrates them;
``version = 3`` files: 2.x) prints the merged, effective configuration without starting anything.

For every sample shape and golden input the daemon's effective values are the agent's view of them;
for every golden output (what the agent writes) they are the values the agent exists to set.
"""

import subprocess
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import tomlkit

from agent.base.noderoot import NodeRoot
from agent.compat.versions import CONTAINERD_VERSION_FILE
from agent.config.settings import ContainerdSettings
from agent.containerd import config as containerd
from tests.support.containerd_daemons import DAEMONS, Daemon
from tests.support.containerd_helpers import GOLDEN_CASES

SAMPLES = Path(__file__).parent.parent / "samples"
CONFIG = "/etc/containerd/config.toml"
# The containerd configs among the samples (the toolkit's own config.toml files are not).
FILES = sorted(str(p.relative_to(SAMPLES))
               for p in [*SAMPLES.glob("containerd-*.toml"), *SAMPLES.glob("golden/*.toml")])
# What the agent writes: golden/*.toml but the inputs, and the v3 sample (the agent's fix of the v3 drift).
GOLDEN_OUTPUTS = [f for f in FILES if f.startswith("golden/") and not f.endswith(".input.toml")] + [
    "containerd-v3-nodeadm-nvidia.toml"]
DESIRED = {"enable_cdi": True, "default_runtime_name": "nvidia", "runtime_type": "io.containerd.runc.v2",
           "BinaryName": "/usr/bin/nvidia-container-runtime", "SystemdCgroup": True}
KEYS = tuple(DESIRED)


def layout(name: str) -> int:
    return int(tomlkit.parse((SAMPLES / name).read_text()).unwrap().get("version", 1))


def cases() -> List[Any]:
    return [pytest.param(d, name, id=f"containerd-{d.series}-{name}")
            for d in DAEMONS for name in FILES if layout(name) in d.layouts]


def dumped(daemon: Daemon, config: Path) -> Dict[str, Any]:
    """The five values from the daemon's own dump (``enable_cdi`` absent: containerd 1.6 predates it)."""
    run = subprocess.run([str(daemon.tool("containerd")), "--config", str(config), "config", "dump"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    dump = tomlkit.parse(run.stdout).unwrap()
    # 1.x prints version 2 (CRI in one plugin); 2.x prints version 3, migrating version 2 files.
    plugin = "io.containerd.cri.v1.runtime" if dump["version"] == 3 else "io.containerd.grpc.v1.cri"
    assert dump["version"] == (3 if daemon.major >= 2 else 2)
    cri = dump["plugins"][plugin]
    nvidia = cri["containerd"].get("runtimes", {}).get("nvidia", {})
    values = {
        "enable_cdi": cri.get("enable_cdi"),
        "default_runtime_name": cri["containerd"].get("default_runtime_name"),
        "runtime_type": nvidia.get("runtime_type") or None,
        "BinaryName": nvidia.get("options", {}).get("BinaryName") or None,
        "SystemdCgroup": nvidia.get("options", {}).get("SystemdCgroup", False),
    }
    if daemon.series == "1.6":
        assert values.pop("enable_cdi") is None
    return values


def agents_view(root: NodeRoot, daemon: Daemon) -> Dict[str, Any]:
    settings = ContainerdSettings()
    eff = containerd.effective(containerd.load(root, settings), settings)
    assert eff.blocking == ()
    view = {v.setting.key[-1]: v.value for v in eff.values if v.setting.key[-1] in KEYS}
    if daemon.series == "1.6":
        view.pop("enable_cdi")
    return view


def node(base: Path, daemon: Daemon, name: str) -> Tuple[NodeRoot, Path]:
    """A node whose containerd is ``daemon`` (its own ``--version`` in nodeadm's version file) and
    whose config.toml is the sample ``name``. Its imports (absolute globs) match nothing, on the node
    and on this host alike."""
    config = base / CONFIG.lstrip("/")
    config.parent.mkdir(parents=True)
    config.write_bytes((SAMPLES / name).read_bytes())
    version = base / CONTAINERD_VERSION_FILE.lstrip("/")
    version.parent.mkdir(parents=True)
    version.write_text(daemon.version_text())
    return NodeRoot(str(base)), config


@pytest.mark.parametrize("daemon, name", cases())
def test_the_daemon_reads_each_layout_as_the_agent_does(tmp_path: Path, daemon: Daemon, name: str) -> None:
    daemon.need()
    root, config = node(tmp_path, daemon, name)
    imports = tomlkit.parse(config.read_text()).unwrap().get("imports", [])
    assert not any(Path(p).parent.exists() for p in imports), imports  # nothing on this host joins in

    seen = dumped(daemon, config)

    assert seen == agents_view(root, daemon)
    if name in GOLDEN_OUTPUTS:
        assert seen == {k: v for k, v in DESIRED.items() if k in seen}


def test_every_golden_output_and_sample_is_loaded_by_a_2x_daemon() -> None:
    """The matrix above covers every file: version 2 files by 1.x and 2.x, version 3 files by 2.x."""
    covered = {(d.major, name) for d, name in (c.values for c in cases())}
    assert {name for _, name in covered} == set(FILES)
    assert {layout(name) for name in FILES} == {2, 3}
    assert all((2, name) in covered for name in FILES)
    assert all((1, name) in covered for name in FILES if layout(name) == 2)
    assert set(GOLDEN_OUTPUTS) == {expected for _, expected in GOLDEN_CASES.values()}


@pytest.mark.parametrize("daemon", [d for d in DAEMONS if d.major == 1], ids=lambda d: f"containerd-{d.series}")
def test_a_1x_daemon_refuses_a_version_3_file_as_the_agent_does(tmp_path: Path, daemon: Daemon) -> None:
    """containerd 1.7 fails on ``version = 3``; 1.6 silently ignores the file (its dump shows no nvidia
    runtime). The agent refuses to edit either way: 'version = 3' needs containerd 2.x."""
    daemon.need()
    root, config = node(tmp_path, daemon, "containerd-v3-nodeadm-nvidia.toml")
    run = subprocess.run([str(daemon.tool("containerd")), "--config", str(config), "config", "dump"],
                         capture_output=True, text=True, timeout=30, check=False)
    if daemon.series == "1.6":
        assert run.returncode == 0 and "nvidia" not in run.stdout
    else:
        assert run.returncode != 0 and "containerd config version `3` is not supported" in run.stderr
    settings = ContainerdSettings()
    eff = containerd.effective(containerd.load(root, settings), settings)
    assert any("'version = 3' needs containerd 2.x" in b for b in eff.blocking)
