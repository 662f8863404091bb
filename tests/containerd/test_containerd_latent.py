"""A restart that lands on a CRI error the real containerd already had before the agent's edit
(tests/containerd/test_containerd_daemon.py shows the setup: the real daemons under a real systemd).

The daemon runs with a configuration its CRI plugin rejects (``registry.mirrors`` next to
``registry.config_path``) and that also lacks ``SystemdCgroup``, which the agent adds. After the
restart the plugin reports the very same error: the edit did not cause it and a rollback would not
cure it, so the agent keeps the edit, exits 1 with containerd's reason and says that kubelet was
not restarted because containerd is active but does not serve. A new error (the edit's own) is
still rolled back: ``test_agent_edit_the_cri_plugin_rejects_is_rolled_back`` there.
"""

import pytest

from tests.support.real_containerd import CRI_REJECTS_MIRRORS, RealContainerdNode
from tests.support.systemd_node import CONTAINERD

pytestmark = pytest.mark.root


def test_an_error_containerd_already_had_keeps_the_edit_and_names_its_reason(real_node: RealContainerdNode) -> None:
    broken = real_node.drifted + real_node.mirrors
    real_node.write_node(broken).boot()
    assert real_node.cri_status() == "error"  # the error is there before the agent does anything

    code, out, jobs = real_node.run()

    assert code == 1, out
    assert "Traceback" not in out
    kept = real_node.config.read_text()
    assert kept != broken and "SystemdCgroup = true" in kept  # the agent's edit stays
    assert real_node.mirrors.strip() in kept  # and so does what the daemon rejects: not the agent's to fix
    assert [(j.unit, j.result) for j in jobs] == [(CONTAINERD, "done")]  # once: no rollback restart
    assert real_node.props(CONTAINERD)["ActiveState"] == "active"
    assert real_node.cri_status() == "error"
    assert "rolled back /" not in out and "previous configuration is restored" not in out
    assert CRI_REJECTS_MIRRORS in out
    assert "is the error containerd already had before this run's change (same plugin, same message); " \
           "the change is kept, not rolled back" in out
    assert "kubelet.service: not restarted: containerd.service is active but does not serve (CRI plugin" in out
    assert "containerd.service is not active" not in out
