"""A process that holds the run lock, as `gpu-node-agent run` does, until the test lets it go.

It takes the lock through the agent's own ``run_lock`` (which writes the holder's record), with the
command line `gpu-node-agent run --lock-wait 5` has: what a second run and `status` see of it is
what they would see of a real run in the middle of its work.
"""

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.support.paths import REPO

HOLDER_ARGS = ("run", "--lock-wait", "5")
HOLDER_COMMAND = "gpu-node-agent " + " ".join(HOLDER_ARGS)

_SCRIPT = (
    "import sys, time\n"
    "from agent.base.fs import run_lock\n"
    "from agent.base.noderoot import NodeRoot\n"
    "root = sys.argv.pop(1)\n"
    "with run_lock(NodeRoot(root), 5):\n"
    "    print('locked', flush=True)\n"
    "    sys.stdin.read()\n"  # until the test closes stdin
)


@contextmanager
def holding_the_lock(node: Path) -> Iterator["subprocess.Popen[str]"]:
    holder = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(node), *HOLDER_ARGS], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()
