"""The one ``nvidia-smi`` query per ``check``: which fields, how its CSV reads, what "no value" looks like.

``nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits`` prints one line per GPU NVML
enumerates, the values in the order asked, separated by ``", "`` (``nvidia-smi --help-query-gpu``
lists the fields; NVIDIA documents them in the nvidia-smi man page and, for the values behind them,
the NVML API reference, https://docs.nvidia.com/deploy/nvml-api/). The fields asked, and what
their values are:

* ``index``, ``pci.bus_id`` (``00000000:53:00.0``), ``uuid`` (``GPU-...``), ``driver_version``;
* ``ecc.errors.uncorrected.volatile.total``: uncorrected ECC errors since the driver loaded, an
  integer; ``[N/A]`` when ECC is off or the GPU has none;
* ``retired_pages.pending``: ``Yes``/``No``, pages retired but not yet blacklisted until the next
  reset (``nvmlDeviceGetRetiredPagesPendingStatus``); ``[N/A]`` on GPUs that remap rows instead;
* ``remapped_rows.pending``, ``remapped_rows.failure``: ``Yes``/``No`` (NVML
  ``nvmlDeviceGetRemappedRows``: ``isPending`` "a reset will be required to actually remap the
  row", ``failureOccurred`` "set if a row remapping ever failed"), Ampere and newer; ``[N/A]`` before;
* ``fabric.state``, ``fabric.status``: NVML ``nvmlGpuFabricInfo_t``: ``state`` is the GPU's
  registration with the NVSwitch fabric (``Not Supported``, ``Not Started``, ``In Progress``,
  ``Completed``), ``status`` an NVML result "checked only if state returns complete" (``Success``);
  a GPU without a fabric prints ``N/A``.

Unavailable values read ``[N/A]``, ``N/A``, ``[Not Supported]``, ``[Unknown Error]`` and the like:
all of them become ``None`` here. A GPU NVML cannot open prints a line of its own instead of a row
(``Unable to determine the device handle for GPU0000:53:00.0: Unknown Error``).

A driver older than a field rejects the whole query (``Field "fabric.state" is not a valid field
to query.``); then the query runs once more with ``BASE_FIELDS`` only, so such a node pays for two
runs and reports no fabric state.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

BASE_FIELDS = (
    "index",
    "pci.bus_id",
    "uuid",
    "driver_version",
    "ecc.errors.uncorrected.volatile.total",
    "retired_pages.pending",
)
NEWER_FIELDS = ("remapped_rows.pending", "remapped_rows.failure", "fabric.state", "fabric.status")
FIELDS = BASE_FIELDS + NEWER_FIELDS
FORMAT = "--format=csv,noheader,nounits"

_UNAVAILABLE = ("n/a", "not supported", "unknown error", "not available", "insufficient permissions")
_HANDLE_RE = r"Unable to determine the device handle for (?:GPU\s*)?([0-9A-Fa-f:.]+)\s*:\s*(.*)"


def query_args(fields: Tuple[str, ...] = FIELDS) -> Tuple[str, ...]:
    return (f"--query-gpu={','.join(fields)}", FORMAT)


class GpuRow(NamedTuple):
    """One GPU as ``nvidia-smi`` reports it; ``None``: the GPU does not report that value."""

    gpu_index: int  # nvidia-smi's index (a field named "index" would hide tuple.index)
    bus_id: str
    uuid: Optional[str]
    driver_version: Optional[str]
    ecc_uncorrected: Optional[int]
    retired_pages_pending: Optional[bool]
    remapped_rows_pending: Optional[bool] = None
    remapped_rows_failure: Optional[bool] = None
    fabric_state: Optional[str] = None
    fabric_status: Optional[str] = None

    def label(self) -> str:
        """``GPU 3 (00000000:53:00.0)``: how a message names it."""
        return f"GPU {self.gpu_index} ({self.bus_id})"

    def as_dict(self) -> Dict[str, Any]:
        return dict(self._asdict())


class SmiTable(NamedTuple):
    rows: Tuple[GpuRow, ...]
    unreachable: Tuple[Tuple[str, str], ...]  # (bus id, why) for "Unable to determine the device handle"
    malformed: Tuple[str, ...]  # "line N: <why>" for lines that are neither


def value(text: str) -> Optional[str]:
    """A CSV cell, or ``None`` for the ways nvidia-smi says "no value"."""
    cell = text.strip()
    bare = cell[1:-1].strip() if cell.startswith("[") and cell.endswith("]") else cell
    if not bare or bare.lower() in _UNAVAILABLE or (cell.startswith("[") and cell.endswith("]")):
        return None
    return cell


def _yes_no(text: str) -> Optional[bool]:
    cell = value(text)
    if cell is None:
        return None
    low = cell.lower()
    if low in ("yes", "1", "true"):
        return True
    if low in ("no", "0", "false"):
        return False
    raise ValueError(f"expected Yes or No, got {cell!r}")


def _count(text: str) -> Optional[int]:
    cell = value(text)
    if cell is None:
        return None
    if not cell.isdigit():
        raise ValueError(f"expected a count, got {cell!r}")
    return int(cell)


def parse(stdout: str, fields: Tuple[str, ...] = FIELDS) -> SmiTable:
    """The rows of a ``--format=csv,noheader,nounits`` answer to ``fields`` (``FIELDS`` or ``BASE_FIELDS``)."""
    rows: List[GpuRow] = []
    unreachable: List[Tuple[str, str]] = []
    malformed: List[str] = []
    for number, line in enumerate(stdout.splitlines(), 1):
        if not line.strip():
            continue
        m = re.match(_HANDLE_RE, line.strip())
        if m:
            unreachable.append((m.group(1), m.group(2).strip() or "unknown error"))
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(fields):
            malformed.append(f"line {number}: {len(cells)} values, expected {len(fields)}: {line.strip()[:120]!r}")
            continue
        named = dict(zip(fields, cells))
        try:
            index = int(named["index"])
            row = GpuRow(
                gpu_index=index,
                bus_id=named["pci.bus_id"],
                uuid=value(named["uuid"]),
                driver_version=value(named["driver_version"]),
                ecc_uncorrected=_count(named["ecc.errors.uncorrected.volatile.total"]),
                retired_pages_pending=_yes_no(named["retired_pages.pending"]),
                remapped_rows_pending=_yes_no(named["remapped_rows.pending"]) if "remapped_rows.pending" in named
                else None,
                remapped_rows_failure=_yes_no(named["remapped_rows.failure"]) if "remapped_rows.failure" in named
                else None,
                fabric_state=value(named["fabric.state"]) if "fabric.state" in named else None,
                fabric_status=value(named["fabric.status"]) if "fabric.status" in named else None,
            )
        except ValueError as exc:
            malformed.append(f"line {number}: {exc}")
            continue
        rows.append(row)
    return SmiTable(tuple(rows), tuple(unreachable), tuple(malformed))


def field_rejected(output: str) -> bool:
    """Whether nvidia-smi refused the query because the driver does not know one of its fields."""
    return "is not a valid field to query" in output
