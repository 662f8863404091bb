"""The restart decision (pure: facts + config -> restarts with reasons) and the unit-state checks."""

import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import pytest

from agent.base.fs import FileEdit
from agent.base.noderoot import NodeRoot
from agent.config.settings import AgentConfig, ContainerdSettings, RestartSettings
from agent.containerd import config as containerd
from agent.containerd.files import ContainerdConfigSet
from agent.daemons.units import check_containerd_running, check_kubelet_running, stale_daemon
from agent.pipeline.contract import NodeFacts
from agent.pipeline.health import FAIL, PASS, SKIP, WARN
from agent.pipeline.plan import NotRestarted, Plan, Restart, make_plan, plan_restarts, render_plan
from agent.systemd.errors import BusUnreachable, SystemdError
from agent.systemd.state import UnitState, UnitStates, kubelet_unit, units_to_discover
from tests.support.paths import sample

CONTAINERD = "containerd.service"
KUBELET = "kubelet.service"
CONFIG_MTIME = 1_700_000_000.25  # when config.toml was written
BEFORE = int((CONFIG_MTIME - 60) * 1e6)  # a daemon started a minute before that
AFTER = int((CONFIG_MTIME + 60) * 1e6)  # a daemon started a minute after


def unit(
    name: str,
    active: str = "active",
    since: int = AFTER,
    load: str = "loaded",
    pid: int = 42,
    sub: Optional[str] = None,
) -> UnitState:
    sub = sub or {"active": "running", "inactive": "dead", "failed": "failed", "activating": "start"}.get(
        active, ""
    )
    if load != "loaded":
        active, sub, since, pid = "inactive", "dead", 0, 0
    return UnitState(
        name, load, active, sub, since if active == "active" else 0, pid if active == "active" else 0
    )


def states(*units: UnitState) -> UnitStates:
    return UnitStates("unix:path=/test", tuple(units))


@pytest.fixture
def config_set(node: Callable[[Dict[str, str]], Path]) -> Tuple[ContainerdConfigSet, NodeRoot]:
    root = node({"/etc/containerd/config.toml": sample("containerd-v3-nodeadm-nvidia.toml")})
    os.utime(root / "etc/containerd/config.toml", (CONFIG_MTIME, CONFIG_MTIME))
    node_root = NodeRoot(str(root))
    return containerd.load(node_root, ContainerdSettings()), node_root


def containerd_edit(root: NodeRoot) -> FileEdit:
    return FileEdit(
        root.path("/etc/containerd/config.toml"),
        "a = 1\n",
        "a = 2\n",
        ("SystemdCgroup = true",),
        "containerd",
    )


def nvidia_edit(root: NodeRoot) -> FileEdit:
    return FileEdit(
        root.path("/etc/nvidia-container-runtime/config.toml"), "x\n", "y\n", ("mode",), "nvidia-runtime"
    )


def decide(
    cs: Tuple[ContainerdConfigSet, NodeRoot],
    units: Union[UnitStates, SystemdError, None],
    edits: Sequence[str] = (),
    policy: str = "when-needed",
    unit_names: Sequence[str] = (CONTAINERD, KUBELET),
) -> Tuple[Tuple[Restart, ...], Tuple[NotRestarted, ...]]:
    config_set, root = cs
    made = {"containerd": containerd_edit, "nvidia": nvidia_edit}
    file_edits: List[FileEdit] = [made[e](root) for e in edits]
    settings = RestartSettings(policy=policy, units=tuple(unit_names))
    return plan_restarts(units, config_set, file_edits, settings, root)


HEALTHY_UNITS = states(unit(CONTAINERD), unit(KUBELET))


# --- when containerd restarts ---------------------------------------------------------------------


def test_converged_node_restarts_nothing(config_set: Tuple[ContainerdConfigSet, NodeRoot]) -> None:
    assert decide(config_set, HEALTHY_UNITS) == ((), ())


def test_own_edit_restarts_containerd_with_rollback_then_kubelet(
    config_set: Tuple[ContainerdConfigSet, NodeRoot],
) -> None:
    restarts, held = decide(config_set, HEALTHY_UNITS, edits=["containerd"])
    assert [r.unit for r in restarts] == [CONTAINERD, KUBELET]
    assert restarts[0].reason == "this run changes its configuration (/etc/containerd/config.toml)"
    assert restarts[0].rollback_on_failure is True
    assert restarts[1].rollback_on_failure is False
    assert restarts[1].reason.startswith("after containerd.service")
    assert held == ()


def test_nvidia_runtime_edit_alone_restarts_nothing(config_set: Tuple[ContainerdConfigSet, NodeRoot]) -> None:
    # The toolkit reads its config.toml on every container start; containerd does not need a restart.
    assert decide(config_set, HEALTHY_UNITS, edits=["nvidia"]) == ((), ())


def test_daemon_older_than_its_config_restarts_without_rollback(
    config_set: Tuple[ContainerdConfigSet, NodeRoot],
) -> None:
    units = states(unit(CONTAINERD, since=BEFORE), unit(KUBELET, since=BEFORE))
    restarts, _ = decide(config_set, units)
    assert [r.unit for r in restarts] == [CONTAINERD, KUBELET]
    assert restarts[0].rollback_on_failure is False  # nothing of the agent's to undo
    assert restarts[0].reason == (
        "containerd.service has run since 2023-11-14T22:12:20.250Z but /etc/containerd/config.toml "
        "changed at "
        "2023-11-14T22:13:20.250Z: the daemon runs an older configuration"
    )


def test_edit_and_stale_are_one_restart_with_both_reasons(
    config_set: Tuple[ContainerdConfigSet, NodeRoot],
) -> None:
    units = states(unit(CONTAINERD, since=BEFORE), unit(KUBELET))
    restarts, _ = decide(config_set, units, edits=["containerd"])
    assert [r.unit for r in restarts] == [CONTAINERD, KUBELET]
    assert "this run changes its configuration" in restarts[0].reason
    assert "runs an older configuration" in restarts[0].reason


def test_same_microsecond_is_not_stale(config_set: Tuple[ContainerdConfigSet, NodeRoot]) -> None:
    units = states(unit(CONTAINERD, since=int(CONFIG_MTIME * 1e6)), unit(KUBELET))
    assert decide(config_set, units) == ((), ())


def test_newest_imported_file_counts(node: Callable[[Dict[str, str]], Path]) -> None:
    main = sample("containerd-v3-nodeadm-nvidia.toml").replace(
        "version = 3\n", 'version = 3\nimports = ["/etc/containerd/conf.d/*.toml"]\n'
    )
    root = node(
        {"/etc/containerd/config.toml": main, "/etc/containerd/conf.d/99-nvidia.toml": "version = 3\n"}
    )
    os.utime(root / "etc/containerd/config.toml", (CONFIG_MTIME - 3600, CONFIG_MTIME - 3600))
    os.utime(root / "etc/containerd/conf.d/99-nvidia.toml", (CONFIG_MTIME, CONFIG_MTIME))
    cs = containerd.load(NodeRoot(str(root)), ContainerdSettings())
    stale = stale_daemon(unit(CONTAINERD, since=BEFORE), cs)
    assert stale is not None and stale.config_path == "/etc/containerd/conf.d/99-nvidia.toml"
    assert stale_daemon(unit(CONTAINERD, since=AFTER), cs) is None


def test_policy_always_restarts_even_a_converged_node(
    config_set: Tuple[ContainerdConfigSet, NodeRoot],
) -> None:
    restarts, _ = decide(config_set, HEALTHY_UNITS, policy="always")
    assert (restarts[0].unit, restarts[0].reason) == (CONTAINERD, "restart.policy is always")
    assert [r.unit for r in restarts] == [CONTAINERD, KUBELET]


# --- policy never, no systemd, units not there ----------------------------------------------------


def test_policy_never_holds_the_restart_as_a_warning(
    config_set: Tuple[ContainerdConfigSet, NodeRoot],
) -> None:
    restarts, held = decide(config_set, HEALTHY_UNITS, edits=["containerd"], policy="never")
    assert restarts == ()
    assert [(h.unit, h.status) for h in held] == [(CONTAINERD, WARN), (KUBELET, WARN)]
    assert held[0].reason.endswith("not restarting it (restart.policy: never)")


def test_policy_never_on_a_converged_node_says_nothing(
    config_set: Tuple[ContainerdConfigSet, NodeRoot],
) -> None:
    assert decide(config_set, HEALTHY_UNITS, policy="never") == ((), ())


def test_no_bus_with_an_edit_is_a_pending_failure(config_set: Tuple[ContainerdConfigSet, NodeRoot]) -> None:
    error = BusUnreachable("system bus unix:path=/x: Could not connect")
    restarts, held = decide(config_set, error, edits=["containerd"])
    assert restarts == ()
    assert [(h.unit, h.status) for h in held] == [(CONTAINERD, FAIL), (KUBELET, FAIL)]
    assert held[0].reason == (
        "this run changes its configuration (/etc/containerd/config.toml); cannot restart "
        "it: system bus unix:path=/x: Could not connect"
    )


def test_no_bus_without_an_edit_decides_nothing(config_set: Tuple[ContainerdConfigSet, NodeRoot]) -> None:
    # Staleness cannot be known without ActiveEnterTimestamp; the checks say so (skip).
    assert decide(config_set, BusUnreachable("no bus")) == ((), ())


def test_containerd_not_loaded_cannot_be_restarted(config_set: Tuple[ContainerdConfigSet, NodeRoot]) -> None:
    units = states(unit(CONTAINERD, load="not-found"), unit(KUBELET))
    restarts, held = decide(config_set, units, edits=["containerd"])
    assert restarts == ()
    assert [(h.unit, h.status) for h in held] == [(CONTAINERD, FAIL)]
    assert "containerd.service is not loaded (not-found)" in held[0].reason


def test_inactive_containerd_is_not_started_for_an_edit(
    config_set: Tuple[ContainerdConfigSet, NodeRoot],
) -> None:
    units = states(unit(CONTAINERD, active="inactive"), unit(KUBELET, active="inactive"))
    restarts, held = decide(config_set, units, edits=["containerd"])
    assert restarts == ()
    assert [(h.unit, h.status) for h in held] == [(CONTAINERD, SKIP)]
    assert held[0].reason == (
        "containerd.service inactive (dead): it loads the new configuration when it starts"
    )


def test_policy_always_starts_an_inactive_containerd(
    config_set: Tuple[ContainerdConfigSet, NodeRoot],
) -> None:
    units = states(unit(CONTAINERD, active="failed"), unit(KUBELET))
    restarts, _ = decide(config_set, units, policy="always")
    assert [r.unit for r in restarts] == [CONTAINERD, KUBELET]


@pytest.mark.parametrize(
    "kubelet, expected",
    [
        (
            unit(KUBELET, load="not-found"),
            "kubelet.service is not loaded (not-found); nothing to restart after containerd.service",
        ),
        (
            unit(KUBELET, active="inactive"),
            "kubelet.service inactive (dead); not starting it (nodeadm starts it)",
        ),
        (
            unit(KUBELET, active="failed"),
            "kubelet.service failed (failed); not starting it (nodeadm starts it)",
        ),
        (None, "kubelet.service is not loaded (not discovered); nothing to restart after containerd.service"),
    ],
)
def test_kubelet_not_running_is_reported_not_started(
    config_set: Tuple[ContainerdConfigSet, NodeRoot], kubelet: Optional[UnitState], expected: str
) -> None:
    units = states(unit(CONTAINERD), *([kubelet] if kubelet else []))
    restarts, held = decide(config_set, units, edits=["containerd"])
    assert [r.unit for r in restarts] == [CONTAINERD]
    assert held == (NotRestarted(KUBELET, expected, SKIP),)


def test_kubelet_in_auto_restart_is_restarted(config_set: Tuple[ContainerdConfigSet, NodeRoot]) -> None:
    units = states(unit(CONTAINERD), unit(KUBELET, active="activating", sub="auto-restart"))
    restarts, _ = decide(config_set, units, edits=["containerd"])
    assert [r.unit for r in restarts] == [CONTAINERD, KUBELET]


def test_units_restart_in_the_configured_order(config_set: Tuple[ContainerdConfigSet, NodeRoot]) -> None:
    names = ("containerd.service", "kubelet.service", "nvidia-cdi-refresh.service")
    units = states(*(unit(n) for n in names))
    restarts, _ = decide(config_set, units, edits=["containerd"], unit_names=names)
    assert [r.unit for r in restarts] == list(names)


def test_kubelet_unit_and_discovery_list() -> None:
    assert kubelet_unit(("containerd.service", "kubelet.service")) == "kubelet.service"
    assert kubelet_unit(("containerd.service",)) == "kubelet.service"
    assert kubelet_unit(("c.service", "x.service", "kubelet-eks.service")) == "kubelet-eks.service"
    assert units_to_discover(("containerd.service",)) == ["containerd.service", "kubelet.service"]
    assert units_to_discover(("containerd.service", "kubelet.service")) == [
        "containerd.service",
        "kubelet.service",
    ]


# --- the plan, end to end (pure) ------------------------------------------------------------------


def test_make_plan_and_render(node: Callable[[Dict[str, str]], Path]) -> None:
    root = NodeRoot(
        str(
            node(
                {
                    "/etc/containerd/config.toml": sample(
                        "containerd-v3-nodeadm-nvidia-no-systemdcgroup.toml"
                    ),
                    "/etc/nvidia-container-runtime/config.toml": sample(
                        "nvidia-container-runtime-default.toml"
                    ),
                }
            )
        )
    )
    config = AgentConfig()
    cs = containerd.load(root, config.containerd)
    facts = NodeFacts(
        root=root,
        containerd=cs,
        nvidia_runtime=None,
        units=states(unit(CONTAINERD, since=int((time.time() + 60) * 1e6)), unit(KUBELET, load="not-found")),
    )
    plan = make_plan(facts, config)
    assert [r.unit for r in plan.restarts] == [CONTAINERD]
    text = render_plan(plan)
    assert (
        "restart containerd.service: this run changes its configuration (/etc/containerd/config.toml)\n"
        in text
    )
    assert "no restart of kubelet.service: kubelet.service is not loaded (not-found)" in text
    # NodeFacts built without unit state (older callers): no restart is decided blindly.
    plan = make_plan(NodeFacts(root=root, containerd=cs, nvidia_runtime=None), config)
    assert plan.restarts == ()
    assert [h.status for h in plan.not_restarted] == [FAIL, FAIL]


def test_render_pending_and_converged() -> None:
    pending = Plan(not_restarted=(NotRestarted(CONTAINERD, "why; restart.policy: never", WARN),))
    assert (
        render_plan(pending)
        == "restart pending containerd.service: why; restart.policy: never\nno change planned\n"
    )
    assert render_plan(Plan()) == "nothing to do: the node is converged\n"


# --- checks ---------------------------------------------------------------------------------------


def test_containerd_running_pass_warn_fail_skip(config_set: Tuple[ContainerdConfigSet, NodeRoot]) -> None:
    cs, _ = config_set
    ok = check_containerd_running(states(unit(CONTAINERD)), cs, CONTAINERD)
    assert (ok.status, ok.message) == (
        PASS,
        "containerd.service active (running) since 2023-11-14T22:14:20.250Z, PID 42",
    )
    assert ok.details["main_pid"] == 42
    stale = check_containerd_running(states(unit(CONTAINERD, since=BEFORE)), cs, CONTAINERD)
    assert stale.status == WARN and stale.message.endswith("runs an older configuration (restart pending)")
    assert stale.details["config_path"] == "/etc/containerd/config.toml"
    down = check_containerd_running(states(unit(CONTAINERD, active="failed")), cs, CONTAINERD)
    assert (down.status, down.message) == (FAIL, "containerd.service failed (failed), expected active")
    gone = check_containerd_running(states(unit(CONTAINERD, load="not-found")), cs, CONTAINERD)
    assert (gone.status, gone.message) == (FAIL, "containerd.service is not loaded (not-found)")
    starting = check_containerd_running(states(unit(CONTAINERD, active="activating")), cs, CONTAINERD)
    assert starting.status == WARN
    unknown = check_containerd_running(BusUnreachable("system bus unix:path=/x: refused"), cs, CONTAINERD)
    assert (unknown.status, unknown.message) == (
        WARN,  # a state the agent could not read: never skip, never healthy
        "cannot read containerd.service: system bus unix:path=/x: refused",
    )
    # An unreadable config: the running check still reports the unit (containerd-config fails on its own).
    assert check_containerd_running(states(unit(CONTAINERD)), None, CONTAINERD).status == PASS


def test_kubelet_running() -> None:
    assert check_kubelet_running(states(unit(KUBELET)), KUBELET).status == PASS
    assert check_kubelet_running(states(unit(KUBELET, active="inactive")), KUBELET).message == (
        "kubelet.service inactive (dead), expected active"
    )
    assert check_kubelet_running(None, KUBELET).status == WARN
