"""The compatibility matrix: detected component versions against known-good rows. Owns ``compatibility``.

The matrix is package data (``agent/data/compatibility.json``): rows of AMI release, Kubernetes
minor, containerd, toolkit, driver and nodeadm generation (before or after awslabs/amazon-eks-ami#2705),
each one a combination the stack's runbook tested end to end. A node matching a row passes; any
other combination is not necessarily broken, only untested, so it is a ``warn`` that names the
closest known row and what differs. Versions the node does not reveal (the AMI release never is,
see ``agent.compat.versions``) are left out of the comparison and listed as unknown, never guessed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from agent.base.errors import AgentError
from agent.compat.versions import NodeVersions, minor
from agent.pipeline.contract import Discovery, Resource
from agent.pipeline.health import PASS, SKIP, WARN, CheckResult

if TYPE_CHECKING:
    from agent.config.settings import AgentConfig
    from agent.pipeline.contract import NodeFacts

CHECK = "compatibility"
MATRIX_PATH = Path(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "compatibility.json")
FIELDS = ("ami_release", "kubernetes", "containerd", "toolkit", "driver", "nodeadm")
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
    nodeadm: str
    notes: str = ""

    def get(self, name: str) -> str:
        return str(getattr(self, name))


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


def parse_matrix(data: Any, source: str) -> Matrix:
    if not isinstance(data, dict) or data.get("schema") != 1 or not isinstance(data.get("rows"), list):
        raise MatrixError(f"{source}: expected {{\"schema\": 1, \"rows\": [...]}}")
    rows: List[KnownGood] = []
    for i, raw in enumerate(data["rows"]):
        where = f"{source}: rows[{i}]"
        if not isinstance(raw, dict):
            raise MatrixError(f"{where}: expected an object")
        unknown = set(raw) - set(FIELDS) - {"notes"}
        if unknown:
            raise MatrixError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        for name in FIELDS:
            if not isinstance(raw.get(name), str) or not raw[name]:
                raise MatrixError(f"{where}.{name}: expected a non-empty string")
        if raw["nodeadm"] not in NODEADM_GENERATIONS:
            raise MatrixError(f"{where}.nodeadm: expected one of {', '.join(NODEADM_GENERATIONS)}")
        if minor(raw["kubernetes"]) != raw["kubernetes"]:
            raise MatrixError(f"{where}.kubernetes: expected a minor version such as 1.35")
        rows.append(KnownGood(**{k: raw[k] for k in FIELDS}, notes=str(raw.get("notes", ""))))
    return Matrix(tuple(rows), source)


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


def check(versions: NodeVersions, matrix: Optional[Matrix] = None) -> CheckResult:
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
                           f"({versions.notes.get('kubernetes', 'kubelet version unknown')})", details)
    best = closest(found, matrix.rows)
    if best is None:
        return CheckResult(CHECK, WARN, f"{_shown(found)}: the compatibility matrix has no rows", details)
    details["closest"] = {n: best.row.get(n) for n in FIELDS}
    details["differs"] = [list(d) for d in best.differs]
    if best.differs:
        return CheckResult(CHECK, WARN, "untested combination: closest known-good row "
                           f"{best.row.ami_release} differs in {best.describe_differences()}", details)
    if missing:
        why = "; ".join(f"{LABELS[n]} unknown ({versions.notes.get(n, 'not found')})" for n in missing)
        return CheckResult(CHECK, WARN, f"{why}; the rest matches known-good {best.row.ami_release}", details)
    # Named by the row's AMI release: the node's own release is not recorded (details.unknown).
    return CheckResult(CHECK, PASS, f"{_shown(found)}: known-good row {best.row.ami_release}", details)


class Compatibility(Resource):
    """``versions``: the node's component versions (``agent/compat/versions.py``); ``compatibility``."""

    checks = ("compatibility",)

    def discover(self, node: Discovery) -> Dict[str, Any]:
        from agent.compat import versions

        driver = node.facts.get("driver")
        return {"versions": versions.discover(node.root, driver.version if driver else None,
                                              driver.version_note if driver else "driver not discovered")}

    def check(self, facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
        return [check(facts.versions)] if facts.versions is not None else []


RESOURCE = Compatibility()
