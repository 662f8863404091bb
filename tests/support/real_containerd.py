"""A simulated node whose containerd is the real daemon (1.6, 1.7 or 2.x) under a real systemd: the
node, its configuration shapes per daemon, containerd's own error texts, and the ``real_node`` fixture
(one per daemon of tests/support/containerd_daemons.py) for the real-daemon tests.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

import pytest

from tests.support.containerd_daemons import Daemon, params
from tests.support.paths import sample
from tests.support.systemd_harness import REAL_CONTAINERD_FILES, BootedSystemd, JobRecord, real_containerd_unit
from tests.support.systemd_node import CONTAINERD, KUBELET, SystemdNode

V2 = sample("containerd-v2-nodeadm-nvidia.toml")
V3 = sample("containerd-v3-nodeadm-nvidia.toml")
# layout -> (converged, drifted: SystemdCgroup missing, a registry.mirrors table next to config_path)
SHAPES = {
    2: (V2.replace("enable_cdi = false", "enable_cdi = true"), V2.replace("SystemdCgroup = true\n", ""),
        '\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\nendpoint = ["https://mirror.example"]\n'),
    3: (V3, sample("containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml"),
        '\n[plugins."io.containerd.cri.v1.images".registry.mirrors."docker.io"]\nendpoint = ["https://mirror.example"]\n'),
}
# A runc (v1 shim) default with the deprecated CRI-level systemd_cgroup, valid for containerd 1.x;
# the agent adds the nvidia runtime (runc.v2) and makes it the default, which the 1.x CRI plugin rejects.
LEGACY_RUNC = V2.replace('default_runtime_name = "nvidia"', 'default_runtime_name = "runc"').replace(
    'enable_cdi = false\n', 'enable_cdi = false\nsystemd_cgroup = true\n'
).split('[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]')[0] + (
    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n'
    'runtime_type = "io.containerd.runtime.v1.linux"\n\n'
    '[plugins."io.containerd.grpc.v1.cri".cni]\nbin_dir = "/opt/cni/bin"\nconf_dir = "/etc/cni/net.d"\n'
)
CRI_REJECTS_SYSTEMD_CGROUP = "`systemd_cgroup` only works for runtime io.containerd.runtime.v1.linux"
CRI_REJECTS_MIRRORS = "`mirrors` cannot be set when `config_path` is provided"
# How each major words it in the CRI plugin's error (2.x: the images plugin's check, through its dependency).
MIRRORS_ERROR = {1: "invalid plugin config: " + CRI_REJECTS_MIRRORS,
                 2: "unable to load CRI image service plugin dependency: invalid cri image config: "
                    + CRI_REJECTS_MIRRORS}
CRI_OK = {1: "CRI plugin io.containerd.grpc.v1 cri: ok",
          2: "CRI plugins io.containerd.grpc.v1 cri, io.containerd.cri.v1 runtime, io.containerd.cri.v1 images: ok"}


class RealContainerdNode(SystemdNode):
    """A simulated node root whose containerd is the real daemon ``daemon``, under a real systemd."""

    def __init__(self, base: Path, daemon: Daemon, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str], boot_systemd: Callable[..., BootedSystemd]) -> None:
        # base short: the socket path must fit a sockaddr_un
        super().__init__(base, base / "n", base / "d", monkeypatch, capsys, boot_systemd)
        self.daemon = daemon
        self.bin_dir = base / "bin"  # the daemon's binaries, inside the bound base: the instance sees them

    @property
    def layout(self) -> int:
        """The config layout this daemon reads on EKS: 2 for containerd 1.x, 3 for 2.x."""
        return self.daemon.layouts[-1]

    @property
    def converged(self) -> str:
        return SHAPES[self.layout][0]

    @property
    def drifted(self) -> str:
        return SHAPES[self.layout][1]

    @property
    def mirrors(self) -> str:
        return SHAPES[self.layout][2]

    @property
    def config(self) -> Path:
        return self.containerd_config

    @property
    def log(self) -> str:
        path = self.base / "containerd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def write_node(self, containerd_config: str) -> "RealContainerdNode":
        self.write_node_files(containerd_config)
        (self.root / "etc/eks/containerd-version.txt").write_text(self.daemon.version_text())  # the daemon that runs
        self.bin_dir.mkdir(exist_ok=True)
        for source, target in ((self.daemon.tool("ctr"), self.root / "usr/bin/ctr"),
                               (self.daemon.tool("containerd"), self.bin_dir / "containerd"),
                               (self.daemon.tool("containerd-shim-runc-v2"), self.bin_dir / "containerd-shim-runc-v2")):
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
        self.agent_config()
        return self

    def agent_config(self, extra: str = "") -> None:
        self.config_file.write_text(f"restart:\n  timeout_seconds: 20\n{extra}report:\n  publish: false\n")

    def containerd_unit(self, start_limit_burst: int = 5) -> str:
        return real_containerd_unit(self.config, self.root / "run/containerd/containerd.sock",
                                    self.base / "containerd.log", start_limit_burst=start_limit_burst,
                                    bin_dir=self.bin_dir)

    def boot(self, *, start_limit_burst: int = 5) -> BootedSystemd:
        units = {CONTAINERD: self.containerd_unit(start_limit_burst),
                 KUBELET: self.daemons.kubelet_unit(self.healthz_port)}
        return self.start(units, REAL_CONTAINERD_FILES, containerd_timeout=30)

    def ctr(self, *args: str) -> str:
        sock = self.root / "run/containerd/containerd.sock"
        return subprocess.run([str(self.daemon.tool("ctr")), "--address", str(sock), *args], capture_output=True,
                              text=True, timeout=30, check=False).stdout

    def cri_statuses(self) -> Dict[str, str]:
        """The daemon's own listing of its CRI plugins: "TYPE ID" -> status."""
        rows = [ln.split() for ln in self.ctr("plugins", "ls").splitlines()]
        return {f"{r[0]} {r[1]}": r[-1] for r in rows if len(r) >= 3 and r[0] != "TYPE"
                and (r[0] == "io.containerd.cri.v1" or (r[0], r[1]) == ("io.containerd.grpc.v1", "cri"))}

    def cri_status(self) -> str:
        """``ok`` when every CRI plugin is, else the first other status."""
        statuses = self.cri_statuses()
        assert statuses, self.ctr("plugins", "ls")
        return next((s for s in statuses.values() if s != "ok"), "ok")

    def agent(self, *args: str) -> Tuple[int, str]:
        """The real CLI, in process: (exit code, stdout + stderr)."""
        code, out, err = self.cli(*args)
        return code, out + err

    def run(self) -> Tuple[int, str, List[JobRecord]]:
        return self.run_recording()

    def statuses(self, out: str) -> Dict[str, str]:
        """check's table: name -> status."""
        rows = [ln.split() for ln in out.splitlines() if ln[:1].islower() and len(ln.split()) > 1]
        return {r[0]: r[1] for r in rows if r[1] in ("pass", "warn", "fail", "skip")}


@pytest.fixture(params=params())
def real_node(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
              boot_systemd: Callable[..., BootedSystemd]) -> Iterator[RealContainerdNode]:
    daemon: Daemon = request.param.need()
    base = Path(tempfile.mkdtemp(prefix="gna-", dir="/tmp"))
    try:
        yield RealContainerdNode(base, daemon, monkeypatch, capsys, boot_systemd)
    finally:
        shutil.rmtree(base, ignore_errors=True)
