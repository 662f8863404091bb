"""NVSwitch systems and their fabric manager. Owns ``nvidia-fabricmanager``.

On NVSwitch systems (p4d, p4de, p5, p5e, p5en, p6-b200) the GPUs reach each other only once
``nvidia-fabricmanager`` has trained the NVSwitch fabric; until then CUDA initialisation fails with
error 802 ("system not yet initialized"). Fabric Manager must run the driver's exact version
(NVIDIA Fabric Manager User Guide, https://docs.nvidia.com/datacenter/tesla/fabric-manager-user-guide/).

* NVSwitch: the driver's NVSwitch devices (``/proc/driver/nvidia-nvswitch/devices/<pci>``, one per
  switch, or the ``/dev/nvidia-nvswitchN`` nodes), or the instance type's ``nvswitch`` in
  ``agent/data/instance_types.json``; anything else is not an NVSwitch system: ``skip``. *Unverified*
  on a node here: the ``/proc`` layout (what the nvidia-nvswitch module creates) and the ``--version``
  wording below; the instance data alone is enough to require the fabric manager on the types that
  have NVSwitch.
* The unit (``gpu.fabricmanager_unit``): its state from the same D-Bus discovery as containerd's.
* Its version: ``nv-fabricmanager --version`` (prints ``Fabric Manager version is : 580.159.03``;
  the first ``X.Y[.Z]`` in its output is taken), run only on NVSwitch systems, and remembered in
  ``/run/gpu-node-agent/fabricmanager-version.json`` for as long as the binary is the same file
  (inode, size, mtime): a package upgrade runs it again.
* The GPUs' fabric registration: ``fabric.state`` / ``fabric.status`` of the nvidia-smi query
  (``agent.nvidia.smi``): ``Completed`` / ``Success`` where the driver reports one.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from agent.base.errors import NodeFileError
from agent.base.fs import atomic_write, read_text
from agent.base.noderoot import NodeRoot
from agent.base.process import run_tool
from agent.pipeline.contract import Discovery, Resource
from agent.pipeline.health import FAIL, PASS, SKIP, WARN, CheckResult
from agent.systemd.errors import SystemdError
from agent.systemd.state import UnitStates

if TYPE_CHECKING:
    from agent.config.settings import AgentConfig
    from agent.pipeline.contract import NodeFacts

CHECK = "nvidia-fabricmanager"
PROC_DEVICES = "/proc/driver/nvidia-nvswitch/devices"
DEV_DIR = "/dev"
FABRICMANAGER = "/usr/bin/nv-fabricmanager"
VERSION_TIMEOUT = 5.0
VERSION_CACHE = "/run/gpu-node-agent/fabricmanager-version.json"
MAX_CACHE_BYTES = 4096
_VERSION_RE = r"\b(\d+\.\d+(?:\.\d+)?)\b"


class FabricFacts(NamedTuple):
    nvswitch: bool
    why: str  # how NVSwitch was found (or why it is taken to be absent)
    switches: Tuple[str, ...]  # the driver's NVSwitch devices
    version: Optional[str]  # nv-fabricmanager's own version (None: not asked, or unknown)
    version_note: str


def _switches(root: NodeRoot) -> Tuple[str, ...]:
    found: List[str] = []
    with contextlib.suppress(OSError):
        found = sorted(p.name for p in root.path(PROC_DEVICES).iterdir())
    if not found:
        with contextlib.suppress(OSError):
            found = sorted(p.name for p in root.path(DEV_DIR).iterdir() if re.fullmatch(r"nvidia-nvswitch\d+", p.name))
    return tuple(found)


def fabricmanager_version(root: NodeRoot, timeout: float = VERSION_TIMEOUT) -> Tuple[Optional[str], str]:
    binary = root.executable(FABRICMANAGER)
    try:
        st = binary.stat()
    except OSError:
        return None, f"{FABRICMANAGER} not found"
    identity = [st.st_ino, st.st_size, st.st_mtime_ns]
    cache = root.path(VERSION_CACHE)
    with contextlib.suppress(NodeFileError, ValueError, TypeError, KeyError):
        # the agent's own small file: bounded, never a FIFO or device, never through a symlink
        kept = json.loads(read_text(cache, limit=MAX_CACHE_BYTES, allow_symlink=False))
        if kept["binary"] == identity and isinstance(kept["version"], str):
            return kept["version"], f"{FABRICMANAGER} --version"
    version, note = _run_version(binary, timeout)
    if version is not None:
        with contextlib.suppress(OSError, NodeFileError):
            cache.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            atomic_write(cache, (json.dumps({"binary": identity, "version": version}) + "\n").encode())
    return version, note


def _run_version(binary: Path, timeout: float) -> Tuple[Optional[str], str]:
    out = run_tool([str(binary), "--version"], timeout)
    if out is None:
        return None, f"{FABRICMANAGER} cannot be executed"
    if not out.ok:
        return None, out.problem(timeout)
    m = re.search(_VERSION_RE, out.stdout + "\n" + out.stderr)
    return (m.group(1), f"{FABRICMANAGER} --version") if m else (None, f"{FABRICMANAGER} --version printed no version")


def discover(root: NodeRoot, *, instance_type: Optional[str], type_has_nvswitch: bool) -> FabricFacts:
    switches = _switches(root)
    if switches:
        why = f"{len(switches)} NVSwitch device{'s' if len(switches) != 1 else ''} in the driver"
    elif type_has_nvswitch:
        why = f"{instance_type} has NVSwitch (instance data); the driver lists no NVSwitch device"
    else:
        where = f"{instance_type} has none" if instance_type else "instance type unknown"
        return FabricFacts(False, f"no NVSwitch device in the driver ({where})", (), None, "not asked")
    version, note = fabricmanager_version(root)
    return FabricFacts(True, why, switches, version, note)


def check(
    facts: Optional[FabricFacts],
    units: Union[UnitStates, SystemdError, None],
    unit: str,
    driver_version: Optional[str],
    rows: Optional[Sequence[Any]],
) -> CheckResult:
    if facts is None or not facts.nvswitch:
        why = facts.why if facts is not None else "not discovered"
        return CheckResult(CHECK, SKIP, f"not an NVSwitch system: {why}", {"event_reason": "NoNVSwitch"})
    details: Dict[str, Any] = {"nvswitch": facts.why, "switches": list(facts.switches), "unit": unit,
                               "version": facts.version, "version_source": facts.version_note,
                               "driver_version": driver_version}
    if units is None or isinstance(units, SystemdError):
        why = str(units) if units is not None else "unit state not discovered"
        return CheckResult(CHECK, WARN, f"NVSwitch system, but {unit} cannot be read: {why}",
                           {**details, "event_reason": "FabricManagerUnknown"})
    state = units.get(unit)
    if state is None:
        return CheckResult(CHECK, WARN, f"NVSwitch system, but {unit} was not discovered",
                           {**details, "event_reason": "FabricManagerUnknown"})
    details.update(active_state=state.active_state, sub_state=state.sub_state, load_state=state.load_state)
    if not state.loaded:
        return CheckResult(CHECK, FAIL, f"NVSwitch system ({facts.why}) but {state.describe()}: CUDA cannot "
                           "initialise (error 802) without the fabric manager",
                           {**details, "event_reason": "FabricManagerMissing"})
    if state.active_state in ("activating", "reloading"):
        return CheckResult(CHECK, WARN, f"{state.describe()}: the fabric is not trained yet",
                           {**details, "event_reason": "FabricManagerStarting"})
    if state.active_state != "active":
        return CheckResult(CHECK, FAIL, f"{state.describe()}, expected active: CUDA cannot initialise (error 802) "
                           "on this NVSwitch system", {**details, "event_reason": "FabricManagerNotRunning"})
    if facts.version and driver_version and facts.version != driver_version:
        return CheckResult(CHECK, FAIL, f"fabric manager {facts.version} but driver {driver_version}: they must be "
                           "the same version", {**details, "event_reason": "FabricManagerVersionMismatch"})
    fabric = [(r, r.fabric_state, r.fabric_status) for r in rows or () if r.fabric_state is not None]
    details["gpus"] = [{"index": r.gpu_index, "bus_id": r.bus_id, "state": s, "status": st} for r, s, st in fabric]
    not_done = [(r, s) for r, s, _ in fabric if s.lower() != "completed"]
    failed = [(r, st) for r, s, st in fabric if s.lower() == "completed" and (st or "").lower() != "success"]
    if failed:
        r, st = failed[0]
        return CheckResult(CHECK, FAIL, f"{r.label()}: fabric registration completed with {st!r}"
                           + (f"; +{len(failed) - 1} more" if len(failed) > 1 else ""),
                           {**details, "event_reason": "GPUFabricFailed"})
    if not_done:
        r, s = not_done[0]
        status = WARN if s.lower() == "in progress" else FAIL
        return CheckResult(CHECK, status, f"{r.label()}: fabric state {s!r}, expected 'Completed'"
                           + (f"; +{len(not_done) - 1} more" if len(not_done) > 1 else ""),
                           {**details, "event_reason": "GPUFabricNotReady"})
    if facts.version is None or driver_version is None:
        unknown = facts.version_note if facts.version is None else "driver version unknown"
        return CheckResult(CHECK, WARN, f"{state.describe()}; version not compared: {unknown}",
                           {**details, "event_reason": "FabricManagerVersionUnknown"})
    fabric_note = (f"; fabric Completed/Success on {len(fabric)} GPUs" if fabric
                   else "; the driver reports no fabric state")
    return CheckResult(CHECK, PASS, f"{unit} active, {facts.version} = driver{fabric_note}",
                       {**details, "event_reason": "FabricManagerReady"})


class FabricManager(Resource):
    """``fabric``: NVSwitch devices and the fabric manager's version; ``nvidia-fabricmanager`` (its unit
    is read with containerd's, ``agent/daemons/units.py``)."""

    checks = ("nvidia-fabricmanager",)

    def discover(self, node: Discovery) -> Dict[str, Any]:
        instance = node.facts.get("instance")
        return {"fabric": discover(node.root, instance_type=instance.instance_type if instance else None,
                                   type_has_nvswitch=bool(instance and instance.nvswitch))}

    def check(self, facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
        from agent.nvidia import driver

        version = facts.driver.version if facts.driver is not None else None
        return [check(facts.fabric, facts.units, config.gpu.fabricmanager_unit, version, driver.smi_rows(facts.driver))]


RESOURCE = FabricManager()
