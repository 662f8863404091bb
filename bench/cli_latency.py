"""How fast `check` and `plan` answer, against a bare start of the same interpreter.

    .venv/bin/python bench/cli_latency.py [--python PATH] [--runs N] [--layout dev|installed]
                                          [--gi-from SITE_PACKAGES]

Builds a simulated node from tests/samples (containerd 2.x, the toolkit's default config, one
drifted containerd setting so `plan` has a diff to compute, the packaged agent config), then
times, alternating, N runs each of
`python -c pass`, `python -m agent check` and `python -m agent plan`, and prints the medians, the
ratios (goal: `check` within 3x a bare interpreter start) and the slowest imports of `check` from
`-X importtime`.
"""

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "tests" / "samples"


def simulated_node(base: Path) -> Path:
    files = {
        "etc/containerd/config.toml": (SAMPLES / "containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml").read_text(),
        "etc/nvidia-container-runtime/config.toml": (SAMPLES / "nvidia-container-runtime-default.toml").read_text(),
        "etc/eks/containerd-version.txt": "containerd github.com/containerd/containerd/v2 2.2.3 6f5b9e7\n",
        # as installed by the RPM: every key commented out, so the YAML parser runs as on a node
        "etc/gpu-node-agent/config.yaml": (REPO / "packaging" / "config.yaml").read_text(),
    }
    for rel, text in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return base


def installed_tree(base: Path, python: str, bytecode: str = "checked-hash", gi_from: Optional[Path] = None) -> Path:
    """A tree laid out like the RPM: the launcher in usr/bin, the agent and its pinned bundled
    libraries (packaging/bundled-requirements.txt) in usr/lib/gpu-node-agent, compiled to bytecode.
    PyYAML and requests, which a node gets from the distribution, go there too when ``python`` lacks
    them (the launcher refuses to start without them). ``bytecode``: the invalidation mode (the RPM's
    is checked-hash). ``gi_from``: a site-packages holding PyGObject built for ``python``, whose ``gi``
    is copied next to the agent, as python3-gobject-base puts it in the interpreter's site-packages on
    a node (plain interpreters built from source have none, and the bus read then fails at once)."""
    import shutil

    lib = base / "usr" / "lib" / "gpu-node-agent"
    launcher = base / "usr" / "bin" / "gpu-node-agent"
    launcher.parent.mkdir(parents=True)
    shutil.copy(REPO / "packaging" / "gpu-node-agent-launcher.py", launcher)
    shutil.copytree(REPO / "agent", lib / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
           "--target", str(lib)]
    subprocess.run([*pip, "--require-hashes", "-r", str(REPO / "packaging" / "bundled-requirements.txt")],
                   check=True)
    constraints = ["-c", str(REPO / "scripts" / "lock" / "al2023.txt")]
    for module, requirement in (("yaml", "PyYAML"), ("requests", "requests")):
        if subprocess.run([python, "-s", "-c", f"import {module}"], capture_output=True, check=False).returncode:
            subprocess.run([python, *pip[1:], *constraints, requirement], check=True)  # its own wheels
    if gi_from is not None:
        shutil.copytree(gi_from / "gi", lib / "gi", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([python, "-m", "compileall", "-q", "--invalidation-mode", bytecode, str(lib)], check=True)
    return launcher


def timed(cmd: List[str], env: Dict[str, str]) -> Tuple[float, float]:
    """(wall seconds, CPU seconds) of one run; CPU time is what other load on the box disturbs least."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure (default: this one)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--layout", choices=("dev", "installed"), default="dev",
                        help="dev: `python -m agent` from this checkout in the given (venv) interpreter; "
                             "installed: the RPM's layout and launcher on a plain interpreter, `python -s`")
    parser.add_argument("--bytecode", choices=("checked-hash", "timestamp", "unchecked-hash"),
                        default="checked-hash", help="installed layout: how the bytecode is validated "
                                                     "(default: checked-hash, as the RPM compiles it)")
    parser.add_argument("--gi-from", type=Path, metavar="SITE_PACKAGES",
                        help="installed layout: copy PyGObject's gi from this site-packages (built for "
                             "--python), as a node has it")
    args = parser.parse_args()
    # Bytecode caches on, as on a node (the package ships compiled); the warm-up run writes them.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory() as tmp:
        root = str(simulated_node(Path(tmp) / "node"))
        if args.layout == "dev":
            env["PYTHONPATH"] = str(REPO)
            agent = [args.python, "-m", "agent"]
            bare = [args.python, "-c", "pass"]
        else:
            launcher = installed_tree(Path(tmp) / "tree", args.python, args.bytecode, args.gi_from)
            agent = [args.python, "-s", str(launcher)]
            bare = [args.python, "-s", "-c", "pass"]
        commands = {
            "python -c pass": bare,
            "check": [*agent, "--root", root, "check"],
            "plan": [*agent, "--root", root, "plan"],
        }
        for cmd in commands.values():  # warm the page cache and the bytecode caches
            timed(cmd, env)
        wall: Dict[str, List[float]] = {name: [] for name in commands}
        cpu: Dict[str, List[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                w, c = timed(cmd, env)
                wall[name].append(w)
                cpu[name].append(c)
        importtime = subprocess.run([args.python, "-X", "importtime", *commands["check"][1:]], cwd=REPO, env=env,
                                    capture_output=True, text=True, check=False).stderr
    version = subprocess.run([args.python, "-V"], capture_output=True, text=True, check=False).stdout.strip()
    print(f"interpreter: {args.python} ({version}), layout {args.layout}, {args.runs} runs each, medians")
    print(f"  {'':<16} {'wall':>9}  {'ratio':>6}   {'cpu':>9}  {'ratio':>6}")
    bare_wall, bare_cpu = statistics.median(wall["python -c pass"]), statistics.median(cpu["python -c pass"])
    for name in commands:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"  {name:<16} {w * 1000:6.1f} ms  {w / bare_wall:5.2f}x   {c * 1000:6.1f} ms  {c / bare_cpu:5.2f}x")
    ratio = statistics.median(wall["check"]) / bare_wall
    print(f"check / bare start (wall): {ratio:.2f}x (goal <= 3x): {'met' if ratio <= 3 else 'NOT met'}")
    rows = []
    for line in importtime.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m and len(m.group(3)) <= 2:  # top-level imports only
            rows.append((int(m.group(2)), m.group(4)))
    print("slowest top-level imports of check (cumulative, -X importtime):")
    for cumulative, module in sorted(rows, reverse=True)[:10]:
        print(f"  {cumulative / 1000:7.1f} ms  {module}")


if __name__ == "__main__":
    main()
