"""A simulated GPU node (``--root``) whose containerd and kubelet run under a real systemd
(tests/support/systemd_harness.py), with the agent's command line run in process against it.

The restart tests (stand-in containerd) and the real-containerd tests build on it; the booted-AMI
tests (tests/support/boot_helpers.py) boot the packaged units instead.
"""

from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import pytest

from agent import cli
from tests.support.gpu_node import gpu_side, write
from tests.support.paths import sample
from tests.support.systemd_harness import BootedSystemd, FakeNodeDaemons, JobRecord, free_port, wait_for_healthz

CONTAINERD = "containerd.service"
KUBELET = "kubelet.service"


class SystemdNode:
    """``base`` holds everything and is bound into the instance: the node root, the stand-in daemons'
    files (``daemons``), the agent's config file."""

    def __init__(self, base: Path, root: Path, daemons: Path, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str], boot_systemd: Callable[..., BootedSystemd]) -> None:
        self.base = base
        self.root = root
        self.daemons = FakeNodeDaemons(daemons).install()
        self.monkeypatch, self.capsys, self.boot_systemd = monkeypatch, capsys, boot_systemd
        self.config_file = base / "agent.yaml"
        self.healthz_port = free_port()  # the kubelet stand-in's healthz
        self.sd: Optional[BootedSystemd] = None

    @property
    def containerd_config(self) -> Path:
        return self.root / "etc/containerd/config.toml"

    def write_node_files(self, containerd_config: str) -> None:
        """The known-good AMI's GPU side, containerd's config, the toolkit's default config, and
        kubelet's config naming the stand-in's healthz port."""
        gpu_side(self.root)
        write(self.root, "/etc/containerd/config.toml", containerd_config)
        write(self.root, "/etc/nvidia-container-runtime/config.toml", sample("nvidia-container-runtime-default.toml"))
        self.daemons.node_kubelet_config(self.root, self.healthz_port)

    def start(self, units: Mapping[str, str], files: Optional[Mapping[str, Union[str, bytes]]] = None, *,
              containerd_timeout: float = 10.0) -> BootedSystemd:
        """Boot systemd with ``units`` wanted; return once containerd is active and kubelet (if among
        them) is active and serving healthz. The agent's D-Bus calls go to this instance."""
        self.sd = sd = self.boot_systemd(units, files, wants=list(units), binds=[self.base])
        self.monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", sd.bus_address)
        sd.wait_until(CONTAINERD, "active", timeout=containerd_timeout)
        if KUBELET in units:
            sd.wait_until(KUBELET, "active")
            wait_for_healthz(self.healthz_port)  # Type=simple: active a moment before it serves
        return sd

    def cli(self, *args: str) -> Tuple[int, str, str]:
        """The real CLI, in process: (exit code, stdout, stderr)."""
        self.capsys.readouterr()
        code = cli.main(["--config", str(self.config_file), "--root", str(self.root), "--log-format", "json", *args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def run_recording(self, *args: str) -> Tuple[int, str, List[JobRecord]]:
        """``run``, and the jobs systemd ran meanwhile: (exit code, stdout + stderr, jobs)."""
        assert self.sd is not None
        with self.sd.record_jobs() as recorder:
            code, out, err = self.cli("run", "--lock-wait", "5", *args)
        return code, out + err, recorder.jobs

    def props(self, unit: str) -> Dict[str, Any]:
        assert self.sd is not None
        return self.sd.properties(unit)
