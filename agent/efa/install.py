"""Installing the EFA userspace (``execute``, called by ``apply``): verified tarball -> safe extraction
-> installer -> re-check.

The tarball comes verified from the cache (``agent/efa/cache.py``), is extracted into a fresh
directory beside it (``agent/efa/safetar.py``), and ``aws-efa-installer/efa_installer.sh`` runs from
inside it through ``agent.base.process.run_streaming``: no shell, bounded time, output streamed to the
log, a heartbeat while it is silent, dead with the agent (``PR_SET_PDEATHSIG``). What it started
(yum, rpm) runs on in its process group, whose id is kept in a pid file so that the next run waits
for it instead of racing it. Afterwards the version file and ``fi_info`` are checked again.

Like ``rpm --root``, ``--root`` moves every path (the cache, the version file, ``fi_info``), not the
processes: the installer itself acts on the system it runs on.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

from agent.base import process
from agent.base.errors import NodeFileError
from agent.base.fs import read_text
from agent.base.log import get_logger
from agent.base.noderoot import NodeRoot
from agent.config.settings import EfaSettings
from agent.efa.decision import EfaAction, why_install
from agent.efa.download import DEFAULT_OPTIONS, DownloadOptions
from agent.efa.facts import INSTALLER_DIR, INSTALLER_SCRIPT, EfaError, discover

log = get_logger("efa")

INSTALLER_PID_FILE = "/run/gpu-node-agent/efa-installer.pid"  # under --root; gone at boot


class InstallerFailed(EfaError):
    pass


def execute(action: EfaAction, options: DownloadOptions = DEFAULT_OPTIONS) -> str:
    """Carry out an install action: verified tarball -> safe extraction -> installer -> re-check.

    Returns the action line for the report; raises ``AgentError`` (one line) on any failure.
    """
    import shutil
    import tempfile

    from agent.efa import cache
    from agent.efa.safetar import UnsafeTarball, extract_tarball

    settings, root = action.settings, action.root
    verified = cache.open_verified(settings, root, options)
    # An installer an earlier (killed) run started is waited for; then what it left is removed.
    wait_for_earlier_installer(root, settings.timeout_seconds)
    clean_stale(root, settings)
    with verified.file:
        try:
            workdir = Path(tempfile.mkdtemp(prefix=".efa-installer-", dir=verified.path.parent))
        except OSError as exc:
            raise EfaError(f"{verified.path.parent}: cannot create the extraction directory: "
                           f"{exc.strerror or exc}") from None
        try:
            try:
                extract_tarball(verified.file, workdir)
            except UnsafeTarball as exc:
                raise UnsafeTarball(f"{verified.path}: {exc}; nothing executed") from None
            run_installer(workdir / INSTALLER_DIR, settings.installer_args, settings.timeout_seconds,
                          pid_file=root.path(INSTALLER_PID_FILE))
        except InstallerFailed as exc:
            raise InstallerFailed(f"aws-efa-installer {settings.version}: {exc}") from None
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    after = discover(root, settings)
    if not after.installed_at(settings.version):
        raise InstallerFailed(f"aws-efa-installer {settings.version}: {INSTALLER_SCRIPT} exited 0 but "
                              f"{why_install(after, settings.version)}")
    libfabric = f" (libfabric {after.libfabric_version})" if after.libfabric_version else ""
    log.info("EFA userspace installed", version=settings.version, libfabric=after.libfabric_version)
    return f"EFA userspace {settings.version} installed{libfabric}"


def run_installer(directory: Path, args: Tuple[str, ...], timeout_seconds: float, *,
                  kill_grace_seconds: float = 5.0, pid_file: Optional[Path] = None,
                  heartbeat_seconds: Optional[float] = None, clock: Callable[[], float] = time.monotonic) -> None:
    """Run ``./efa_installer.sh ARGS`` in ``directory``; no shell, bounded, output to the log.

    The script dies with the agent (``PR_SET_PDEATHSIG``); what it started (yum, rpm) runs on in
    its process group, whose id is kept in ``pid_file`` so that the next run waits for it.
    """
    script = directory / INSTALLER_SCRIPT
    if not script.is_file() or script.is_symlink():
        raise InstallerFailed(f"{INSTALLER_DIR}/{INSTALLER_SCRIPT} is missing from the tarball")
    argv = ["./" + INSTALLER_SCRIPT, *args]
    log.info("running the EFA installer", cwd=str(directory), argv=argv, timeout=timeout_seconds)
    try:
        # Its own session: on timeout the whole group (yum, rpm, ...) is killed, not just the script;
        # the heartbeat because the installer can be silent for minutes inside dnf.
        done = process.run_streaming(
            argv, timeout_seconds, cwd=directory,
            on_line=lambda line: log.info("installer output", line=line),
            on_start=(lambda pid: _write_pid_file(pid_file, pid)) if pid_file is not None else lambda pid: None,
            heartbeat=INSTALLER_SCRIPT, heartbeat_seconds=heartbeat_seconds, clock=clock,
            kill_grace_seconds=kill_grace_seconds, die_with_parent=True)
    except OSError as exc:
        raise InstallerFailed(f"cannot run {INSTALLER_SCRIPT}: {exc.strerror or exc}") from None
    if done.returncode is None:
        raise InstallerFailed(f"{INSTALLER_SCRIPT} did not finish within {timeout_seconds:g}s "
                              f"(efa.timeout_seconds) and was killed{_last_output(done.tail)}")
    if pid_file is not None and not process.group_alive(done.pid):
        with contextlib.suppress(OSError):
            pid_file.unlink()
    if done.returncode != 0:
        raise InstallerFailed(f"{INSTALLER_SCRIPT} exited with status {done.returncode}{_last_output(done.tail)}")


def _last_output(tail: Sequence[str]) -> str:
    lines = list(tail)[-3:]
    if not lines:
        return ""
    text = " | ".join(lines)
    return f"; last output: {text if len(text) <= 400 else '...' + text[-397:]}"


# --- the installer across runs ----------------------------------------------------------------------


def _write_pid_file(pid_file: Path, pgid: int) -> None:
    from agent.base.fs import atomic_write

    try:
        pid_file.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(pid_file, f"{pgid}\n".encode(), mode=0o644)
    except (OSError, NodeFileError) as exc:
        log.warning("cannot record the installer's process group", path=str(pid_file), error=str(exc))


def earlier_installer(root: NodeRoot) -> Optional[int]:
    """The process group of an installer an earlier (killed) run started that is still running."""
    pid_file = root.path(INSTALLER_PID_FILE)
    try:
        pgid = int(read_text(pid_file, limit=64).strip())
    except (NodeFileError, ValueError):
        return None
    if pgid > 1 and process.group_alive(pgid):
        return pgid
    with contextlib.suppress(OSError):
        pid_file.unlink()
    return None


def wait_for_earlier_installer(root: NodeRoot, timeout_seconds: float, *,
                               clock: Callable[[], float] = time.monotonic,
                               sleep: Callable[[float], None] = time.sleep) -> None:
    """Never race an installer from an earlier run: wait (within ``timeout_seconds``) for it to end."""
    pgid = earlier_installer(root)
    if pgid is None:
        return
    log.warning("an EFA installer from an earlier run is still running; waiting for it", pgid=pgid,
                timeout=timeout_seconds)
    deadline = clock() + timeout_seconds
    while process.group_alive(pgid):
        if clock() >= deadline:
            raise InstallerFailed(f"an EFA installer started by an earlier run (process group {pgid}) is "
                                  f"still running after {timeout_seconds:g}s (efa.timeout_seconds); not "
                                  "starting another")
        sleep(0.5)
    earlier_installer(root)  # removes the pid file


def clean_stale(root: NodeRoot, settings: EfaSettings) -> None:
    """Extraction directories and downloads left by killed runs (none while an installer lives)."""
    import shutil

    from agent.efa.cache import remove_stale_downloads
    from agent.efa.download import DEFAULT_POLICY

    if earlier_installer(root) is not None:
        return
    directory = root.path(settings.cache_dir)
    try:
        stale_dirs = list(directory.glob(".efa-installer-*"))
    except OSError:
        return
    for stale in stale_dirs:
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
            log.info("removed an extraction directory left by an earlier run", path=str(stale))
    if directory.is_dir():
        remove_stale_downloads(directory, DEFAULT_POLICY.total_seconds)
