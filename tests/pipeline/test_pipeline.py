"""The resources listed once (agent/pipeline/contract.py): discovery, the plan and the checks iterate one list.

A node resource added the way the README says (one module with a ``RESOURCE``, one entry in
``RESOURCES``) shows up in ``check``, ``plan`` and ``run``'s restart decision with no other edit;
the checks come in the list's order; planning reads nothing from the node.
"""

import builtins
import io
import os
import socket
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Sequence

import pytest

from agent.base.fs import FileEdit, read_text
from agent.base.noderoot import NodeRoot
from agent.config.settings import AgentConfig
from agent.nvidia.toolkit import ENVVAR_KNOB
from agent.pipeline import contract as pipeline
from agent.pipeline import plan
from agent.pipeline import resources as node
from agent.pipeline.contract import Discovery, Planned, Resource, RestartNeed, read_or_error
from agent.pipeline.health import FAIL, PASS, CheckResult
from agent.pipeline.resources import Entry
from agent.report import document as report_doc
from tests.support.gpu_node import healthy_gpu_node
from tests.support.paths import sample

pytestmark = pytest.mark.usefixtures("units_serving")

REGISTRY = "/etc/containerd/certs.d/registry.example/hosts.toml"
WANTED = 'server = "https://registry.example"\n'


class RegistryMirror(Resource):
    """A resource as a new check would add it: containerd's hosts.toml for one registry."""

    def discover(self, node: Discovery) -> Dict[str, Any]:
        path = node.root.path(REGISTRY)
        return {"registry": read_or_error(lambda: (path, read_text(path)))}

    def check(self, facts: pipeline.NodeFacts, config: AgentConfig) -> List[CheckResult]:
        _path, text = facts.get("registry")
        ok = text == WANTED
        return [CheckResult("registry-mirror", PASS if ok else FAIL, "as wanted" if ok else "drifted")]

    def plan(self, facts: pipeline.NodeFacts, config: AgentConfig) -> Planned:
        path, text = facts.get("registry")
        if text == WANTED:
            return Planned()
        return Planned((FileEdit(path, text, WANTED, ("server: the mirror",), "registry-mirror"),))

    def restart_needs(self, facts: pipeline.NodeFacts, edits: Sequence[FileEdit],
                      config: AgentConfig) -> List[RestartNeed]:
        if any(e.path == facts.root.path(REGISTRY) for e in edits):
            return [RestartNeed("the registry mirror changes", from_edit=True)]
        return []


@pytest.fixture
def with_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node, "RESOURCES", (*node.RESOURCES, Entry(RegistryMirror())))


def converged(root: Path) -> NodeRoot:
    healthy_gpu_node(root)
    (root / REGISTRY.lstrip("/")).parent.mkdir(parents=True)
    (root / REGISTRY.lstrip("/")).write_text('server = "https://old.example"\n')
    return NodeRoot(str(root))


def test_a_new_resource_is_one_module_and_one_entry(tmp_path: Path, with_registry: None) -> None:
    root, config = converged(tmp_path / "node"), AgentConfig()
    facts = node.discover(root, config)
    results = node.evaluate(facts, config)
    assert results[-1] == CheckResult("registry-mirror", FAIL, "drifted")
    assert report_doc.render_table(results).splitlines()[-2].startswith("registry-mirror        fail    drifted")
    the_plan = plan.make_plan(facts, config)
    assert [e.path for e in the_plan.edits] == [root.path(REGISTRY)]
    assert [(r.unit, r.reason, r.rollback_on_failure) for r in the_plan.restarts] == [
        ("containerd.service", "the registry mirror changes", True),
        ("kubelet.service", "after containerd.service: it keeps its connection to the old container runtime",
         False),
    ]
    assert f"# {root.path(REGISTRY)}\n#   server: the mirror\n" in plan.render_plan(the_plan)


def test_checks_come_in_the_order_of_the_list(tmp_path: Path) -> None:
    root, config = NodeRoot(str(healthy_gpu_node(tmp_path / "node"))), AgentConfig()
    names = [r.name for r in node.evaluate(node.discover(root, config), config)]
    first = ["containerd-config", "containerd-running", "kubelet-running", "nvidia-runtime-config", "nvidia-driver",
             "efa", "compatibility"]
    assert names == first
    gpu = [r.name for r in node.evaluate(node.discover(root, config, gpu_health=True), config)]
    assert gpu == [*first, "gpu-inventory", "gpu-allocatable", "nvidia-fabricmanager", "gpu-errors"]
    assert sorted(gpu) == sorted(node.CHECK_NAMES)


def test_planning_reads_nothing_from_the_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"/etc/containerd/config.toml": sample("containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml"),
             "/etc/nvidia-container-runtime/config.toml": f"{ENVVAR_KNOB} = false\n"}
    root = healthy_gpu_node(tmp_path / "node", extra=files)
    config = AgentConfig()
    facts = node.discover(NodeRoot(str(root)), config)
    expected = plan.make_plan(facts, config)
    assert {e.resource for e in expected.edits} == {"containerd", "nvidia-runtime"}

    def no_io(*args: object, **kw: object) -> None:
        raise AssertionError(f"I/O while planning: {args!r}")

    for owner, name in ((builtins, "open"), (io, "open"), (os, "open"), (os, "stat"), (os, "lstat"),
                        (os, "listdir"), (os, "scandir"), (subprocess, "Popen"), (socket, "socket")):
        monkeypatch.setattr(owner, name, no_io)
    try:
        again = plan.make_plan(facts, config)
    finally:
        monkeypatch.undo()
    assert plan.render_plan(again) == plan.render_plan(expected)
