"""The systemd client against a mock systemd (python-dbusmock, custom template): what a real systemd
cannot be made to do on demand. The real systemd tests (test_systemd_restart.py) remain the proof;
these cover the remaining edges: JobRemoved sent before the RestartUnit reply, other jobs' signals
first, every job result, a job done while the unit is not active, and a systemd that never answers
(each call's timeout).
"""

import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import pytest

from agent.daemons import units
from agent.pipeline.health import WARN
from agent.systemd import client as systemd
from agent.systemd import errors as systemd_errors
from agent.systemd import jobs as systemd_jobs
from agent.systemd import state as systemd_state

# Loaded by path into the mock server process (dbusmock "-t <path>").
TEMPLATE = r'''
"""systemd Manager subset: Subscribe, GetUnit, LoadUnit, RestartUnit with JobRemoved."""
import time

import dbus
from dbusmock import mockobject

BUS_NAME = "org.freedesktop.systemd1"
MAIN_OBJ = "/org/freedesktop/systemd1"
MAIN_IFACE = "org.freedesktop.systemd1.Manager"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
SYSTEM_BUS = True


def _escape(name):
    return "".join(c if c.isalnum() else "_%02x" % ord(c) for c in name)


def _add_unit(mock, name, load_state):
    path = MAIN_OBJ + "/unit/" + _escape(name)
    loaded = load_state == "loaded"
    mock.AddObject(path, UNIT_IFACE, {
        "Id": name,
        "LoadState": load_state,
        "ActiveState": "active" if loaded else "inactive",
        "SubState": "running" if loaded else "dead",
        "ActiveEnterTimestamp": dbus.UInt64(1_700_000_000_000_000 if loaded else 0),
        "InvocationID": dbus.Array([dbus.Byte(b) for b in range(16)] if loaded else [], signature="y"),
    }, [])
    mockobject.objects[path].AddProperties(SERVICE_IFACE, {"MainPID": dbus.UInt32(100 if loaded else 0)})
    mock.units[name] = path
    return path


def load(mock, parameters):
    mock.next_job = 1
    mock.behaviour = {str(k): str(v) for k, v in parameters.get("behaviour", {}).items()}
    mock.units = {}
    for name in parameters.get("units", []):
        _add_unit(mock, str(name), "loaded")


@dbus.service.method(MAIN_IFACE, in_signature="", out_signature="")
def Subscribe(self):
    pass


@dbus.service.method(MAIN_IFACE, in_signature="s", out_signature="o")
def GetUnit(self, name):
    if self.behaviour.get("GetUnit") == "hang":
        time.sleep(3)
    if self.behaviour.get("GetUnit") == "denied":
        raise dbus.exceptions.DBusException("Access denied", name="org.freedesktop.DBus.Error.AccessDenied")
    if name not in self.units:
        raise dbus.exceptions.DBusException(f"Unit {name} not loaded.",
                                            name="org.freedesktop.systemd1.NoSuchUnit")
    return self.units[name]


@dbus.service.method(MAIN_IFACE, in_signature="s", out_signature="o")
def LoadUnit(self, name):
    return self.units.get(name) or _add_unit(self, str(name), "not-found")


def _job_removed(mock, job_id, job, unit, result):
    mock.EmitSignal(MAIN_IFACE, "JobRemoved", "uoss", [dbus.UInt32(job_id), job, unit, result])


@dbus.service.method(MAIN_IFACE, in_signature="ss", out_signature="o")
def RestartUnit(self, name, mode):
    behaviour = self.behaviour.get(name, "done")
    if behaviour == "denied":
        raise dbus.exceptions.DBusException("Access denied", name="org.freedesktop.DBus.Error.AccessDenied")
    if behaviour == "hang":
        time.sleep(3)
    job_id = self.next_job
    self.next_job += 2
    job = f"{MAIN_OBJ}/job/{job_id}"
    unit = mockobject.objects[self.units[name]]
    # Signals are sent here, before the method reply: the client must already be subscribed.
    if behaviour == "others-first":
        _job_removed(self, job_id + 1, f"{MAIN_OBJ}/job/{job_id + 1}", name, "failed")
        behaviour = "done"
    if behaviour == "done-but-failed":
        behaviour = "done-then:failed:failed"
    if behaviour.startswith("done-then:"):  # the job ends "done", the unit is left in this state
        active, sub = behaviour.split(":")[1:]
        unit.UpdateProperties(UNIT_IFACE, {"ActiveState": active, "SubState": sub})
        _job_removed(self, job_id, job, name, "done")
    elif behaviour != "never":
        if behaviour == "done":
            stamp = unit.Get(UNIT_IFACE, "ActiveEnterTimestamp") + 1
            unit.UpdateProperties(UNIT_IFACE, {"ActiveEnterTimestamp": dbus.UInt64(stamp)})
            pid = unit.Get(SERVICE_IFACE, "MainPID") + 1
            unit.UpdateProperties(SERVICE_IFACE, {"MainPID": dbus.UInt32(pid)})
        _job_removed(self, job_id, job, name, behaviour)
    return job
'''


@pytest.fixture
def mock_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """Start a private system bus and the mock systemd on it; returns the bus address."""
    import dbus
    from dbusmock.testcase import BusType, DBusTestCase, PrivateDBus

    template = tmp_path / "systemd_restart_template.py"
    template.write_text(TEMPLATE)
    # PrivateDBus exports its address in os.environ; monkeypatch restores the previous value after.
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent")
    servers = []
    with PrivateDBus(BusType.SYSTEM) as bus:

        def start(units: Any = ("containerd.service",), behaviour: Dict[str, str] = {}) -> str:  # noqa: B006
            parameters = {
                "units": dbus.Array(list(units), signature="s"),
                "behaviour": dbus.Dictionary(behaviour, signature="ss"),
            }
            server, _ = DBusTestCase.spawn_server_template(str(template), parameters, system_bus=True)
            servers.append(server)
            return bus.address

        try:
            yield start
        finally:
            for server in servers:
                server.terminate()
                server.wait(10)


def restart(address: str, unit: str = "containerd.service", timeout: float = 5) -> systemd_jobs.RestartOutcome:
    with systemd.connect(address, timeout=timeout) as client:
        return client.restart(unit, timeout)


def test_job_removed_before_the_reply_is_not_missed(mock_systemd: Callable[..., str]) -> None:
    outcome = restart(mock_systemd())
    assert outcome.result == "done"
    assert outcome.after.main_pid == outcome.before.main_pid + 1
    assert outcome.after.active_enter_timestamp == outcome.before.active_enter_timestamp + 1


def test_waits_for_its_own_job_not_the_first_signal(mock_systemd: Callable[..., str]) -> None:
    outcome = restart(mock_systemd(behaviour={"containerd.service": "others-first"}))
    assert outcome.result == "done"


@pytest.mark.parametrize("result", ["canceled", "timeout", "failed", "dependency", "skipped"])
def test_job_results_other_than_done(mock_systemd: Callable[..., str], result: str) -> None:
    address = mock_systemd(behaviour={"containerd.service": result})
    with pytest.raises(systemd_errors.JobFailed) as err:
        restart(address)
    assert err.value.result == result
    expected = f"containerd.service: restart job finished with result '{result}', expected 'done'"
    assert str(err.value).startswith(expected)


def test_job_done_but_unit_not_active(mock_systemd: Callable[..., str]) -> None:
    address = mock_systemd(behaviour={"containerd.service": "done-but-failed"})
    with pytest.raises(
        systemd_errors.JobFailed, match=r"job done but the unit is failed \(failed\), expected active"
    ):
        restart(address)


@pytest.mark.parametrize(("active", "sub"), [
    ("inactive", "dead"),  # the new process exited at once, and Restart= did not bring it back
    ("activating", "auto-restart"),  # it crashed, systemd will try again in RestartSec
    ("deactivating", "stop-sigterm"),
])
def test_job_done_but_the_unit_did_not_stay_up(mock_systemd: Callable[..., str], active: str, sub: str) -> None:
    address = mock_systemd(behaviour={"containerd.service": f"done-then:{active}:{sub}"})
    with pytest.raises(systemd_errors.JobFailed) as err:
        restart(address)
    assert err.value.unit == "containerd.service"
    assert f"containerd.service: restart job done but the unit is {active} ({sub})" in str(err.value)


def test_job_that_never_finishes_is_bounded(mock_systemd: Callable[..., str]) -> None:
    address = mock_systemd(behaviour={"containerd.service": "never"})
    started = time.monotonic()
    with pytest.raises(systemd_errors.SystemdTimeout, match=r"did not finish within 0.5s \(job .* still running"):
        restart(address, timeout=0.5)
    assert time.monotonic() - started < 3


def test_restart_call_without_an_answer_is_bounded(mock_systemd: Callable[..., str]) -> None:
    address = mock_systemd(behaviour={"containerd.service": "hang"})
    started = time.monotonic()
    with pytest.raises(systemd_errors.SystemdTimeout, match="RestartUnit: systemd did not answer within"):
        restart(address, timeout=0.5)
    assert time.monotonic() - started < 2.5


def test_discovery_when_systemd_does_not_answer(mock_systemd: Callable[..., str]) -> None:
    address = mock_systemd(behaviour={"GetUnit": "hang"})
    started = time.monotonic()
    found = systemd.discover(["containerd.service"], address=address, timeout=0.5)
    assert isinstance(found, systemd_errors.SystemdTimeout)
    assert "GetUnit: systemd did not answer within 0.5s" in str(found)
    assert time.monotonic() - started < 2.5
    check = units.check_containerd_running(found, None, "containerd.service")
    assert check.status == WARN


def test_unit_not_loaded_and_permission_denied(mock_systemd: Callable[..., str]) -> None:
    address = mock_systemd(behaviour={"containerd.service": "denied"})
    found = systemd.discover(["containerd.service", "kubelet.service"], address=address)
    assert isinstance(found, systemd_state.UnitStates)
    kubelet = found.get("kubelet.service")
    assert kubelet is not None and (kubelet.load_state, kubelet.loaded) == ("not-found", False)
    with pytest.raises(systemd_errors.UnitNotLoaded, match=r"kubelet.service: cannot restart, the unit is not"):
        restart(address, "kubelet.service")
    with pytest.raises(systemd_errors.SystemdError, match="permission denied"):
        restart(address)


def test_discovery_reads_what_the_mock_holds(mock_systemd: Callable[..., str]) -> None:
    found = systemd.discover(["containerd.service", "kubelet.service"], address=mock_systemd())
    assert isinstance(found, systemd_state.UnitStates), found
    assert found.units == (
        systemd_state.UnitState("containerd.service", "loaded", "active", "running", 1_700_000_000_000_000, 100,
                          bytes(range(16)).hex()),
        systemd_state.UnitState("kubelet.service", "not-found", "inactive", "dead", 0, 0, ""),
    )


def test_discovery_permission_denied(mock_systemd: Callable[..., str]) -> None:
    found = systemd.discover(["containerd.service"], address=mock_systemd(behaviour={"GetUnit": "denied"}))
    assert isinstance(found, systemd_errors.SystemdError) and type(found) is systemd_errors.SystemdError
    assert str(found) == "containerd.service: GetUnit: permission denied (Access denied); the agent must run as root"
    assert found.unit == "containerd.service"
