"""systemd units over D-Bus: the state of containerd and kubelet, and restarts that wait for their job.

The agent talks to the system bus it is given (``DBUS_SYSTEM_BUS_ADDRESS``, else the standard
socket) on a connection of its own: pydbus's ``SystemBus()`` is cached per process, which would pin
every later call to the first bus ever used. Every call carries a timeout (pydbus's default is to
wait forever).

A restart is ``Manager.RestartUnit(unit, "replace")`` done the way nodeadm does not: subscribe to
``JobRemoved`` first (a fast job can finish before the call returns), wait for *that* job's result
with a deadline, then confirm ``ActiveState == "active"`` (the job result alone does not say the
unit stayed up). Every failure is one ``SystemdError`` line naming the unit and what was expected.

Discovery (``discover``: ``check``, ``plan``, and ``run`` before deciding) reads over the same
client. gi/pydbus are imported inside ``SystemdClient``'s methods, so importing this module (for its
data types) stays cheap for commands that never talk to systemd.
"""

import contextlib
import os
import threading
import time
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from agent.errors import AgentError
from agent.health import FAIL, PASS, WARN, CheckResult
from agent.serving import NOT_SERVING
from agent.timestamps import rfc3339

if TYPE_CHECKING:
    from agent.containerd import ContainerdConfigSet
    from agent.serving import Serving

BUS_ADDRESS_ENV = "DBUS_SYSTEM_BUS_ADDRESS"
DEFAULT_BUS_ADDRESS = "unix:path=/run/dbus/system_bus_socket"
SYSTEMD_BUS_NAME = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
DBUS_ERROR = "org.freedesktop.DBus.Error"
DEFAULT_CALL_TIMEOUT = 30.0
# Discovery (``check``) must stay quick even when systemd is wedged.
DISCOVERY_TIMEOUT = 10.0
KUBELET_UNIT = "kubelet.service"
# Active enough that restarting applies a new configuration; "activating" covers auto-restart.
RUNNING_STATES = ("active", "activating", "reloading")


# --- errors ------------------------------------------------------------------------------------------


class SystemdError(AgentError):
    """systemd could not be asked, or did not do what was asked (exit 1)."""

    def __init__(self, message: str, unit: Optional[str] = None) -> None:
        super().__init__(message)
        self.unit = unit


class BusUnreachable(SystemdError):
    """No system bus at the address, or systemd is not on it."""


class UnitNotLoaded(SystemdError):
    """``NoSuchUnit``, or the unit's ``LoadState`` is not ``loaded`` (not-found, masked, error)."""


class JobFailed(SystemdError):
    """The restart job finished with a result other than ``done``, or the unit is not active after it."""

    def __init__(self, message: str, unit: str, result: str) -> None:
        super().__init__(message, unit)
        self.result = result


class SystemdTimeout(SystemdError):
    """The restart job did not finish, or systemd did not answer, within the deadline."""


# --- unit state --------------------------------------------------------------------------------------


def _utc(seconds: float) -> str:
    return rfc3339(seconds, millis=True)


class UnitState(NamedTuple):
    """What systemd says about one unit (``org.freedesktop.systemd1.Unit`` / ``.Service``)."""

    name: str
    load_state: str  # loaded | not-found | bad-setting | error | masked
    active_state: str  # active | reloading | inactive | failed | activating | deactivating
    sub_state: str
    active_enter_timestamp: int  # µs since the epoch (realtime); 0: never active since loaded
    main_pid: int  # 0: none
    invocation_id: str = ""  # hex; changes on every start

    @property
    def loaded(self) -> bool:
        return self.load_state == "loaded"

    @property
    def running(self) -> bool:
        return self.loaded and self.active_state in RUNNING_STATES

    @property
    def active_since(self) -> Optional[float]:
        """``ActiveEnterTimestamp`` in seconds since the epoch, or None when never active."""
        return self.active_enter_timestamp / 1e6 if self.active_enter_timestamp else None

    def describe(self) -> str:
        """``containerd.service active (running) since 2025-01-01T00:00:00.000Z, PID 42``"""
        if not self.loaded:
            return f"{self.name} is not loaded ({self.load_state})"
        text = f"{self.name} {self.active_state} ({self.sub_state})"
        if self.active_state == "active" and self.active_since is not None:
            text += f" since {_utc(self.active_since)}"
        if self.main_pid:
            text += f", PID {self.main_pid}"
        return text


class UnitStates(NamedTuple):
    """The discovered state of the units the agent manages, as read over ``address``."""

    address: str
    units: Tuple[UnitState, ...]

    def get(self, name: str) -> Optional[UnitState]:
        return next((u for u in self.units if u.name == name), None)


def bus_address(environ: Optional[Mapping[str, str]] = None) -> str:
    """The system bus: ``DBUS_SYSTEM_BUS_ADDRESS`` when set (tests, containers), else the standard socket."""
    env = os.environ if environ is None else environ
    return env.get(BUS_ADDRESS_ENV) or DEFAULT_BUS_ADDRESS


def kubelet_unit(units: Sequence[str]) -> str:
    """The kubelet unit among ``restart.units`` (after containerd), else ``kubelet.service``."""
    return next((u for u in units[1:] if u.startswith("kubelet")), KUBELET_UNIT)


# --- the client --------------------------------------------------------------------------------------


class RestartOutcome(NamedTuple):
    unit: str
    job: str
    result: str  # "done"
    before: UnitState
    after: UnitState
    seconds: float  # from the RestartUnit call to ActiveState confirmed "active"


def _glib_error_name(exc: BaseException) -> Tuple[str, str]:
    """(D-Bus error name or GIO error, message) for a ``GLib.Error``."""
    from gi.repository import Gio

    message = getattr(exc, "message", None) or str(exc)
    try:
        if Gio.DBusError.is_remote_error(exc):
            name = Gio.DBusError.get_remote_error(exc) or ""
            return name, message.split(": ", 1)[-1] if message.startswith("GDBus.Error:") else message
    except TypeError:
        pass
    code = getattr(exc, "code", None)
    if getattr(exc, "domain", "") == "g-io-error-quark" and code is not None:
        try:
            return f"gio.{Gio.IOErrorEnum(code).value_nick}", message
        except ValueError:
            pass
    return "", message


def _error_for(name: str, message: str, what: str, unit: Optional[str], timeout: float,
               address: str) -> SystemdError:
    """The ``SystemdError`` for a D-Bus error ``name`` (or a GIO error, ``gio.<nick>``) during ``what``."""
    if name in ("gio.timed-out", f"{DBUS_ERROR}.NoReply", f"{DBUS_ERROR}.Timeout"):
        return SystemdTimeout(f"{what}: systemd did not answer within {timeout:.3g}s", unit)
    if name == "org.freedesktop.systemd1.NoSuchUnit":
        return UnitNotLoaded(f"{unit}: no such unit (systemd has not loaded it)", unit)
    if name in ("org.freedesktop.systemd1.LoadFailed",):
        return UnitNotLoaded(f"{unit}: {message}", unit)
    if name in (f"{DBUS_ERROR}.ServiceUnknown", f"{DBUS_ERROR}.NameHasNoOwner", "gio.closed",
                f"{DBUS_ERROR}.Disconnected"):
        return BusUnreachable(f"system bus {address}: {message}", unit)
    if name in (f"{DBUS_ERROR}.AccessDenied", f"{DBUS_ERROR}.InteractiveAuthorizationRequired"):
        return SystemdError(f"{what}: permission denied ({message}); the agent must run as root", unit)
    return SystemdError(f"{what}: {message}" + (f" ({name})" if name else ""), unit)


class SystemdClient:
    """A connection to systemd on one system bus. Use as a context manager (closes the connection)."""

    def __init__(
        self,
        address: Optional[str] = None,
        *,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address or bus_address()
        self.timeout = timeout
        self.clock = clock
        self._con: Any = None
        self._bus: Any = None
        self._manager: Any = None
        self._systemd_owner: Optional[str] = None
        self._subscribed = False
        self._unit_paths: Dict[str, str] = {}  # object paths are fixed by the unit name

    # --- connection ---------------------------------------------------------------------------

    def connect(self) -> "SystemdClient":
        """Open the connection and find systemd on the bus. Raises ``BusUnreachable``."""
        try:
            from gi.repository import Gio, GLib
        except ImportError as exc:  # the RPM requires python3-gobject-base; a bare interpreter may lack it
            raise BusUnreachable(f"system bus {self.address}: cannot load the D-Bus client (gi: "
                                 f"{type(exc).__name__}); install python3-gobject-base") from None

        flags = Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
        cancellable = Gio.Cancellable.new()
        # new_for_address_sync has no timeout of its own: a bus that accepts but never answers
        # the handshake would block forever, so a timer cancels it.
        timer = threading.Timer(self.timeout, cancellable.cancel)
        timer.daemon = True
        timer.start()
        try:
            self._con = Gio.DBusConnection.new_for_address_sync(self.address, flags, None, cancellable)
        except GLib.Error as exc:
            if cancellable.is_cancelled():
                raise SystemdTimeout(f"system bus {self.address}: no answer within {self.timeout:g}s while "
                                     "connecting") from None
            raise BusUnreachable(f"system bus {self.address}: {_glib_error_name(exc)[1]}") from None
        finally:
            timer.cancel()
        from pydbus.bus import Bus

        self._bus = Bus(self._con)
        try:
            owner = self._call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                               "GetNameOwner", ("s", (SYSTEMD_BUS_NAME,)), "(s)")
        except SystemdError as exc:
            self.close()
            raise BusUnreachable(f"system bus {self.address}: systemd ({SYSTEMD_BUS_NAME}) is not on it: "
                                 f"{exc}") from None
        self._systemd_owner = str(owner[0])
        return self

    def close(self) -> None:
        if self._con is not None:
            with contextlib.suppress(Exception):  # closing a broken connection has nothing to report
                self._con.close_sync(None)
            self._con = None

    def __enter__(self) -> "SystemdClient":
        if self._con is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _remaining(self, deadline: Optional[float]) -> float:
        if deadline is None:
            return self.timeout
        return max(0.001, min(self.timeout, deadline - self.clock()))

    def _error(self, exc: BaseException, what: str, unit: Optional[str], timeout: float) -> SystemdError:
        name, message = _glib_error_name(exc)
        return _error_for(name, message, what, unit, timeout, self.address)

    def _call(
        self,
        dest: str,
        path: str,
        iface: str,
        method: str,
        args: Optional[Tuple[str, Tuple[Any, ...]]],
        reply: Optional[str],
        *,
        unit: Optional[str] = None,
        deadline: Optional[float] = None,
    ) -> Any:
        """One method call with a timeout; GLib errors become ``SystemdError``s."""
        from gi.repository import Gio, GLib

        if self._con is None:
            raise BusUnreachable(f"system bus {self.address}: not connected", unit)
        timeout = self._remaining(deadline)
        try:
            ret = self._con.call_sync(
                dest, path, iface, method,
                GLib.Variant(f"({args[0]})", args[1]) if args else None,
                GLib.VariantType.new(reply) if reply else None,
                Gio.DBusCallFlags.NONE, int(timeout * 1000), None,
            )
        except GLib.Error as exc:
            raise self._error(exc, f"{unit or path}: {method}", unit, timeout) from None
        return ret.unpack() if ret is not None else None

    @property
    def manager(self) -> Any:
        """pydbus proxy for ``org.freedesktop.systemd1.Manager`` (from introspection, with a timeout)."""
        if self._manager is None:
            from gi.repository import GLib

            try:
                proxy = self._bus.get(SYSTEMD_BUS_NAME, MANAGER_PATH, timeout=self.timeout)
            except GLib.Error as exc:
                raise self._error(exc, "systemd manager: Introspect", None, self.timeout) from None
            self._manager = proxy[MANAGER_IFACE]
        return self._manager

    # --- reading units ------------------------------------------------------------------------------

    def unit_object(self, name: str, *, deadline: Optional[float] = None) -> str:
        """The unit's object path: ``GetUnit``, else ``LoadUnit`` (which reads it from disk if it exists)."""
        if name in self._unit_paths:
            return self._unit_paths[name]
        try:
            (path,) = self._call(SYSTEMD_BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "GetUnit", ("s", (name,)),
                                 "(o)", unit=name, deadline=deadline)
        except UnitNotLoaded:
            (path,) = self._call(SYSTEMD_BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "LoadUnit", ("s", (name,)),
                                 "(o)", unit=name, deadline=deadline)
        self._unit_paths[name] = str(path)
        return str(path)

    def unit_state(self, name: str, *, deadline: Optional[float] = None) -> UnitState:
        """A unit's state; a unit that does not exist comes back with ``load_state`` "not-found"."""
        path = self.unit_object(name, deadline=deadline)
        (props,) = self._call(SYSTEMD_BUS_NAME, path, PROPERTIES_IFACE, "GetAll", ("s", (UNIT_IFACE,)),
                              "(a{sv})", unit=name, deadline=deadline)
        main_pid = 0
        if name.endswith(".service") and props.get("LoadState") == "loaded":
            (service,) = self._call(SYSTEMD_BUS_NAME, path, PROPERTIES_IFACE, "Get",
                                    ("ss", (SERVICE_IFACE, "MainPID")), "(v)", unit=name, deadline=deadline)
            main_pid = int(service)
        invocation = props.get("InvocationID") or b""
        return UnitState(
            name=name,
            load_state=str(props.get("LoadState", "")),
            active_state=str(props.get("ActiveState", "")),
            sub_state=str(props.get("SubState", "")),
            active_enter_timestamp=int(props.get("ActiveEnterTimestamp", 0)),
            main_pid=main_pid,
            invocation_id=bytes(invocation).hex(),
        )

    def unit_states(self, names: Iterable[str], *, timeout: Optional[float] = None) -> UnitStates:
        deadline = self.clock() + (timeout if timeout is not None else self.timeout)
        return UnitStates(self.address, tuple(self.unit_state(n, deadline=deadline) for n in names))

    # --- restarting ---------------------------------------------------------------------------------

    def _subscribe(self, deadline: float) -> None:
        """``Manager.Subscribe()``: without a subscriber systemd does not emit job signals."""
        if self._subscribed:
            return
        from gi.repository import GLib

        try:
            self.manager.Subscribe(timeout=self._remaining(deadline))
        except GLib.Error as exc:
            if _glib_error_name(exc)[0] != "org.freedesktop.systemd1.AlreadySubscribed":
                raise self._error(exc, "Subscribe", None, self._remaining(deadline)) from None
        self._subscribed = True

    def reset_failed(self, name: str, *, deadline: Optional[float] = None) -> None:
        """``ResetFailedUnit``: forget the unit's failed state and its start-rate counter."""
        self._call(SYSTEMD_BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "ResetFailedUnit", ("s", (name,)), None,
                   unit=name, deadline=deadline)

    def service_result(self, name: str, *, deadline: Optional[float] = None) -> str:
        """The service's ``Result`` (``success``, ``exit-code``, ``start-limit-hit``, ...), '' if unknown."""
        try:
            path = self.unit_object(name, deadline=deadline)
            (value,) = self._call(SYSTEMD_BUS_NAME, path, PROPERTIES_IFACE, "Get", ("ss", (SERVICE_IFACE, "Result")),
                                  "(v)", unit=name, deadline=deadline)
        except SystemdError:
            return ""
        return str(value)

    def restart(self, name: str, timeout: float, *, reset_failed: bool = False) -> RestartOutcome:
        """Restart ``name`` and wait, at most ``timeout`` seconds, until it is confirmed active.

        A unit in ``failed`` (or any unit, with ``reset_failed``) gets ``ResetFailedUnit`` first, so
        systemd's start-rate limit cannot refuse the restart (a rollback must not be refused).
        Raises ``UnitNotLoaded``, ``JobFailed`` (result other than done, or not active after it),
        ``SystemdTimeout`` (the job still runs at the deadline) or ``BusUnreachable``.
        """
        from gi.repository import GLib

        deadline = self.clock() + timeout
        before = self.unit_state(name, deadline=deadline)
        if not before.loaded:
            raise UnitNotLoaded(f"{name}: cannot restart, the unit is not loaded ({before.load_state})", name)
        if reset_failed or before.active_state == "failed":
            self.reset_failed(name, deadline=deadline)
        finished: Dict[str, str] = {}

        def on_job_removed(_sender: str, _path: str, _iface: str, _signal: str, params: Any) -> None:
            _job_id, job, _unit, result = params
            finished[str(job)] = str(result)

        context = GLib.MainContext.new()
        # Signal callbacks are dispatched to the thread-default context current at subscription time,
        # so a private context makes this wait independent of any other main loop in the process.
        context.push_thread_default()
        try:
            subscription = self._bus.subscribe(sender=self._systemd_owner, iface=MANAGER_IFACE,
                                               signal="JobRemoved", object=MANAGER_PATH,
                                               signal_fired=on_job_removed)
            try:
                self._subscribe(deadline)
                started = self.clock()
                try:
                    job = str(self.manager.RestartUnit(name, "replace", timeout=self._remaining(deadline)))
                except GLib.Error as exc:
                    raise self._error(exc, f"{name}: RestartUnit", name, self._remaining(deadline)) from None
                if not self._iterate_until(context, lambda: job in finished, deadline):
                    state = self._state_after_timeout(name)
                    raise SystemdTimeout(
                        f"{name}: restart did not finish within {timeout:g}s (job {job} still running; "
                        f"{state})", name)
            finally:
                subscription.unsubscribe()
        finally:
            context.pop_thread_default()
        result = finished[job]
        after = self.unit_state(name, deadline=max(deadline, self.clock() + 1.0))
        if result != "done":
            why = ""
            if result == "failed" and self.service_result(name, deadline=self.clock() + 1.0) == "start-limit-hit":
                why = ("; systemd's start-rate limit was hit (too many starts in a short time), not a problem "
                       "of the configuration")
            raise JobFailed(f"{name}: restart job finished with result '{result}', expected 'done'; now "
                            f"{after.active_state} ({after.sub_state}){why}", name, result)
        if after.active_state != "active":
            raise JobFailed(f"{name}: restart job done but the unit is {after.active_state} "
                            f"({after.sub_state}), expected active", name, result)
        return RestartOutcome(name, job, result, before, after, self.clock() - started)

    def _iterate_until(self, context: Any, done: Callable[[], bool], deadline: float) -> bool:
        """Run ``context`` until ``done()`` or the deadline; a timeout source bounds each blocking wait."""
        from gi.repository import GLib

        while not done():
            remaining = deadline - self.clock()
            if remaining <= 0:
                return False
            wake = GLib.timeout_source_new(max(1, int(min(remaining, 0.5) * 1000)))
            wake.set_callback(lambda *_: False)
            wake.attach(context)
            try:
                context.iteration(True)
            finally:
                wake.destroy()
        return True

    def _state_after_timeout(self, name: str) -> str:
        try:
            state = self.unit_state(name, deadline=self.clock() + min(5.0, self.timeout))
        except SystemdError as exc:
            return f"state unknown: {exc}"
        return f"ActiveState {state.active_state} ({state.sub_state})"


def connect(address: Optional[str] = None, *, timeout: float = DEFAULT_CALL_TIMEOUT) -> SystemdClient:
    """A connected ``SystemdClient`` for ``address`` (default ``bus_address()``); ``BusUnreachable``."""
    return SystemdClient(address, timeout=timeout).connect()


def discover(names: Sequence[str], *, address: Optional[str] = None,
             timeout: float = DISCOVERY_TIMEOUT) -> Union[UnitStates, SystemdError]:
    """The state of ``names``, read-only, within ``timeout`` overall; a failure (no bus, systemd
    silent) is returned as data, never raised, so ``check`` reports it and goes on."""
    client = SystemdClient(address, timeout=timeout)
    try:
        with client:
            return client.unit_states(names, timeout=timeout)
    except SystemdError as exc:
        return exc


def units_to_discover(units: Sequence[str]) -> List[str]:
    """``restart.units`` plus the kubelet unit (checked even when it is not in the restart list)."""
    names = list(units)
    kubelet = kubelet_unit(units)
    if kubelet not in names:
        names.append(kubelet)
    return names


# --- checks ------------------------------------------------------------------------------------------


class StaleDaemon(NamedTuple):
    """The running daemon started before its newest configuration file was written."""

    unit: str
    active_since: float
    config_path: str
    config_mtime: float

    def describe(self) -> str:
        return (f"{self.unit} has run since {_utc(self.active_since)} but {self.config_path} changed at "
                f"{_utc(self.config_mtime)}: the daemon runs an older configuration")


def stale_daemon(
    state: Optional[UnitState], config_set: "Optional[ContainerdConfigSet]"
) -> Optional[StaleDaemon]:
    """Pure: is the active daemon older than its configuration (newest mtime among the loaded files)?

    This is the pre-awslabs/amazon-eks-ami#2705 nodeadm case: ``StartUnit`` on a running containerd
    is a no-op, so a config.toml rewritten at boot is never loaded.
    """
    if state is None or config_set is None or state.active_state != "active" or state.active_since is None:
        return None
    newest = max(config_set.files, key=lambda f: f.mtime)
    # Both clocks are the node's realtime clock; µs resolution on both sides.
    if int(newest.mtime * 1e6) > state.active_enter_timestamp:
        return StaleDaemon(state.name, state.active_since, newest.node_path, newest.mtime)
    return None


def _state_details(state: UnitState) -> Dict[str, Any]:
    return {
        "unit": state.name,
        "load_state": state.load_state,
        "active_state": state.active_state,
        "sub_state": state.sub_state,
        "main_pid": state.main_pid,
        "active_since": _utc(state.active_since) if state.active_since else None,
    }


def check_unit_running(
    check_name: str, name: str, units: Union[UnitStates, SystemdError, None], serving: "Optional[Serving]" = None,
) -> CheckResult:
    """pass: active and (when asked) the daemon serves; warn: starting or reloading, or a state the
    agent could not read (no bus, cannot ask the daemon); fail: not loaded, inactive, failed, or
    active while the daemon says it does not serve."""
    if units is None or isinstance(units, SystemdError):
        why = str(units) if units is not None else "unit state not discovered"
        return CheckResult(check_name, WARN, f"cannot read {name}: {why}")
    state = units.get(name)
    if state is None:
        return CheckResult(check_name, WARN, f"{name}: state not discovered")
    details = _state_details(state)
    if state.active_state == "active":
        if serving is None:
            return CheckResult(check_name, PASS, state.describe(), details)
        details = {**details, "serving": serving.state, **serving.details}
        if serving.ok:
            return CheckResult(check_name, PASS, f"{state.describe()}; {serving.message}", details)
        status = FAIL if serving.state == NOT_SERVING else WARN
        return CheckResult(check_name, status, f"{state.describe()}, but {serving.message}", details)
    if state.loaded and state.active_state in ("activating", "reloading"):
        return CheckResult(check_name, WARN, state.describe(), details)
    return CheckResult(check_name, FAIL, state.describe() + ("" if not state.loaded else ", expected active"),
                       details)


def check_containerd_running(
    units: Union[UnitStates, SystemdError, None],
    config_set: "Optional[ContainerdConfigSet]",
    unit: str,
    serving: "Optional[Serving]" = None,
) -> CheckResult:
    """``containerd-running``: the daemon is active, its CRI plugins are ``ok`` (``agent/cri.py``),
    and it is not older than its configuration."""
    result = check_unit_running("containerd-running", unit, units, serving)
    if result.status != PASS or not isinstance(units, UnitStates):
        return result
    stale = stale_daemon(units.get(unit), config_set)
    if stale is None:
        return result
    details = dict(result.details)
    details.update(config_path=stale.config_path, config_changed=_utc(stale.config_mtime))
    return CheckResult("containerd-running", WARN, f"{stale.describe()} (restart pending)", details)


def check_kubelet_running(
    units: Union[UnitStates, SystemdError, None], unit: str, serving: "Optional[Serving]" = None
) -> CheckResult:
    """``kubelet-running``: the unit is active and kubelet's healthz answers ``ok`` (``agent/kubelet.py``)."""
    return check_unit_running("kubelet-running", unit, units, serving)
