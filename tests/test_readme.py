"""The README's commands work as written: the demo runs the main job on a simulated node."""

import re
import subprocess

from tests.conftest import REPO


def test_readme_names_the_two_commands() -> None:
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^sudo (scripts/\S+)", readme, re.MULTILINE)
    assert commands == ["scripts/demo.sh", "scripts/test.sh"]
    assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text()


def test_demo_checks_plans_runs_and_ends_healthy() -> None:
    result = subprocess.run(["scripts/demo.sh"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    steps = [line for line in out.splitlines() if line.startswith("$ gpu-node-agent")]
    assert [s.split()[-1] for s in steps] == ["check", "plan", "run", "check"]
    first_check, plan, _run, last_check = out.split("$ gpu-node-agent")[1:]
    assert "health: unhealthy" in first_check and "(exit 1)" in first_check
    assert "+SystemdCgroup = true" in plan and '+mode = "auto"' in plan
    assert last_check.rstrip().endswith("health: healthy")
