"""Command line: the parser, its help texts and exit codes; the handlers are ``agent/commands.py``.

Usage, options and exit codes are what ``gpu-node-agent --help`` prints (README "Command line").
Commands and options are defined once, in the parser ``build_parser`` makes from ``COMMANDS``; what
needs to know them (``command_in``, the README's tests) asks argparse.
"""


from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Dict, FrozenSet, Optional, Sequence, Tuple

from agent import commands

PROG = "gpu-node-agent"
DEFAULT_LOCK_WAIT = 60.0


class _Parser(argparse.ArgumentParser):
    """argparse, but bad usage exits 64 (README "Exit codes") instead of 2 (which means degraded)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(64)


def _version() -> str:
    from agent import __version__

    return __version__


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # Accepted before or after the command; after it, only when given (SUPPRESS keeps the first).
    d: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument("--config", metavar="PATH", default=d,
                        help="agent configuration (default: /etc/gpu-node-agent/config.yaml under --root)")
    parser.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS if suppress else "/",
                        help="resolve every node path under DIR (default: /)")
    parser.add_argument("--log-format", choices=("auto", "console", "json"),
                        default=argparse.SUPPRESS if suppress else "auto",
                        help="log lines on stderr: console on a TTY, JSON otherwise (default: auto)")
    parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS if suppress else 0,
                        help="more log detail (repeatable)")
    parser.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS if suppress else 0,
                        help="less log detail: warnings only, then errors only (repeatable)")


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lock-wait", type=_seconds, default=DEFAULT_LOCK_WAIT, metavar="SECONDS",
                   help=f"how long to wait for another run to finish (default {DEFAULT_LOCK_WAIT:g})")
    p.add_argument("--force", action="store_true",
                   help="run even on a node disabled with /etc/gpu-node-agent/disabled (a hand run)")


def _seconds(text: str) -> float:
    """A number of seconds: finite and not negative (``.nan``, ``inf`` and ``-1`` are usage errors, 64)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text[:40]!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, at least 0, got {text[:40]!r}")
    return value


def _add_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="a table, one line per check, or the report document as JSON (default: table)")
    p.add_argument("--pretty", action="store_true",
                   help="with --format json: indented JSON (default: one compact line, for SSM and scripts)")
    p.add_argument("--report", action="store_true", help="also publish the node annotation and condition")


def _add_status(p: argparse.ArgumentParser) -> None:
    from agent.report.status import DEFAULT_WAIT_TIMEOUT

    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="a table of the boot passes, or the status document as JSON (default: table)")
    p.add_argument("--wait", action="store_true",
                   help="block until gpu-node-agent.service's run of this boot has finished")
    p.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                   help=f"with --wait (alone, exit 64): give up after SECONDS (default {DEFAULT_WAIT_TIMEOUT:g}), "
                        "exit 1")


def _add_fleet(p: argparse.ArgumentParser) -> None:
    from agent.report.fleet import DEFAULT_STALE_MINUTES

    p.add_argument("--kubeconfig", metavar="PATH", help="your kubeconfig (default: $KUBECONFIG's first file, "
                                                       "else ~/.kube/config)")
    p.add_argument("--context", metavar="NAME", help="the kubeconfig context (default: its current-context)")
    p.add_argument("--stale-minutes", type=_seconds, default=DEFAULT_STALE_MINUTES, metavar="M",
                   help="a report whose condition heartbeat is older is stale (default "
                        f"{DEFAULT_STALE_MINUTES:g})")
    p.add_argument("--annotation-prefix", default="gpu-node-agent", metavar="PREFIX",
                   help="the agents' report.annotation_prefix (default: gpu-node-agent)")
    p.add_argument("--condition", default="GPUNodeAgentReady", metavar="TYPE",
                   help="the agents' report.condition (default: GPUNodeAgentReady)")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="tables, or one JSON object (default: table)")


def _add_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="unified diffs with a reason per change, or JSON: per file its path, diff and reasons; "
                        "the restarts and why; the EFA action (default: text)")
    p.add_argument("--detailed-exitcode", action="store_true",
                   help="exit 2 when run would change something, 0 when nothing (as terraform plan does)")


def _add_config(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="config_command", metavar="ACTION", parser_class=_Parser)
    validate = actions.add_parser("validate", help="validate a configuration file", **_help("config validate"))
    _add_global_options(validate, suppress=True)
    validate.add_argument("path", nargs="?", help="file to validate (default: --config)")
    validate.set_defaults(handler=commands.cmd_config_validate)
    show = actions.add_parser("show", help="print the effective configuration with defaults", **_help("config show"))
    _add_global_options(show, suppress=True)
    show.add_argument("--format", choices=("yaml", "json"), default="yaml",
                      help="YAML with the source as a comment, or JSON (sections only); both load back "
                           "as a configuration file (default: yaml)")
    show.add_argument("--origins", action="store_true",
                      help="say which file set each value (YAML: a comment per value, 'default' for the rest; "
                           "JSON: {\"config\", \"origins\"})")
    show.set_defaults(handler=commands.cmd_config_show)


def _add_efa(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="efa_command", metavar="ACTION", parser_class=_Parser)
    fetch = actions.add_parser("fetch", help="download and verify the pinned installer into the cache",
                               **_help("efa fetch"))
    _add_global_options(fetch, suppress=True)
    fetch.set_defaults(handler=commands.cmd_efa_fetch)


def _options_with_values() -> FrozenSet[str]:
    """The global options that take a value (``--root DIR``), as argparse defines them."""
    probe = argparse.ArgumentParser(add_help=False)
    _add_global_options(probe, suppress=False)
    return frozenset(option for action in probe._actions if action.nargs != 0 for option in action.option_strings)


def command_in(argv: Sequence[str]) -> Optional[str]:
    """The command word of ``argv`` (global options may come first), or None."""
    takes_value = _options_with_values()
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in takes_value:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; with ``only`` (a known command), just that command's sub-parser: building all
    of them is a noticeable share of a `check` over SSM."""
    parser = _Parser(prog=PROG, description="Keep an EKS AL2023 NVIDIA GPU node at its working defaults.",
                     epilog=_exit_codes_epilog(EXIT_CODES["*"]), formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    _add_global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (handler, help_text, add) in COMMANDS.items():
        if only in COMMANDS and name != only:
            continue
        p = sub.add_parser(name, help=help_text, **_help(name, help_text))
        _add_global_options(p, suppress=True)
        p.set_defaults(handler=handler)
        if add is not None:
            add(p)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(command_in(argv)).parse_args(argv)
    from agent.base import log
    from agent.base.errors import AgentError

    log.setup(args.log_format, args.verbose - args.quiet)
    try:
        return int(args.handler(args))
    except AgentError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        commands.finish_pass(args, None, None, exc.exit_code, [f"failed: {exc}"])
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130


def kubectl_plugin(argv: Optional[Sequence[str]] = None) -> int:
    """``kubectl-gpu_node_agent``: ``kubectl gpu-node-agent [fleet] ...`` runs this CLI; without a
    command, ``fleet`` (the command that belongs on a workstation)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if command_in(argv) not in COMMANDS and not {"-h", "--help", "--version"} & set(argv):
        argv = ["fleet", *argv]
    return main(argv)


def cmd_version(args: argparse.Namespace) -> int:
    sys.stdout.write(f"{PROG} {_version()}\n")
    sys.stdout.flush()
    return 0


# name -> (handler, help, what the command adds to its parser)
COMMANDS: Dict[str, Tuple[Callable[[argparse.Namespace], int], str, Optional[Callable[..., None]]]] = {
    "run": (commands.cmd_run, "reconcile the node once, then report", _add_run),
    "prepare": (commands.cmd_prepare, "boot pass before nodeadm-run: fix the files (and EFA), restart nothing, "
                                      "publish nothing", _add_run),
    "status": (commands.cmd_status, "the boot passes and the last report, from the status file", _add_status),
    "plan": (commands.cmd_plan, "show what run would change and why; changes nothing", _add_plan),
    "check": (commands.cmd_check, "evaluate every health check", _add_check),
    "fleet": (commands.cmd_fleet, "every Node's health, versions and time to GPU-ready, from your "
                                  "workstation; read-only", _add_fleet),
    "efa": (commands.cmd_efa_help, "EFA userspace installer", _add_efa),
    "config": (commands.cmd_config_help, "validate or show the agent configuration", _add_config),
    "version": (cmd_version, "print the agent version", None),
}


# --- help: what each command does, and what its exit codes mean ------------------------------------

_USAGE_64 = ("64", "bad usage, or an invalid configuration file (file:line:key on stderr)")
EXIT_CODES: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "*": (("0", "healthy / success"), ("1", "unhealthy, or an action failed"), ("2", "degraded: warnings only"),
          _USAGE_64, ("75", "another run holds the lock")),
    "run": (("0", "healthy after the run, or the node is disabled (nothing done)"),
            ("1", "unhealthy, an action failed (edit, restart, EFA install), or the report was not published"),
            ("2", "degraded: warnings only"), _USAGE_64,
            ("75", "another run held /run/gpu-node-agent/lock for longer than --lock-wait")),
    "prepare": (("0", "healthy after the pass, or the node is disabled (nothing done)"),
                ("1", "unhealthy, or an action failed (edit, EFA install)"),
                ("2", "degraded: warnings only"), _USAGE_64,
                ("75", "another run held /run/gpu-node-agent/lock for longer than --lock-wait")),
    "status": (("0", "healthy (or the agent is disabled and has no report)"),
               ("1", "unhealthy, a pass of this boot failed, no report, an unreadable status file, or --wait "
                     "timed out"),
               ("2", "degraded: warnings only"), _USAGE_64),
    "plan": (("0", "a plan was made (with --detailed-exitcode: and run would change nothing)"),
             ("1", "the node has a problem the agent will not fix (e.g. an unreadable file)"),
             ("2", "with --detailed-exitcode: run would change something (a file, a restart, EFA)"), _USAGE_64),
    "check": (("0", "healthy"), ("1", "unhealthy; with --report also: the report was not published"),
              ("2", "degraded: warnings only"), _USAGE_64),
    "fleet": (("0", "listed"), ("1", "the kubeconfig or the API server failed (one line says which)"),
              ("64", "bad usage (e.g. --root, which does not apply)")),
    "efa": (("0", "success"), ("1", "the action failed"), _USAGE_64),
    "efa fetch": (("0", "the pinned installer is in the cache, verified"),
                  ("1", "nothing pinned, or the download or its verification failed (nothing kept)"), _USAGE_64),
    "config": (("0", "success"), _USAGE_64),
    "config validate": (("0", "valid"), ("64", "invalid: one line naming the file, line and key")),
    "config show": (("0", "printed"), _USAGE_64),
    "version": (("0", "printed"),),
}
DESCRIPTIONS: Dict[str, str] = {
    "run": "Reconcile the node once: containerd and NVIDIA Container Toolkit configuration, containerd and "
           "kubelet restarts when needed, the pinned EFA userspace; then the health report (node annotation "
           "and condition, status file). Holds /run/gpu-node-agent/lock.",
    "prepare": "The boot pass before nodeadm-run: the same reconcile of containerd's and the toolkit's files "
               "(and the EFA userspace with efa.before_kubelet), no restarts, no publishing; the result goes "
               "to the status file.",
    "status": "The boot passes (prepare, run, check heartbeat) and the last report, from the status file: "
              "when, how long, health, actions, exit code; the pass running now, by pid and command. --wait "
              "blocks until this boot's run has finished.",
    "plan": "Show what run would do, changing nothing: a unified diff per file with a reason per change, "
            "which units would restart and why, and the EFA action.",
    "check": "Evaluate every health check and print them; changes nothing on the node (with --report, "
             "also publishes the node annotation and condition).",
    "fleet": "From an operator's workstation with your own kubeconfig, read-only: every Node's agent report "
             "at a glance. Nodes grouped by health and the condition's reason, the agent and stack versions in "
             "use, time to GPU-ready p50/p90/max per instance type and per known-good AMI row, stale reports. "
             "Lists Nodes in pages (limit/continue, resourceVersion=0). Also: kubectl gpu-node-agent fleet.",
    "efa fetch": "Download the pinned aws-efa-installer into efa.cache_dir and verify it (efa.sha256, "
                 "efa.gpg_fingerprint), whatever efa.install says: for an AMI bake, so nodes need no network.",
    "config validate": "Validate a configuration file (default: --config) merged with the drop-ins of the "
                       "config.d/ beside it, as every command loads it; a bad key is named with its file.",
    "config show": "Print the effective configuration (config.yaml, then config.d/*.yaml in lexical order), "
                   "defaults included; --origins says which file set each value.",
}


def _exit_codes_epilog(codes: Sequence[Tuple[str, str]]) -> str:
    return "exit codes:\n" + "\n".join(f"  {code:<4}{meaning}" for code, meaning in codes)


def _help(name: str, fallback: Optional[str] = None) -> Dict[str, Any]:
    """add_parser arguments for ``name``: its description and an epilog with its exit codes."""
    description = DESCRIPTIONS.get(name, fallback)
    return {"description": description, "epilog": _exit_codes_epilog(EXIT_CODES.get(name, EXIT_CODES["*"])),
            "formatter_class": _HelpFormatter}


class _HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped as usual; the exit-code table kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("exit codes:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)
