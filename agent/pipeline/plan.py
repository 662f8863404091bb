"""The pure planning core: node facts + the agent's config -> what ``run`` will do, and why.

No I/O here. ``plan`` prints a ``Plan``; ``run`` hands it to ``apply``. Problems the agent finds
but must not fix on its own (an unreadable file, mixed-version drop-ins) travel in ``problems``.
"""


from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from agent.base.fs import FileEdit
from agent.base.noderoot import NodeRoot
from agent.config.settings import AgentConfig, RestartSettings
from agent.pipeline.contract import NodeFacts
from agent.pipeline.health import FAIL, SKIP, WARN
from agent.systemd.state import UnitStates

if TYPE_CHECKING:
    from agent.containerd.files import ContainerdConfigSet
    from agent.daemons.serving import ServingProbe
    from agent.efa.decision import EfaAction
    from agent.pipeline.contract import RestartNeed
    from agent.systemd.errors import SystemdError


class Restart(NamedTuple):
    unit: str
    reason: str
    # The restart loads this run's own edit: if the unit does not come back active, apply puts the
    # previous files back and restarts it again (the agent never leaves containerd down by its change).
    rollback_on_failure: bool = False
    # How to ask the daemon whether it serves after the restart (containerd's CRI plugins, kubelet's
    # healthz); the restart is done only when it does.
    probe: Optional[ServingProbe] = None
    # Every reason is this run's own edit: when no edit gets written (full disk), there is nothing new
    # to load and the restart is not done.
    only_for_edits: bool = False


class NotRestarted(NamedTuple):
    """A restart the plan does not do: pending (``warn``/``fail``) or not applicable (``skip``)."""

    unit: str
    reason: str
    status: str  # WARN: policy never; FAIL: needed but impossible (no systemd, not loaded); SKIP


class Plan(NamedTuple):
    edits: Tuple[FileEdit, ...] = ()
    restarts: Tuple[Restart, ...] = ()
    problems: Tuple[str, ...] = ()
    not_restarted: Tuple[NotRestarted, ...] = ()
    efa: Optional[EfaAction] = None  # the EFA userspace action and why (install or not)

    @property
    def changes_nothing(self) -> bool:
        return not self.edits and not self.restarts and not (self.efa and self.efa.install)


def make_plan(facts: NodeFacts, config: AgentConfig) -> Plan:
    """Every resource's part (``agent/pipeline/resources.py``, in order), then the restarts their needs call for."""
    from agent.pipeline.resources import resources as listed

    edits: List[FileEdit] = []
    problems: List[str] = []
    efa_action = None
    resources = list(listed(gpu_health=False))
    for resource in resources:
        part = resource.plan(facts, config)
        edits.extend(part.edits)
        problems.extend(part.problems)
        if part.efa is not None:
            efa_action = part.efa
    needs = [need for resource in resources for need in resource.restart_needs(facts, edits, config)]
    restarts, not_restarted = decide_restarts(needs, facts.units, config.restart, facts.probes)
    return Plan(edits=tuple(edits), problems=tuple(problems), restarts=restarts, not_restarted=not_restarted,
                efa=efa_action)


def plan_restarts(
    units: Union[UnitStates, SystemdError, None],
    config_set: Optional[ContainerdConfigSet],
    edits: Sequence[FileEdit],
    settings: RestartSettings,
    root: NodeRoot,
    probes: Optional[Mapping[str, ServingProbe]] = None,
) -> Tuple[Tuple[Restart, ...], Tuple[NotRestarted, ...]]:
    """The restarts for containerd's own needs (``containerd.restart_needs``): ``decide_restarts``."""
    from agent.containerd.config import restart_needs

    needs = restart_needs(units, config_set, edits, settings.units[0], root)
    return decide_restarts(needs, units, settings, probes)


def decide_restarts(
    needs: Sequence[RestartNeed],
    units: Union[UnitStates, SystemdError, None],
    settings: RestartSettings,
    probes: Optional[Mapping[str, ServingProbe]] = None,
) -> Tuple[Tuple[Restart, ...], Tuple[NotRestarted, ...]]:
    """Which units restart, in order, and why. ``restart.units``: containerd first, then the rest.

    containerd restarts when a resource needs it (this run changes its effective configuration, the
    running daemon is older than its configuration: the pre-awslabs/amazon-eks-ami#2705 nodeadm case),
    or with ``policy: always``. The units after it (kubelet) restart only after containerd does, and
    only when loaded and running: kubelet keeps its CRI connection to the old daemon, but starting a
    kubelet nodeadm has not started is not the agent's call. A converged node restarts nothing.
    """
    containerd_unit, followers = settings.units[0], settings.units[1:]
    reasons = [need.reason for need in needs]
    if settings.policy == "always":
        reasons.append("restart.policy is always")
    if not reasons:
        return (), ()
    reason = "; ".join(reasons)
    state = units.get(containerd_unit) if isinstance(units, UnitStates) else None
    if settings.policy == "never":
        held = [NotRestarted(containerd_unit, f"{reason}; not restarting it (restart.policy: never)",
                             WARN)]
        held.extend(NotRestarted(u, f"after {containerd_unit} (restart.policy: never)", WARN)
                    for u in followers)
        return (), tuple(held)
    if not isinstance(units, UnitStates):
        why = str(units) if units is not None else "unit state not discovered"
        held = [NotRestarted(containerd_unit, f"{reason}; cannot restart it: {why}", FAIL)]
        held.extend(NotRestarted(u, f"after {containerd_unit}; cannot restart it: {why}", FAIL)
                    for u in followers)
        return (), tuple(held)
    if state is None or not state.loaded:
        shown = state.load_state if state is not None else "not discovered"
        why = f"{reason}; cannot restart it: {containerd_unit} is not loaded ({shown})"
        return (), (NotRestarted(containerd_unit, why, FAIL),)
    if not state.running and settings.policy != "always":
        why = f"{state.describe()}: it loads the new configuration when it starts"
        return (), (NotRestarted(containerd_unit, why, SKIP),)
    probes = probes or {}
    rollback = any(need.from_edit for need in needs)
    only_for_edits = settings.policy != "always" and all(need.from_edit for need in needs)
    restarts = [Restart(containerd_unit, reason, rollback_on_failure=rollback, probe=probes.get(containerd_unit),
                        only_for_edits=only_for_edits)]
    skipped: List[NotRestarted] = []
    for unit in followers:
        follower = units.get(unit)
        if follower is None or not follower.loaded:
            shown = follower.load_state if follower is not None else "not discovered"
            skipped.append(NotRestarted(unit, f"{unit} is not loaded ({shown}); nothing to restart after "
                                        f"{containerd_unit}", SKIP))
        elif not follower.running:
            why = f"{follower.describe()}; not starting it (nodeadm starts it)"
            skipped.append(NotRestarted(unit, why, SKIP))
        else:
            restarts.append(Restart(unit, f"after {containerd_unit}: it keeps its connection to the old "
                                          "container runtime", probe=probes.get(unit)))
    return tuple(restarts), tuple(skipped)


def render_plan(plan: Plan) -> str:
    out: List[str] = []
    for edit in plan.edits:
        out.append(f"# {edit.path}")
        out.extend(f"#   {reason}" for reason in edit.reasons)
        out.append(edit.diff().rstrip("\n"))
        out.append("")
    for restart in plan.restarts:
        out.append(f"restart {restart.unit}: {restart.reason}")
    for held in plan.not_restarted:
        label = "no restart of" if held.status == SKIP else "restart pending"
        out.append(f"{label} {held.unit}: {held.reason}")
    if plan.efa is not None and plan.efa.applicable:
        out.append(f"efa: {plan.efa.describe()}")
    for problem in plan.problems:
        out.append(f"problem (not fixed): {problem}")
    if plan.changes_nothing and not plan.problems and not plan.not_restarted:
        out.append("nothing to do: the node is converged")
    elif plan.changes_nothing:
        out.append("no change planned")
    return "\n".join(out) + "\n"


def plan_document(plan: Plan) -> Dict[str, Any]:
    """``plan --format json``: the same content as ``render_plan``, for scripts (``jq``).

    ``{"v":1, "changes", "files":[{"path","resource","reasons","diff"}], "restarts":[{"unit","reason",
    "rollback_on_failure"}], "not_restarted":[{"unit","reason","status"}], "efa":{...}|null, "problems"}``
    """
    efa: Optional[Dict[str, Any]] = None
    if plan.efa is not None:
        efa = {
            "action": "install" if plan.efa.install else "none",
            "applicable": plan.efa.applicable,
            "reason": plan.efa.reason,
            "version": plan.efa.settings.version,
            "source": ("cache" if plan.efa.cached else "download") if plan.efa.install else None,
            "description": plan.efa.describe(),
        }
    return {
        "v": 1,
        "changes": not plan.changes_nothing,
        "files": [{"path": str(e.path), "resource": e.resource, "reasons": list(e.reasons), "diff": e.diff()}
                  for e in plan.edits],
        "restarts": [{"unit": r.unit, "reason": r.reason, "rollback_on_failure": r.rollback_on_failure}
                     for r in plan.restarts],
        "not_restarted": [{"unit": n.unit, "reason": n.reason, "status": n.status} for n in plan.not_restarted],
        "efa": efa,
        "problems": list(plan.problems),
    }


def render_plan_json(plan: Plan) -> str:
    import json

    return json.dumps(plan_document(plan), indent=2) + "\n"
