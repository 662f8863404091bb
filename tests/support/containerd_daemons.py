"""The real containerd daemons the tests run: Debian 12's own (1.6, ``/usr/bin``) and the ones
``scripts/fetch-containerd.sh`` extracts from Debian's archive into ``.cache/containerd/<version>/``,
pinned in ``scripts/containerd-versions.txt`` (1.7 from trixie, 2.x from forky).

A daemon whose binaries are missing is a skip naming the command that fetches it (a failure under
GNA_NO_SKIP=1: CI runs the fetch in setup).
"""

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
VERSIONS_FILE = REPO / "scripts" / "containerd-versions.txt"
CACHE = REPO / ".cache" / "containerd"
TOOLS = ("containerd", "ctr", "containerd-shim-runc-v2")


@dataclass(frozen=True)
class Daemon:
    series: str  # "1.6", "1.7", "2.1": the id tests are parametrized by
    source: str  # where the binaries come from
    bin_dir: Path

    @property
    def major(self) -> int:
        return int(self.series.split(".")[0])

    @property
    def layouts(self) -> "tuple[int, ...]":
        """The config versions the daemon reads: 1.x reads 2, 2.x reads 3 and migrates 2."""
        return (2, 3) if self.major >= 2 else (2,)

    def tool(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def missing(self) -> Optional[str]:
        """Why this daemon cannot run here, or None."""
        absent = [t for t in TOOLS if not self.tool(t).is_file()]
        if not absent:
            return None
        fetch = "install Debian's containerd package" if self.series == "1.6" else "run scripts/fetch-containerd.sh"
        return f"containerd {self.series} ({self.source}): {', '.join(absent)} missing from {self.bin_dir}: {fetch}"

    def need(self) -> "Daemon":
        if self.missing:
            pytest.skip(self.missing)
        return self

    def version_text(self) -> str:
        """What ``containerd --version`` prints (nodeadm writes it to /etc/eks/containerd-version.txt)."""
        return subprocess.run([str(self.tool("containerd")), "--version"], capture_output=True, text=True,
                              timeout=30, check=True).stdout


def pins() -> List[Daemon]:
    """The daemons of ``scripts/containerd-versions.txt`` (series, Debian suite, Debian version)."""
    out = []
    for line in VERSIONS_FILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            series, suite, version = line.split()
            out.append(Daemon(series, f"Debian {suite} {version}", CACHE / version / "usr" / "bin"))
    return out


DAEMONS = [Daemon("1.6", "Debian 12's containerd package", Path("/usr/bin")), *pins()]


def params(*, layout: Optional[int] = None, major: Optional[int] = None) -> List[Any]:
    """pytest params, one per daemon (that reads ``layout``, of ``major``), ids ``containerd-<series>``."""
    return [pytest.param(d, id=f"containerd-{d.series}") for d in DAEMONS
            if (layout is None or layout in d.layouts) and (major is None or d.major == major)]
