"""systemd over D-Bus: the one client (pydbus on a connection of its own) and unit discovery.

The agent talks to the system bus it is given (``DBUS_SYSTEM_BUS_ADDRESS``, else the standard
socket) on a connection of its own: pydbus's ``SystemBus()`` is cached per process, which would pin
every later call to the first bus ever used. Every call carries a timeout (pydbus's default is to
wait forever). ``SystemdClient`` connects, reads units, resets a failed unit and restarts one; the
restart's wait for its job is in ``agent/systemd/jobs.py``, the unit state and the unit checks in
``agent/daemons/units.py``. Every failure is one ``SystemdError`` line naming the unit and what was expected.

Discovery (``discover``: ``check``, ``plan``, and ``run`` before deciding) reads over the same
client. gi/pydbus are imported inside ``SystemdClient``'s methods, so importing this module (for its
data types) stays cheap for commands that never talk to systemd.
"""

from __future__ import annotations

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
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from agent.systemd.errors import BusUnreachable, SystemdError, SystemdTimeout, UnitNotLoaded
from agent.systemd.state import UnitState, UnitStates

if TYPE_CHECKING:
    from agent.systemd.jobs import RestartOutcome

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


def bus_address(environ: Optional[Mapping[str, str]] = None) -> str:
    """The system bus: ``DBUS_SYSTEM_BUS_ADDRESS`` when set (tests, containers), else the standard socket."""
    env = os.environ if environ is None else environ
    return env.get(BUS_ADDRESS_ENV) or DEFAULT_BUS_ADDRESS


# --- the client --------------------------------------------------------------------------------------


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

    def connect(self) -> SystemdClient:
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

    def __enter__(self) -> SystemdClient:
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

    def properties(self, name: str, interfaces: Sequence[str] = (UNIT_IFACE,), *,
                   deadline: Optional[float] = None) -> Dict[str, Any]:
        """Every property of the unit's ``interfaces`` (``GetAll``), merged; a unit that is not
        loaded has only its ``Unit`` properties (``LoadState`` says why)."""
        path = self.unit_object(name, deadline=deadline)
        merged: Dict[str, Any] = {}
        for iface in interfaces:
            if iface != UNIT_IFACE and merged.get("LoadState") != "loaded":
                break
            (props,) = self._call(SYSTEMD_BUS_NAME, path, PROPERTIES_IFACE, "GetAll", ("s", (iface,)),
                                  "(a{sv})", unit=name, deadline=deadline)
            merged.update(props)
        return merged

    def manager_properties(self, *, deadline: Optional[float] = None) -> Dict[str, Any]:
        """The Manager's properties (``KernelTimestamp``, ``FinishTimestampMonotonic``, ...)."""
        (props,) = self._call(SYSTEMD_BUS_NAME, MANAGER_PATH, PROPERTIES_IFACE, "GetAll", ("s", (MANAGER_IFACE,)),
                              "(a{sv})", deadline=deadline)
        return dict(props)

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

    def watch_jobs(self, on_job_removed: Callable[..., None], deadline: float) -> Any:
        """Deliver systemd's ``JobRemoved`` signals to ``on_job_removed`` (on the thread-default main
        context) until the returned subscription's ``unsubscribe()``."""
        subscription = self._bus.subscribe(sender=self._systemd_owner, iface=MANAGER_IFACE, signal="JobRemoved",
                                           object=MANAGER_PATH, signal_fired=on_job_removed)
        try:
            self._subscribe(deadline)
        except BaseException:
            subscription.unsubscribe()
            raise
        return subscription

    def restart_unit(self, name: str, deadline: float) -> str:
        """``Manager.RestartUnit(name, "replace")``: the job's object path (the job is not waited for)."""
        from gi.repository import GLib

        try:
            return str(self.manager.RestartUnit(name, "replace", timeout=self._remaining(deadline)))
        except GLib.Error as exc:
            raise self._error(exc, f"{name}: RestartUnit", name, self._remaining(deadline)) from None

    def restart(self, name: str, timeout: float, *, reset_failed: bool = False) -> RestartOutcome:
        """Restart ``name`` and wait until it is confirmed active (``agent/systemd/jobs.py``)."""
        from agent.systemd import jobs as systemd_jobs

        return systemd_jobs.restart(self, name, timeout, reset_failed=reset_failed)


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


