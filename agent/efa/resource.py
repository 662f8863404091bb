"""EFA as a node resource of the pipeline (``agent/pipeline.py``), through ``agent.efa``'s entry points only.

``efa``: the EFA devices and the installed userspace (``efa.discover``); the ``efa`` check
(``efa.check``); the plan's EFA action, install or not and why (``efa.decide``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List

from agent.pipeline import Discovery, Planned, Resource

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.health import CheckResult
    from agent.node import NodeFacts


class Efa(Resource):
    def discover(self, node: Discovery) -> Dict[str, Any]:
        from agent import efa

        return {"efa": efa.discover(node.root, node.config.efa)}

    def check(self, facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
        from agent import efa

        return [efa.check(facts.efa, config.efa)] if facts.efa is not None else []

    def plan(self, facts: NodeFacts, config: AgentConfig) -> Planned:
        from agent import efa

        if facts.efa is None:  # facts built by hand (tests)
            return Planned()
        action, problems = efa.decide(facts.efa, config.efa, facts.root)
        return Planned(problems=tuple(problems), efa=action)


RESOURCE = Efa()
