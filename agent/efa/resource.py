"""EFA as a node resource of the pipeline (``agent/pipeline/contract.py``), through ``agent.efa``'s entry points only.

``efa``: the EFA devices and the installed userspace (``efa_facts.discover``); the ``efa`` check
(``efa_decision.check``); the plan's EFA action, install or not and why (``efa_decision.decide``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List

from agent.pipeline.contract import Discovery, Planned, Resource

if TYPE_CHECKING:
    from agent.config.settings import AgentConfig
    from agent.pipeline.contract import NodeFacts
    from agent.pipeline.health import CheckResult


class Efa(Resource):

    checks = ("efa",)
    def discover(self, node: Discovery) -> Dict[str, Any]:
        from agent.efa import facts as efa_facts

        return {"efa": efa_facts.discover(node.root, node.config.efa)}

    def check(self, facts: NodeFacts, config: AgentConfig) -> List[CheckResult]:
        from agent.efa import decision as efa_decision

        return [efa_decision.check(facts.efa, config.efa)] if facts.efa is not None else []

    def plan(self, facts: NodeFacts, config: AgentConfig) -> Planned:
        from agent.efa import decision as efa_decision

        if facts.efa is None:  # facts built by hand (tests)
            return Planned()
        action, problems = efa_decision.decide(facts.efa, config.efa, facts.root)
        return Planned(problems=tuple(problems), efa=action)


RESOURCE = Efa()
