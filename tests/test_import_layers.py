"""The house keeps its shape: no import cycle in agent/ and no layer importing a higher one.

Every import counts: at module level, inside functions, and under ``TYPE_CHECKING``. The layers,
lowest first (a module may import its own layer and the ones below):

    base < toml < config < the resource contract < the domain packages < pipeline < report < commands/cli

A module's layer is that of the longest prefix in ``LAYERS`` that names it.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

from tests.support.paths import REPO

LAYERS: Tuple[Tuple[str, ...], ...] = (
    ("agent",),  # the package itself: the version only
    ("agent.base",),
    ("agent.toml",),  # format-preserving TOML knows no setting
    ("agent.config",),  # the settings refuse outputs onto the TOML values cache
    ("agent.pipeline.contract", "agent.pipeline.health"),  # what every resource imports
    ("agent.aws", "agent.compat", "agent.containerd", "agent.daemons", "agent.efa", "agent.gpu", "agent.kube",
     "agent.nvidia", "agent.systemd"),
    ("agent.pipeline",),
    ("agent.report",),
    ("agent.commands", "agent.cli", "agent.__main__"),
)


def modules(package_dir: Path) -> Dict[str, Path]:
    """Dotted module name -> file, for every module under ``package_dir`` (a package)."""
    found = {}
    for path in package_dir.rglob("*.py"):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(package_dir: Path) -> Dict[str, Set[str]]:
    """Module -> the modules of the same package it imports (any import statement, anywhere in it)."""
    mods = modules(package_dir)
    top = package_dir.name

    def known(name: str) -> str:
        while name not in mods and "." in name:
            name = name.rpartition(".")[0]
        return name

    graph: Dict[str, Set[str]] = {}
    for mod, path in mods.items():
        edges: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                edges.update(known(a.name) for a in node.names if a.name.split(".")[0] == top)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        parent = parent.rpartition(".")[0]
                    base = f"{parent}.{base}" if base else parent
                if base.split(".")[0] != top:
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    edges.add(full if full in mods else known(base))
        edges.discard(mod)
        graph[mod] = edges
    return graph


def cycles(graph: Mapping[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer_of(module: str, layers: Sequence[Sequence[str]] = LAYERS) -> Optional[int]:
    best: Optional[Tuple[int, int]] = None  # (prefix length, layer)
    for level, prefixes in enumerate(layers):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), level)
    return best[1] if best else None


def upward(graph: Mapping[str, Set[str]], layers: Sequence[Sequence[str]] = LAYERS) -> List[str]:
    out = []
    for mod, edges in sorted(graph.items()):
        for dep in sorted(edges):
            mine, theirs = layer_of(mod, layers), layer_of(dep, layers)
            if mine is None or theirs is None:
                out.append(f"{mod} -> {dep}: not in a layer")
            elif theirs > mine:
                out.append(f"{mod} -> {dep}: imports a higher layer")
    return out


def test_agent_has_no_import_cycle() -> None:
    assert cycles(imports(REPO / "agent")) == []


def test_no_layer_imports_a_higher_one() -> None:
    assert upward(imports(REPO / "agent")) == []


def _tree(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "agent"


def test_the_guard_sees_a_cycle_through_a_function_and_type_checking(tmp_path: Path) -> None:
    package = _tree(tmp_path, {
        "agent/__init__.py": "",
        "agent/base/__init__.py": "",
        "agent/base/a.py": "def f():\n    from agent.base import b\n",
        "agent/base/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agent.base.c import C\n",
        "agent/base/c.py": "import agent.base.a\nclass C: ...\n",
        "agent/base/d.py": "from agent.base.a import f\n",
    })
    assert cycles(imports(package)) == [["agent.base.a", "agent.base.b", "agent.base.c"]]


def test_the_guard_sees_an_upward_import(tmp_path: Path) -> None:
    package = _tree(tmp_path, {
        "agent/__init__.py": "",
        "agent/base/__init__.py": "",
        "agent/base/fs.py": "def f():\n    from agent.report.report import finish\n",
        "agent/report/__init__.py": "",
        "agent/report/report.py": "from agent.base import fs\nfrom .document import x\n",
        "agent/report/document.py": "x = 1\n",
    })
    graph = imports(package)
    assert graph["agent.report.report"] == {"agent.base.fs", "agent.report.document"}
    assert upward(graph) == ["agent.base.fs -> agent.report.report: imports a higher layer"]
    order = [layer_of(m) for m in ("agent.base.fs", "agent.pipeline.contract", "agent.gpu.xid", "agent.pipeline.plan")]
    assert order == sorted(order) and len(set(order)) == 4
