"""How many GPUs this instance should have, and whether the driver sees them all. Owns ``gpu-inventory``.

Expected: the instance type's GPU count from ``agent/data/instance_types.json`` (AWS's accelerated
computing specifications; its source is named in the file), or ``gpu.expected_count``. The
instance type comes from, in this order:

1. ``gpu.instance_type`` (configuration);
2. the DMI product name, ``/sys/devices/virtual/dmi/id/product_name``, when it names an instance
   type the agent knows (every Nitro instance says its type there; no network);
3. ``/run/gpu-node-agent/instance-type``, which an earlier lookup left (gone at boot, like the type
   could change only across a stop and start);
4. the Node's ``node.kubernetes.io/instance-type`` label, when ``gpu-allocatable`` read the Node;
5. IMDS ``instance-type``, only in ``run`` and ``check --report`` (plain ``check`` asks no metadata
   service: over SSM it must answer from the node alone).

When none of them gives the type (and ``gpu.expected_count`` is not set), ``gpu-inventory`` is
``warn`` (``InstanceTypeUnknown``): the GPUs are not proven.

Seen: the rows of the one ``nvidia-smi`` query (``agent.nvidia.driver``, ``agent.nvidia.smi``); without
``nvidia-smi``, the ``/dev/nvidiaN`` device nodes. A GPU NVML cannot open ("Unable to determine
the device handle") is named as missing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

from agent.base.errors import NodeFileError
from agent.base.fs import atomic_write, read_text
from agent.base.noderoot import NodeRoot
from agent.config.settings import AgentConfig
from agent.nvidia.driver import gpus_seen
from agent.pipeline.contract import Discovery, Resource
from agent.pipeline.health import FAIL, PASS, SKIP, WARN, CheckResult

if TYPE_CHECKING:
    from agent.nvidia.driver import DriverFacts
    from agent.pipeline.contract import NodeFacts

CHECK = "gpu-inventory"
DATA = Path(__file__).resolve().parent.parent / "data" / "instance_types.json"
CACHE = "/run/gpu-node-agent/instance-type"
DMI_PRODUCT_NAME = "/sys/devices/virtual/dmi/id/product_name"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
_TYPE_RE = r"[a-z0-9]+(-[a-z0-9]+)*\.[a-z0-9]+"


class InstanceFacts(NamedTuple):
    instance_type: Optional[str]
    source: str  # where the type came from, or why it is unknown
    spec: Optional[Mapping[str, Any]]  # the data file's entry: gpus, model, nvswitch[, vendor]
    expected: Optional[int]  # GPUs the instance should have
    expected_source: str

    @property
    def nvswitch(self) -> bool:
        return bool(self.spec and self.spec.get("nvswitch"))


def instance_types(path: Optional[Path] = None) -> Dict[str, Any]:
    """The packaged table ``{"source", "retrieved", "notes", "types": {type: spec}}``, read through the
    package loader (as ``agent.compat.matrix`` reads its matrix: found wherever the package is installed)."""
    get_data = getattr(__spec__.loader, "get_data", None) if __spec__ is not None else None
    raw = get_data(str(DATA)) if path is None and get_data is not None else (path or DATA).read_bytes()
    return dict(json.loads(raw.decode("utf-8")))


def _cached(root: NodeRoot) -> Optional[str]:
    try:
        text = read_text(root.path(CACHE)).strip()
    except NodeFileError:
        return None
    return text if re.fullmatch(_TYPE_RE, text) else None


def _from_dmi(root: NodeRoot) -> Optional[str]:
    """The DMI product name when it is an instance type of the agent's data (Xen and bare metal
    before Nitro say other things there, e.g. ``HVM domU``)."""
    try:
        text = read_text(root.path(DMI_PRODUCT_NAME)).strip()
    except NodeFileError:
        return None
    return text if re.fullmatch(_TYPE_RE, text) and text in instance_types()["types"] else None


def _remember(root: NodeRoot, instance_type: str) -> None:
    path = root.path(CACHE)
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(path, f"{instance_type}\n".encode())
    except (OSError, NodeFileError):
        pass  # only a cache


def _from_imds(config: AgentConfig) -> Tuple[Optional[str], str]:
    """(instance type or None, where it came from or why not)."""
    from agent.aws.imds import ImdsClient, ImdsError

    client = ImdsClient.from_settings(config.imds, attempts=2)
    try:
        if client.disabled:
            return None, "IMDS is disabled (AWS_EC2_METADATA_DISABLED=true)"
        value = (client.get("instance-type") or "").strip()
        if re.fullmatch(_TYPE_RE, value):
            return value, "IMDS instance-type"
        return None, f"IMDS instance-type gave {value[:40]!r}"
    except ImdsError as exc:
        return None, f"IMDS: {exc}"
    finally:
        client.close()


def discover_instance(root: NodeRoot, config: AgentConfig, *, node_label: Optional[str] = None,
                      imds: bool = False) -> InstanceFacts:
    settings = config.gpu
    instance_type: Optional[str] = settings.instance_type
    source = "gpu.instance_type"
    if instance_type is None:
        instance_type, source = _from_dmi(root), DMI_PRODUCT_NAME
    if instance_type is None:
        instance_type, source = _cached(root), CACHE
    if instance_type is None and node_label and re.fullmatch(_TYPE_RE, node_label):
        instance_type, source = node_label, f"the Node's {INSTANCE_TYPE_LABEL} label"
        _remember(root, instance_type)
    if instance_type is None and imds:
        instance_type, source = _from_imds(config)
        if instance_type is not None:
            _remember(root, instance_type)
    elif instance_type is None:
        source = f"not configured, not in {DMI_PRODUCT_NAME}, not cached, not on the Node; `run` asks IMDS"
    spec = instance_types()["types"].get(instance_type) if instance_type else None
    if settings.expected_count is not None:
        return InstanceFacts(instance_type, source, spec, settings.expected_count, "gpu.expected_count")
    if spec is not None:
        return InstanceFacts(instance_type, source, spec, int(spec["gpus"]), f"{instance_type} has {spec['gpus']}")
    why = (f"{instance_type} is not in the agent's instance data" if instance_type
           else f"instance type unknown ({source})")
    return InstanceFacts(instance_type, source, None, None, why)


# --- the check ----------------------------------------------------------------------------------


def _plural(n: int, word: str = "GPU") -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def check(driver: Optional[DriverFacts], instance: InstanceFacts) -> CheckResult:
    details: Dict[str, Any] = {"instance_type": instance.instance_type, "instance_type_source": instance.source,
                               "expected": instance.expected, "expected_source": instance.expected_source}
    if instance.spec is not None and instance.spec.get("vendor", "nvidia") != "nvidia":
        return CheckResult(CHECK, SKIP, f"{instance.instance_type} has {instance.spec.get('model')} GPUs, "
                           "not NVIDIA: not counted", {**details, "event_reason": "NotNVIDIA"})
    smi = driver.smi if driver is not None else None
    table = smi.table if smi is not None else None
    unreachable = list(table.unreachable) if table is not None else []
    malformed = list(table.malformed) if table is not None else []
    seen = gpus_seen(driver)
    details.update(seen=seen, unreachable=[{"bus_id": b, "problem": p} for b, p in unreachable],
                   malformed=malformed)
    if table is not None:
        details["gpus"] = [{"index": r.gpu_index, "bus_id": r.bus_id, "uuid": r.uuid} for r in table.rows]
    expected = instance.expected
    if driver is None or (not driver.loaded and smi is None and not driver.devices):
        if not expected:
            return CheckResult(CHECK, SKIP, "no NVIDIA driver, nvidia-smi or GPU device node: not a GPU node "
                               f"as far as the agent sees ({instance.expected_source})",
                               {**details, "event_reason": "NoGPUs"})
        seen = 0
    if seen is None:
        why = smi.problem if smi is not None and smi.problem else "nvidia-smi gave no table"
        return CheckResult(CHECK, WARN, f"GPUs not counted: {why}", {**details, "event_reason": "GPUInventoryUnknown"})
    counted = f"{_plural(seen)} visible" + (" to nvidia-smi" if smi is not None else " (device nodes; no nvidia-smi)")
    lost = "".join(f"; {bus}: {why}" for bus, why in unreachable[:3])
    lost += f"; nvidia-smi output not understood: {malformed[0]}" if malformed else ""
    if expected is not None and seen < expected:
        missing = expected - seen
        return CheckResult(CHECK, FAIL, f"{seen} of {expected} GPUs visible: {missing} missing "
                           f"({instance.expected_source}){lost}",
                           {**details, "missing": missing, "event_reason": "GPUMissing"})
    if unreachable:
        return CheckResult(CHECK, FAIL, f"{counted} but NVML cannot open {_plural(len(unreachable))}{lost}",
                           {**details, "event_reason": "GPUMissing"})
    if expected is not None and seen > expected:
        return CheckResult(CHECK, WARN, f"{counted}, more than expected ({instance.expected_source})",
                           {**details, "event_reason": "GPUCountUnexpected"})
    if malformed:
        return CheckResult(CHECK, WARN, f"{counted}; nvidia-smi output not understood: {malformed[0]}",
                           {**details, "event_reason": "GPUInventoryUnreadable"})
    if expected is None and instance.instance_type is None:
        return CheckResult(CHECK, WARN, f"{counted}; not compared: {instance.expected_source}",
                           {**details, "event_reason": "InstanceTypeUnknown"})
    if expected is None:
        return CheckResult(CHECK, PASS, f"{counted}; not compared: {instance.expected_source}",
                           {**details, "event_reason": "GPUCountNotCompared"})
    return CheckResult(CHECK, PASS, f"{counted}, as expected ({instance.expected_source})",
                       {**details, "event_reason": "GPUsPresent"})


def node_object(facts: NodeFacts) -> Optional[Mapping[str, Any]]:
    """The Node as this resource just read it (``kube_node``): the report needs no GET of its own. A
    reused read (``agent/kube/node.py``) is only part of the Node: then None, and the report goes by
    its memory (``agent/report/published.py``)."""
    read = facts.kube_node
    return read.node if read is not None and not read.reused else None


class Inventory(Resource):
    """``kube_node``: the Node as read once (its label names the instance type; ``gpu-allocatable`` and
    the report use the same read); ``instance``: the instance type and its GPUs; ``gpu-inventory``."""

    checks = ("gpu-inventory",)

    def discover(self, node: Discovery) -> Dict[str, Any]:
        from agent.gpu.allocatable import passed_last
        from agent.kube.node import read_node

        reuse = node.heartbeat and node.config.report.heartbeat_minutes > 0 and passed_last(node.root, node.config)
        read = read_node(node.root, node.config, imds=node.imds,
                         reuse_for=node.config.report.heartbeat_minutes * 60 if reuse else None)
        instance = discover_instance(node.root, node.config, node_label=read.label(INSTANCE_TYPE_LABEL),
                                     imds=node.imds)
        return {"kube_node": read, "instance": instance}

    def check(self, facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
        return [check(facts.driver, facts.instance)] if facts.instance is not None else []


RESOURCE = Inventory()
