#!/usr/bin/python3 -s
"""gpu-node-agent launcher, installed as /usr/bin/gpu-node-agent.

The agent and the libraries it bundles at pinned versions (pydbus, structlog, tomlkit,
typing_extensions) live in a private directory, /usr/lib/gpu-node-agent, found relative to this
script: an image mounted at DIR can then be inspected with ``DIR/usr/bin/gpu-node-agent --root DIR``.
``-s`` keeps per-user site-packages out; the private directory goes first on sys.path, so the
pinned versions win over anything installed system-wide. requests, PyYAML and gi come from the
distribution's packages: when one is missing or broken, one line says which package to install,
before any command starts (a `run` must not stop half-way) and whichever import fails first.
The package owns its bytecode (compiled for AL2023's Python 3.9 at build time); the agent never
writes any, so the directory stays exactly as installed (`rpm -V` clean) under any interpreter.
"""

import os
import sys

BINDIR = os.path.dirname(os.path.realpath(__file__))
LIBDIR = os.path.join(os.path.dirname(BINDIR), "lib", "gpu-node-agent")
# Top-level module -> the AL2023 package that provides it.
DISTRO_MODULES = {
    "yaml": "python3-pyyaml",
    "requests": "python3-requests",
    "urllib3": "python3-requests",
    "idna": "python3-requests",
    "chardet": "python3-requests",
    "charset_normalizer": "python3-requests",
    "gi": "python3-gobject-base",
}

sys.dont_write_bytecode = True
# Python put this script's directory (/usr/bin) first on sys.path; nothing there belongs to the agent.
sys.path[:] = [LIBDIR] + [p for p in sys.path if os.path.realpath(p or ".") != BINDIR]


def cannot_load(exc):
    top = (exc.name or "").split(".")[0]
    if top in DISTRO_MODULES:
        sys.stderr.write(f"gpu-node-agent: cannot load {top}: {exc} (install {DISTRO_MODULES[top]})\n")
    else:
        sys.stderr.write(f"gpu-node-agent: cannot load the agent from {LIBDIR}: {exc} (reinstall the package)\n")
    sys.exit(1)


def require_distro_modules():
    """PyYAML and requests present (found, not imported: `check` never pays for requests)."""
    from importlib.machinery import PathFinder  # not importlib.util: on 3.9 it imports typing

    for module in ("yaml", "requests"):
        try:
            found = PathFinder.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            cannot_load(ModuleNotFoundError(f"No module named {module!r}", name=module))


try:
    require_distro_modules()
    from agent.cli import main
except ImportError as exc:
    cannot_load(exc)

try:
    code = main()
except ImportError as exc:  # e.g. a broken requests or PyYAML, imported by the command that needs it
    cannot_load(exc)
sys.exit(code)
