#!/usr/bin/python3 -s
"""gpu-node-agent launcher, installed as /usr/bin/gpu-node-agent.

The agent and the libraries it bundles at pinned versions (pydbus, structlog, tomlkit,
typing_extensions) live in a private directory, /usr/lib/gpu-node-agent, found relative to this
script: an image mounted at DIR can then be inspected with ``DIR/usr/bin/gpu-node-agent --root DIR``.
``-s`` keeps per-user site-packages out; the private directory goes first on sys.path, so the
pinned versions win over anything installed system-wide. requests, PyYAML and gi come from the
distribution's packages.
"""

import os
import sys

BINDIR = os.path.dirname(os.path.realpath(__file__))
LIBDIR = os.path.join(os.path.dirname(BINDIR), "lib", "gpu-node-agent")

# Python put this script's directory (/usr/bin) first on sys.path; nothing there belongs to the agent.
sys.path[:] = [LIBDIR] + [p for p in sys.path if os.path.realpath(p or ".") != BINDIR]

try:
    from agent.cli import main
except ImportError as exc:
    sys.stderr.write(f"gpu-node-agent: cannot load the agent from {LIBDIR}: {exc} (reinstall the package)\n")
    sys.exit(1)

sys.exit(main())
