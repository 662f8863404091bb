"""Cross-check with the real containerd 1.x daemons (1.6, 1.7): `containerd config dump` must agree
with the agent's view.

containerd 1.x merges imports with the 1.x rule (a later plugin table replaces the whole table) and
parses `version = 2` files, so for these keys its dump is the ground truth for what the agent
computes, before and after the agent's edits. (Every sample layout on every daemon, 2.x included:
tests/containerd/test_containerd_versions.py.)
"""

import subprocess
from pathlib import Path
from typing import Any, Dict

import pytest
import tomlkit

from agent.base.noderoot import NodeRoot
from agent.config.settings import ContainerdSettings
from agent.containerd import config as containerd
from tests.support.containerd_daemons import Daemon, params
from tests.support.containerd_helpers import apply_all
from tests.support.paths import sample

KEYS = ("default_runtime_name", "runtime_type", "BinaryName", "SystemdCgroup")


def dumped(daemon: Daemon, config: Path) -> Dict[str, Any]:
    out = subprocess.run([str(daemon.tool("containerd")), "--config", str(config), "config", "dump"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    cri = tomlkit.parse(out).unwrap()["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
    nvidia = cri.get("runtimes", {}).get("nvidia", {})
    return {
        "default_runtime_name": cri.get("default_runtime_name"),
        "runtime_type": nvidia.get("runtime_type") or None,
        "BinaryName": nvidia.get("options", {}).get("BinaryName") or None,
        "SystemdCgroup": nvidia.get("options", {}).get("SystemdCgroup", False),
    }


def agents_view(settings: ContainerdSettings) -> Dict[str, Any]:
    eff = containerd.effective(containerd.load(NodeRoot("/"), settings), settings)
    return {v.setting.key[-1]: v.value for v in eff.values if v.setting.key[-1] in KEYS}


V2 = sample("containerd-v2-nodeadm-nvidia.toml")
DROPIN = (
    "version = 2\n"
    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]\n'
    'runtime_type = "io.containerd.runc.v2"\n'
    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]\n'
    'BinaryName = "/usr/bin/nvidia-container-runtime.legacy"\n'
)
RUNC_DROPIN = (
    "version = 2\n"
    "\n"
    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n'
    'runtime_type = "io.containerd.runc.v2"\n'
)

SCENARIOS = {
    "v2 sample": (V2, {}),
    "v2 without SystemdCgroup": (V2.replace("SystemdCgroup = true\n", ""), {}),
    "v2 without the nvidia runtime (the agent creates its tables)": (sample("golden/v2.runtime-absent.input.toml"), {}),
    "v2 without the nvidia runtime, with a drop-in that replaces the CRI table": (
        sample("golden/v2.runtime-absent.input.toml"), {"conf.d/99-runc.toml": RUNC_DROPIN}),
    "v2 with a drop-in that replaces the CRI table": (V2, {"conf.d/99-nvidia.toml": DROPIN}),
    "v2 with a drop-in without CRI settings": (V2, {"conf.d/10-grpc.toml": 'version = 2\n[grpc]\nuid = 0\n'}),
}


@pytest.mark.parametrize("daemon", params(major=1))
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_containerd_agrees_before_and_after_the_fix(tmp_path: Path, name: str, daemon: Daemon) -> None:
    daemon.need()
    main, dropins = SCENARIOS[name]
    config = tmp_path / "config.toml"
    if dropins:
        main = main.replace("version = 2\n", f'version = 2\nimports = ["{tmp_path}/conf.d/*.toml"]\n', 1)
    config.write_text(main)
    for rel, text in dropins.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    settings = ContainerdSettings(config_path=str(config))
    assert agents_view(settings) == dumped(daemon, config)

    result = containerd.reconcile(containerd.load(NodeRoot("/"), settings), settings)
    assert result.problems == ()
    apply_all(result)
    after = dumped(daemon, config)
    assert after == agents_view(settings)
    assert after == {"default_runtime_name": "nvidia", "runtime_type": "io.containerd.runc.v2",
                     "BinaryName": "/usr/bin/nvidia-container-runtime", "SystemdCgroup": True}
