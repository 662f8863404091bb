"""A real systemd, booted as PID 1 of private namespaces, for tests that need real unit behaviour.

    with boot({"containerd.service": UNIT_TEXT}, wants=["containerd.service"]) as sd:
        sd.bus_address                          # unix:path=<dir>/run/dbus/system_bus_socket
        sd.properties("containerd.service")     # D-Bus properties: ActiveEnterTimestamp (µs), MainPID...
        sd.systemctl("restart", "containerd.service")
        with sd.record_jobs() as jobs: ...      # every JobRemoved systemd emits meanwhile
    # leaving the block powers it off and removes its cgroups and directories

How (recipe from the project's testing notes, root only): the launcher moves itself into a fresh
cgroup sub-tree, then ``setsid script`` (a console pty for systemd) runs ``unshare --pid --fork
--kill-child --mount --propagation private --cgroup --uts --ipc`` on ``INNER_SCRIPT``, which builds a
tmpfs root (host ``/usr`` and ``/etc`` read-only, tmpfs ``/var`` ``/tmp``, ``/run`` bound from the
instance directory so the bus socket is reachable from the host, fresh ``/proc``, read-only
``/sys``, cgroup mounts for the host's layout, a minimal ``/dev``) and execs systemd in it with a
clean environment and ``SYSTEMD_UNIT_PATH=/run/test-units``: no host unit is ever loaded. A D-Bus
system bus (``dbus.socket``/``dbus.service``) is always included.

Unit texts go to ``/run/test-units``; ``files`` are placed at their absolute path in the instance
(``/etc`` and ``/usr`` via a read-only overlay on the host's, anything else copied into the tmpfs
root; ``/run/...`` lands in the shared ``/run``); ``binds`` are host paths bound read-write at the
same path (e.g. a simulated node root under ``tmp_path``).

Independent of the agent's own D-Bus code on purpose: tests compare the agent against this reader.
"""

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

SYSTEMD = "/usr/lib/systemd/systemd"
CGROUP_ROOT = Path("/sys/fs/cgroup")
BOOT_TIMEOUT = 15.0
SHUTDOWN_TIMEOUT = 10.0
UNIT_DIR = "/run/test-units"

DBUS_SOCKET = """\
[Unit]
Description=D-Bus System Message Bus Socket
[Socket]
ListenStream=/run/dbus/system_bus_socket
"""

DBUS_SERVICE = """\
[Unit]
Description=D-Bus System Message Bus
Requires=dbus.socket
[Service]
Type=notify
NotifyAccess=main
ExecStart=/usr/bin/dbus-daemon --system --address=systemd: --nofork --nopidfile --systemd-activation \
  --syslog-only
"""

# What default dependencies (DefaultDependencies=yes) pull in; empty stand-ins, nothing else boots.
STUB_UNITS = {
    name: f"[Unit]\nDescription=test stand-in for {name}\n"
    for name in ("sysinit.target", "basic.target", "sockets.target", "timers.target", "paths.target",
                 "shutdown.target", "multi-user.target", "network.target", "local-fs.target", "system.slice")
}

# Runs as PID 1 of the new namespaces. Arguments: instance dir, cgroup layout, then host paths to bind.
INNER_SCRIPT = r"""
set -eu
base=$1; layout=$2; shift 2
R=$base/root
console=$(tty)
mount -t tmpfs -o mode=0755 tmpfs "$R"
mkdir -p "$R/usr" "$R/etc" "$R/run" "$R/var" "$R/tmp" "$R/proc" "$R/sys" "$R/dev" "$R/root"
for top in usr etc; do
  if [ -d "$base/files/$top" ]; then
    mount -t overlay overlay -o "lowerdir=$base/files/$top:/$top" "$R/$top"
  else
    mount --bind "/$top" "$R/$top"
    mount -o remount,bind,ro "$R/$top"
  fi
done
for d in bin lib lib32 lib64 libx32 sbin; do
  if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$R/$d"; fi
done
mount -t tmpfs -o mode=0755 tmpfs "$R/var"
ln -s ../run "$R/var/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mount --bind "$base/run" "$R/run"
mount -t proc proc "$R/proc"
mount -t sysfs -o ro sysfs "$R/sys"
case $layout in
  hybrid)
    mount -t tmpfs -o mode=0755 tmpfs "$R/sys/fs/cgroup"
    mkdir "$R/sys/fs/cgroup/systemd" "$R/sys/fs/cgroup/unified"
    mount -t cgroup -o none,name=systemd cgroup "$R/sys/fs/cgroup/systemd"
    mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup/unified" ;;
  legacy)
    mount -t tmpfs -o mode=0755 tmpfs "$R/sys/fs/cgroup"
    mkdir "$R/sys/fs/cgroup/systemd"
    mount -t cgroup -o none,name=systemd cgroup "$R/sys/fs/cgroup/systemd" ;;
  unified)
    mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup" ;;
esac
mount -t tmpfs -o mode=0755 tmpfs "$R/dev"
for n in null zero full random urandom tty; do
  touch "$R/dev/$n"; mount --bind "/dev/$n" "$R/dev/$n"
done
mkdir "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
touch "$R/dev/console"; mount --bind "$console" "$R/dev/console"
if [ -d "$base/files/other" ]; then cp -a "$base/files/other/." "$R/"; fi
for p in "$@"; do
  mkdir -p "$R$p"; mount --bind "$p" "$R$p"
done
exec env -i container=gna-test SYSTEMD_UNIT_PATH=/run/test-units PATH=/usr/sbin:/usr/bin \
  chroot "$R" /usr/lib/systemd/systemd --system --unit=test.target --log-target=console --show-status=no \
  --default-standard-output=tty --default-standard-error=tty
"""

LAUNCHER = 'for f in "$@"; do case $f in --) break;; esac; echo $$ > "$f"; shift; done; shift; exec "$@"'


class BootError(RuntimeError):
    pass


Completed = subprocess.CompletedProcess  # of str


def _bus_flags() -> Any:
    from gi.repository import Gio

    return Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION


def cgroup_layout() -> str:
    """``unified`` (pure v2), ``hybrid`` (v1 + ``unified/``) or ``legacy`` (v1 only)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return "unified"
    if (CGROUP_ROOT / "unified" / "cgroup.controllers").exists():
        return "hybrid"
    return "legacy"


def _cgroup_dirs(layout: str, name: str) -> List[Path]:
    if layout == "unified":
        return [CGROUP_ROOT / name]
    dirs = [CGROUP_ROOT / "systemd" / name]
    if layout == "hybrid":
        dirs.append(CGROUP_ROOT / "unified" / name)
    return dirs


def _remove_cgroup_tree(top: Path, deadline: float) -> None:
    """rmdir bottom-up; a cgroup whose last process just died can stay busy for a moment."""
    while top.exists():
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda e: -e[0].count("/")):
            with suppress(OSError):
                os.rmdir(dirpath)
        if not top.exists() or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def _children(pid: int) -> List[int]:
    out: List[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        with suppress(OSError):
            out.extend(int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
    return out


def _find_ns_init(launcher_pid: int) -> Optional[int]:
    """The host pid of the descendant that is PID 1 of a new pid namespace and runs systemd."""
    todo = [launcher_pid]
    while todo:
        pid = todo.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        nspid = fields.get("NSpid", "").split()
        # Once exec'd, PID 1 of the new namespace is named systemd (the exe path is not
        # meaningful from the host: it lives under the instance's private mounts).
        if len(nspid) >= 2 and nspid[-1] == "1" and fields.get("Name", "").strip() == "systemd":
            return pid
        todo.extend(_children(pid))
    return None


def _variant_to_python(value: Any) -> Any:
    return value.unpack() if hasattr(value, "unpack") else value


@dataclass(frozen=True)
class JobRecord:
    """One ``JobRemoved`` signal: which unit's job finished, how, and when (host monotonic clock)."""

    job_id: int
    job: str
    unit: str
    result: str
    at: float


class JobRecorder:
    """Records every ``JobRemoved`` systemd emits, on its own connection and thread."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.jobs: List[JobRecord] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._loop: Any = None
        self._context: Any = None
        self._con: Any = None
        self._thread = threading.Thread(target=self._run, name="job-recorder", daemon=True)

    def start(self) -> "JobRecorder":
        self._thread.start()
        if not self._ready.wait(10):
            raise BootError("job recorder did not connect within 10s")
        if self._error is not None:
            raise BootError(f"job recorder failed: {self._error}")
        return self

    def _run(self) -> None:
        from gi.repository import Gio, GLib

        context = GLib.MainContext.new()
        context.push_thread_default()
        try:
            con = Gio.DBusConnection.new_for_address_sync(self.address, _bus_flags(), None, None)

            def on_signal(_con: Any, _sender: str, _path: str, _iface: str, _name: str, params: Any) -> None:
                job_id, job, unit, result = params.unpack()
                with self._lock:
                    self.jobs.append(JobRecord(job_id, job, unit, result, time.monotonic()))

            con.signal_subscribe("org.freedesktop.systemd1", "org.freedesktop.systemd1.Manager", "JobRemoved",
                                 "/org/freedesktop/systemd1", None, Gio.DBusSignalFlags.NONE, on_signal)
            con.call_sync("org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                          "org.freedesktop.systemd1.Manager", "Subscribe", None, None,
                          Gio.DBusCallFlags.NONE, 5000, None)
            self._loop = GLib.MainLoop.new(context, False)
            self._context = context
            self._con = con
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            context.pop_thread_default()
            return
        self._ready.set()
        try:
            self._loop.run()
        finally:
            con.close_sync(None)
            context.pop_thread_default()

    def stop(self) -> List[JobRecord]:
        """Stop recording; every JobRemoved systemd emitted before this call is included."""
        from gi.repository import GLib

        if self._loop is not None:
            source = GLib.idle_source_new()
            source.set_callback(self._barrier_then_quit)
            source.attach(self._context)
        self._thread.join(10)
        with self._lock:
            return list(self.jobs)

    def _barrier_then_quit(self, *_: Any) -> bool:
        """A round trip to the bus daemon on the recording connection: its reply comes after every
        signal the daemon routed to us before, so those signals' callbacks are queued once it returns;
        quitting at low priority lets them run first."""
        from gi.repository import Gio, GLib

        self._con.call_sync("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetId",
                            None, None, Gio.DBusCallFlags.NONE, 5000, None)
        quit_source = GLib.idle_source_new()
        quit_source.set_priority(GLib.PRIORITY_LOW)
        quit_source.set_callback(lambda *_: self._loop.quit() or False)
        quit_source.attach(self._context)
        return False

    def for_unit(self, unit: str) -> List[JobRecord]:
        with self._lock:
            return [j for j in self.jobs if j.unit == unit]


class BootedSystemd:
    """A running systemd instance. Use as a context manager, or call ``shutdown()``."""

    def __init__(self, base: Path, launcher: "subprocess.Popen[bytes]", pid: int, layout: str,
                 cgroups: List[Path]) -> None:
        self.base = base
        self.launcher = launcher
        self.pid = pid  # host pid of systemd (PID 1 inside)
        self.layout = layout
        self.cgroups = cgroups
        self.run_dir = base / "run"
        self.unit_dir = self.run_dir / "test-units"
        self.bus_socket = self.run_dir / "dbus" / "system_bus_socket"
        self.bus_address = f"unix:path={self.bus_socket}"
        self._stopped = False

    # --- looking inside -----------------------------------------------------------------------

    def nsenter(self, *cmd: str, check: bool = True, timeout: float = 30) -> "Completed":
        """Run ``cmd`` inside the instance (its mount, pid namespaces and root)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", "-r", "-w", "--", *cmd],
            check=check, capture_output=True, text=True, timeout=timeout,
            env={"PATH": "/usr/sbin:/usr/bin", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"},
        )

    def systemctl(self, *args: str, check: bool = True, timeout: float = 30) -> "Completed":
        return self.nsenter("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def _call(self, method: str, args: Any, iface: str = "org.freedesktop.systemd1.Manager",
              path: str = "/org/freedesktop/systemd1", timeout_ms: int = 10000) -> Any:
        from gi.repository import Gio

        con = Gio.DBusConnection.new_for_address_sync(self.bus_address, _bus_flags(), None, None)
        try:
            return con.call_sync("org.freedesktop.systemd1", path, iface, method, args, None,
                                 Gio.DBusCallFlags.NONE, timeout_ms, None).unpack()
        finally:
            con.close_sync(None)

    def properties(self, unit: str) -> Dict[str, Any]:
        """All ``Unit`` (and ``Service``) properties of ``unit``, loading it if needed, as Python values."""
        from gi.repository import GLib

        (path,) = self._call("LoadUnit", GLib.Variant("(s)", (unit,)))
        props: Dict[str, Any] = {}
        ifaces = ["org.freedesktop.systemd1.Unit"]
        if unit.endswith(".service"):
            ifaces.append("org.freedesktop.systemd1.Service")
        for iface in ifaces:
            (values,) = self._call("GetAll", GLib.Variant("(s)", (iface,)),
                                   iface="org.freedesktop.DBus.Properties", path=path)
            props.update({k: _variant_to_python(v) for k, v in values.items()})
        return props

    def manager_property(self, name: str) -> Any:
        from gi.repository import GLib

        (value,) = self._call("Get", GLib.Variant("(ss)", ("org.freedesktop.systemd1.Manager", name)),
                              iface="org.freedesktop.DBus.Properties")
        return _variant_to_python(value)

    def wait_until(self, unit: str, active_state: str, timeout: float = 10.0) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            props = self.properties(unit)
            if props["ActiveState"] == active_state:
                return props
            if time.monotonic() > deadline:
                raise AssertionError(f"{unit}: ActiveState {props['ActiveState']!r} after {timeout}s, "
                                     f"want {active_state!r}\n{self.console_log()[-3000:]}")
            time.sleep(0.05)

    def wait_settled(self, timeout: float = 10.0) -> str:
        """Wait until systemd has no queued jobs; returns ``SystemState``."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.manager_property("SystemState")
            jobs = self._call("ListJobs", None)[0]
            if state in ("running", "degraded") and not jobs:
                return str(state)
            if time.monotonic() > deadline:
                raise BootError(f"systemd not settled after {timeout}s: {state}, jobs {jobs}\n"
                                f"{self.console_log()[-3000:]}")
            time.sleep(0.05)

    @contextmanager
    def record_jobs(self) -> Iterator[JobRecorder]:
        """``JobRemoved`` signals emitted while the block runs (recorded until shortly after)."""
        recorder = JobRecorder(self.bus_address).start()
        try:
            yield recorder
        finally:
            recorder.stop()

    def install_unit(self, name: str, text: str, *, reload: bool = True) -> None:
        (self.unit_dir / name).write_text(text)
        if reload:
            self.systemctl("daemon-reload")

    def remove_unit(self, name: str, *, reload: bool = True) -> None:
        (self.unit_dir / name).unlink()
        if reload:
            self.systemctl("daemon-reload")

    def console_log(self) -> str:
        try:
            return (self.base / "console.log").read_text(errors="replace")
        except OSError:
            return ""

    # --- lifecycle --------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Immediate poweroff (``RTMIN+14`` to its PID 1), then remove its cgroups and directory."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.launcher.poll() is None:
                with suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGRTMIN + 14)
                try:
                    self.launcher.wait(SHUTDOWN_TIMEOUT)
                except subprocess.TimeoutExpired:
                    # PID 1 gone means the whole pid namespace is gone.
                    with suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                    self.launcher.wait(SHUTDOWN_TIMEOUT)
        finally:
            deadline = time.monotonic() + SHUTDOWN_TIMEOUT
            for cg in self.cgroups:
                _remove_cgroup_tree(cg, deadline)
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "BootedSystemd":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _stage_files(base: Path, files: Mapping[str, Union[str, bytes]]) -> None:
    for node_path, content in files.items():
        if not node_path.startswith("/") or ".." in Path(node_path).parts:
            raise ValueError(f"files: {node_path!r} must be an absolute path without '..'")
        top = Path(node_path).parts[1]
        rel = Path(*Path(node_path).parts[1:])
        if top == "run":
            target = base / rel
        elif top in ("etc", "usr"):
            target = base / "files" / rel
        else:
            target = base / "files" / "other" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        target.write_bytes(data)
        target.chmod(0o755 if data.startswith(b"#!") else 0o644)


def boot(
    units: Mapping[str, str],
    files: Optional[Mapping[str, Union[str, bytes]]] = None,
    *,
    wants: Sequence[str] = (),
    binds: Sequence[Union[str, Path]] = (),
    timeout: float = BOOT_TIMEOUT,
    settle: bool = True,
) -> BootedSystemd:
    """Boot systemd with ``units`` (name -> unit text); ``wants`` are started at boot.

    Returns once systemd answers on its bus (and, with ``settle``, has no queued jobs left).
    """
    if os.geteuid() != 0:
        raise BootError("booting systemd in namespaces needs root")
    for tool in ("script", "unshare", "nsenter", "chroot"):
        if not shutil.which(tool):
            raise BootError(f"{tool} not found (util-linux, bsdutils, coreutils)")
    if not os.path.exists(SYSTEMD):
        raise BootError(f"{SYSTEMD} not found (install the systemd package)")
    name = f"gna-test-{uuid.uuid4().hex[:12]}"
    base = Path(tempfile.mkdtemp(prefix=f"{name}."))
    layout = cgroup_layout()
    cgroups = _cgroup_dirs(layout, name)
    launcher: Optional[subprocess.Popen[bytes]] = None
    try:
        (base / "root").mkdir()
        unit_dir = base / "run" / "test-units"
        unit_dir.mkdir(parents=True)
        all_units = {**STUB_UNITS, "dbus.socket": DBUS_SOCKET, "dbus.service": DBUS_SERVICE, **units}
        wanted = " ".join(["dbus.socket", "dbus.service", *wants])
        all_units.setdefault("test.target", f"[Unit]\nDescription=test boot\nWants={wanted}\n")
        for unit_name, text in all_units.items():
            (unit_dir / unit_name).write_text(text)
        _stage_files(base, files or {})
        bind_paths = [str(Path(b).resolve()) for b in binds]
        for cg in cgroups:
            cg.mkdir()
        procs = [str(cg / "cgroup.procs") for cg in cgroups]
        inner = ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private",
                 "--cgroup", "--uts", "--ipc",
                 "sh", "-c", INNER_SCRIPT, "inner", str(base), layout, *bind_paths]
        # script(1) takes one command string for $SHELL -c; quote each word for it.
        command = " ".join(shlex.quote(word) for word in inner)
        launcher = subprocess.Popen(
            ["sh", "-c", LAUNCHER, "launcher", *procs, "--",
             "script", "-qfec", command, str(base / "console.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SHELL": "/bin/sh",
                                         "TERM": "dumb"},
        )
        deadline = time.monotonic() + timeout
        pid = None
        while pid is None:
            pid = _find_ns_init(launcher.pid)
            if pid is None:
                if launcher.poll() is not None or time.monotonic() > deadline:
                    raise BootError(f"systemd did not start (launcher exit {launcher.poll()}):\n"
                                    f"{_read(base / 'console.log')}")
                time.sleep(0.02)
        instance = BootedSystemd(base, launcher, pid, layout, cgroups)
    except BaseException:
        if launcher is not None and launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(SHUTDOWN_TIMEOUT)
        for cg in cgroups:
            _remove_cgroup_tree(cg, time.monotonic() + SHUTDOWN_TIMEOUT)
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        _wait_for_bus(instance, deadline)
        if settle:
            instance.wait_settled(max(1.0, deadline - time.monotonic()))
    except BaseException:
        instance.shutdown()
        raise
    return instance


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError:
        return "(no console output)"


def _wait_for_bus(instance: BootedSystemd, deadline: float) -> None:
    while True:
        if instance.bus_socket.exists():
            probe = subprocess.run(
                ["busctl", f"--address={instance.bus_address}", "status", "org.freedesktop.systemd1"],
                capture_output=True, text=True, timeout=10, check=False,
            )
            if probe.returncode == 0:
                return
        if instance.launcher.poll() is not None or time.monotonic() > deadline:
            raise BootError(f"systemd's bus did not answer:\n{instance.console_log()[-3000:]}")
        time.sleep(0.05)


# --- stand-ins for node daemons ------------------------------------------------------------------------

# A daemon that behaves like containerd/kubelet as far as systemd can tell. It appends
# "<name> <pid> <sha256 of its config, 12 hex>" to the start log (one line per start, so tests can
# count starts and their order), fails like containerd does on an invalid config file, and is
# controlled through files in its control directory:
#   fail-if-contains  exit 1 when the config contains this text (a config containerd rejects)
#   never-ready       never send READY=1 (Type=notify: the start job never finishes)
#   healthz           kubelet: answer GET /healthz with "<status> <body>" from this file (default "200 ok")
# With --socket it listens on that unix socket before READY=1, as containerd does (FAKE_CTR answers
# for it); with --healthz-port it serves kubelet's /healthz on 127.0.0.1.
FAKE_DAEMON = r'''#!/usr/bin/python3
import argparse, hashlib, os, signal, socket, sys, threading, time, tomllib
from http.server import BaseHTTPRequestHandler, HTTPServer

p = argparse.ArgumentParser()
p.add_argument("--name", required=True)
p.add_argument("--log", required=True)
p.add_argument("--config")
p.add_argument("--control", required=True)
p.add_argument("--socket")
p.add_argument("--healthz-port", type=int)
a = p.parse_args()
digest = "-"
if a.config:
    with open(a.config, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()[:12]
fd = os.open(a.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, f"{a.name} {os.getpid()} {digest}\n".encode())
os.close(fd)
if a.config:
    try:
        tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        sys.exit(f"{a.name}: invalid config {a.config}: {exc}")
    marker = os.path.join(a.control, "fail-if-contains")
    if os.path.exists(marker):
        with open(marker) as f:
            text = f.read().strip()
        if text and text in data.decode():
            sys.exit(f"{a.name}: rejecting {a.config}: contains {text!r}")
if a.socket:
    with __import__("contextlib").suppress(FileNotFoundError):
        os.unlink(a.socket)
    os.makedirs(os.path.dirname(a.socket), exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(a.socket)
    listener.listen(16)
if a.healthz_port:
    class Healthz(BaseHTTPRequestHandler):
        def do_GET(self):
            answer = "200 ok"
            with __import__("contextlib").suppress(OSError):
                with open(os.path.join(a.control, "healthz")) as f:
                    answer = f.read().strip()
            status, _, body = answer.partition(" ")
            self.send_response(int(status))
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    HTTPServer.allow_reuse_address = True
    server = HTTPServer(("127.0.0.1", a.healthz_port), Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
if not os.path.exists(os.path.join(a.control, "never-ready")):
    address = os.environ.get("NOTIFY_SOCKET")
    if address:
        if address.startswith("@"):
            address = "\0" + address[1:]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.connect(address)
        s.sendall(b"READY=1")
        s.close()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    signal.pause()
'''


# ``ctr plugins ls`` for the containerd stand-in, answering as Debian's real containerd 1.6 does
# (the listing's columns and the ``-d`` block's ``Error:``/``Message:`` lines are copied from its
# output; the ``io.containerd.cri.v1`` rows are the plugins containerd 2.x adds, which the samples'
# containerd-version.txt names): the CRI plugin is ``ok``, or ``error`` with the reason in the
# stand-in's control file
# ``cri-error``. Like the real ctr, it fails when nothing listens on --address.
FAKE_CTR = r'''#!/usr/bin/python3
import os, socket, sys

args = sys.argv[1:]
address = args[args.index("--address") + 1]
control = CONTROL_DIR
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(address)
    s.close()
except OSError as exc:
    sys.exit(f'ctr: failed to dial "{address}": context deadline exceeded: connection error: {exc}')
error = ""
if os.path.exists(os.path.join(control, "cri-error")):
    with open(os.path.join(control, "cri-error")) as f:
        error = f.read().strip()
status = "error" if error else "ok"
if "-d" in args:
    print("Type:          io.containerd.grpc.v1\nID:            cri\nPlatforms:     linux/amd64\nExports:")
    print("               CRIVersionAlpha      v1alpha2\n               CRIVersion           v1")
    if error:
        print(f"Error:\n               Code:        Unknown\n               Message:     {error}")
else:
    print("TYPE                                  ID                       PLATFORMS      STATUS    ")
    print("io.containerd.content.v1              content                  -              ok        ")
    print("io.containerd.cri.v1                  images                   -              ok        ")
    print("io.containerd.cri.v1                  runtime                  linux/amd64    ok        ")
    print(f"io.containerd.grpc.v1                 cri                      linux/amd64    {status:<10}")
'''


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_healthz(port: int, timeout: float = 10.0) -> None:
    """Until the kubelet stand-in answers on 127.0.0.1:``port`` (bounded)."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def digest(config: Union[str, bytes]) -> str:
    """What a stand-in daemon logs for the config it loaded (``FAKE_DAEMON``): sha256, 12 hex digits."""
    raw = config.encode() if isinstance(config, str) else config
    return hashlib.sha256(raw).hexdigest()[:12]


@dataclass(frozen=True)
class FakeNodeDaemons:
    """Paths of the stand-in daemons' script, start log and control directories (all under ``base``)."""

    base: Path

    @property
    def script(self) -> Path:
        return self.base / "fake-daemon.py"

    @property
    def start_log(self) -> Path:
        return self.base / "starts.log"

    def control(self, name: str) -> Path:
        return self.base / "control" / name

    def install(self) -> "FakeNodeDaemons":
        self.base.mkdir(parents=True, exist_ok=True)
        self.script.write_text(FAKE_DAEMON)
        self.script.chmod(0o755)
        for name in ("containerd", "kubelet"):
            self.control(name).mkdir(parents=True, exist_ok=True)
        self.start_log.touch()
        return self

    def install_ctr(self, root: Path) -> Path:
        """``ROOT/usr/bin/ctr`` answering for the containerd stand-in (see ``FAKE_CTR``)."""
        ctr = root / "usr/bin/ctr"
        ctr.parent.mkdir(parents=True, exist_ok=True)
        ctr.write_text(FAKE_CTR.replace("CONTROL_DIR", repr(str(self.control("containerd")))))
        ctr.chmod(0o755)
        return ctr

    def node_kubelet_config(self, root: Path, port: int) -> None:
        """kubelet's config where nodeadm puts it, with the stand-in's healthz port."""
        env = root / "etc/eks/kubelet/environment"
        text = env.read_text() if env.exists() else "NODEADM_KUBELET_ARGS=\n"
        write_text(env, text.replace("NODEADM_KUBELET_ARGS=",
                                     "NODEADM_KUBELET_ARGS=--config=/etc/kubernetes/kubelet/config.json ", 1))
        write_text(root / "etc/kubernetes/kubelet/config.json",
                   '{"kind": "KubeletConfiguration", "healthzBindAddress": "127.0.0.1", '
                   f'"healthzPort": {port}}}\n')

    def starts(self) -> List[Tuple[str, int, str]]:
        """Every start so far, in order: (name, pid, config digest)."""
        out = []
        for line in self.start_log.read_text().splitlines():
            name, pid, digest = line.split()
            out.append((name, int(pid), digest))
        return out

    def wait_for_starts(self, count: int, timeout: float = 10.0) -> List[Tuple[str, int, str]]:
        """The start log once it has at least ``count`` lines. A ``Type=simple`` unit is active as
        soon as systemd has forked it, so its own log line can come a moment after the start job."""
        deadline = time.monotonic() + timeout
        while True:
            starts = self.starts()
            if len(starts) >= count or time.monotonic() > deadline:
                return starts
            time.sleep(0.02)

    def wait_for_start(self, name: str, pid: int, timeout: float = 10.0) -> List[Tuple[str, int, str]]:
        """The start log once it records the start of ``name`` as ``pid`` (e.g. the current MainPID)."""
        deadline = time.monotonic() + timeout
        while True:
            starts = self.starts()
            if any(s[:2] == (name, pid) for s in starts) or time.monotonic() > deadline:
                return starts
            time.sleep(0.02)

    def containerd_unit(self, config: Path, *, restart_always: bool = True,
                        start_timeout: str = "90s", start_limit: bool = True,
                        socket: Optional[Path] = None) -> str:
        # Mirrors containerd's own unit where systemd behaviour depends on it: Type=notify (the start
        # job finishes at READY=1), Restart=always. start_limit=False lifts systemd's default of 5
        # starts per 10 s, for benchmarks that restart it many times.
        restart = "Restart=always\nRestartSec=1\n" if restart_always else ""
        limit = "" if start_limit else "StartLimitIntervalSec=0\n"
        return (
            f"[Unit]\nDescription=containerd stand-in (test)\n{limit}"
            "[Service]\nType=notify\n"
            f"ExecStart=/usr/bin/python3 {self.script} --name containerd --log {self.start_log} "
            f"--config {config} --control {self.control('containerd')}"
            f"{f' --socket {socket}' if socket else ''}\n"
            f"{restart}TimeoutStartSec={start_timeout}\nKillMode=process\n"
        )

    def kubelet_unit(self, healthz_port: Optional[int] = None) -> str:
        # Like the EKS kubelet unit: simple service, ordered after containerd, restarts on failure.
        return (
            "[Unit]\nDescription=kubelet stand-in (test)\n"
            "After=containerd.service\nWants=containerd.service\n"
            "[Service]\n"
            f"ExecStart=/usr/bin/python3 {self.script} --name kubelet --log {self.start_log} "
            f"--control {self.control('kubelet')}"
            f"{f' --healthz-port {healthz_port}' if healthz_port else ''}\n"
            "Restart=on-failure\nRestartSec=5\n"
        )


# --- Debian's real containerd (1.6, 1.7, 2.x) as a service of the test systemd --------------------------------------

# What the real daemon needs inside the instance: the nodeadm sample's base_runtime_spec (the CRI
# plugin loads it at start) and its CNI conf_dir, which must exist because /etc is read-only here.
REAL_CONTAINERD_FILES = {
    "/etc/containerd/base-runtime-spec.json": '{"ociVersion": "1.1.0"}\n',
    "/etc/cni/net.d/.keep": "",
}


def real_containerd_unit(config: Path, socket: Path, log: Path, *, start_limit_burst: int = 5,
                         start_limit_interval: str = "60s", bin_dir: Path = Path("/usr/bin")) -> str:
    """containerd's own unit where systemd behaviour depends on it (``Type=notify``, ``Delegate``,
    ``KillMode=process``), with a private root and state and the socket at ``socket`` (a host path:
    keep it short, a unix socket path has at most 107 bytes, and containerd adds ``.ttrpc``).
    ``bin_dir`` holds the daemon's ``containerd`` and its shim (first on the unit's PATH): a path the
    instance sees (``/usr/bin``, or one under a bound directory)."""
    return (
        "[Unit]\nDescription=containerd (Debian's daemon, test instance)\n"
        f"StartLimitIntervalSec={start_limit_interval}\nStartLimitBurst={start_limit_burst}\n"
        "[Service]\nType=notify\nDelegate=yes\nKillMode=process\nTimeoutStartSec=30\n"
        f"Environment=PATH={bin_dir}:/usr/sbin:/usr/bin\n"
        f"ExecStart={bin_dir}/containerd --config {config} --address {socket} "
        "--root /var/lib/containerd --state /run/containerd-state\n"
        f"StandardOutput=append:{log}\nStandardError=append:{log}\n"
    )
