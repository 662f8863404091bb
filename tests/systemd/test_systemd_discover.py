"""Unit-state discovery (``systemd.discover``) against a real systemd (booted in private namespaces,
tests/support/systemd_harness.py) and a real dbus-daemon; against python-dbusmock: tests/systemd/test_systemd_mock.py.

The reference is what systemd itself reports (the harness reads it with ``busctl``, independent of
the agent's client), for units that are active, inactive, failed and not found; a bus that is
missing, silent or has no systemd on it is a ``SystemdError`` returned as data, within the timeout.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

from agent.daemons import units
from agent.pipeline.health import WARN
from agent.systemd import client as systemd
from agent.systemd import errors as systemd_errors
from agent.systemd import state as systemd_state
from tests.support.paths import REPO
from tests.support.systemd_harness import BootedSystemd, _children

UNITS = {
    "running.service": "[Unit]\nDescription=runs\n[Service]\nExecStart=/bin/sleep infinity\n",
    "stopped.service": "[Unit]\nDescription=never started\n[Service]\nExecStart=/bin/sleep infinity\n",
    "broken.service": "[Unit]\nDescription=fails at start\n[Service]\nExecStart=/bin/false\n",
    "done.service": "[Unit]\nDescription=oneshot\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
}
WANTS = ["running.service", "broken.service", "done.service"]
NAMES = [*UNITS, "missing.service", "dbus.socket", "test.target"]


@pytest.fixture
def sd(boot_systemd: Callable[..., BootedSystemd]) -> BootedSystemd:
    instance = boot_systemd(UNITS, wants=WANTS)
    instance.wait_until("running.service", "active")
    instance.wait_until("broken.service", "failed")
    return instance


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP ``pid`` (a process of a booted instance) for the block: it accepts nothing, answers nothing."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def bus_daemon_pid(sd: BootedSystemd) -> int:
    """Host pid of the instance's dbus-daemon (a child of its systemd)."""
    for pid in _children(sd.pid):
        if Path(f"/proc/{pid}/comm").read_text().strip() == "dbus-daemon":
            return pid
    raise AssertionError("no dbus-daemon in the booted instance")


# --- against real systemd ------------------------------------------------------------------------------


@pytest.mark.root
def test_unit_states_equal_the_pydbus_client(sd: BootedSystemd) -> None:
    found = systemd.discover(NAMES, address=sd.bus_address)
    assert isinstance(found, systemd_state.UnitStates), found
    states = {u.name: (u.load_state, u.active_state, u.sub_state) for u in found.units}
    assert states == {
        "running.service": ("loaded", "active", "running"),
        "stopped.service": ("loaded", "inactive", "dead"),
        "broken.service": ("loaded", "failed", "failed"),
        "done.service": ("loaded", "active", "exited"),
        "missing.service": ("not-found", "inactive", "dead"),
        "dbus.socket": ("loaded", "active", "running"),
        "test.target": ("loaded", "active", "active"),
    }
    running = found.get("running.service")
    assert running is not None
    props = sd.properties("running.service")
    assert running.main_pid == props["MainPID"] > 0
    assert running.active_enter_timestamp == props["ActiveEnterTimestamp"] > 0
    assert running.invocation_id == bytes(props["InvocationID"]).hex() and len(running.invocation_id) == 32
    missing = found.get("missing.service")
    assert missing is not None and (missing.main_pid, missing.active_enter_timestamp, missing.invocation_id) == (
        0, 0, "")

    sd.systemctl("restart", "running.service")
    again = systemd.discover(NAMES, address=sd.bus_address)
    assert isinstance(again, systemd_state.UnitStates)
    restarted = again.get("running.service")
    assert restarted is not None and restarted.main_pid != running.main_pid
    assert restarted.invocation_id != running.invocation_id
    assert restarted.active_enter_timestamp > running.active_enter_timestamp


@pytest.mark.root
def test_addresses_are_tried_in_order(sd: BootedSystemd, tmp_path: Path) -> None:
    address = f"unix:path={tmp_path}/no-such-bus;{sd.bus_address}"
    found = systemd.discover(["running.service"], address=address)
    assert isinstance(found, systemd_state.UnitStates) and found.address == address
    assert found.units == systemd.discover(["running.service"], address=sd.bus_address).units


@pytest.mark.root
def test_bus_that_accepts_but_never_answers(sd: BootedSystemd) -> None:
    with stopped(bus_daemon_pid(sd)):
        started = time.monotonic()
        found = systemd.discover(["running.service"], address=sd.bus_address, timeout=0.5)
        elapsed = time.monotonic() - started
    assert isinstance(found, systemd_errors.SystemdTimeout), found
    assert str(found) == f"system bus {sd.bus_address}: no answer within 0.5s while connecting"
    assert 0.5 <= elapsed < 2.5
    assert isinstance(systemd.discover(["running.service"], address=sd.bus_address), systemd_state.UnitStates)


@pytest.mark.root
def test_systemd_that_does_not_answer(sd: BootedSystemd) -> None:
    """The bus answers (Hello) but systemd, PID 1, is stopped: the GetUnit call is bounded."""
    with stopped(sd.pid):
        started = time.monotonic()
        found = systemd.discover(["running.service", "stopped.service"], address=sd.bus_address, timeout=0.5)
        elapsed = time.monotonic() - started
    assert isinstance(found, systemd_errors.SystemdTimeout), found
    assert str(found) == "running.service: GetUnit: systemd did not answer within 0.5s"
    assert found.unit == "running.service"
    assert 0.5 <= elapsed < 2.5
    assert units.check_unit_running("containerd-running", "running.service", found).status == WARN


# --- without systemd -----------------------------------------------------------------------------------------


def test_no_bus_at_the_address(tmp_path: Path) -> None:
    address = f"unix:path={tmp_path}/no-such-bus"
    found = systemd.discover(["containerd.service"], address=address)
    assert isinstance(found, systemd_errors.BusUnreachable)
    assert str(found) == f"system bus {address}: Could not connect: No such file or directory"
    check = units.check_containerd_running(found, None, "containerd.service")
    assert (check.status, check.message) == (WARN, f"cannot read containerd.service: system bus {address}: "
                                                   "Could not connect: No such file or directory")
    found = systemd.discover(["containerd.service"], address="tcp:host=127.0.0.1,port=1")
    assert isinstance(found, systemd_errors.BusUnreachable)
    assert str(found) == "system bus tcp:host=127.0.0.1,port=1: Could not connect to 127.0.0.1: Connection refused"


def test_socket_that_never_accepts(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "silent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        started = time.monotonic()
        found = systemd.discover(["containerd.service"], address=f"unix:path={path}", timeout=0.3)
        elapsed = time.monotonic() - started
    assert isinstance(found, systemd_errors.SystemdTimeout)
    assert str(found) == f"system bus unix:path={path}: no answer within 0.3s while connecting"
    assert 0.3 <= elapsed < 2


BUS_CONFIG = (
    '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" '
    '"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
    "<busconfig><type>custom</type><listen>{listen}</listen>"
    '<auth>EXTERNAL</auth><policy context="default"><allow user="*"/><allow own="*"/>'
    '<allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/></policy></busconfig>\n'
)


def test_bus_without_systemd_on_an_abstract_address(tmp_path: Path) -> None:
    """A real dbus-daemon (libdbus: authentication, Hello, routing) on which systemd is not registered."""
    name = f"gna-test-{uuid.uuid4().hex}"
    config = tmp_path / "bus.conf"
    config.write_text(BUS_CONFIG.format(listen=f"unix:abstract={name}"))
    daemon = subprocess.Popen(["dbus-daemon", f"--config-file={config}", "--nofork", "--nopidfile",
                               "--print-address=1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert daemon.stdout is not None
        printed = daemon.stdout.readline().strip()  # the daemon prints its address once it listens
        assert printed.startswith(f"unix:abstract={name},guid="), printed
        found = systemd.discover(["containerd.service"], address=f"unix:abstract={name}")
    finally:
        daemon.terminate()
        daemon.wait(10)
    assert isinstance(found, systemd_errors.BusUnreachable), found
    assert str(found).startswith(f"system bus unix:abstract={name}: systemd (org.freedesktop.systemd1) is not on "
                                 "it: ")


def test_without_the_gi_bindings_unit_state_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    code = (
        "import sys\nsys.modules['gi'] = None  # as on an interpreter without python3-gobject-base\n"
        "from agent.systemd import client as systemd\n"
        f"found = systemd.discover(['containerd.service'], address='unix:path={tmp_path}/bus')\n"
        "print(type(found).__name__, found)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == (f"BusUnreachable system bus unix:path={tmp_path}/bus: cannot load the D-Bus "
                                  "client (gi: ModuleNotFoundError); install "
                                  "python3-gobject-base"), out
