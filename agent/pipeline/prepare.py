"""The prepare pass: reconcile the files between nodeadm-config and nodeadm-run, before any daemon reads them.

``gpu-node-agent prepare`` (gpu-node-agent-prepare.service, ordered ``After=nodeadm-config.service``
and ``Before=nodeadm-run.service containerd.service kubelet.service``) runs the same discover ->
plan -> apply pipeline as ``run``, with what a node that has not started its daemons allows:

* files only (containerd, toolkit): the plan's restarts are dropped before ``apply``; a restart the
  plan wanted (containerd already running, started by user data or by hand) is left to the pass
  after nodeadm-run, which finds that daemon older than its configuration;
* the pinned EFA userspace when ``efa.before_kubelet`` is true (default), so no pod lands before
  libfabric is there; otherwise the run pass installs it;
* no publishing: the Node object may not exist yet. The report goes to the status file (with the
  ``prepare`` pass record), the metrics file and the journal.

Health: the daemon checks of a daemon that is not started yet are ``skip`` (nodeadm-run starts it);
everything else is judged as ``run`` judges it.
"""


from __future__ import annotations

from typing import List, NamedTuple, Sequence, Tuple

from agent.base.log import get_logger
from agent.base.noderoot import NodeRoot
from agent.config.settings import AgentConfig
from agent.pipeline.health import FAIL, SKIP, WARN, CheckResult
from agent.pipeline.plan import Plan

log = get_logger("prepare")

LATER = "the pass after nodeadm-run"
DAEMON_CHECKS = ("containerd-running", "kubelet-running")


class PrepareResult(NamedTuple):
    results: List[CheckResult]
    actions: List[str]  # done, left to the run pass, and failed ("failed: ...")
    failed: bool


def files_only(plan: Plan, config: AgentConfig) -> Tuple[Plan, List[str]]:
    """Pure: the part of ``plan`` the prepare pass carries out, and what it leaves to the run pass."""
    later = [f"restart left to {LATER}: {r.unit}: {r.reason}" for r in plan.restarts]
    later += [f"restart left to {LATER}: {held.unit}: {held.reason}"
              for held in plan.not_restarted if held.status in (WARN, FAIL)]
    efa = plan.efa
    if efa is not None and efa.install and not config.efa.before_kubelet:
        later.append(f"EFA userspace left to {LATER} (efa.before_kubelet: false): {efa.describe()}")
        efa = None
    return plan._replace(restarts=(), not_restarted=(), efa=efa), later


def before_start(results: Sequence[CheckResult], efa_deferred: bool) -> List[CheckResult]:
    """Checks as they stand before nodeadm-run: a daemon not started yet is not a failure."""
    out = []
    for r in results:
        if r.name in DAEMON_CHECKS and r.status == FAIL and r.details.get("active_state") == "inactive" \
                and r.details.get("load_state") == "loaded":
            out.append(r._replace(status=SKIP, message=f"{r.details.get('unit')} not started yet: nodeadm-run "
                                                        "starts it after this pass"))
        elif r.name == "efa" and r.status == FAIL and efa_deferred:
            out.append(r._replace(status=SKIP, message=f"{r.message} (left to {LATER}: efa.before_kubelet is "
                                                        "false)"))
        else:
            out.append(r)
    return out


def prepare(root: NodeRoot, config: AgentConfig, lock_wait: float) -> PrepareResult:
    from agent.base import fs
    from agent.pipeline import apply, plan
    from agent.pipeline import resources as pipeline

    with fs.run_lock(root, lock_wait):
        the_plan = plan.make_plan(pipeline.discover(root, config), config)
        for problem in the_plan.problems:
            log.warning("not fixed", problem=problem)
        now, later = files_only(the_plan, config)
        # The existing apply entry point, with nothing to restart: it never connects to systemd.
        result = apply.apply(now, restart_timeout=config.restart.timeout_seconds)
        for note in later:
            log.info("left to the run pass", note=note)
        efa_deferred = any(note.startswith("EFA userspace left") for note in later)
        results = before_start(pipeline.evaluate(pipeline.discover(root, config), config), efa_deferred)
    actions = result.actions + later + [f"failed: {failure}" for failure in result.failures]
    return PrepareResult(results, actions, bool(result.failures))
