"""Shared test fixtures. With GNA_NO_SKIP=1 (CI, scripts/test.sh) a skipped test fails the run."""

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List

import pytest

if TYPE_CHECKING:
    from tests.support.boot_helpers import BootedNode, PackagedAgent
    from tests.support.imds_server import ImdsServer
    from tests.support.kube_helpers import FakeAws
    from tests.support.kube_server import ApiServer
    from tests.support.systemd_harness import BootedSystemd



@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("GNA_NO_SKIP") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped tests are failures here (GNA_NO_SKIP=1): {report.longrepr}"


@pytest.fixture
def node(tmp_path: Path) -> Callable[[Dict[str, str]], Path]:
    """Build a simulated node root: ``node({"/etc/containerd/config.toml": text, ...})``."""

    root = tmp_path / "node"

    def build(files: Dict[str, str]) -> Path:
        for node_path, text in files.items():
            p = root / node_path.lstrip("/")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        root.mkdir(exist_ok=True)
        return root

    return build


@pytest.fixture
def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


@pytest.fixture
def boot_systemd(need_root: None) -> Iterator[Callable[..., Any]]:
    """Boot real systemd instances (tests/support/systemd_harness.py ``boot``); all are powered off afterwards."""
    from tests.support.systemd_harness import boot

    booted: List[Any] = []

    def start(*args: Any, **kwargs: Any) -> Any:
        instance = boot(*args, **kwargs)
        booted.append(instance)
        return instance

    yield start
    for instance in booted:
        instance.shutdown()


@pytest.fixture
def api() -> Iterator["ApiServer"]:
    """The loopback HTTPS Kubernetes API server (tests/support/kube_server.py) holding this node's Node
    (tests/support/kube_helpers.py ``NODE``), stopped afterwards. It knows no token until the test adds one
    (``api.add_token``; a module that always needs the same ones overrides this fixture with its own
    ``api(api)`` that adds them)."""
    from tests.support.kube_helpers import NODE
    from tests.support.kube_server import ApiServer

    with ApiServer() as server:
        server.add_node(NODE)
        yield server


@pytest.fixture
def imds() -> Iterator["ImdsServer"]:
    """The loopback IMDSv2 server (tests/support/imds_server.py) with the instance's metadata, stopped afterwards."""
    from tests.support.imds_server import ImdsServer

    with ImdsServer() as server:
        yield server


@pytest.fixture
def aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> "FakeAws":
    """The fake ``aws eks get-token`` exec plugin first on PATH (tests/support/kube_helpers.py)."""
    from tests.support.kube_helpers import install_fake_aws

    return install_fake_aws(tmp_path, monkeypatch)


@pytest.fixture(autouse=True)
def _fresh_logging() -> None:
    """Each test starts with unconfigured logging: structlog binds the stderr of the test that first
    logged (pytest's capture), which later tests must not write to. The format is ``auto``: JSON
    lines, as pytest's capture is no TTY."""
    from agent.base import log

    log.setup()


@pytest.fixture
def units_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """containerd and kubelet active (since tomorrow: never older than their files) and serving,
    as systemd and the daemons report them on a healthy node. For tests of other parts that run
    without a system bus (pyfakefs, no systemd); without it the unit checks warn ("cannot read").
    The real thing: tests/systemd/test_systemd_restart.py and tests/containerd/test_containerd_daemon.py."""
    import time as _time

    from agent.daemons import units
    from agent.daemons.serving import SERVING, Serving
    from agent.systemd import client as systemd
    from agent.systemd import state as systemd_state

    since = int((_time.time() + 86400) * 1e6)

    def discover(names: Any, **_: Any) -> Any:
        return systemd_state.UnitStates("unix:path=/run/dbus/system_bus_socket", tuple(
            systemd_state.UnitState(n, "loaded", "active", "running", since, 100 + i) for i, n in enumerate(names)))

    def serving(root: Any, config: Any, containerd_facts: Any, units: Any) -> Any:
        names = [config.restart.units[0], systemd_state.kubelet_unit(config.restart.units)]
        return {}, {n: Serving(SERVING, f"{n}: serving") for n in names}

    monkeypatch.setattr(systemd, "discover", discover)
    monkeypatch.setattr(units, "_serving", serving)


@pytest.fixture(scope="session")
def packaged() -> "PackagedAgent":
    """The RPM's payload, built once per session and installed in a scratch tree (tests/support/boot_helpers.py)."""
    from tests.support.boot_helpers import PackagedAgent

    return PackagedAgent.build_and_install()


@pytest.fixture
def booted_node(packaged: "PackagedAgent", boot_systemd: Callable[..., "BootedSystemd"]) -> Iterator["BootedNode"]:
    """A node whose agent is the installed package, its units under a real systemd (tests/boot/)."""
    from tests.support.boot_helpers import BootedNode

    node = BootedNode(packaged, boot_systemd)
    try:
        yield node
    finally:
        node.cleanup()
