"""Restarts and checks against the **real containerd daemons** (1.6, 1.7, 2.x) under a real systemd.

Each test runs on every daemon of tests/support/containerd_daemons.py: Debian 12's containerd 1.6 and the 1.7
and 2.x that scripts/fetch-containerd.sh extracts from Debian's archive. containerd runs as a
``Type=notify`` service of the test systemd with a private root, state and socket (the socket where
``--root`` resolution expects it: ``NODE/run/containerd/containerd.sock``), reading the simulated
node's ``config.toml`` in the layout that daemon reads on EKS (``version = 2`` for 1.x, ``version = 3``
for 2.x); the agent asks it through the daemon's own ``ctr`` (hard-linked to ``NODE/usr/bin/ctr``).
The CRI plugins' verdicts below are containerd's own:

* ``registry.mirrors`` next to ``registry.config_path``: the daemon runs, the CRI plugin is in error
  (on 2.x: ``io.containerd.cri.v1 images`` and ``io.containerd.grpc.v1 cri``);
* the deprecated CRI-level ``systemd_cgroup = true`` is valid while the default runtime is
  ``io.containerd.runtime.v1.linux``, and rejected by 1.6 and 1.7 once a ``runc.v2`` runtime is
  configured, which is what the agent's own edit (the ``nvidia`` runtime, the default) does: the
  rollback case, for real. containerd 2.x dropped both the v1 runtime's check and ``systemd_cgroup``:
  it serves with the agent's edit, and no edit the agent makes is known to be rejected by 2.x.

kubelet is the stand-in of ``tests/support/systemd_harness.py`` (no kubelet package here), serving healthz.
"""

import json
import time
from typing import Dict

import pytest

from agent.base.noderoot import NodeRoot
from agent.config.settings import ContainerdSettings
from agent.containerd import cri
from agent.containerd import files as containerd_files
from tests.support.containerd_daemons import params
from tests.support.real_containerd import (
    CRI_OK,
    CRI_REJECTS_MIRRORS,
    CRI_REJECTS_SYSTEMD_CGROUP,
    LEGACY_RUNC,
    MIRRORS_ERROR,
    RealContainerdNode,
)
from tests.support.systemd_node import CONTAINERD, KUBELET

pytestmark = pytest.mark.root

def only_compatibility_warns(statuses: Dict[str, str]) -> bool:
    # Debian's daemons are not in the known-good matrix (2.2.3): the compatibility check warns, and only it.
    return {k: v for k, v in statuses.items() if v not in ("pass", "skip")} == {"compatibility": "warn"}


def test_drift_is_fixed_restart_waits_for_cri_ok_and_check_passes(real_node: RealContainerdNode) -> None:
    real_node.write_node(real_node.drifted).boot()
    first = real_node.props(CONTAINERD)["MainPID"]

    code, out, jobs = real_node.run()

    assert code == 2, out  # degraded: the compatibility warning only
    assert real_node.config.read_text() == real_node.converged  # the agent's edit: SystemdCgroup (and enable_cdi)
    assert [(j.unit, j.result) for j in jobs] == [(CONTAINERD, "done"), (KUBELET, "done")]
    assert real_node.props(CONTAINERD)["MainPID"] != first
    assert set(real_node.cri_statuses().values()) == {"ok"}
    assert "restarted containerd.service: this run changes its configuration" in out
    # The CRI plugins the agent asks about for this daemon (agent/cri.py) are the ones it lists.
    listed = {(r[0], r[1]) for r in (ln.split() for ln in real_node.ctr("plugins", "ls").splitlines()[1:])
              if r and ("cri" in r[0].split(".") or r[1] == "cri")}
    probe = cri.probe(NodeRoot(str(real_node.root)),
                      containerd_files.load(NodeRoot(str(real_node.root)), ContainerdSettings()))
    assert probe is not None and set(probe.plugins) == listed == set(cri.CRI_PLUGINS[real_node.daemon.major])
    code, out = real_node.agent("check")
    statuses = real_node.statuses(out)
    assert only_compatibility_warns(statuses), out
    full = check_messages(real_node)  # the table cuts messages to 120 columns; the JSON has them whole
    assert CRI_OK[real_node.daemon.major] in full["containerd-running"]
    assert "kubelet healthz http://127.0.0.1:" in full["kubelet-running"]


def check_messages(node: RealContainerdNode) -> Dict[str, str]:
    """Each check's whole message, from ``check --format json`` (one line, before the log lines)."""
    _, out = node.agent("check", "--format", "json")
    return {c["name"]: c["message"] for c in json.loads(out.splitlines()[0])["checks"]}


def test_cri_plugin_in_error_while_the_unit_is_active_fails_the_check(real_node: RealContainerdNode) -> None:
    real_node.write_node(real_node.converged + real_node.mirrors).boot()
    assert real_node.props(CONTAINERD)["ActiveState"] == "active"
    assert real_node.cri_statuses()["io.containerd.grpc.v1 cri"] == "error"  # containerd's own verdict

    code, out = real_node.agent("check")

    assert code == 1, out
    assert real_node.statuses(out)["containerd-running"] == "fail"
    assert "health: unhealthy" in out
    code, out = real_node.agent("check", "--format", "json")
    running = next(c for c in json.loads(out.split("\n{\"component\"")[0])["checks"]
                   if c["name"] == "containerd-running")
    assert running["details"]["plugins"] == real_node.cri_statuses()  # the agent reports what the daemon lists
    assert running["details"]["reason"] == "error: " + MIRRORS_ERROR[real_node.daemon.major]
    assert "CRI plugin io.containerd.grpc.v1 cri: error: " + MIRRORS_ERROR[real_node.daemon.major] in running["message"]


def test_restart_into_a_latent_cri_error_fails_the_run(real_node: RealContainerdNode) -> None:
    """A stale daemon (its config rewritten after it started) whose new file the CRI plugin rejects:
    the agent did not write that file, so nothing is rolled back; the run fails with containerd's words."""
    real_node.write_node(real_node.converged).boot()
    started = real_node.props(CONTAINERD)["ActiveEnterTimestamp"] / 1e6
    while time.time() <= started:
        time.sleep(0.01)
    broken = real_node.converged + real_node.mirrors
    real_node.config.write_text(broken)  # a re-render the running daemon never loaded

    code, out, jobs = real_node.run()

    assert code == 1, out
    assert "Traceback" not in out
    assert real_node.config.read_text() == broken
    assert [(j.unit, j.result) for j in jobs] == [(CONTAINERD, "done")]  # kubelet: not for a broken CRI
    assert real_node.props(CONTAINERD)["ActiveState"] == "active"
    assert "containerd.service: restarted and active, but CRI plugin io.containerd.grpc.v1 cri: error: " in out
    assert CRI_REJECTS_MIRRORS in out
    assert "rolled back" not in out


@pytest.mark.parametrize("real_node", params(major=1), indirect=True)
@pytest.mark.parametrize("burst", [5, 2], ids=["default-start-limit", "start-limit-reached-by-the-rollback"])
def test_agent_edit_the_cri_plugin_rejects_is_rolled_back(real_node: RealContainerdNode, burst: int) -> None:
    """containerd 1.x. With StartLimitBurst=2 the boot and the agent's restart use up the limit: the
    rollback restart goes through only because the agent calls ResetFailedUnit first."""
    real_node.write_node(LEGACY_RUNC).boot(start_limit_burst=burst)
    assert real_node.cri_status() == "ok"
    old = real_node.config.read_bytes()

    code, out, jobs = real_node.run()

    assert code == 1, out
    assert real_node.config.read_bytes() == old  # the previous bytes are back
    assert real_node.cri_status() == "ok"  # and containerd serves with them
    assert [(j.unit, j.result) for j in jobs] == [(CONTAINERD, "done"), (CONTAINERD, "done"), (KUBELET, "done")]
    assert f"CRI plugin io.containerd.grpc.v1 cri: error: invalid plugin config: {CRI_REJECTS_SYSTEMD_CGROUP}" in out
    assert "containerd.service did not come back serving with this run's configuration change; the previous " \
           "configuration is restored and containerd.service serves again" in out
    assert CRI_REJECTS_SYSTEMD_CGROUP in real_node.log  # containerd logged the same reason


@pytest.mark.parametrize("real_node", params(major=2), indirect=True)
def test_containerd_2_serves_with_the_edit_1x_rejects(real_node: RealContainerdNode) -> None:
    """containerd 2.x migrates the ``version = 2`` file and ignores ``systemd_cgroup``: the agent's edit
    that 1.x rejects (above) is served, so the run keeps it and nothing is rolled back."""
    real_node.write_node(LEGACY_RUNC).boot()
    old = real_node.config.read_text()

    code, out, jobs = real_node.run()

    assert code == 2, out  # degraded: the compatibility warning only
    new = real_node.config.read_text()
    assert new != old and 'default_runtime_name = "nvidia"' in new
    assert [(j.unit, j.result) for j in jobs] == [(CONTAINERD, "done"), (KUBELET, "done")]
    assert set(real_node.cri_statuses().values()) == {"ok"}
    assert "restored" not in out and "rolled back" not in out


def test_start_limit_hit_is_named(real_node: RealContainerdNode) -> None:
    real_node.write_node(real_node.converged).boot(start_limit_burst=1)
    real_node.agent_config("  policy: always\n")

    code, out, jobs = real_node.run()

    assert code == 1, out
    assert [(j.unit, j.result) for j in jobs] == [(CONTAINERD, "failed")]
    assert "systemd's start-rate limit was hit (too many starts in a short time), not a problem of the " \
           "configuration" in out
