"""The compatibility matrix: detected component versions against known-good rows. Owns ``compatibility``.

The matrix is data: the packaged rows (``agent/data/compatibility.json``: every AL2023 NVIDIA AMI
release the EKS AMI CHANGELOG lists since toolkit 1.18, and the runbook's tested row; its
``provenance`` says where each comes from), then the operator's ``/etc/gpu-node-agent/compatibility.d/
*.json`` in lexical order (the same schema; a row with the ``ami_release`` and ``kubernetes`` of an
earlier row replaces it). A row is AMI release, Kubernetes minor, containerd, toolkit, driver, nodeadm
generation (before or after awslabs/amazon-eks-ami#2705) and its source. A node matching a row
passes; any other combination is not necessarily broken, only unlisted: ``compatibility.unknown``
says what it is (default ``warn``), and the message names the closest row and what differs.
Versions the node does not reveal (the AMI release never is, see ``agent.compat.versions``) are left out of
the comparison and listed as unknown, never guessed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from agent.base.errors import AgentError, ConfigError, NodeFileError
from agent.base.fs import MAX_CONFIG_FILE, read_bytes
from agent.base.noderoot import NodeRoot
from agent.compat.versions import NodeVersions, minor
from agent.pipeline.contract import Discovery, Resource
from agent.pipeline.health import PASS, SKIP, WARN, CheckResult

if TYPE_CHECKING:
    from agent.config.settings import AgentConfig
    from agent.pipeline.contract import NodeFacts

CHECK = "compatibility"
MATRIX_PATH = Path(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "compatibility.json")
DROP_IN_DIR = "/etc/gpu-node-agent/compatibility.d"  # the operator's rows, *.json
MAX_DROP_INS = 100
FIELDS = ("ami_release", "kubernetes", "containerd", "toolkit", "driver", "nodeadm")
REQUIRED = ("ami_release", "kubernetes", "containerd", "toolkit", "driver", "source")
# The components every GPU node reveals; the AMI release and nodeadm generation it does not.
COMPONENTS = ("kubernetes", "containerd", "toolkit", "driver")
LABELS = {
    "ami_release": "AMI",
    "kubernetes": "k8s",
    "containerd": "containerd",
    "toolkit": "toolkit",
    "driver": "driver",
    "nodeadm": "nodeadm",
}
NODEADM_GENERATIONS = ("pre-#2705", "#2705")


class MatrixError(AgentError):
    """The packaged matrix is unusable (a packaging bug, not a node problem)."""


class KnownGood(NamedTuple):
    ami_release: str
    kubernetes: str
    containerd: str
    toolkit: str
    driver: str
    nodeadm: str = ""  # "" when the row does not say
    notes: str = ""
    source: str = ""  # where the row comes from: the CHANGELOG, the runbook, an operator's file

    def get(self, name: str) -> str:
        return str(getattr(self, name))

    def label(self) -> str:
        """``v20260714 k8s 1.35``: a row's name, as two rows of one release differ in Kubernetes."""
        return f"{self.ami_release} k8s {self.kubernetes}"


class Matrix(NamedTuple):
    rows: Tuple[KnownGood, ...]
    source: str


class Comparison(NamedTuple):
    row: KnownGood
    matches: Tuple[str, ...]
    differs: Tuple[Tuple[str, str, str], ...]  # (field, detected, known-good)
    unknown: Tuple[str, ...]

    def describe_differences(self) -> str:
        return ", ".join(f"{LABELS[f]} {got} (known-good {want})" for f, got, want in self.differs)


def load_matrix(path: Optional[Path] = None) -> Matrix:
    """The packaged matrix (read through the package loader, so it is found wherever the package
    is installed, even zipped), or the file at ``path``."""
    source = str(path or MATRIX_PATH)
    try:
        get_data = getattr(__spec__.loader, "get_data", None) if __spec__ is not None else None
        if path is None and get_data is not None:
            raw = get_data(str(MATRIX_PATH))  # what pkgutil.get_data does, without importing it
        elif path is None:
            raw = MATRIX_PATH.read_bytes()
        else:
            raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise MatrixError(f"{source}: cannot read the compatibility matrix: {exc}") from None
    return parse_matrix(data, source)


def parse_matrix(data: Any, source: str, error: Any = MatrixError) -> Matrix:
    """The rows of a matrix document; a problem is one ``error`` naming ``source`` and the row."""
    if not isinstance(data, dict) or data.get("schema") != 1 or not isinstance(data.get("rows"), list):
        raise error(f"{source}: expected {{\"schema\": 1, \"rows\": [...]}}")
    rows: List[KnownGood] = []
    for i, raw in enumerate(data["rows"]):
        where = f"{source}: rows[{i}]"
        if not isinstance(raw, dict):
            raise error(f"{where}: expected an object")
        unknown = set(raw) - set(FIELDS) - {"notes", "source"}
        if unknown:
            raise error(f"{where}: unknown key {sorted(unknown)[0]!r}")
        for name in (*REQUIRED, "nodeadm", "notes"):
            if (name in REQUIRED or name in raw) and (not isinstance(raw.get(name), str) or not raw[name]):
                raise error(f"{where}.{name}: expected a non-empty string")
        if raw.get("nodeadm", NODEADM_GENERATIONS[0]) not in NODEADM_GENERATIONS:
            raise error(f"{where}.nodeadm: expected one of {', '.join(NODEADM_GENERATIONS)}")
        if minor(raw["kubernetes"]) != raw["kubernetes"]:
            raise error(f"{where}.kubernetes: expected a minor version such as 1.35")
        rows.append(KnownGood(**{k: raw.get(k, "") for k in FIELDS}, notes=raw.get("notes", ""),
                              source=raw["source"]))
    return Matrix(tuple(rows), source)


def with_drop_ins(matrix: Matrix, root: NodeRoot) -> Matrix:
    """``matrix`` with the operator's rows (``compatibility.d/*.json`` under ``root``, lexical order) added,
    each replacing an earlier row of the same AMI release and Kubernetes minor. A bad file is a
    ``ConfigError`` (exit 64) naming the file and the row."""
    directory = root.path(DROP_IN_DIR)
    try:
        names = sorted(p.name for p in directory.iterdir() if p.name.endswith(".json") and not p.name.startswith("."))
    except FileNotFoundError:
        return matrix
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot list the compatibility rows: {exc.strerror}") from None
    if len(names) > MAX_DROP_INS:
        raise ConfigError(f"{directory}: {len(names)} files, more than {MAX_DROP_INS}; refusing to read them")
    rows: Dict[Tuple[str, str], KnownGood] = {(r.ami_release, r.kubernetes): r for r in matrix.rows}
    sources = [matrix.source]
    for name in names:
        path = directory / name
        try:
            data = json.loads(read_bytes(path, limit=MAX_CONFIG_FILE).decode("utf-8"))
        except NodeFileError as exc:
            raise ConfigError(str(exc)) from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"{path}: not a JSON compatibility matrix: {exc}") from None
        for row in parse_matrix(data, str(path), ConfigError).rows:
            rows.pop((row.ami_release, row.kubernetes), None)  # a replaced row moves to the end (newest)
            rows[(row.ami_release, row.kubernetes)] = row
        sources.append(str(path))
    return Matrix(tuple(rows.values()), ", ".join(sources))


def detected(versions: NodeVersions) -> Dict[str, Optional[str]]:
    """The node's versions in the matrix's terms (Kubernetes by minor version)."""
    out = {name: getattr(versions, name) for name in FIELDS}
    out["kubernetes"] = minor(versions.kubernetes)
    return out


def compare(found: Dict[str, Optional[str]], row: KnownGood) -> Comparison:
    matches, differs, unknown = [], [], []
    for name in FIELDS:
        value = found.get(name)
        if value is None:
            unknown.append(name)
        elif value == row.get(name):
            matches.append(name)
        else:
            differs.append((name, value, row.get(name)))
    return Comparison(row, tuple(matches), tuple(differs), tuple(unknown))


def closest(found: Dict[str, Optional[str]], rows: Sequence[KnownGood]) -> Optional[Comparison]:
    """The row agreeing on the most components; on a tie, the later row (rows are oldest first)."""
    best: Optional[Comparison] = None
    for row in rows:
        c = compare(found, row)
        if best is None or (len(c.matches), -len(c.differs)) >= (len(best.matches), -len(best.differs)):
            best = c
    return best


def _shown(found: Dict[str, Optional[str]]) -> str:
    return ", ".join(f"{LABELS[n]} {found[n]}" for n in COMPONENTS if found.get(n))


def check(versions: NodeVersions, matrix: Optional[Matrix] = None, unknown: str = WARN) -> CheckResult:
    """``unknown``: what a combination no row lists is (``compatibility.unknown``)."""
    matrix = matrix or load_matrix()
    found = detected(versions)
    missing = [n for n in COMPONENTS if found.get(n) is None]
    details: Dict[str, Any] = {
        "detected": found,
        "unknown": {n: versions.notes.get(n, "not found") for n in FIELDS if found.get(n) is None},
        "matrix": matrix.source,
    }
    if len(missing) == len(COMPONENTS):
        return CheckResult(CHECK, SKIP, "no component versions found on this node "
                           f"({versions.notes.get('kubernetes', 'kubelet version unknown')})",
                           {**details, "event_reason": "NoVersions"})
    best = closest(found, matrix.rows)
    if best is None:
        return CheckResult(CHECK, unknown, f"{_shown(found)}: the compatibility matrix has no rows",
                           {**details, "event_reason": "UntestedVersions"})
    details["closest"] = {n: best.row.get(n) for n in (*FIELDS, "source")}
    details["differs"] = [list(d) for d in best.differs]
    if best.differs:
        setting = "" if unknown == WARN else f" (compatibility.unknown: {unknown})"
        return CheckResult(CHECK, unknown, f"untested combination{setting}: closest known-good row "
                           f"{best.row.label()} differs in {best.describe_differences()}",
                           {**details, "event_reason": "UntestedVersions"})
    details["matching"] = [r.label() for r in matrix.rows if not compare(found, r).differs]
    if missing:
        why = "; ".join(f"{LABELS[n]} unknown ({versions.notes.get(n, 'not found')})" for n in missing)
        return CheckResult(CHECK, WARN, f"{why}; the rest matches known-good {best.row.label()}",
                           {**details, "event_reason": "VersionsUnknown"})
    # Named by the row's AMI release: the node's own release is not recorded (details.unknown).
    details["matched"] = best.row.ami_release
    return CheckResult(CHECK, PASS, f"{_shown(found)}: known-good row {best.row.label()} "
                       f"({re.split('[,:]', best.row.source)[0]})", {**details, "event_reason": "KnownGoodVersions"})


class Compatibility(Resource):
    """``versions``: the node's component versions (``agent/compat/versions.py``); ``compatibility``."""

    checks = ("compatibility",)

    def discover(self, node: Discovery) -> Dict[str, Any]:
        from agent.compat import versions

        driver = node.facts.get("driver")
        return {"versions": versions.discover(node.root, driver.version if driver else None,
                                              driver.version_note if driver else "driver not discovered"),
                "matrix": with_drop_ins(load_matrix(), node.root)}

    def check(self, facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
        if facts.versions is None:
            return []
        return [check(facts.versions, facts.get("matrix"), config.compatibility.unknown)]


RESOURCE = Compatibility()
