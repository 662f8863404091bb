"""Downloading one file: streamed, hashed on the fly, resumed, retried, bounded in time and size.

``download(url, target, sha256, options)`` streams the body to a temporary file beside ``target``,
hashing it as it arrives on a thread of its own (memory stays flat whatever the size), and renames
it into place only when it is complete and its SHA-256 is the expected one: ``target`` only ever
appears complete and verified. Transient failures (connection errors, timeouts, a short body, 5xx,
429) are retried with backoff and jitter (``agent/base/retry.py``), resuming with ``Range``/``If-Range``
when the server honours it; one deadline bounds the whole download, retries included, and cuts a
server that trickles. Progress is shown by ``agent/base/progress.py``. Used for the EFA installer, its
signature and key (``agent/efa/cache.py``).

Written for AL2023's python3-requests 2.25 / urllib3 1.25: no urllib3 ``Retry`` (our own small
loop), and the body length is checked by hand (urllib3 1.x does not enforce ``Content-Length``).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, cast

from agent.base import httpread
from agent.base.errors import AgentError
from agent.base.fs import fsync_dir
from agent.base.log import Logger, get_logger
from agent.base.retry import Deadline, backoff
from agent.base.text import clip
from agent.efa.hashing import Partial, WriteFailed


class DownloadError(AgentError):
    """The file could not be downloaded or stored (one line, exit 1); nothing is kept."""


class ChecksumMismatch(AgentError):
    """The bytes received are not the expected ones (one line, exit 1); nothing is kept."""


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


class Wording(NamedTuple):
    """How the caller's messages name what is downloaded (the EFA cache names its config keys)."""

    pin: str = "the expected sha256"  # "... does not match <pin> <hex>"
    kind: str = "the file"  # "<n> bytes is more than the <max> <kind> can be"; "not <kind>"
    not_found_hint: str = ""  # appended to an HTTP 404
    deadline: str = "download deadline"
    discarded: str = "discarded"  # after a checksum mismatch
    done: str = "file downloaded and verified"  # the log event


class DownloadOptions(NamedTuple):
    """How one download runs: its bounds, where it sleeps and reads the time (tests fake both),
    and whether the result must survive a crash (``durable``: synced before and after the rename,
    for a cache baked into an AMI; otherwise a crash can at worst leave a torn file, which the
    verification before use discards)."""

    policy: DownloadPolicy = DEFAULT_POLICY
    sleep: Callable[[float], None] = time.sleep
    rand: Callable[[], float] = random.random
    clock: Callable[[], float] = time.monotonic
    durable: bool = False


DEFAULT_OPTIONS = DownloadOptions()
GENERIC = Wording()
_log = get_logger("download")


class _Retryable(Exception):
    """A transient failure of one attempt: connection error, timeout, short body, 5xx."""


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
    options: DownloadOptions = DEFAULT_OPTIONS,
    *,
    verify: Optional[Callable[[Path, str], None]] = None,
    wording: Wording = GENERIC,
    log: Logger = _log,
) -> None:
    """Download ``url`` to ``target``; ``target`` only ever appears complete and verified.

    ``sha256`` None: no digest to compare (a signature or a key, checked by their user).
    ``verify(tmp, sha256)`` runs on the complete temporary file before the rename; it raises to refuse.
    On any failure the temporary file is removed. ``wording`` and ``log``: the caller's names and
    logger in messages and events.
    """
    import tempfile

    import requests

    policy, clock = options.policy, options.clock
    directory = target.parent
    expected = sha256.lower() if sha256 else None
    deadline = Deadline(policy.total_seconds, clock)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=directory)
    except OSError as exc:
        raise DownloadError(f"{directory}: cannot create a temporary file: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            partial = Partial(f, policy.chunk_size)
            from agent.base import progress

            shown = progress.Transfer(url, lambda: partial.total, clock=clock)
            partial.progress = shown.update
            with contextlib.closing(partial), httpread.mount(requests.Session()) as session:
                attempt = 0
                while True:
                    attempt += 1
                    try:
                        _attempt(session, url, partial, policy, directory, deadline, wording, log)
                        break
                    except _Retryable as exc:
                        delay = backoff(attempt, policy.backoff_seconds, policy.backoff_cap_seconds, options.rand)
                        if attempt >= policy.attempts or clock() + delay >= deadline.expires:
                            plural = "s" if attempt > 1 else ""
                            raise DownloadError(
                                f"{url}: download failed after {attempt} attempt{plural}: {exc}"
                            ) from None
                        log.warning("download interrupted; retrying", url=url, attempt=attempt,
                                    received=partial.written, error=str(exc), retry_in=round(delay, 2))
                        options.sleep(delay)
            try:
                f.flush()
                if options.durable:
                    os.fsync(f.fileno())
            except OSError as exc:
                raise WriteFailed(exc) from None
            actual = partial.hexdigest()
            shown.finish()
        if expected is not None and actual != expected:
            raise ChecksumMismatch(
                f"{url}: sha256 {actual} does not match {wording.pin} {expected} "
                f"({partial.written} bytes received); {wording.discarded}"
            )
        if verify is not None:
            verify(tmp, actual)
        os.chmod(tmp, 0o644)
        os.rename(tmp, target)
        if options.durable:
            fsync_dir(directory)
        log.info(wording.done, url=url, path=str(target), bytes=partial.written,
                 sha256=actual)
    except WriteFailed as exc:
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
    partial: Partial,
    policy: DownloadPolicy,
    directory: Path,
    deadline: Deadline,
    wording: Wording,
    log: Logger,
) -> None:
    import requests

    # identity: the stored bytes must be the published bytes (and Range offsets mean those bytes)
    headers = {"Accept-Encoding": "identity"}
    if partial.written:
        headers["Range"] = f"bytes={partial.written}-"
        if partial.validator:
            headers["If-Range"] = partial.validator
    if deadline.remaining() <= 0:
        raise DownloadError(f"{url}: download took longer than {policy.total_seconds:g}s "
                            f"({partial.written} bytes received)")
    late = DownloadError(f"{url}: download took longer than {policy.total_seconds:g}s ({wording.deadline})")
    # The deadline bounds the connection, the status line and the headers too: at the deadline the
    # connection is cut, whatever phase the request is in (agent/base/httpread.py).
    try:
        with httpread.response(session, "GET", url, deadline, connect_timeout=policy.connect_timeout,
                               read_timeout=policy.read_timeout, headers=headers, allow_redirects=True
                               ) as response:
            _receive(response, url, partial, policy, directory, deadline, wording, log, late)
    except httpread.TooLate:
        raise late from None
    except requests.exceptions.SSLError as exc:
        # Not transient; SSLError is a ConnectionError, so it is caught first.
        raise DownloadError(f"{url}: TLS verification failed: {_one_line(exc)} "
                            "(a private mirror's CA goes in REQUESTS_CA_BUNDLE)") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise _Retryable(_one_line(exc)) from None
    except requests.exceptions.RequestException as exc:
        raise DownloadError(f"{url}: {_one_line(exc)}") from None


def _receive(response: Any, url: str, partial: Partial, policy: DownloadPolicy, directory: Path,
             deadline: Deadline, wording: Wording, log: Logger, late: DownloadError) -> None:
    """Check the answer's status and headers, then stream its body into ``partial``."""
    import http.client

    import urllib3

    clock = deadline.clock
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
        hint = wording.not_found_hint if status == 404 else ""
        raise DownloadError(f"{url}: HTTP {status} {response.reason}{hint}")
    length_header = response.headers.get("Content-Length")
    remaining = int(length_header) if length_header and length_header.isdigit() else None
    expected_total = partial.written + remaining if remaining is not None else None
    partial.total = expected_total
    if expected_total is not None:
        if expected_total > policy.max_bytes:
            raise DownloadError(f"{url}: {expected_total} bytes is more than the {policy.max_bytes} "
                                f"{wording.kind} can be")
        _check_free_space(directory, remaining or 0)
    # The body length is counted here, the same on urllib3 1.x (which never enforces
    # Content-Length) and 2.x (which raises on a short body and loses that read's bytes).
    response.raw.enforce_content_length = False
    readinto = _body_reader(response)
    try:  # the connection is cut at the deadline (httpread.Watch): no read outlives it
        while partial.receive(readinto):
            if partial.written > policy.max_bytes:
                raise DownloadError(f"{url}: more than {policy.max_bytes} bytes; not {wording.kind}")
            if clock() > deadline.expires:
                raise late
    except (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError) as exc:
        # reset, timeout, TLS error, broken chunked encoding: what was received is kept
        if clock() > deadline.expires:
            raise late from None
        raise _Retryable(f"{_one_line(exc)} ({partial.written} bytes kept)") from None
    if clock() > deadline.expires:
        raise late
    if expected_total is not None and partial.written < expected_total:
        raise _Retryable(f"connection closed after {partial.written} of {expected_total} bytes")


def _check_free_space(directory: Path, needed: int) -> None:
    try:
        st = os.statvfs(directory)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if needed > free:
        raise DownloadError(f"{directory}: {needed} more bytes needed for the download, only {free} free; "
                            "nothing kept")
