"""The command handlers: what `run`, `prepare`, `check`, `plan`, `status`, `fleet`, `efa fetch` and `config` do
with their parsed options (``agent/cli.py`` parses them and turns errors into exit codes). Each
handler imports only what its command uses, so `check` stays fast.
"""


from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

if TYPE_CHECKING:
    from agent.base.noderoot import NodeRoot
    from agent.config.settings import AgentConfig

# --- helpers -------------------------------------------------------------------------------------


def _root(args: argparse.Namespace) -> NodeRoot:
    from agent.base.errors import UsageError
    from agent.base.noderoot import NodeRoot

    if not os.path.isdir(args.root):
        raise UsageError(f"--root {args.root}: not a directory")
    return NodeRoot(args.root)


def _config(args: argparse.Namespace, path: Optional[str] = None) -> AgentConfig:
    """The base file (``--config``, else the default under ``--root``) with the drop-ins of the
    ``config.d/`` beside it, merged (``agent/config/layers.py``)."""
    from agent.config.load import load_config
    from agent.config.settings import DEFAULT_CONFIG_PATH, DEFAULT_DROP_IN_DIR

    root = _root(args)
    explicit = path or args.config
    return load_config(explicit, default_path=root.path(DEFAULT_CONFIG_PATH),
                       drop_in_dir=None if explicit else root.path(DEFAULT_DROP_IN_DIR))


def _disabled(args: argparse.Namespace) -> bool:
    """``/etc/gpu-node-agent/disabled`` exists under --root: the node opted out (the units skip)."""
    from agent.report.status import DISABLED

    return _root(args).path(DISABLED).exists()


def _skip_disabled(args: argparse.Namespace, command: str) -> bool:
    """``run``/``prepare`` on a disabled node: one line, nothing done (``--force`` runs anyway)."""
    if getattr(args, "force", False) or not _disabled(args):
        return False
    from agent.report.status import DISABLED

    _print(f"gpu-node-agent {command}: the agent is disabled on this node ({DISABLED} exists): nothing done; "
           "--force runs it anyway\n")
    return True


def _start_pass(args: argparse.Namespace, name: str) -> None:
    """Start the status file's record of this boot pass (prepare, run, check --report)."""
    from agent.report.status import PassRecord

    args.pass_record = PassRecord(_root(args), name)


def finish_pass(args: argparse.Namespace, config: Optional[AgentConfig], health: Optional[str], code: int,
                 actions: Sequence[str]) -> None:
    record = getattr(args, "pass_record", None)
    if record is None:
        return
    args.pass_record = None
    from contextlib import suppress

    from agent.base.errors import AgentError
    from agent.config.settings import ReportSettings

    if config is None:  # the pass ended in an expected failure, maybe the configuration itself
        with suppress(AgentError):
            config = _config(args)
    status_file = config.report.status_file if config is not None else ReportSettings().status_file
    problem = record.finish(status_file, health, code, actions)
    if problem:
        from agent.base.log import get_logger

        get_logger("status").error("pass not recorded", error=problem)


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _pass_of(args: argparse.Namespace) -> Dict[str, Any]:
    """The pass making a report, for the metrics' durations (``report.finish``)."""
    record = getattr(args, "pass_record", None)
    return {"pass_name": record.name, "started": record.t0} if record is not None else {}


# --- commands ------------------------------------------------------------------------------------


def cmd_config_help(args: argparse.Namespace) -> int:
    from agent.base.errors import UsageError

    raise UsageError("config needs an action: validate or show")


def cmd_config_validate(args: argparse.Namespace) -> int:
    from agent.compat import matrix as compat

    config = _config(args, args.path)
    matrix = compat.with_drop_ins(compat.load_matrix(), _root(args))  # the operator's known-good rows too
    files = [*config.files, *matrix.source.split(", ")[1:]]
    _print(f"{', '.join(files) or config.source}: valid\n")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from agent.config.settings import dump_config

    config = _config(args)
    if args.format == "json":
        import json

        shown = {"config": config.to_dict(), "origins": config.origins} if args.origins else config.to_dict()
        _print(json.dumps(shown, indent=2) + "\n")
    else:
        _print(dump_config(config, origins=args.origins))
    return 0


def cmd_efa_help(args: argparse.Namespace) -> int:
    from agent.base.errors import UsageError

    raise UsageError("efa needs an action: fetch")


def cmd_efa_fetch(args: argparse.Namespace) -> int:
    from agent.efa import decision as efa_decision
    from agent.efa import facts as efa_facts

    config = _config(args)
    root = _root(args)
    if not (config.efa.sha256 or config.efa.gpg_fingerprint):  # whatever efa.install says
        raise efa_facts.EfaError(f"efa fetch: nothing to fetch: {efa_decision.missing_pin(config.efa)}")
    from agent.efa import cache
    from agent.efa.download import DownloadOptions

    path = cache.fetch(config.efa, root, DownloadOptions(durable=True))  # the cache an AMI is baked with
    from agent.efa.signature import pins

    _print(f"{root.node_path(path)}: aws-efa-installer {config.efa.version}, {pins(config.efa)} verified\n")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from agent.gpu.inventory import node_object
    from agent.pipeline import health
    from agent.pipeline import resources as pipeline
    from agent.report import document as report_doc

    if args.report:
        _start_pass(args, "check")
    config = _config(args)
    root = _root(args)
    facts = pipeline.discover(root, config, gpu_health=True, imds=args.report, heartbeat=args.report)
    results = pipeline.evaluate(facts, config)
    document = report_doc.report_document(results)
    outcome = None
    if args.report:  # only now are requests and the API client loaded: plain `check` stays fast
        from agent.report import report

        # report.publish: false (AMI bake, no cluster yet) means the status file and metrics only
        outcome = report.finish(root, config, results, publish_report=config.report.publish,
                                node=node_object(facts), **_pass_of(args))
        document = outcome.document
        pipeline.reported(facts, outcome.published is None or outcome.published.ok)
    disabled = _disabled(args)
    if args.format == "json":
        _print(report_doc.render_json({**document, "disabled": True} if disabled else document, pretty=args.pretty))
    else:
        _print(report_doc.render_table(results, color=sys.stdout.isatty(),
                                       columns=report_doc.output_width(sys.stdout)))
        if outcome is not None:
            _print(report.summary_line(outcome))
        if disabled:
            from agent.report.status import DISABLED

            _print(f"note: the agent is disabled on this node ({DISABLED}): run and prepare do nothing\n")
    code = 1 if outcome is not None and not outcome.ok else health.exit_code_for(document["health"])
    if outcome is not None:
        finish_pass(args, config, document["health"], code, document.get("actions", []))
    return code


def cmd_plan(args: argparse.Namespace) -> int:
    from agent.pipeline import plan
    from agent.pipeline import resources as pipeline

    config = _config(args)
    root = _root(args)
    the_plan = plan.make_plan(pipeline.discover(root, config), config)
    _print(plan.render_plan_json(the_plan) if args.format == "json" else plan.render_plan(the_plan))
    if the_plan.problems:
        return 1
    return 2 if args.detailed_exitcode and not the_plan.changes_nothing else 0


def cmd_run(args: argparse.Namespace) -> int:
    from agent.base import fs
    from agent.base.log import get_logger
    from agent.gpu.inventory import node_object
    from agent.pipeline import apply, health, plan
    from agent.pipeline import resources as pipeline
    from agent.report import document as report_doc

    log = get_logger("run")
    if _skip_disabled(args, "run"):
        return 0
    _start_pass(args, "run")
    config = _config(args)
    root = _root(args)
    with fs.run_lock(root, args.lock_wait):
        _clean_after_killed_runs(root, config)
        the_plan = plan.make_plan(pipeline.discover(root, config), config)
        for problem in the_plan.problems:
            log.warning("not fixed", problem=problem)
        from agent.report import timeline  # the daemons' first starts, before a restart replaces them

        early = timeline.observe_systemd() if the_plan.restarts else None
        result = apply.apply(the_plan, restart_timeout=config.restart.timeout_seconds)
        facts = pipeline.discover(root, config, gpu_health=True, imds=True)
        results = pipeline.evaluate(facts, config)
        results = pipeline.with_pending_restarts(results, result.pending, config)
    actions: List[str] = result.actions + [f"failed: {failure}" for failure in result.failures]
    _print(report_doc.render_table(results, actions, color=sys.stdout.isatty()))
    code = health.exit_code_for(health.overall_health(results))
    if result.failures:
        code = 1
    from agent.report import report

    # Always a report: the status file (and metrics); the cluster too unless report.publish is false.
    # A publishing failure only changes the exit code: what run did to the node stays done.
    restarts = {unit: result.restarted.count(unit) for unit in result.restarted}  # the metrics counter
    from agent.report import events

    outcome = report.finish(root, config, results, actions, publish_report=config.report.publish,
                            restarts=restarts, events=events.from_apply(root, result), node=node_object(facts),
                            early=early, **_pass_of(args))
    _print(report.summary_line(outcome))
    pipeline.reported(facts, outcome.published is None or outcome.published.ok)
    if not outcome.ok:
        code = 1
    log.info("run finished", health=health.overall_health(results), actions=len(actions))
    finish_pass(args, config, health.overall_health(results), code, actions)
    return code


def cmd_prepare(args: argparse.Namespace) -> int:
    from agent.base.log import get_logger
    from agent.pipeline import health, prepare
    from agent.report import document as report_doc
    from agent.report import report

    if _skip_disabled(args, "prepare"):
        return 0
    _start_pass(args, "prepare")
    config = _config(args)
    root = _root(args)
    result = prepare.prepare(root, config, args.lock_wait)
    _print(report_doc.render_table(result.results, result.actions, color=sys.stdout.isatty()))
    state = health.overall_health(result.results)
    code = 1 if result.failed else health.exit_code_for(state)
    # The Node object may not exist yet: the status file (and metrics) only, never the cluster.
    outcome = report.finish(root, config, result.results, result.actions, publish_report=False, **_pass_of(args))
    _print(report.summary_line(outcome))
    if not outcome.ok:
        code = 1
    get_logger("prepare").info("prepare finished", health=state, actions=len(result.actions))
    finish_pass(args, config, state, code, result.actions)
    return code


def cmd_status(args: argparse.Namespace) -> int:
    from agent.base.errors import UsageError
    from agent.report import document as report_doc
    from agent.report import status

    if args.timeout is not None and not args.wait:
        raise UsageError("status: --timeout applies only with --wait")
    config = _config(args)
    root = _root(args)
    path = root.path(config.report.status_file)
    if args.wait:
        view = status.wait_for_run(root, path, status.DEFAULT_WAIT_TIMEOUT if args.timeout is None else args.timeout)
    else:
        disabled = root.path(status.DISABLED).exists()
        try:
            view = status.summary(status.load(path), status.boot_id(root), disabled=disabled,
                                  running=status.lock_holder(root))
        except status.StatusFileError:
            if not disabled:
                raise
            view = status.summary({}, status.boot_id(root), disabled=True)
    _print(report_doc.render_json(view) if args.format == "json" else status.render_table(view))
    return status.exit_code(view)


def cmd_fleet(args: argparse.Namespace) -> int:
    """Read-only, from a workstation: the kubeconfig is the operator's, not under --root."""
    from agent.base.errors import UsageError
    from agent.base.noderoot import NodeRoot
    from agent.base.retry import Deadline
    from agent.kube.client import KubeClient
    from agent.kube.kubeconfig import load_kubeconfig
    from agent.report import fleet

    if os.path.realpath(args.root) != "/":
        raise UsageError("fleet: --root does not apply: it reads your own kubeconfig (--kubeconfig)")
    kubeconfig = load_kubeconfig(NodeRoot("/"), fleet.kubeconfig_path(args.kubeconfig, os.environ), args.context)
    with KubeClient(kubeconfig) as client:
        view = fleet.collect(client, Deadline(fleet.LIST_TIMEOUT), prefix=args.annotation_prefix,
                             condition=args.condition, stale_seconds=args.stale_minutes * 60).as_dict()
    if args.format == "json":
        import json

        _print(json.dumps(view, indent=2) + "\n")
    else:
        _print(fleet.render_table(view))
    return 0


def _clean_after_killed_runs(root: NodeRoot, config: AgentConfig) -> None:
    """Temp files and extraction directories a killed run left (run start, under the lock)."""
    from agent.base import fs
    from agent.efa import install
    from agent.toml.cache import VALUES_CACHE

    outputs = (config.containerd.config_path, config.nvidia_runtime.config_path, config.report.status_file,
               config.report.metrics_file, VALUES_CACHE, install.INSTALLER_PID_FILE)
    fs.remove_stale_temp_files(root.path(p) for p in outputs if p)
    install.clean_stale(root, config.efa)
