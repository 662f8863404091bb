"""The README's commands work as written: the demo runs the main job on a simulated node."""

import re
import subprocess

from tests.support.paths import REPO


def test_readme_names_the_two_commands() -> None:
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^sudo (scripts/\S+)", readme, re.MULTILINE)
    assert commands == ["scripts/demo.sh", "scripts/test.sh"]
    assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text()


def test_demo_checks_plans_runs_and_ends_with_only_the_units_unproven() -> None:
    result = subprocess.run(["scripts/demo.sh"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    steps = [line for line in out.splitlines() if line.startswith("$ gpu-node-agent")]
    assert [s.split()[-1] for s in steps] == ["check", "plan", "run", "check"]
    first_check, plan, _run, last_check = out.split("$ gpu-node-agent")[1:]
    assert "health: unhealthy" in first_check and "(exit 1)" in first_check
    assert "+SystemdCgroup = true" in plan and '+mode = "auto"' in plan
    # No systemd on the simulated node: the unit checks cannot be read (warn); everything else passes.
    assert last_check.rstrip().endswith("health: degraded\n(exit 2)")
    rows = [ln.split(None, 2) for ln in last_check.splitlines() if ln[:1].islower() and len(ln.split()) > 2]
    not_passing = {r[0]: r[1] for r in rows if r[1] in ("warn", "fail")}
    assert not_passing == {"containerd-running": "warn", "kubelet-running": "warn"}, last_check
    assert "cannot read containerd.service: system bus" in last_check
