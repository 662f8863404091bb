"""EFA facts: the hardware and what is installed, read under ``--root`` (pure reads, no effects).

* the EFA devices: ``/sys/class/infiniband/*/device/{vendor,device}``, vendor ``0x1d0f``, device
  ``0xefa*``;
* the installer version file's first line (``/opt/amazon/efa_installed_packages``);
* whether ``fi_info`` exists and the libfabric version it prints (run through ``agent.base.process``,
  only on nodes that have it).

"Installed at the pin" needs the version line *and* ``fi_info``: the AMI's ``--minimal`` run also
writes the version file. Also the names every other part uses: the pinned tarball's name, URL and
cache path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

from agent.base.errors import AgentError, NodeFileError, NodeFileMissing
from agent.base.fs import read_text
from agent.base.noderoot import NodeRoot
from agent.config.settings import EfaSettings

VERSION_FILE = "/opt/amazon/efa_installed_packages"
SYSFS_LIMIT = 4096  # a sysfs attribute is at most a page
FI_INFO = "/opt/amazon/efa/bin/fi_info"
INFINIBAND_CLASS = "/sys/class/infiniband"
EFA_VENDOR_ID = "0x1d0f"  # Amazon
EFA_DEVICE_PREFIX = "0xefa"  # efa0..efa4 seen so far
INSTALLER_DIR = "aws-efa-installer"
INSTALLER_SCRIPT = "efa_installer.sh"
FI_INFO_TIMEOUT_SECONDS = 10.0
# Patterns as strings: compiled (and cached by re) on first use, not when `check` imports this.
_VERSION_LINE = r"#\s*EFA installer version:\s*(\S+)"
_LIBFABRIC_LINE = r"(?m)^libfabric:\s*(\S+)"
_PINNED_VERSION = r"\d+\.\d+\.\d+"


class EfaError(AgentError):
    """EFA userspace could not be fetched, verified or installed (one line, exit 1)."""


class EfaFacts(NamedTuple):
    devices: Tuple[str, ...]  # RDMA device names backed by EFA, e.g. ("rdmap0s6",)
    installer_version: Optional[str]  # from the version file's first line
    fi_info: bool  # /opt/amazon/efa/bin/fi_info exists
    libfabric_version: Optional[str]  # from `fi_info --version`
    cached: bool  # the pinned tarball is in the cache (verified only when used)
    problems: Tuple[str, ...] = ()  # what could not be read; reported, never fatal

    @property
    def hardware(self) -> bool:
        return bool(self.devices)

    def installed_at(self, version: str) -> bool:
        return self.installer_version == version and self.fi_info


def tarball_name(version: str) -> str:
    # Only a pinned X.Y.Z ever names a tarball: never the moving "-latest".
    if not re.fullmatch(_PINNED_VERSION, version):
        raise EfaError(f"efa.version: {version!r} is not a pinned version X.Y.Z")
    return f"aws-efa-installer-{version}.tar.gz"


def installer_url(settings: EfaSettings) -> str:
    return f"{settings.base_url.rstrip('/')}/{tarball_name(settings.version)}"


def cache_file(root: NodeRoot, settings: EfaSettings) -> Path:
    return root.path(settings.cache_dir) / tarball_name(settings.version)


def discover(root: NodeRoot, settings: EfaSettings) -> EfaFacts:
    problems: List[str] = []
    devices = _efa_devices(root, problems)
    installer_version = _installed_version(root, problems)
    fi_info = root.path(FI_INFO)
    present = fi_info.is_file()
    libfabric = _libfabric_version(fi_info, problems) if present else None
    return EfaFacts(
        devices=devices,
        installer_version=installer_version,
        fi_info=present,
        libfabric_version=libfabric,
        cached=cache_file(root, settings).is_file(),
        problems=tuple(problems),
    )


def _efa_devices(root: NodeRoot, problems: List[str]) -> Tuple[str, ...]:
    base = root.path(INFINIBAND_CLASS)
    try:
        entries = sorted(base.iterdir())
    except FileNotFoundError:
        return ()
    except OSError as exc:
        problems.append(f"{base}: {exc.strerror or exc}")
        return ()
    found = []
    for entry in entries:
        try:
            # bounded, non-blocking reads: a FIFO or device here cannot hang or flood the agent
            vendor = read_text(entry / "device" / "vendor", limit=SYSFS_LIMIT).strip().lower()
            device = read_text(entry / "device" / "device", limit=SYSFS_LIMIT).strip().lower()
        except NodeFileMissing:
            continue  # not a PCI-backed RDMA device
        except NodeFileError as exc:
            problems.append(str(exc))
            continue
        if vendor == EFA_VENDOR_ID and device.startswith(EFA_DEVICE_PREFIX):
            found.append(entry.name)
    return tuple(found)


def _installed_version(root: NodeRoot, problems: List[str]) -> Optional[str]:
    path = root.path(VERSION_FILE)
    try:
        text = read_text(path)
    except NodeFileMissing:
        return None
    except NodeFileError as exc:
        problems.append(str(exc))
        return None
    first = text.splitlines()[0] if text else ""
    match = re.match(_VERSION_LINE, first)
    if not match:
        problems.append(f"{path}: first line is not '# EFA installer version: X.Y.Z' ({first[:60]!r})")
        return None
    return match.group(1)


def _libfabric_version(fi_info: Path, problems: List[str]) -> Optional[str]:
    from agent.base import process  # only on nodes that have fi_info: `check` stays fast elsewhere

    try:
        out = process.run([str(fi_info), "--version"], FI_INFO_TIMEOUT_SECONDS)
    except OSError as exc:
        problems.append(f"{fi_info} --version: {exc.strerror or exc}")
        return None
    if out.returncode is None:
        problems.append(f"{fi_info} --version did not answer within {FI_INFO_TIMEOUT_SECONDS:g}s")
        return None
    match = re.search(_LIBFABRIC_LINE, out.stdout)
    if out.returncode != 0 or not match:
        err = (out.stderr.strip().splitlines() or [""])[-1][:200]
        problems.append(f"{fi_info} --version exited {out.returncode} without a libfabric version {err!r}")
        return None
    return match.group(1)
