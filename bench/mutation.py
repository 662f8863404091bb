"""Mutation testing of the safety-critical code: how many realistic bugs the tests would notice.

Runs mutmut (pinned below) over one scope per module, each with only the test files of that
module, so a run fits a 2-core machine shared with other work: ``nice -n 19``, one worker. Not
part of CI. Each scope is copied with the tracked files of this checkout (working-tree contents)
into ``build/mutation/<scope>/`` and mutated there, so the checkout itself is never modified.
Writes ``build/mutation/summary.md`` (scores, and every surviving mutant with its diff) and
``build/mutation/summary.json``; record the scores in docs/test-strength.md.

    .venv/bin/python bench/mutation.py                 # every scope (about an hour on 2 cores)
    .venv/bin/python bench/mutation.py log fs          # some scopes
    .venv/bin/python bench/mutation.py --list          # the scopes, their functions and tests

mutmut is installed on first use into its own venv, ``.venv-mutation`` (Debian's Python 3.11 with
system site packages, for gi, like ``.venv``; the project's test dependencies, not the project
itself, which must be imported from the mutated copy). It is not in pyproject.toml's extras: it
pulls in a terminal UI (textual) that neither CI nor development needs.
"""

import argparse
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, NamedTuple, Tuple

REPO = Path(__file__).resolve().parent.parent
MUTMUT = "mutmut==3.8.1"
VENV = REPO / ".venv-mutation"
OUT = REPO / "build" / "mutation"
GOAL = 95.0


class Scope(NamedTuple):
    source: str  # the file mutated
    functions: Tuple[str, ...]  # mutmut names without "agent.<module>." ("x_f", "xǁClassǁmethod"); fnmatch
    tests: Tuple[str, ...]  # the test files run against each mutant (mutmut picks the ones that reach it)
    what: str


def _f(*names: str) -> Tuple[str, ...]:
    return tuple(n if "ǁ" in n else f"x_{n}" for n in names)


SYSTEMD = "tests/systemd/test_systemd_restart.py::test_"  # real systemd: a few end-to-end cases, each boots one
INSTALL = "tests/efa/test_efa_install.py::test_"
CACHE_CASES = tuple(INSTALL + t for t in (
    "install_runs_the_verified_installer", "a_tampered_cache_is_never_executed",
    "a_cache_matching_the_pin_only_in_its_first_8_hex_digits_is_never_executed",
    "a_tarball_changed_between_download_and_use_is_never_executed"))

SCOPES: Dict[str, Scope] = {
    "log": Scope(
        "agent/base/log.py",
        _f("redact"),
        ("tests/base/test_log.py",),
        "secret redaction in log events",
    ),
    "efa-extract": Scope(
        "agent/efa/safetar.py",
        _f("extract_tarball", "_member_path", "_inside", "_refuse_unsafe", "_extract_member", "_audit_links"),
        ("tests/efa/test_safetar.py",
         *(INSTALL + t for t in ("install_runs_the_verified_installer",
                                 "a_hostile_tarball_matching_the_pin_is_never_executed"))),
        "safe extraction of the installer tarball",
    ),
    "fs": Scope(
        "agent/base/fs.py",
        _f("atomic_write", "exchange", "_copy_xattrs", "fsync_dir", "open_lock", "run_lock"),
        ("tests/base/test_fs.py", "tests/cli/test_cli.py"),
        "atomic writes and the run lock",
    ),
    "config": Scope(
        "agent/config/parse.py",
        _f("parse_yaml", "_is_null", "_suggest", "_type_name", "xǁ_Builderǁ*"),
        ("tests/config/test_config.py", "tests/cli/test_cli.py"),
        "config validation: one line naming file, line and key; exit 64",
    ),
    "config-rules": Scope(
        "agent/config/rules.py",
        _f("absolute_path", "one_of", "positive", "regex", "url", "unit_names", "condition_type"),
        ("tests/config/test_config.py", "tests/cli/test_cli.py"),
        "what each configuration value must be (the rules kept with the keys)",
    ),
    "config-load": Scope(
        "agent/config/settings.py",
        _f("load_config", "_only_comments", "parse_config"),
        ("tests/config/test_config.py", "tests/cli/test_cli.py"),
        "loading the configuration file: missing, unreadable, not UTF-8, only comments",
    ),
    "apply": Scope(
        "agent/pipeline/apply.py",
        _f("*"),
        ("tests/pipeline/test_restart_apply.py", "tests/cli/test_cli.py",
         *(SYSTEMD + t for t in ("agent_edit_restarts_both_once_and_second_run_nothing",
                                 "containerd_failing_with_new_config_is_rolled_back",
                                 "no_bus_reconciles_files_and_reports_restart_pending")),
         *(INSTALL + t for t in ("run_installs_then_does_nothing", "run_with_a_failing_installer_exits_1"))),
        "writing planned edits, restarts in order, rollback",
    ),
    "kube-secrets": Scope(
        "agent/kube/credentials.py",
        _f("xǁPrivateFilesǁ*", "xǁCredentialSourceǁget", "xǁCredentialSourceǁ_from_token_file",
           "xǁCredentialSourceǁ_from_exec"),
        ("tests/kube/test_kube.py",),
        "credentials: key material in private files, removed; cached, refreshed",
    ),
    "kube-exec": Scope(
        "agent/kube/exec.py",
        _f("run_plugin", "parse_exec_credential"),
        ("tests/kube/test_kube.py",),
        "the exec plugin: its output never echoed, its ExecCredential checked",
    ),
    "systemd-restart": Scope(
        "agent/systemd/jobs.py",
        _f("restart", "_iterate_until", "_state_after_timeout"),
        ("tests/systemd/test_systemd_mock.py",
         *(SYSTEMD + t for t in ("restart_job_done_but_containerd_not_running_is_a_failed_restart",
                                 "restart_that_never_becomes_ready_is_bounded_by_timeout",
                                 "containerd_failing_with_new_config_is_rolled_back",
                                 "policy_always_restarts_a_converged_node"))),
        "restart verification: the job's result, then ActiveState, within the deadline",
    ),
    "efa-checksum": Scope(
        "agent/efa/cache.py",
        _f("require_pin", "verify_pins", "fetch", "open_verified", "_cached", "download_pinned", "_open_if_verified"),
        ("tests/efa/test_efa_fetch.py", *CACHE_CASES),
        "checksum verification: the cache, and again before use",
    ),
    "download": Scope(
        "agent/efa/download.py",
        _f("download", "_attempt"),
        ("tests/efa/test_download.py", "tests/efa/test_efa_fetch.py"),
        "the download: the digest compared, nothing kept on failure, resume, bounds",
    ),
    "hashing": Scope(
        "agent/efa/hashing.py",
        _f("sha256_of", "xǁPartialǁ*"),
        ("tests/efa/test_download.py", "tests/efa/test_efa_fetch.py", *CACHE_CASES),
        "the SHA-256 of the bytes received and of a cached copy",
    ),
    "cri": Scope(
        "agent/containerd/cri.py",
        _f("parse_plugins", "parse_error", "xǁCriProbeǁread", "probe"),
        ("tests/daemons/test_serving.py", "tests/base/test_node_reads_hostile.py"),
        "containerd's CRI plugins in the daemon's own words (1.x and 2.x plugin lists)",
    ),
    "xid": Scope(
        "agent/gpu/xid.py",
        _f("_load_state", "discover", "acknowledge"),
        ("tests/gpu/test_gpu_errors.py",),
        "XID state: this boot's only, reported once",
    ),
    "fabric": Scope(
        "agent/gpu/fabric.py",
        _f("discover", "fabricmanager_version"),
        ("tests/base/test_node_reads_hostile.py",
         *("tests/gpu/test_fabricmanager.py::test_" + t for t in (
             "not_installed_fails", "a_p5_whose_driver_lists_no_nvswitch_still_needs_its_fabric_manager",
             "another_version_than_the_driver_fails"))),
        "whether a node needs the fabric manager, and its version",
    ),
    "noderoot": Scope(
        "agent/base/noderoot.py",
        _f("confined", "xǁNodeRootǁpath", "xǁNodeRootǁsupplied", "xǁNodeRootǁ_parts", "xǁNodeRootǁ_walk",
           "xǁNodeRootǁnode_path"),
        ("tests/base/test_fs_hostile.py", "tests/base/test_node_reads_hostile.py"),
        "--root confinement: symlinks and '..' resolved inside the tree",
    ),
    "efa-signature": Scope(
        "agent/efa/signature.py",
        _f("verify_signature"),
        ("tests/efa/test_efa_signature.py",),
        "the installer's signature: GOODSIG and VALIDSIG by the pinned primary key",
    ),
    "tokens": Scope(
        "agent/kube/tokens.py",
        _f("checked_token", "redact"),
        ("tests/kube/test_kube_hostile.py",),
        "bearer tokens checked before they are sent, credentials masked in error texts",
    ),
    "yamlsafe": Scope(
        "agent/base/yamlsafe.py",
        _f("yaml_too_big", "load_budgeted"),
        ("tests/base/test_yamlsafe.py", "tests/config/test_config_hostile.py", "tests/kube/test_kube_hostile.py",
         "tests/base/test_node_reads_hostile.py"),
        "the YAML node budget (aliases and keys counted) before anything is built",
    ),
}


def ensure_mutmut() -> Path:
    mutmut = VENV / "bin" / "mutmut"
    stamp = VENV / ".mutation-stamp"
    want = MUTMUT + " " + (REPO / "pyproject.toml").read_text()
    if mutmut.exists() and stamp.exists() and stamp.read_text() == want:
        return mutmut
    if not (VENV / "bin" / "python").exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-e", f"{REPO}[test]", MUTMUT], check=True)
    # Only the dependencies: the agent must be imported from the mutated copy, never from here.
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "uninstall", "-q", "-y", "gpu-node-agent"],
                   check=True)
    stamp.write_text(want)
    return mutmut


def stage(name: str, scope: Scope) -> Path:
    """A copy of the tracked files (as they are in the working tree) plus mutmut's setup.cfg."""
    work = OUT / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    tops = set()
    for rel in filter(None, listed.decode().split("\0")):
        src = REPO / rel
        if src.is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / rel)
            tops.add(rel.split("/")[0])
    also = sorted(t for t in tops if t not in ("agent", "tests", "pyproject.toml"))
    lines = [
        "[mutmut]",
        "source_paths = agent",
        f"only_mutate = {scope.source}",
        "pytest_add_cli_args =\n    -p\n    no:cacheprovider",
        "pytest_add_cli_args_test_selection =\n" + "\n".join(f"    {t}" for t in scope.tests),
        "also_copy =\n" + "\n".join(f"    {t}" for t in also),
    ]
    (work / "setup.cfg").write_text("\n".join(lines) + "\n")
    return work


def patterns(scope: Scope) -> List[str]:
    module = scope.source[:-3].replace("/", ".")
    return [f"{module}.{fn}__mutmut_*" for fn in scope.functions]


# What counts as killed: mutmut's verdict (a timeout: the tests hung, which a run notices too), or the
# tests failing or hanging when re-run with the mutant in the source, on 3.11, then on 3.9 (AL2023's
# interpreter, where e.g. tarfile.data_filter exists).
DETECTED = ("killed", "timeout", "killed on re-run", "timeout on re-run", "killed on 3.9 re-run",
            "timeout on 3.9 re-run")
RERUN_TIMEOUT = 900.0


def recheck(mutmut: Path, work: Path, scope: Scope, key: str, env: Dict[str, str]) -> str:
    """Run the scope's tests once more with the mutant written into the source itself.

    mutmut switches mutants on inside functions at call time, after the module was imported, so a
    mutant in code that runs at import (e.g. a module-level table of validators) is never active
    under mutmut and always "survives"; other survivors get a second, trampoline-free opinion too.
    mutmut itself needs Python >= 3.10; the re-run also uses ``.venv39`` when it exists.
    """
    source = work / scope.source
    original = source.read_bytes()
    try:
        applied = subprocess.run([str(mutmut), "apply", key], cwd=work, env=env, capture_output=True, check=False)
        if applied.returncode != 0 or source.read_bytes() == original:
            return "survived"
        for python, where in ((VENV / "bin" / "python", "re-run"), (REPO / ".venv39" / "bin" / "python", "3.9 re-run")):
            if not python.exists():
                continue
            command = ["nice", "-n", "19", str(python), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                       *scope.tests]
            tests = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                code = tests.wait(RERUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(tests.pid, signal.SIGKILL)  # the tests' own children (a booted systemd) too
                tests.wait()
                return f"timeout on {where}"
            if code in (1, 2, 3, 4):
                return f"killed on {where}"
        return "survived"
    finally:
        source.write_bytes(original)


def run_scope(mutmut: Path, name: str, scope: Scope) -> Dict[str, object]:
    work = stage(name, scope)
    env = {**os.environ, "GNA_NO_SKIP": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
    started = time.monotonic()
    with open(work / "mutmut.log", "wb") as log:
        proc = subprocess.run(["nice", "-n", "19", str(mutmut), "run", "--max-children", "1", *patterns(scope)],
                              cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = time.monotonic() - started
    listing = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=work, env=env,
                             capture_output=True, text=True, check=False).stdout
    wanted = patterns(scope)
    status: Dict[str, str] = {}
    for line in listing.splitlines():
        key, _, value = line.strip().partition(": ")
        if value and any(fnmatch.fnmatchcase(key, p) for p in wanted):
            status[key] = value.strip()
    survivors = {}
    for key, value in sorted(status.items()):
        if value not in ("killed", "caught by type check"):
            diff = subprocess.run([str(mutmut), "show", key], cwd=work, env=env, capture_output=True,
                                  text=True, check=False).stdout
            verdict = recheck(mutmut, work, scope, key, env)
            if verdict == "survived":
                survivors[key] = {"status": value, "diff": diff.strip()}
            else:
                status[key] = verdict
    counts: Dict[str, int] = {}
    for value in status.values():
        counts[value] = counts.get(value, 0) + 1
    total = len(status)
    killed = sum(n for value, n in counts.items() if value in DETECTED)
    return {
        "scope": name, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "commit": checkout(),
        "source": scope.source, "what": scope.what, "tests": list(scope.tests),
        "mutmut_exit": proc.returncode, "seconds": round(seconds), "total": total, "killed": killed,
        # An interrupted run (mutmut killed, mutants never run) has no score.
        "score": round(100.0 * killed / total, 1) if total and proc.returncode == 0 and "not checked" not in counts
        else None,
        "counts": counts, "survivors": survivors,
    }


def checkout() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "agent", "tests"], cwd=REPO,
                           capture_output=True, text=True, check=False).stdout.strip()
    return f"{commit}{' + uncommitted changes' if dirty else ''}"


def write_summary(latest: List[Dict[str, object]]) -> Path:
    """Merge ``latest`` into the summary: each scope keeps its most recent result."""
    OUT.mkdir(parents=True, exist_ok=True)
    by_scope: Dict[str, Dict[str, object]] = {}
    previous = OUT / "summary.json"
    if previous.exists():
        by_scope = {str(r["scope"]): r for r in json.loads(previous.read_text())["results"]}
    by_scope.update({str(r["scope"]): r for r in latest})
    results = [by_scope[name] for name in [*SCOPES, *sorted(set(by_scope) - set(SCOPES))] if name in by_scope]
    lines = [f"# Mutation testing ({MUTMUT})", "",
             "| scope | source | killed | total | score | other | time | date | checkout |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        counts = dict(r["counts"])  # type: ignore[call-overload]
        counts.pop("killed", None)
        other = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "-"
        score = f"{r['score']}%" if r["score"] is not None else "-"
        lines.append(f"| {r['scope']} | {r['source']} | {r['killed']} | {r['total']} | {score} | {other} | "
                     f"{r['seconds']} s | {r['date']} | {r['commit']} |")
    for r in results:
        survivors = r["survivors"]
        if not survivors:
            continue
        lines += ["", f"## {r['scope']}: not killed", ""]
        for key, s in survivors.items():  # type: ignore[attr-defined]
            lines += [f"### {key} ({s['status']})", "", "```diff", s["diff"], "```", ""]
    summary = OUT / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    previous.write_text(json.dumps({"mutmut": MUTMUT, "results": results}, indent=1) + "\n")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scopes", nargs="*", help=f"scopes to run (default: all of {', '.join(SCOPES)})")
    parser.add_argument("--list", action="store_true", help="show the scopes and exit")
    parser.add_argument("--no-real-systemd", action="store_true",
                        help="leave out the tests that boot a real systemd (the slowest; the score says so)")
    args = parser.parse_args()
    if args.list:
        for name, scope in SCOPES.items():
            print(f"{name}: {scope.source} ({scope.what})\n  functions: {' '.join(scope.functions)}\n"
                  f"  tests: {' '.join(scope.tests)}")
        return 0
    unknown = [s for s in args.scopes if s not in SCOPES]
    if unknown:
        parser.error(f"unknown scope {', '.join(unknown)} (choose from {', '.join(SCOPES)})")
    mutmut = ensure_mutmut()
    results = []
    for name in args.scopes or list(SCOPES):
        print(f"== {name}", flush=True)
        scope = SCOPES[name]
        if args.no_real_systemd:
            scope = scope._replace(tests=tuple(t for t in scope.tests if not t.startswith(SYSTEMD)))
            name += "-no-real-systemd"
        r = run_scope(mutmut, name, scope)
        print(f"   {r['killed']}/{r['total']} killed ({r['score']}%) in {r['seconds']} s; "
              f"mutmut exit {r['mutmut_exit']}, log build/mutation/{name}/mutmut.log", flush=True)
        results.append(r)
        summary = write_summary([r])  # after each scope: an interrupted run keeps what it measured
    print(f"summary: {summary.relative_to(REPO)}")
    below = [str(r["scope"]) for r in results if r["score"] is None or float(r["score"]) < GOAL]  # type: ignore[arg-type]
    if below:
        print(f"below the {GOAL:g}% goal: {', '.join(below)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
