"""The kernel log since boot, read from ``/dev/kmsg`` (under ``--root``): bounded, non-blocking.

``/dev/kmsg`` (Documentation/ABI/testing/dev-kmsg): every ``read()`` returns one record,
``PRI,SEQ,USEC,FLAGS;MESSAGE\\n`` (``PRI`` facility and level, ``SEQ`` a 64-bit sequence number,
``USEC`` microseconds since boot, ``FLAGS`` ``-`` or ``c``), followed by continuation lines that
start with a space (``KEY=value`` dictionary entries). A new reader starts at the oldest record
still in the ring buffer; with ``O_NONBLOCK`` the read at the end fails with ``EAGAIN``; ``EPIPE``
means the record just asked for was overwritten while reading (the ring wrapped: the next read goes
on with the oldest one left). A regular file (tests, a saved copy) holds the same records, one per
line, and ends with EOF.

Only records that contain ``match`` are parsed and kept (a line among them that is not a record is
counted as unreadable, never raised); of the others only the first and the last are parsed, for the
sequence numbers where the log starts and ends. The cost is one ``read()`` per record on the device
(about a microsecond each: a 1 MiB ring buffer holds some 8,000 records).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

KMSG = "/dev/kmsg"
MAX_BYTES = 16 * 1024 * 1024  # far above the largest ring buffer (CONFIG_LOG_BUF_SHIFT 25: 32 MiB is rare)
MAX_RECORDS = 200_000
MAX_LINE = 64 * 1024  # a record is at most 1 KiB of text plus its dictionary
_CHUNK = 8192  # larger than a record can be (the kernel caps one at 1 KiB of text plus its dictionary)


class Record(NamedTuple):
    seq: int
    usec: int
    message: str


class KmsgRead(NamedTuple):
    records: Tuple[Record, ...]  # those that matched
    first_seq: Optional[int]  # the oldest record read (None: nothing read)
    last_seq: Optional[int]
    total: int  # records read (lines that are neither continuations nor unreadable matches)
    unreadable: int  # matching lines that are not records
    truncated: bool  # stopped at MAX_BYTES / MAX_RECORDS before the end
    problem: Optional[str] = None  # why it could not be read at all


def _header(line: bytes) -> Optional[Tuple[int, int, bytes]]:
    head, sep, message = line.partition(b";")
    if not sep:
        return None
    fields = head.split(b",")
    if len(fields) < 4 or not all(_number(f) for f in fields[:3]):
        return None
    return int(fields[1]), int(fields[2]), message


def _number(field: bytes) -> bool:
    """A decimal the kernel can write (u64: at most 20 digits); 5000 digits would not even convert."""
    return field.isdigit() and len(field) <= 20


def _seq(line: Optional[bytes]) -> Optional[int]:
    parsed = _header(line) if line is not None else None
    return parsed[0] if parsed is not None else None


def read(path: Path, match: bytes, *, max_bytes: int = MAX_BYTES, max_records: int = MAX_RECORDS) -> KmsgRead:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return KmsgRead((), None, None, 0, 0, False, f"{path} does not exist")
    except OSError as exc:
        return KmsgRead((), None, None, 0, 0, False, f"{path}: {exc.strerror or exc}")
    kept: List[Record] = []
    first_line = last_line = None
    total = unreadable = 0
    read_bytes = 0
    truncated = False
    pending = b""
    overlong = False
    skips = 0
    try:
        while not truncated:
            if read_bytes >= max_bytes:
                truncated = True
                break
            try:
                data = os.read(fd, _CHUNK)
            except BlockingIOError:  # EAGAIN: the end of the log
                break
            except OSError as exc:
                # EPIPE: overwritten while reading, go on with what is left; both are bounded.
                if exc.errno in (errno.EPIPE, errno.EINTR) and skips < 1000:
                    skips += 1
                    continue
                return KmsgRead(tuple(kept), _seq(first_line), _seq(last_line), total, unreadable, False,
                                f"{path}: {exc.strerror or exc} after {total} records")
            if not data:  # EOF: a regular file
                if pending:
                    data, pending = pending + b"\n", b""  # a last line without its newline
                else:
                    break
            else:
                read_bytes += len(data)
                data, pending = pending + data, b""
            lines = data.split(b"\n")
            pending = lines.pop()
            if overlong and lines:  # the rest of a record too long to be the kernel's: dropped
                lines.pop(0)
                unreadable += 1
                overlong = False
            if len(pending) > MAX_LINE:  # never re-copied: a log without newlines stays linear
                pending, overlong = b"", True
            for line in lines:
                if line[:1] in b" \t":  # empty, or a continuation (dictionary) line
                    continue
                if total >= max_records:
                    truncated = True
                    break
                if match in line:  # only these are parsed (and checked): a log has thousands of records
                    parsed = _header(line)
                    if parsed is None:
                        unreadable += 1
                        continue
                    kept.append(Record(parsed[0], parsed[1], parsed[2].decode("utf-8", "replace")))
                total += 1
                if first_line is None:
                    first_line = line
                last_line = line
    finally:
        os.close(fd)
    last = _seq(last_line)
    if last is None and kept:
        last = kept[-1].seq
    return KmsgRead(tuple(kept), _seq(first_line), last, total, unreadable, truncated)
