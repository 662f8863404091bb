"""The pinned installer tarball in ``efa.cache_dir``: verified against every pin, downloaded only when
the cache lacks a good copy.

``fetch`` (``efa fetch``, at AMI bake) and ``open_verified`` (``execute``, at install) share one
path: a cached copy is verified once, by ``_open_if_verified`` (SHA-256 and/or AWS's signature,
``agent/efa/signature.py``); a bad one is removed and downloaded again (``agent/efa/download.py``:
streamed, hashed on the fly, renamed into the cache only when it matches). ``open_verified`` hands
out the very file object it verified, which is what gets extracted, so a node whose AMI was baked
with ``efa fetch`` needs no network at boot and a file swapped after verification is never run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO, NamedTuple, Optional, Tuple

from agent.base.log import get_logger
from agent.base.noderoot import NodeRoot
from agent.config.settings import EfaSettings
from agent.efa.decision import missing_pin, pinned_by
from agent.efa.download import DEFAULT_OPTIONS, ChecksumMismatch, DownloadError, DownloadOptions, Wording, download
from agent.efa.facts import EfaError, cache_file, installer_url, tarball_name

log = get_logger("efa")

# How the downloader's messages name the installer (the config keys a reader can act on).
WORDING = Wording(
    pin="efa.sha256",
    kind="an installer tarball",
    not_found_hint=" (is efa.version published at efa.base_url?)",
    deadline="efa download deadline",
    discarded="discarded, nothing installed",
    done="installer downloaded and verified",
)
SMALL_FILE_BYTES = 1 << 20  # the .sig and the key


class VerifiedTarball(NamedTuple):
    path: Path
    file: IO[bytes]  # open at its start; verified as this very object


def require_pin(settings: EfaSettings) -> Optional[str]:
    """The pinned SHA-256 (None when only the signing key is pinned); no pin at all is an error."""
    if not (settings.sha256 or settings.gpg_fingerprint):
        raise EfaError(missing_pin(settings))
    return settings.sha256.lower() if settings.sha256 else None


def signature_files(root: NodeRoot, settings: EfaSettings) -> Tuple[Path, Path]:
    """Where the cache keeps the tarball's ``.sig`` and the signing key beside it."""
    from agent.efa import signature

    directory = root.path(settings.cache_dir)
    return (directory / signature.signature_name(tarball_name(settings.version)),
            directory / signature.KEY_NAME)


def verify_pins(f: IO[bytes], path: Path, settings: EfaSettings, root: NodeRoot,
                sha256: Optional[str] = None) -> Optional[str]:
    """Check the open tarball ``f`` against every pin; a problem (for a message) or None when good.

    ``sha256``: the file's digest when already known (computed while it streamed in).
    A signature that does not verify raises ``SignatureError``.
    """
    from agent.efa import signature
    from agent.efa.hashing import sha256_of

    expected = settings.sha256.lower() if settings.sha256 else None
    if expected is not None:
        actual = sha256 if sha256 is not None else sha256_of(f)
        if actual != expected:
            return f"had sha256 {actual}, not efa.sha256"
    if settings.gpg_fingerprint:
        sig, key = signature_files(root, settings)
        signature.verify_signature(f, sig, key, settings.gpg_fingerprint, path.name)
    f.seek(0)
    return None


def fetch(settings: EfaSettings, root: NodeRoot, options: DownloadOptions = DEFAULT_OPTIONS) -> Path:
    """The pinned tarball in the cache, verified; downloaded only when the cache lacks a good copy.

    ``options.durable``: sync the download to disk (``efa fetch``, whose cache must outlive an AMI
    snapshot).
    """
    cached = _cached(settings, root, options)
    if cached is not None:
        cached.file.close()
        return cached.path
    return cache_file(root, settings)


def open_verified(settings: EfaSettings, root: NodeRoot, options: DownloadOptions = DEFAULT_OPTIONS
                  ) -> VerifiedTarball:
    """The cached tarball, open, after verifying that very file object (which is what gets extracted).

    A good cached copy costs one read (and a gpgv run when the key is pinned); otherwise it is
    downloaded (or replaced) first, and the stored file is verified again as it is opened.
    """
    cached = _cached(settings, root, options)
    if cached is not None:
        return cached
    path = cache_file(root, settings)
    from agent.efa.signature import SignatureError

    try:
        f, problem = _open_if_verified(path, settings, root)
    except SignatureError as exc:
        f, problem = None, str(exc)
    if f is None:
        raise ChecksumMismatch(f"{path}: {problem} (changed after verification); not executed")
    return VerifiedTarball(path, f)


def _cached(settings: EfaSettings, root: NodeRoot, options: DownloadOptions) -> Optional[VerifiedTarball]:
    """The cached copy, open and verified; None after downloading it (none, or a bad one, was there)."""
    from agent.efa.signature import SignatureError

    require_pin(settings)
    directory = _ensure_cache_dir(root, settings)
    remove_stale_downloads(directory, options.policy.total_seconds)
    target = cache_file(root, settings)
    corrupted = ""
    if target.exists():
        if settings.gpg_fingerprint:
            _fetch_signature_files(settings, root, options)
        try:
            f, problem = _open_if_verified(target, settings, root)
        except SignatureError as exc:
            f, problem = None, f"failed signature verification ({exc})"
        if f is not None:
            log.info("cached installer verified", path=str(target), verified=pinned_by(settings))
            return VerifiedTarball(target, f)
        log.warning("cached installer does not match its pin; downloading it again", path=str(target),
                    problem=problem)
        _remove(target)
        corrupted = f"{target}: cached copy {problem} (removed); "
        if settings.gpg_fingerprint:  # the signature may be what is stale: it is fetched again too
            _remove(signature_files(root, settings)[0])
    download_pinned(settings, root, options, corrupted)
    return None


def download_pinned(settings: EfaSettings, root: NodeRoot, options: DownloadOptions, corrupted: str = "") -> None:
    """Download the pinned tarball (and, with a key pinned, its signature and the key) into the cache.

    ``corrupted``: what was wrong with the copy this replaces, put before any error.
    """
    from agent.efa.signature import SignatureError

    target = cache_file(root, settings)

    def verify(tmp: Path, digest: str) -> None:
        with open(tmp, "rb") as f:
            problem = verify_pins(f, target, settings, root, sha256=digest)
        if problem:  # download() compared the digest already; kept as a second guard
            raise ChecksumMismatch(f"{installer_url(settings)}: {problem}; discarded, nothing installed")

    try:
        if settings.gpg_fingerprint:
            _fetch_signature_files(settings, root, options)
        download(installer_url(settings), target, require_pin(settings), options, verify=verify,
                 wording=WORDING, log=log)
    except (DownloadError, ChecksumMismatch, SignatureError) as exc:
        if corrupted:
            raise type(exc)(corrupted + str(exc)) from None
        raise


def _fetch_signature_files(settings: EfaSettings, root: NodeRoot, options: DownloadOptions) -> None:
    """The ``.sig`` and the key, downloaded beside the tarball when the cache lacks them. Neither is
    trusted as such: the key counts only if its fingerprint is the pin (``signature``)."""
    from agent.efa import signature

    base = settings.base_url.rstrip("/")
    small = options._replace(policy=options.policy._replace(max_bytes=SMALL_FILE_BYTES))
    for path in signature_files(root, settings):
        if not path.is_file():
            try:
                download(f"{base}/{path.name}", path, None, small, wording=WORDING, log=log)
            except DownloadError as exc:
                raise signature.SignatureError(f"{exc} (efa.gpg_fingerprint is set: the signature "
                                               f"and {signature.KEY_NAME} are needed); nothing executed"
                                               ) from None


def _open_if_verified(path: Path, settings: EfaSettings, root: NodeRoot) -> Tuple[Optional[IO[bytes]], str]:
    """``path`` open at its start if it passes every pin (else None), and what failed. A signature
    that does not verify raises ``SignatureError``."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (returned open; the caller closes it)
    except OSError as exc:
        raise EfaError(f"{path}: cannot open the installer: {exc.strerror or exc}") from None
    try:
        problem = verify_pins(f, path, settings, root)
    except OSError as exc:
        f.close()
        raise EfaError(f"{path}: cannot read the installer: {exc.strerror or exc}") from None
    except BaseException:
        f.close()
        raise
    if problem is None:
        return f, ""
    f.close()
    return None, problem


def _ensure_cache_dir(root: NodeRoot, settings: EfaSettings) -> Path:
    directory = root.path(settings.cache_dir)
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise EfaError(f"{directory}: cannot create the cache directory: {exc.strerror or exc}") from None
    if not directory.is_dir():
        raise EfaError(f"{directory}: efa.cache_dir is not a directory")
    return directory


def remove_stale_downloads(directory: Path, max_age_seconds: float) -> None:
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
