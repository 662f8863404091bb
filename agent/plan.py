"""The pure planning core: node facts + the agent's config -> what ``run`` will do, and why.

No I/O here. ``plan`` prints a ``Plan``; ``run`` hands it to ``apply``. Problems the agent finds
but must not fix on its own (an unreadable file, mixed-version drop-ins) travel in ``problems``.
"""


from __future__ import annotations

from typing import TYPE_CHECKING, List, NamedTuple, Optional, Tuple

from agent.config import AgentConfig
from agent.errors import NodeFileError
from agent.fs import FileEdit
from agent.node import NodeFacts

if TYPE_CHECKING:
    from agent.efa import EfaAction


class Restart(NamedTuple):
    unit: str
    reason: str


class Plan(NamedTuple):
    edits: Tuple[FileEdit, ...] = ()
    restarts: Tuple[Restart, ...] = ()
    problems: Tuple[str, ...] = ()
    efa: Optional[EfaAction] = None  # the EFA userspace action and why (install or not)

    @property
    def changes_nothing(self) -> bool:
        return not self.edits and not self.restarts and not (self.efa and self.efa.install)


def make_plan(facts: NodeFacts, config: AgentConfig) -> Plan:
    from agent import containerd, efa, nvidia

    edits: List[FileEdit] = []
    problems: List[str] = []
    if isinstance(facts.containerd, NodeFileError):
        problems.append(str(facts.containerd))
    else:
        result = containerd.reconcile(facts.containerd, config.containerd)
        edits.extend(result.edits)
        problems.extend(result.problems)
    if isinstance(facts.nvidia_runtime, NodeFileError):
        problems.append(str(facts.nvidia_runtime))
    else:
        edit, nvidia_problems = nvidia.reconcile(facts.nvidia_runtime, config.nvidia_runtime)
        edits.extend([edit] if edit else [])
        problems.extend(nvidia_problems)
    efa_action = None
    if facts.efa is not None:
        efa_action, efa_problems = efa.decide(facts.efa, config.efa, facts.root)
        problems.extend(efa_problems)
    return Plan(edits=tuple(edits), problems=tuple(problems), efa=efa_action)


def render_plan(plan: Plan) -> str:
    out: List[str] = []
    for edit in plan.edits:
        out.append(f"# {edit.path}")
        out.extend(f"#   {reason}" for reason in edit.reasons)
        out.append(edit.diff().rstrip("\n"))
        out.append("")
    for restart in plan.restarts:
        out.append(f"restart {restart.unit}: {restart.reason}")
    if plan.efa is not None and plan.efa.applicable:
        out.append(f"efa: {plan.efa.describe()}")
    for problem in plan.problems:
        out.append(f"problem (not fixed): {problem}")
    if plan.changes_nothing and not plan.problems:
        out.append("nothing to do: the node is converged")
    elif plan.changes_nothing:
        out.append("no change planned")
    return "\n".join(out) + "\n"
