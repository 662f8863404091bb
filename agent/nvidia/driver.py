"""The NVIDIA kernel driver: is it loaded, which version, are the GPUs visible. Owns ``nvidia-driver``.

* ``/proc/driver/nvidia/version`` exists only while the kernel module is loaded (on AL2023 by
  ``nvidia-kmod-load.service``, unordered against nodeadm) and names the driver version, for the
  proprietary (``NVIDIA UNIX x86_64 Kernel Module  580.159.03``) and the open module
  (``NVIDIA UNIX Open Kernel Module for x86_64  580.159.03``) alike;
* ``/dev/nvidia0``, ``/dev/nvidia1``, ... are the GPU device nodes containers get (jit-cdi injects them);
* ``nvidia-smi --query-gpu=...`` asks NVML: one line per GPU. It can hang on a GPU in a bad state, so
  it runs with a short timeout; a timeout is a warning, not a verdict. It runs once per ``check``: the
  same query (``agent.nvidia.smi``) also gives the GPU inventory, ECC and row-remapping state and the fabric
  state that ``gpu-inventory``, ``gpu-errors`` and ``nvidia-fabricmanager`` judge.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from agent.base.errors import NodeFileError, NodeFileMissing
from agent.base.fs import read_text
from agent.base.noderoot import NodeRoot
from agent.base.process import run_tool
from agent.nvidia import smi
from agent.pipeline.contract import Discovery, Resource
from agent.pipeline.health import FAIL, PASS, WARN, CheckResult

if TYPE_CHECKING:
    from agent.config.settings import AgentConfig
    from agent.pipeline.contract import NodeFacts

CHECK = "nvidia-driver"
PROC_VERSION = "/proc/driver/nvidia/version"
DEV_DIR = "/dev"
NVIDIA_SMI = "/usr/bin/nvidia-smi"
SMI_TIMEOUT_SECONDS = 5.0
SMI_ARGS = smi.query_args()

# Patterns as strings: ``re`` compiles and caches them on first use (``check`` start-up time).
_PROC_RE = r"(?m)^NVRM version:.*?Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)\b"
_DEVICE_RE = r"nvidia(\d+)"


class SmiResult(NamedTuple):
    versions: Tuple[str, ...]  # one per GPU NVML sees
    problem: Optional[str]  # why nvidia-smi did not answer (None: it did)
    timed_out: bool = False
    table: Optional[smi.SmiTable] = None  # the whole answer (None: no answer)


class DriverFacts(NamedTuple):
    loaded: bool
    version: Optional[str]
    problem: Optional[str]  # why the version is unknown although /proc says loaded (or unreadable)
    devices: Tuple[str, ...]  # node paths, in GPU index order
    smi: Optional[SmiResult]  # None: nvidia-smi is not installed

    @property
    def version_note(self) -> str:
        if self.version:
            return PROC_VERSION
        return self.problem or f"{PROC_VERSION} does not exist: driver not loaded"


def parse_proc_version(text: str) -> Optional[str]:
    m = re.search(_PROC_RE, text)
    return m.group(1) if m else None


def _devices(root: NodeRoot) -> Tuple[str, ...]:
    try:
        names = [p.name for p in root.path(DEV_DIR).iterdir()]
    except OSError:
        return ()
    found = [(int(m.group(1)), n) for n in names for m in [re.fullmatch(_DEVICE_RE, n)] if m]
    return tuple(f"{DEV_DIR}/{n}" for _, n in sorted(found))


def _smi(root: NodeRoot, timeout: float) -> Optional[SmiResult]:
    binary = root.executable(NVIDIA_SMI)
    if not binary.exists():
        return None
    fields: Tuple[str, ...] = smi.FIELDS
    out = run_tool([str(binary), *smi.query_args(fields)], timeout)
    if out is not None and not out.ok and out.returncode is not None and smi.field_rejected(out.stdout + out.stderr):
        fields = smi.BASE_FIELDS  # a driver that predates row remapping or fabric fields
        out = run_tool([str(binary), *smi.query_args(fields)], timeout)
    if out is None:
        return SmiResult((), f"{NVIDIA_SMI} cannot be executed")
    if out.returncode is None:
        return SmiResult((), out.problem(timeout), timed_out=True)
    table = smi.parse(out.stdout, fields)
    versions = tuple(r.driver_version for r in table.rows if r.driver_version)
    if not out.ok and not table.rows:
        return SmiResult((), out.problem(timeout), table=table)
    if not table.rows:
        why = f"; {table.malformed[0]}" if table.malformed else ""
        return SmiResult((), f"nvidia-smi listed no GPU{why}", table=table)
    return SmiResult(versions, None, table=table)


def discover(root: NodeRoot, *, smi_timeout: float = SMI_TIMEOUT_SECONDS) -> DriverFacts:
    path = root.path(PROC_VERSION)
    try:
        text = read_text(path)
    except NodeFileMissing:
        return DriverFacts(False, None, None, _devices(root), _smi(root, smi_timeout))
    except NodeFileError as exc:
        unreadable = f"{PROC_VERSION}: {exc.problem}"
        return DriverFacts(True, None, unreadable, _devices(root), _smi(root, smi_timeout))
    version = parse_proc_version(text)
    problem = None if version else f"{PROC_VERSION}: no driver version in {text.strip()[:80]!r}"
    return DriverFacts(True, version, problem, _devices(root), _smi(root, smi_timeout))


def _span(devices: Tuple[str, ...]) -> str:
    if len(devices) == 1:
        return devices[0]
    return f"{devices[0]}..{devices[-1].rsplit('/', 1)[-1]}"


def check(facts: DriverFacts) -> CheckResult:
    details: Dict[str, Any] = {
        "loaded": facts.loaded,
        "version": facts.version,
        "devices": list(facts.devices),
    }
    if facts.smi is not None:
        details["nvidia_smi"] = {"versions": list(facts.smi.versions), "problem": facts.smi.problem}
        if facts.smi.table is not None and facts.smi.table.malformed:
            details["nvidia_smi"]["malformed"] = list(facts.smi.table.malformed)
    if not facts.loaded:
        return CheckResult(CHECK, FAIL, f"driver not loaded: {PROC_VERSION} does not exist "
                           "(has nvidia-kmod-load.service run?)", details)
    if not facts.devices:
        return CheckResult(CHECK, FAIL, f"driver {facts.version or '(unknown version)'} loaded but no GPU "
                           f"device nodes {DEV_DIR}/nvidia[0-9]*", details)
    gpus = len(facts.devices)
    seen = f"{gpus} GPU{'s' if gpus > 1 else ''} ({_span(facts.devices)})"
    smi = facts.smi
    if smi is not None and smi.problem and not smi.timed_out:
        return CheckResult(CHECK, FAIL, f"driver {facts.version or '?'} loaded, {seen}, but NVML does not "
                           f"answer: {smi.problem}", details)
    if smi is not None and smi.versions and facts.version and set(smi.versions) != {facts.version}:
        return CheckResult(CHECK, FAIL, f"driver/library version mismatch: kernel module {facts.version}, "
                           f"nvidia-smi reports {', '.join(sorted(set(smi.versions)))}", details)
    if facts.version is None:
        return CheckResult(CHECK, WARN, f"driver loaded, {seen}; version unknown: {facts.problem}", details)
    if smi is not None and smi.timed_out:
        return CheckResult(CHECK, WARN, f"driver {facts.version}, {seen}; {smi.problem} "
                           "(a GPU may be in a bad state)", details)
    if smi is not None and len(smi.versions) != gpus:
        return CheckResult(CHECK, WARN, f"driver {facts.version}: {gpus} device nodes but nvidia-smi sees "
                           f"{len(smi.versions)} GPU{'s' if len(smi.versions) != 1 else ''}", details)
    suffix = ", visible to nvidia-smi" if smi is not None else f" ({NVIDIA_SMI} not found: NVML not asked)"
    return CheckResult(CHECK, PASS, f"driver {facts.version}, {seen}{suffix}", details)


def smi_rows(facts: Optional[DriverFacts]) -> Optional[Sequence[Any]]:
    """The GPUs' rows of the one nvidia-smi query; None without an answer (not installed, timed out)."""
    answer = facts.smi if facts is not None else None
    return answer.table.rows if answer is not None and answer.table is not None and not answer.timed_out else None


def gpus_seen(driver: Optional[DriverFacts]) -> Optional[int]:
    """GPUs the driver shows: nvidia-smi's rows, else the device nodes; None when they cannot be counted."""
    if driver is None:
        return None
    if driver.smi is not None:
        if driver.smi.table is None or driver.smi.timed_out or (driver.smi.problem and not driver.smi.table.rows):
            return None
        return len(driver.smi.table.rows)
    return len(driver.devices) if driver.loaded else 0


def gpu_node(facts: Optional[DriverFacts]) -> bool:
    """Any sign of NVIDIA GPUs: the driver loaded, nvidia-smi installed, or device nodes."""
    return facts is not None and (facts.loaded or facts.smi is not None or bool(facts.devices))


class Driver(Resource):
    """``driver``: the kernel module, the device nodes and the one nvidia-smi query; ``nvidia-driver``."""

    checks = ("nvidia-driver",)

    def discover(self, node: Discovery) -> Dict[str, Any]:
        return {"driver": discover(node.root)}

    def check(self, facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
        return [check(facts.driver)] if facts.driver is not None else []


RESOURCE = Driver()
