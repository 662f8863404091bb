"""EFA userspace: detect the hardware and what is installed, decide, fetch, verify, extract, install.

The EKS AMI already ran ``efa_installer.sh --minimal -y`` (kernel module, rdma-core, efa-config, no
libfabric). On instances with EFA hardware the agent adds the userspace (libfabric, ``fi_info``, Open
MPI) from a **pinned** ``aws-efa-installer-<version>.tar.gz``, verified against a pinned SHA256:

* ``discover`` reads, under ``--root``: the EFA devices (``/sys/class/infiniband/*/device/{vendor,
  device}``, vendor ``0x1d0f``, device ``0xefa*``), the installer version file's first line, whether
  ``fi_info`` exists and the libfabric version it prints. "Installed at the pin" needs the version
  line *and* ``fi_info``: the AMI's ``--minimal`` run also writes the version file.
* ``decide`` (pure, called by ``plan``) turns facts and settings into an ``EfaAction``.
* ``fetch`` downloads into ``cache_dir``: streamed to a temporary file, hashed on the fly, renamed
  into the cache only when the SHA256 matches; bounded retries with exponential backoff and jitter on
  connection errors and 5xx; resumed with ``Range`` when the server allows it. A cached tarball is
  re-verified before use, so a node whose AMI was baked with ``efa fetch`` needs no network at boot.
* ``execute`` (called by ``apply``) re-verifies the tarball, extracts it into a fresh directory with
  our own safety checks (absolute paths, ``..``, links leaving the directory, device files, absurd
  sizes; ``tarfile``'s data filter is an extra layer where the interpreter has it), runs
  ``aws-efa-installer/efa_installer.sh`` from inside it (no shell, bounded time, output streamed to
  the log), then checks the version file and ``fi_info`` again.

Like ``rpm --root``, ``--root`` moves every path (the cache, the version file, ``fi_info``), not the
processes: the installer itself acts on the system it runs on.

Written for AL2023's python3-requests 2.25 / urllib3 1.25: no urllib3 ``Retry`` (our own small loop),
and the body length is checked by hand (urllib3 1.x does not enforce ``Content-Length``).
"""

import contextlib
import os
import random
import re
import time
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator, List, NamedTuple, Optional, Tuple, cast

from agent.config import FORBIDDEN_INSTALLER_ARGS, EfaSettings, gpg_fingerprint
from agent.errors import AgentError, NodeFileError, NodeFileMissing
from agent.fs import NodeRoot, fsync_dir, read_text
from agent.health import FAIL, PASS, SKIP, WARN, CheckResult
from agent.log import get_logger
from agent.retry import backoff
from agent.text import clip

if TYPE_CHECKING:
    import tarfile

log = get_logger("efa")

VERSION_FILE = "/opt/amazon/efa_installed_packages"
FI_INFO = "/opt/amazon/efa/bin/fi_info"
INFINIBAND_CLASS = "/sys/class/infiniband"
EFA_VENDOR_ID = "0x1d0f"  # Amazon
EFA_DEVICE_PREFIX = "0xefa"  # efa0..efa4 seen so far
INSTALLER_DIR = "aws-efa-installer"
INSTALLER_SCRIPT = "efa_installer.sh"
FI_INFO_TIMEOUT_SECONDS = 10.0
CHUNK_SIZE = 1 << 20
# Patterns as strings: compiled (and cached by re) on first use, not when `check` imports this.
_VERSION_LINE = r"#\s*EFA installer version:\s*(\S+)"
_LIBFABRIC_LINE = r"(?m)^libfabric:\s*(\S+)"
_PINNED_VERSION = r"\d+\.\d+\.\d+"


class EfaError(AgentError):
    """EFA userspace could not be fetched, verified or installed (one line, exit 1)."""


class DownloadError(EfaError):
    pass


class ChecksumMismatch(EfaError):
    pass


class UnsafeTarball(EfaError):
    pass


class InstallerFailed(EfaError):
    pass


# --- discovery ------------------------------------------------------------------------------------


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
            vendor = (entry / "device" / "vendor").read_text().strip().lower()
            device = (entry / "device" / "device").read_text().strip().lower()
        except FileNotFoundError:
            continue  # not a PCI-backed RDMA device
        except OSError as exc:
            problems.append(f"{entry}/device: {exc.strerror or exc}")
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
    import subprocess  # only on nodes that have fi_info: `check` stays fast elsewhere

    try:
        proc = subprocess.run(
            [str(fi_info), "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=FI_INFO_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        problems.append(f"{fi_info} --version did not answer within {FI_INFO_TIMEOUT_SECONDS:g}s")
        return None
    except OSError as exc:
        problems.append(f"{fi_info} --version: {exc.strerror or exc}")
        return None
    out = proc.stdout.decode("utf-8", "replace")
    match = re.search(_LIBFABRIC_LINE, out)
    if proc.returncode != 0 or not match:
        err = (proc.stderr.decode("utf-8", "replace").strip().splitlines() or [""])[-1][:200]
        problems.append(f"{fi_info} --version exited {proc.returncode} without a libfabric version {err!r}")
        return None
    return match.group(1)


# --- decision (pure) ------------------------------------------------------------------------------


class EfaAction(NamedTuple):
    """What ``run`` does about the EFA userspace, and why. Carries everything ``execute`` needs."""

    install: bool
    reason: str
    settings: EfaSettings
    root: NodeRoot
    cached: bool = False
    applicable: bool = True  # False: no EFA hardware and efa.install is not always; plan stays quiet

    def describe(self) -> str:
        if not self.install:
            return f"no action: {self.reason}"
        s = self.settings
        if self.cached:
            cached = self.root.node_path(cache_file(self.root, s))
            source = f"from the cache {cached} (re-verified before use)"
        else:
            source = f"download {installer_url(s)} ({_pinned_by(s)})"
        return f"install aws-efa-installer {s.version}: {self.reason}; {source}"


def missing_pin(settings: EfaSettings) -> str:
    from agent import efa_verify

    return efa_verify.missing_pin(settings, installer_url(settings), tarball_name(settings.version))


def _pinned_by(settings: EfaSettings) -> str:
    parts = [f"sha256 {settings.sha256}"] if settings.sha256 else []
    if settings.gpg_fingerprint:
        parts.append(f"signed by {gpg_fingerprint(settings.gpg_fingerprint)}")
    return ", ".join(parts)


def _why_install(facts: EfaFacts, version: str) -> str:
    if facts.installer_version is None:
        return "EFA userspace not installed (no installer version in /opt/amazon/efa_installed_packages)"
    if facts.installer_version != version:
        return f"installed {facts.installer_version}, pinned {version}"
    return (f"installer version {version} recorded but {FI_INFO} is missing "
            "(the AMI's --minimal install has no libfabric)")


def decide(facts: EfaFacts, settings: EfaSettings, root: NodeRoot) -> Tuple[EfaAction, Tuple[str, ...]]:
    """Pure: install when EFA applies and the pinned version is not installed; else nothing."""

    applicable = facts.hardware or settings.install == "always"

    def nothing(reason: str, problems: Tuple[str, ...] = ()) -> Tuple[EfaAction, Tuple[str, ...]]:
        return EfaAction(False, reason, settings, root, applicable=applicable), problems

    if settings.install == "never":
        return nothing("efa.install is never")
    if not applicable:
        return nothing(f"no EFA device under {INFINIBAND_CLASS} (not applicable on this instance)")
    if facts.installed_at(settings.version):
        libfabric = f", libfabric {facts.libfabric_version}" if facts.libfabric_version else ""
        return nothing(f"EFA userspace {settings.version} installed{libfabric}")
    why = _why_install(facts, settings.version)
    forbidden = _forbidden_args(settings)
    if forbidden:
        return nothing(f"{why}; not installing", (forbidden,))
    if not (settings.sha256 or settings.gpg_fingerprint):
        return nothing(f"{why}; refused, no efa.sha256 or efa.gpg_fingerprint", (missing_pin(settings),))
    return EfaAction(True, why, settings, root, cached=facts.cached), ()


def _forbidden_args(settings: EfaSettings) -> str:
    found = [a for a in settings.installer_args if a in FORBIDDEN_INSTALLER_ARGS]
    if not found:
        return ""
    return (f"efa.installer_args has {' '.join(found)}: --minimal installs no libfabric, "
            "--skip-limit-conf removes the AMI's efa-config, -u uninstalls; remove it")


def check(facts: EfaFacts, settings: EfaSettings) -> CheckResult:
    name = "efa"
    details = {
        "devices": list(facts.devices),
        "installer_version": facts.installer_version,
        "fi_info": facts.fi_info,
        "libfabric": facts.libfabric_version,
        "pinned": settings.version,
        "install": settings.install,
    }
    notes = "; ".join(facts.problems)
    if not facts.hardware and settings.install != "always":
        return CheckResult(name, SKIP, f"no EFA device under {INFINIBAND_CLASS}: not applicable", details)
    devices = ", ".join(facts.devices) or "no EFA device, efa.install is always"
    libfabric = f", libfabric {facts.libfabric_version}" if facts.libfabric_version else ""
    if settings.install == "never":
        if facts.fi_info:
            return CheckResult(name, WARN if notes else PASS,
                               f"EFA userspace {facts.installer_version or '?'}{libfabric} present, "
                               f"not managed (efa.install: never) ({devices}){'; ' + notes if notes else ''}",
                               details)
        return CheckResult(name, WARN, f"EFA device present ({devices}) but no EFA userspace ({FI_INFO} "
                           "missing); efa.install is never", details)
    if facts.installed_at(settings.version):
        if notes:
            return CheckResult(name, WARN, f"EFA userspace {settings.version} installed but {notes}", details)
        return CheckResult(name, PASS, f"EFA userspace {settings.version}{libfabric} ({devices})", details)
    why = _why_install(facts, settings.version)
    fix = _forbidden_args(settings) or (
        missing_pin(settings) if not (settings.sha256 or settings.gpg_fingerprint)
        else "`gpu-node-agent run` installs it")
    return CheckResult(name, FAIL, f"{why} ({devices}); {fix}{'; ' + notes if notes else ''}", details)


# --- fetch ------------------------------------------------------------------------------------------


class DownloadPolicy(NamedTuple):
    """Bounds of one download. Defaults suit a few-hundred-MiB tarball over a node's network."""

    attempts: int = 5
    backoff_seconds: float = 1.0  # first retry waits about this long, doubling each time
    backoff_cap_seconds: float = 30.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # longest silence from the server while reading
    total_seconds: float = 1800.0  # whole download, retries included
    max_bytes: int = 4 << 30  # no installer tarball comes close
    # Large reads keep the hand-offs to the hashing thread rare; 4 buffers of 4 MiB is the memory
    # cost, whatever the file size (bench/efa_fetch.py measures both).
    chunk_size: int = 4 << 20


DEFAULT_POLICY = DownloadPolicy()


def sha256_of(f: IO[bytes], chunk_size: int = CHUNK_SIZE) -> str:
    import hashlib

    digest = hashlib.sha256()
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    while True:
        n = f.readinto(buf)  # type: ignore[attr-defined]
        if not n:
            break
        digest.update(view[:n])
    return digest.hexdigest()


def require_pin(settings: EfaSettings) -> Optional[str]:
    """The pinned SHA-256 (None when only the signing key is pinned); no pin at all is an error."""
    if not (settings.sha256 or settings.gpg_fingerprint):
        raise EfaError(missing_pin(settings))
    return settings.sha256.lower() if settings.sha256 else None


def signature_files(root: NodeRoot, settings: EfaSettings) -> Tuple[Path, Path]:
    """Where the cache keeps the tarball's ``.sig`` and the signing key beside it."""
    from agent import efa_verify

    directory = root.path(settings.cache_dir)
    return (directory / efa_verify.signature_name(tarball_name(settings.version)),
            directory / efa_verify.KEY_NAME)


def _fetch_signature_files(settings: EfaSettings, root: NodeRoot, fetch_kw: Any) -> None:
    """The ``.sig`` and the key, downloaded beside the tarball when the cache lacks them. Neither is
    trusted as such: the key counts only if its fingerprint is the pin (efa_verify)."""
    from agent import efa_verify

    base = settings.base_url.rstrip("/")
    small = dict(fetch_kw, policy=fetch_kw["policy"]._replace(max_bytes=1 << 20))
    for path in signature_files(root, settings):
        if not path.is_file():
            try:
                download(f"{base}/{path.name}", path, None, **small)
            except DownloadError as exc:
                raise efa_verify.SignatureError(f"{exc} (efa.gpg_fingerprint is set: the signature "
                                                f"and {efa_verify.KEY_NAME} are needed); nothing executed"
                                                ) from None


def verify_pins(f: IO[bytes], path: Path, settings: EfaSettings, root: NodeRoot,
                sha256: Optional[str] = None) -> Optional[str]:
    """Check the open tarball ``f`` against every pin; a problem (for a message) or None when good.

    ``sha256``: the file's digest when already known (computed while it streamed in).
    A signature that does not verify raises ``SignatureError``.
    """
    from agent import efa_verify

    expected = settings.sha256.lower() if settings.sha256 else None
    if expected is not None:
        actual = sha256 if sha256 is not None else sha256_of(f)
        if actual != expected:
            return f"had sha256 {actual}, not efa.sha256"
    if settings.gpg_fingerprint:
        sig, key = signature_files(root, settings)
        efa_verify.verify_signature(f, sig, key, settings.gpg_fingerprint, path.name)
    f.seek(0)
    return None


def _ensure_cache_dir(root: NodeRoot, settings: EfaSettings) -> Path:
    directory = root.path(settings.cache_dir)
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise EfaError(f"{directory}: cannot create the cache directory: {exc.strerror or exc}") from None
    if not directory.is_dir():
        raise EfaError(f"{directory}: efa.cache_dir is not a directory")
    return directory


def fetch(
    settings: EfaSettings,
    root: NodeRoot,
    *,
    policy: DownloadPolicy = DEFAULT_POLICY,
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
    clock: Callable[[], float] = time.monotonic,
    durable: bool = False,
) -> Path:
    """The pinned tarball in the cache, verified; downloaded only when the cache lacks a good copy.

    ``durable``: sync the download to disk (``efa fetch``, whose cache must outlive an AMI snapshot).
    """
    expected = require_pin(settings)
    directory = _ensure_cache_dir(root, settings)
    _remove_stale_downloads(directory, policy.total_seconds)
    target = cache_file(root, settings)
    kw: Any = dict(policy=policy, sleep=sleep, rand=rand, clock=clock, durable=durable)
    corrupted = ""
    if target.exists():
        if settings.gpg_fingerprint:
            _fetch_signature_files(settings, root, kw)
        problem = _cached_problem(target, settings, root)
        if problem is None:
            log.info("cached installer verified", path=str(target), verified=_pinned_by(settings))
            return target
        log.warning("cached installer does not match its pin; downloading it again", path=str(target),
                    problem=problem)
        _remove(target)
        corrupted = f"{target}: cached copy {problem} (removed); "
        if settings.gpg_fingerprint:  # the signature may be what is stale: it is fetched again too
            _remove(signature_files(root, settings)[0])

    def verify(tmp: Path, digest: str) -> None:
        with open(tmp, "rb") as f:
            problem = verify_pins(f, target, settings, root, sha256=digest)
        if problem:  # download() compared the digest already; kept as a second guard
            raise ChecksumMismatch(f"{installer_url(settings)}: {problem}; discarded, nothing installed")

    from agent.efa_verify import SignatureError

    try:
        if settings.gpg_fingerprint:
            _fetch_signature_files(settings, root, kw)
        download(installer_url(settings), target, expected, verify=verify, **kw)
    except (DownloadError, ChecksumMismatch, SignatureError) as exc:
        if corrupted:
            raise type(exc)(corrupted + str(exc)) from None
        raise
    return target


def _cached_problem(target: Path, settings: EfaSettings, root: NodeRoot) -> Optional[str]:
    from agent.efa_verify import SignatureError

    try:
        with open(target, "rb") as f:
            return verify_pins(f, target, settings, root)
    except OSError as exc:
        raise EfaError(f"{target}: cannot read the cached installer: {exc.strerror or exc}") from None
    except SignatureError as exc:
        return f"failed signature verification ({exc})"


def _remove_stale_downloads(directory: Path, max_age_seconds: float) -> None:
    """Temporary files of downloads that were killed (no live download is older than its deadline)."""
    now = time.time()
    for part in directory.glob(".aws-efa-installer-*.part"):
        try:
            if now - part.stat().st_mtime > max_age_seconds:
                part.unlink()
                log.info("removed an interrupted download", path=str(part))
        except OSError:
            pass  # gone meanwhile, or not ours to remove: never fatal


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise EfaError(f"{path}: cannot remove: {exc.strerror or exc}") from None


class _Retryable(Exception):
    """A transient failure of one attempt: connection error, timeout, short body, 5xx."""


class _WriteFailed(Exception):
    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))
        self.error = error


class _Partial:
    """The bytes received so far: the temporary file, and the SHA-256 of exactly those bytes.

    Hashing costs about as much CPU as receiving and writing together, so it runs on its own
    thread (hashlib releases the GIL) and overlaps with the network and the disk. Bytes arrive in
    a small ring of reusable buffers, read straight from the socket, so memory stays flat
    whatever the file size.
    """

    def __init__(self, f: IO[bytes], chunk_size: int, buffers: int = 4) -> None:
        import hashlib
        import queue
        import threading

        self.f = f
        self.written = 0
        self.validator: Optional[str] = None  # ETag or Last-Modified, for If-Range
        self.total: Optional[int] = None  # the whole file's size, when the server said
        self.progress: Optional[Callable[[int], None]] = None  # told the byte count as it grows
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._full: queue.Queue[Optional[Tuple[bytearray, int]]] = queue.Queue()
        for _ in range(buffers):
            self._free.put(bytearray(chunk_size))
        self._sha256 = hashlib.sha256
        self._digest = self._sha256()
        self._threading = threading
        self._thread: Optional[threading.Thread] = None
        self._start_hashing()

    def _start_hashing(self) -> None:
        self._thread = self._threading.Thread(target=self._hash_loop, name="efa-sha256", daemon=True)
        self._thread.start()

    def _hash_loop(self) -> None:
        while True:
            item = self._full.get()
            if item is None:
                return
            buf, n = item
            with memoryview(buf) as view:
                self._digest.update(view[:n])
            self._free.put(buf)

    def receive(self, readinto: Callable[[bytearray], int]) -> int:
        """Read the next piece of the body, write it and queue it for hashing; 0 at the end."""
        buf = self._free.get()
        try:
            n = readinto(buf)
        except BaseException:
            self._free.put(buf)
            raise
        if not n:
            self._free.put(buf)
            return 0
        try:
            with memoryview(buf) as view:
                self.f.write(view[:n])  # a BufferedWriter: writes it all or raises
        except OSError as exc:
            self._free.put(buf)
            raise _WriteFailed(exc) from None
        self._full.put((buf, n))
        self.written += n
        if self.progress is not None:
            self.progress(self.written)
        return n

    def _stop_hashing(self) -> None:
        if self._thread is not None:
            self._full.put(None)
            self._thread.join()
            self._thread = None

    def hexdigest(self) -> str:
        self._stop_hashing()
        return self._digest.hexdigest()

    def restart(self) -> None:
        self._stop_hashing()
        try:
            self.f.seek(0)
            self.f.truncate()
        except OSError as exc:
            raise _WriteFailed(exc) from None
        self.written = 0
        self._digest = self._sha256()
        self._start_hashing()

    def close(self) -> None:
        self._stop_hashing()


# Read the body with http.client's own readinto (socket -> our buffer, no copy), which urllib3
# 1.25 and 2.x both expose as ``_fp``; the public, copying ``raw.read`` is the fallback.
_ZERO_COPY_READ = True


def _body_reader(response: Any) -> Callable[[bytearray], int]:
    fp = getattr(response.raw, "_fp", None) if _ZERO_COPY_READ else None
    if fp is not None and callable(getattr(fp, "readinto", None)):
        return cast(Callable[[bytearray], int], fp.readinto)

    def read_copying(buf: bytearray) -> int:
        data = response.raw.read(len(buf), decode_content=False)
        buf[: len(data)] = data
        return len(data)

    return read_copying


_CONTENT_RANGE = r"bytes\s+(\d+)-(\d+)/(\d+|\*)"


def download(
    url: str,
    target: Path,
    sha256: Optional[str],
    *,
    policy: DownloadPolicy = DEFAULT_POLICY,
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
    clock: Callable[[], float] = time.monotonic,
    durable: bool = False,
    verify: Optional[Callable[[Path, str], None]] = None,
) -> None:
    """Download ``url`` to ``target``; ``target`` only ever appears complete and verified.

    ``sha256`` None: no digest to compare (the ``.sig`` and the key, checked by ``efa_verify``).
    ``verify(tmp, sha256)`` runs on the complete temporary file before the rename; it raises to refuse.

    The body goes to a temporary file beside ``target`` and is hashed as it arrives (memory stays
    flat). Transient failures are retried up to ``policy.attempts`` times, resuming with ``Range``
    when the server honours it. On any failure the temporary file is removed. ``durable`` syncs the
    file to disk before the rename (for a cache that must survive the AMI snapshot); otherwise a
    crash can at worst leave a torn file, which the re-verification before use discards.
    """
    import tempfile

    import requests

    directory = target.parent
    expected = sha256.lower() if sha256 else None
    deadline = clock() + policy.total_seconds
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=directory)
    except OSError as exc:
        raise DownloadError(f"{directory}: cannot create a temporary file: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            partial = _Partial(f, policy.chunk_size)
            from agent import progress

            shown = progress.Transfer(url, lambda: partial.total, clock=clock)
            partial.progress = shown.update
            with contextlib.closing(partial), requests.Session() as session:
                attempt = 0
                while True:
                    attempt += 1
                    try:
                        _attempt(session, url, partial, policy, directory, deadline, clock)
                        break
                    except _Retryable as exc:
                        delay = backoff(attempt, policy.backoff_seconds, policy.backoff_cap_seconds, rand)
                        if attempt >= policy.attempts or clock() + delay >= deadline:
                            plural = "s" if attempt > 1 else ""
                            raise DownloadError(
                                f"{url}: download failed after {attempt} attempt{plural}: {exc}"
                            ) from None
                        log.warning("download interrupted; retrying", url=url, attempt=attempt,
                                    received=partial.written, error=str(exc), retry_in=round(delay, 2))
                        sleep(delay)
            try:
                f.flush()
                if durable:
                    os.fsync(f.fileno())
            except OSError as exc:
                raise _WriteFailed(exc) from None
            actual = partial.hexdigest()
            shown.finish()
        if expected is not None and actual != expected:
            raise ChecksumMismatch(
                f"{url}: sha256 {actual} does not match efa.sha256 {expected} "
                f"({partial.written} bytes received); discarded, nothing installed"
            )
        if verify is not None:
            verify(tmp, actual)
        os.chmod(tmp, 0o644)
        os.rename(tmp, target)
        if durable:
            fsync_dir(directory)
        log.info("installer downloaded and verified", url=url, path=str(target), bytes=partial.written,
                 sha256=actual)
    except _WriteFailed as exc:
        raise DownloadError(f"{directory}: cannot write the download: {exc}; nothing kept") from None
    except OSError as exc:  # closing (flushing) the file, chmod, rename
        raise DownloadError(f"{directory}: cannot store the download: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # still there only when something failed


def _one_line(exc: BaseException) -> str:
    """The root cause of a requests/urllib3 error as one short line, without object reprs."""
    for _ in range(10):  # requests wraps urllib3 wraps socket errors
        reason = getattr(exc, "reason", None)
        if isinstance(reason, BaseException):
            exc = reason
        elif exc.args and isinstance(exc.args[0], BaseException):
            exc = exc.args[0]
        else:
            break
    args = exc.args
    text = args[0] if args and isinstance(args[0], str) else str(exc)
    if len(args) > 1 and isinstance(args[1], BaseException):
        cause = _one_line(args[1])
        if cause not in text and type(args[1]).__name__ not in text:
            text = f"{text}: {cause}"
    text = re.sub(r"<[^<>]* object at 0x[0-9a-f]+>: ", "", text)  # urllib3 1.x connection reprs
    text = re.sub(r"\b\w+Connection(Pool)?\(host=[^)]*\): ", "", text)
    text = " ".join(text.split())
    return clip(text, 300)


def _attempt(
    session: Any,
    url: str,
    partial: _Partial,
    policy: DownloadPolicy,
    directory: Path,
    deadline: float,
    clock: Callable[[], float],
) -> None:
    import http.client

    import requests
    import urllib3

    # identity: the stored bytes must be the published bytes (and Range offsets mean those bytes)
    headers = {"Accept-Encoding": "identity"}
    if partial.written:
        headers["Range"] = f"bytes={partial.written}-"
        if partial.validator:
            headers["If-Range"] = partial.validator
    left = deadline - clock()
    if left <= 0:
        raise DownloadError(f"{url}: download took longer than {policy.total_seconds:g}s "
                            f"({partial.written} bytes received)")
    try:
        response = session.get(url, stream=True, headers=headers, allow_redirects=True,
                               timeout=(min(policy.connect_timeout, left), min(policy.read_timeout, left)))
    except requests.exceptions.SSLError as exc:
        # Not transient; SSLError is a ConnectionError, so it is caught first.
        raise DownloadError(f"{url}: TLS verification failed: {_one_line(exc)} "
                            "(a private mirror's CA goes in REQUESTS_CA_BUNDLE)") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise _Retryable(_one_line(exc)) from None
    except requests.exceptions.RequestException as exc:
        raise DownloadError(f"{url}: {_one_line(exc)}") from None
    try:
        status = response.status_code
        if status >= 500 or status == 429:
            raise _Retryable(f"HTTP {status} {response.reason}")
        if status == 416:
            partial.restart()
            raise _Retryable("HTTP 416: the server refused the resume range; starting over")
        if status == 206 and partial.written:
            match = re.fullmatch(_CONTENT_RANGE, response.headers.get("Content-Range", "").strip())
            if not match or int(match.group(1)) != partial.written:
                partial.restart()
                raise _Retryable(f"unexpected Content-Range {response.headers.get('Content-Range')!r}; "
                                 "starting over")
            log.info("resuming download", url=url, offset=partial.written)
        elif status == 200:
            if partial.written:
                log.info("server does not resume; downloading from the start", url=url)
                partial.restart()
            etag = response.headers.get("ETag", "")
            partial.validator = etag if etag and not etag.startswith("W/") else (
                response.headers.get("Last-Modified") or None)
        else:
            hint = " (is efa.version published at efa.base_url?)" if status == 404 else ""
            raise DownloadError(f"{url}: HTTP {status} {response.reason}{hint}")
        length_header = response.headers.get("Content-Length")
        remaining = int(length_header) if length_header and length_header.isdigit() else None
        expected_total = partial.written + remaining if remaining is not None else None
        partial.total = expected_total
        if expected_total is not None:
            if expected_total > policy.max_bytes:
                raise DownloadError(f"{url}: {expected_total} bytes is more than the {policy.max_bytes} "
                                    "an installer tarball can be")
            _check_free_space(directory, remaining or 0)
        # The body length is counted here, the same on urllib3 1.x (which never enforces
        # Content-Length) and 2.x (which raises on a short body and loses that read's bytes).
        response.raw.enforce_content_length = False
        readinto = _body_reader(response)
        late = DownloadError(f"{url}: download took longer than {policy.total_seconds:g}s "
                             "(efa download deadline)")
        try:
            with _deadline_watch(response, deadline - clock()):
                while partial.receive(readinto):
                    if partial.written > policy.max_bytes:
                        raise DownloadError(f"{url}: more than {policy.max_bytes} bytes; "
                                            "not an installer tarball")
                    if clock() > deadline:
                        raise late
        except (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError) as exc:
            # reset, timeout, TLS error, broken chunked encoding: what was received is kept
            if clock() > deadline:
                raise late from None
            raise _Retryable(f"{_one_line(exc)} ({partial.written} bytes kept)") from None
        if clock() > deadline:
            raise late
        if expected_total is not None and partial.written < expected_total:
            raise _Retryable(f"connection closed after {partial.written} of {expected_total} bytes")
    finally:
        response.close()


@contextlib.contextmanager
def _deadline_watch(response: Any, seconds: float) -> Iterator[None]:
    """Bound every socket read by the download's overall deadline, not just by the read timeout
    (which a server trickling one byte at a time never trips): at the deadline the connection is
    shut down, so a read waiting to fill its buffer returns at once."""
    import socket
    import threading

    sock = _socket_of(response)
    if sock is None:
        yield
        return

    def cut() -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(max(0.0, seconds), cut)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _socket_of(response: Any) -> Any:
    """The socket under a streamed requests response (urllib3 1.25 and 2.x), or None."""
    connection = getattr(response.raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    if sock is None:  # http.client's file object: BufferedReader -> SocketIO -> socket
        raw = getattr(getattr(getattr(response.raw, "_fp", None), "fp", None), "raw", None)
        sock = getattr(raw, "_sock", None)
    return sock if callable(getattr(sock, "shutdown", None)) else None


def _check_free_space(directory: Path, needed: int) -> None:
    try:
        st = os.statvfs(directory)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if needed > free:
        raise DownloadError(f"{directory}: {needed} more bytes needed for the download, only {free} free; "
                            "nothing kept")


# --- safe extraction --------------------------------------------------------------------------------


class ExtractLimits(NamedTuple):
    max_members: int = 100_000
    max_member_bytes: int = 2 << 30
    max_total_bytes: int = 8 << 30


DEFAULT_LIMITS = ExtractLimits()


def extract_tarball(f: IO[bytes], dest: Path, limits: ExtractLimits = DEFAULT_LIMITS) -> None:
    """Extract a ``.tar.gz`` stream into the empty directory ``dest``, refusing anything unsafe.

    Our own checks run whatever the interpreter (3.9 has no ``tarfile`` filters): relative names
    without ``..``, regular files, directories, and links that stay inside ``dest`` only; nothing is
    written through a symlink; sizes are bounded. Where ``tarfile.data_filter`` exists it runs too.
    Owners are never taken from the archive; set-id bits and group/other write bits are dropped.
    """
    import tarfile
    import zlib

    dest_real = os.path.realpath(dest)
    if os.listdir(dest_real):
        raise UnsafeTarball(f"{dest_real}: extraction directory is not empty")
    data_filter = getattr(tarfile, "data_filter", None)
    count = 0
    total = 0
    try:
        with tarfile.open(fileobj=f, mode="r|gz") as archive:
            for member in archive:
                count += 1
                if count > limits.max_members:
                    raise UnsafeTarball(f"more than {limits.max_members} entries")
                rel = _member_path(member.name)
                if member.isreg():
                    if member.size > limits.max_member_bytes:
                        raise UnsafeTarball(f"{member.name}: {member.size} bytes is more than "
                                            f"{limits.max_member_bytes} allowed per file")
                    total += member.size
                    if total > limits.max_total_bytes:
                        raise UnsafeTarball(f"more than {limits.max_total_bytes} bytes in total")
                if rel is not None:
                    _refuse_unsafe(member, rel, dest_real)
                if data_filter is not None:
                    try:
                        data_filter(member, dest_real)
                    except tarfile.FilterError as exc:
                        raise UnsafeTarball(f"{member.name}: {exc}") from None
                if rel is None:
                    continue  # the archive's own "./"
                _extract_member(archive, member, rel, dest_real)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise UnsafeTarball(f"not a valid .tar.gz: {exc}") from None
    except OSError as exc:
        raise EfaError(f"{dest_real}: extraction failed: {exc.strerror or exc}") from None
    _audit_links(dest_real)


def _member_path(name: str) -> Optional[str]:
    if name.startswith("/") or name.startswith("\\"):
        raise UnsafeTarball(f"{name}: absolute path")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if ".." in parts:
        raise UnsafeTarball(f"{name}: path with '..'")
    return "/".join(parts) or None


def _inside(dest_real: str, path: str) -> bool:
    return path == dest_real or path.startswith(dest_real + os.sep)


def _refuse_unsafe(member: "tarfile.TarInfo", rel: str, dest_real: str) -> None:
    """Our own checks of one entry, before anything is written (and before tarfile's filter)."""
    if member.isdir() or member.isreg():
        return
    if member.issym():
        link = member.linkname
        if not link or link.startswith("/"):
            raise UnsafeTarball(f"{member.name}: symbolic link to the absolute path {link!r}")
        parent = os.path.dirname(os.path.join(dest_real, rel))
        if not _inside(dest_real, os.path.normpath(os.path.join(parent, link))):
            raise UnsafeTarball(f"{member.name}: symbolic link to {link!r} leaves the installer directory")
    elif member.islnk():
        try:
            source_rel = _member_path(member.linkname)
        except UnsafeTarball:
            source_rel = None
        if source_rel is None:
            raise UnsafeTarball(f"{member.name}: hard link to {member.linkname!r} leaves the installer "
                                "directory")
    else:
        kind = ("device node" if member.ischr() or member.isblk() else "FIFO" if member.isfifo()
                else f"entry of type {member.type!r}")
        raise UnsafeTarball(f"{member.name}: {kind} not allowed in an installer tarball")


def _make_parents(dest_real: str, parent: str) -> None:
    """Directories the archive names only through its files' paths: 0755 whatever the umask (makedirs
    applies its mode to the last directory only)."""
    missing = []
    while parent != dest_real and not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        os.mkdir(directory, 0o700)
        os.chmod(directory, 0o755)  # noqa: S103 (not writable by others: the point of this function)


def _extract_member(archive: "tarfile.TarFile", member: "tarfile.TarInfo", rel: str, dest_real: str) -> None:
    """Write one checked entry; the on-disk checks here see links created by earlier entries."""
    target = os.path.join(dest_real, rel)
    parent = os.path.dirname(target)
    # No symlink anywhere in the parent chain: a real path equals its own realpath.
    if os.path.realpath(parent) != parent:
        raise UnsafeTarball(f"{member.name}: would be written through a symbolic link")
    _make_parents(dest_real, parent)
    if member.isdir():
        if os.path.lexists(target):
            if os.path.islink(target) or not os.path.isdir(target):
                raise UnsafeTarball(f"{member.name}: directory entry collides with another entry")
        else:
            os.mkdir(target, 0o700)
        os.chmod(target, (member.mode & 0o755) | 0o700)
    elif member.isreg():
        source = archive.extractfile(member)
        if source is None:
            raise UnsafeTarball(f"{member.name}: unreadable file entry")
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise UnsafeTarball(f"{member.name}: appears twice in the archive") from None
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = source.read(CHUNK_SIZE)
                if not chunk:
                    break
                out.write(chunk)
            os.fchmod(out.fileno(), member.mode & 0o755)
    elif member.issym():
        if not _inside(dest_real, os.path.realpath(os.path.join(parent, member.linkname))):
            raise UnsafeTarball(f"{member.name}: symbolic link to {member.linkname!r} leaves the installer "
                                "directory")
        try:
            os.symlink(member.linkname, target)
        except FileExistsError:
            raise UnsafeTarball(f"{member.name}: appears twice in the archive") from None
    elif member.islnk():
        source_path = os.path.join(dest_real, _member_path(member.linkname) or "")
        if os.path.realpath(source_path) != source_path or not os.path.isfile(source_path):
            raise UnsafeTarball(f"{member.name}: hard link to {member.linkname!r}, which is not a file "
                                "extracted before it")
        os.link(source_path, target, follow_symlinks=False)
    else:  # _refuse_unsafe already refused every other type
        raise UnsafeTarball(f"{member.name}: unexpected entry type {member.type!r}")


def _audit_links(dest_real: str) -> None:
    """After extraction: every symlink must still resolve inside (a later link can re-route one)."""
    for directory, dirs, files in os.walk(dest_real):
        for name in dirs + files:
            path = os.path.join(directory, name)
            if os.path.islink(path) and not _inside(dest_real, os.path.realpath(path)):
                raise UnsafeTarball(f"{os.path.relpath(path, dest_real)}: symbolic link resolves outside "
                                    "the installer directory")


# --- install ----------------------------------------------------------------------------------------


def run_installer(directory: Path, args: Tuple[str, ...], timeout_seconds: float, *,
                  kill_grace_seconds: float = 5.0, pid_file: Optional[Path] = None,
                  heartbeat_seconds: Optional[float] = None, clock: Callable[[], float] = time.monotonic) -> None:
    """Run ``./efa_installer.sh ARGS`` in ``directory``; no shell, bounded, output to the log.

    The script dies with the agent (``PR_SET_PDEATHSIG``); what it started (yum, rpm) runs on in
    its process group, whose id is kept in ``pid_file`` so that the next run waits for it.
    """
    import collections
    import signal
    import subprocess
    import threading

    script = directory / INSTALLER_SCRIPT
    if not script.is_file() or script.is_symlink():
        raise InstallerFailed(f"{INSTALLER_DIR}/{INSTALLER_SCRIPT} is missing from the tarball")
    argv = ["./" + INSTALLER_SCRIPT, *args]
    log.info("running the EFA installer", cwd=str(directory), argv=argv, timeout=timeout_seconds)
    try:
        # Its own session: on timeout the whole group (yum, rpm, ...) is killed, not just the script.
        proc = subprocess.Popen(argv, cwd=directory, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                preexec_fn=_die_with_parent())
    except OSError as exc:
        raise InstallerFailed(f"cannot run {INSTALLER_SCRIPT}: {exc.strerror or exc}") from None
    if pid_file is not None:
        _write_pid_file(pid_file, proc.pid)
    tail: collections.deque[str] = collections.deque(maxlen=20)

    def pump() -> None:
        assert proc.stdout is not None
        for raw in iter(lambda: proc.stdout.readline(65536), b""):  # type: ignore[union-attr]
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                tail.append(line)
                log.info("installer output", line=line)

    reader = threading.Thread(target=pump, name="efa-installer-output", daemon=True)
    reader.start()
    from agent import progress

    heartbeat = progress.Heartbeat(INSTALLER_SCRIPT, lambda: tail[-1] if tail else None, clock=clock,
                                   interval=heartbeat_seconds or progress.HEARTBEAT_SECONDS)
    try:
        with heartbeat:  # the installer can be silent for minutes inside dnf
            code = proc.wait(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        for sig, grace in ((signal.SIGTERM, kill_grace_seconds), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        reader.join(1.0)
        raise InstallerFailed(f"{INSTALLER_SCRIPT} did not finish within {timeout_seconds:g}s "
                              f"(efa.timeout_seconds) and was killed{_last_output(tail)}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(5.0)
    if pid_file is not None and not _group_alive(proc.pid):
        with contextlib.suppress(OSError):
            pid_file.unlink()
    if code != 0:
        raise InstallerFailed(f"{INSTALLER_SCRIPT} exited with status {code}{_last_output(tail)}")


# --- the installer across runs ----------------------------------------------------------------------

INSTALLER_PID_FILE = "/run/gpu-node-agent/efa-installer.pid"  # under --root; gone at boot
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when the agent dies (kill -9 too)."""
    import ctypes
    import signal

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not in the child
    parent = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the agent died before prctl took effect
            os._exit(1)

    return in_child


def _write_pid_file(pid_file: Path, pgid: int) -> None:
    from agent.fs import atomic_write

    try:
        pid_file.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(pid_file, f"{pgid}\n".encode(), mode=0o644)
    except (OSError, NodeFileError) as exc:
        log.warning("cannot record the installer's process group", path=str(pid_file), error=str(exc))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def earlier_installer(root: NodeRoot) -> Optional[int]:
    """The process group of an installer an earlier (killed) run started that is still running."""
    pid_file = root.path(INSTALLER_PID_FILE)
    try:
        pgid = int(read_text(pid_file, limit=64).strip())
    except (NodeFileError, ValueError):
        return None
    if pgid > 1 and _group_alive(pgid):
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
    while _group_alive(pgid):
        if clock() >= deadline:
            raise InstallerFailed(f"an EFA installer started by an earlier run (process group {pgid}) is "
                                  f"still running after {timeout_seconds:g}s (efa.timeout_seconds); not "
                                  "starting another")
        sleep(0.5)
    earlier_installer(root)  # removes the pid file


def clean_stale(root: NodeRoot, settings: EfaSettings) -> None:
    """Extraction directories and downloads left by killed runs (none while an installer lives)."""
    import shutil

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
        _remove_stale_downloads(directory, DEFAULT_POLICY.total_seconds)


def _last_output(tail: Any) -> str:
    lines = list(tail)[-3:]
    if not lines:
        return ""
    text = " | ".join(lines)
    return f"; last output: {text if len(text) <= 400 else '...' + text[-397:]}"


class _VerifiedTarball(NamedTuple):
    path: Path
    file: IO[bytes]


def _open_if_verified(path: Path, settings: EfaSettings, root: NodeRoot) -> Tuple[Optional[IO[bytes]], str]:
    """``path`` open at its start if it passes every pin (else None), and what failed."""
    from agent.efa_verify import SignatureError

    try:
        f = open(path, "rb")  # noqa: SIM115 (returned open; the caller closes it)
    except OSError as exc:
        raise EfaError(f"{path}: cannot open the installer: {exc.strerror or exc}") from None
    try:
        problem = verify_pins(f, path, settings, root)
        if problem is None:
            return f, ""
    except SignatureError as exc:
        problem = str(exc)
    except OSError as exc:
        f.close()
        raise EfaError(f"{path}: cannot read the installer: {exc.strerror or exc}") from None
    f.close()
    return None, problem


def _open_verified(settings: EfaSettings, root: NodeRoot, fetch_kw: Any) -> _VerifiedTarball:
    """The cached tarball, open, after verifying that very file object (which is what gets extracted).

    A good cached copy costs one read (and a gpgv run when the key is pinned); otherwise ``fetch``
    downloads (or replaces) it first.
    """
    require_pin(settings)
    path = cache_file(root, settings)
    if path.exists():
        f, _ = _open_if_verified(path, settings, root)
        if f is not None:
            log.info("cached installer verified", path=str(path), verified=_pinned_by(settings))
            return _VerifiedTarball(path, f)
    fetch(settings, root, **fetch_kw)  # downloads it, or replaces a bad copy
    f, problem = _open_if_verified(path, settings, root)
    if f is None:
        raise ChecksumMismatch(f"{path}: {problem} (changed after verification); not executed")
    return _VerifiedTarball(path, f)


def execute(action: EfaAction, **fetch_kw: Any) -> str:
    """Carry out an install action: verified tarball -> safe extraction -> installer -> re-check.

    Returns the action line for the report; raises ``EfaError`` (one line) on any failure.
    """
    import shutil
    import tempfile

    settings, root = action.settings, action.root
    verified = _open_verified(settings, root, fetch_kw)
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
                              f"{_why_install(after, settings.version)}")
    libfabric = f" (libfabric {after.libfabric_version})" if after.libfabric_version else ""
    log.info("EFA userspace installed", version=settings.version, libfabric=after.libfabric_version)
    return f"EFA userspace {settings.version} installed{libfabric}"

