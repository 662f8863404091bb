"""Test parts for the EFA userspace: a loopback download server, installer tarballs, a node with EFA.

``InstallerServer`` is a real HTTP/1.1 server on 127.0.0.1 (optionally TLS) that serves files from
memory with ``Range`` support and can misbehave on request: answer 5xx, stall, cut the body short
with a clean close or a TCP reset, ignore ``Range``, or stream without ``Content-Length``. Every
request it sees is recorded, so a test can prove that none reached it.

``installer_tarball`` builds a real ``.tar.gz`` laid out like ``aws-efa-installer-<v>.tar.gz``.
Its ``efa_installer.sh`` is a small ``sh`` script that records each run (cwd, arguments) in a log
file and writes what the real installer leaves behind, the version file and an ``fi_info``, under
the simulated node root whose path is written into the script: the agent needs no test-only option.
"""

import contextlib
import hashlib
import io
import json
import re
import shlex
import socket
import socketserver
import ssl
import struct
import tarfile
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from tests.support.gpu_node import healthy_gpu_node
from tests.support.loopback import LoopbackServer, send_text

VERSION = "1.48.0"
LIBFABRIC = "2.1.0amzn3.0"
ETAG = '"efa-test-etag"'


# --- the node ---------------------------------------------------------------------------------------


def add_rdma_device(root: Path, name: str, vendor: str, device: str) -> None:
    d = root / "sys/class/infiniband" / name / "device"
    d.mkdir(parents=True, exist_ok=True)
    (d / "vendor").write_text(vendor + "\n")
    (d / "device").write_text(device + "\n")


def efa_node(root: Path, *, efa: bool = True) -> Path:
    """A simulated node: an EFA device (or only a non-EFA RDMA device) under /sys/class/infiniband."""
    root.mkdir(parents=True, exist_ok=True)
    add_rdma_device(root, "mlx5_0", "0x15b3", "0x101b")  # a Mellanox NIC: never counts as EFA
    if efa:
        add_rdma_device(root, "rdmap0s6", "0x1d0f", "0xefa1")
    return root


def write_installed(root: Path, version: str, *, fi_info: bool = True, libfabric: str = LIBFABRIC) -> None:
    """What an installer run leaves behind; ``fi_info=False`` is the AMI's ``--minimal`` state."""
    version_file = root / "opt/amazon/efa_installed_packages"
    version_file.parent.mkdir(parents=True, exist_ok=True)
    version_file.write_text(f"# EFA installer version: {version}\n# Debug packages installed: no\n"
                            "libfabric-aws-2.1.0amzn3.0-1.amzn2023.x86_64\n")
    if fi_info:
        binary = root / "opt/amazon/efa/bin/fi_info"
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text(fi_info_script(libfabric))
        binary.chmod(0o755)


def fi_info_script(libfabric: str) -> str:
    # `fi_info --version` prints "<argv0>: <ver>", "libfabric: <ver>", "libfabric api: M.m".
    return (f'#!/bin/sh\necho "$0: {libfabric}"\necho "libfabric: {libfabric}"\n'
            'echo "libfabric api: 2.1"\n')


def converged_node(root: Path, *, hardware: bool = True) -> Path:
    """A known-good GPU node (tests/support/gpu_node.py) where everything but EFA is already right."""
    healthy_gpu_node(root)
    return efa_node(root, efa=hardware)


def write_config(path: Path, **efa_keys: object) -> Path:
    lines = ["report:", "  publish: false", "efa:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in efa_keys.items()] or ["  install: auto"]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- installer tarballs -----------------------------------------------------------------------------


def installer_script(root: Path, run_log: Path, *, version: str = VERSION, behaviour: str = "ok",
                     pid_file: Optional[Path] = None, lock_file: Optional[Path] = None) -> str:
    """``efa_installer.sh`` stand-in. behaviour: ok | fail | hang | noop (exits 0, installs nothing).

    With ``lock_file`` it also records whether that lock was held while it ran (flock -n).
    """
    q = shlex.quote
    r = str(root)
    lines = [
        "#!/bin/sh",
        "set -e",
        f'echo "run cwd=$(pwd) args=$*" >> {q(str(run_log))}',
        f'echo "== Testing EFA installer {version} =="',
    ]
    if lock_file is not None:
        lines += [f"if flock -n {q(str(lock_file))} true; then echo lock=free >> {q(str(run_log))}; "
                  f"else echo lock=held >> {q(str(run_log))}; fi"]
    if behaviour == "fail":
        lines += ['echo "Installing packages"',
                  'echo "Error: package libfabric-aws conflicts with libfabric" >&2',
                  'echo "Error: EFA installation failed"', "exit 1"]
    elif behaviour == "hang":
        lines += ['echo "Waiting for the package manager lock"',
                  "sleep 600 &",
                  f"echo $! > {q(str(pid_file))}" if pid_file else ":",
                  "wait"]
    elif behaviour == "ok":
        lines += [
            f"mkdir -p {q(r + '/opt/amazon/efa/bin')}",
            f"printf '# EFA installer version: {version}\\n# Debug packages installed: no\\n' "
            f"> {q(r + '/opt/amazon/efa_installed_packages')}",
            f"cat > {q(r + '/opt/amazon/efa/bin/fi_info')} <<'EOF'",
            fi_info_script(LIBFABRIC).rstrip("\n"),
            "EOF",
            f"chmod 755 {q(r + '/opt/amazon/efa/bin/fi_info')}",
        ]
    lines += ['echo "===================================================="',
              'echo "EFA installation complete."']
    return "\n".join(lines) + "\n"


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", mode: int = 0o644, **attrs: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 1_700_000_000
    for key, value in attrs.items():
        setattr(info, key, value)
    if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
        tar.addfile(info, io.BytesIO(data))
    else:
        info.size = 0
        tar.addfile(info)


def installer_tarball(script: str, *, extra: Tuple[Tuple[str, Dict[str, Any]], ...] = (),
                      payload: bytes = b"", script_first: bool = True) -> bytes:
    """A .tar.gz laid out like the real one: aws-efa-installer/{efa_installer.sh,RPMS/...}.

    ``extra`` adds entries (name, TarInfo attributes), e.g. hostile ones; ``payload`` pads an RPM.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _add(tar, "aws-efa-installer", type=tarfile.DIRTYPE, mode=0o755)
        if script_first:
            _add(tar, "aws-efa-installer/efa_installer.sh", script.encode(), 0o755)
        _add(tar, "aws-efa-installer/RPMS", type=tarfile.DIRTYPE, mode=0o755)
        _add(tar, "aws-efa-installer/RPMS/ALINUX2023", type=tarfile.DIRTYPE, mode=0o755)
        _add(tar, "aws-efa-installer/RPMS/ALINUX2023/x86_64", type=tarfile.DIRTYPE, mode=0o755)
        _add(tar, "aws-efa-installer/RPMS/ALINUX2023/x86_64/libfabric-aws-2.1.0amzn3.0-1.x86_64.rpm",
             payload or b"rpm payload\n")
        for name, attrs in extra:
            attrs = dict(attrs)
            data = attrs.pop("data", b"")
            _add(tar, name, data, attrs.pop("mode", 0o644), **attrs)
        if not script_first:
            _add(tar, "aws-efa-installer/efa_installer.sh", script.encode(), 0o755)
    return buf.getvalue()


def huge_member_tarball(size: int) -> bytes:
    """A .tar.gz whose only file header claims ``size`` bytes (no data follows): an absurd size."""
    info = tarfile.TarInfo("aws-efa-installer/huge.rpm")
    info.size = size
    info.mode = 0o644
    raw = info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 4096
    out = io.BytesIO()
    import gzip

    with gzip.GzipFile(fileobj=out, mode="wb") as gz:
        gz.write(raw)
    return out.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the download server ----------------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str  # as sent: absolute URI when it came through a proxy
    headers: Dict[str, str]


@dataclass
class Behaviour:
    statuses: Deque[int] = field(default_factory=deque)  # answer these first, one per request
    cuts: Deque[Tuple[str, int]] = field(default_factory=deque)  # ("reset"|"close", after N bytes)
    range_support: bool = True
    chunked: bool = False  # no Content-Length
    stall_seconds: float = 0.0  # wait this long before answering


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def handle(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            try:
                self.request.do_handshake()
            except (ssl.SSLError, OSError):
                self.server.owner.tls_failures += 1
                return
        with contextlib.suppress(OSError):  # the client went away: nothing to answer
            super().handle()

    def do_GET(self) -> None:
        owner = self.server.owner
        with owner.lock:
            owner.requests.append(Recorded("GET", self.path, dict(self.headers.items())))
            behaviour = owner.behaviour
            status = behaviour.statuses.popleft() if behaviour.statuses else None
        if behaviour.stall_seconds:
            owner.stopping.wait(behaviour.stall_seconds)
        if status is not None:
            return self._small(status, f"injected {status}\n")
        body = owner.files.get(urlsplit(self.path).path)
        if body is None:
            return self._small(404, "no such file\n")
        start, code = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if_range = self.headers.get("If-Range")
        if match and behaviour.range_support and if_range in (None, ETAG):
            start, code = int(match.group(1)), 206
            if start >= len(body):
                return self._small(416, "range not satisfiable\n")
        self.send_response(code)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("ETag", ETAG)
        self.send_header("Last-Modified", "Tue, 12 May 2026 10:00:00 GMT")
        if behaviour.range_support:
            self.send_header("Accept-Ranges", "bytes")
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if behaviour.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = memoryview(body)[start:]
        with owner.lock:
            cut = behaviour.cuts.popleft() if behaviour.cuts else None
        limit = len(payload) if cut is None else min(cut[1], len(payload))
        self._send(payload[:limit], behaviour.chunked, last=cut is None)
        if cut is not None:
            self.close_connection = True
            if cut[0] == "reset":
                # Let the client read what was sent, then reset: SO_LINGER 0 makes close() send a
                # TCP RST (the client sees "connection reset by peer" mid-body).
                owner.stopping.wait(0.3)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()

    def _send(self, data: memoryview, chunked: bool, *, last: bool) -> None:
        step = 256 * 1024
        for i in range(0, len(data), step):
            piece = data[i:i + step]
            if chunked:
                self.wfile.write(b"%x\r\n" % len(piece) + bytes(piece) + b"\r\n")
            else:
                self.wfile.write(piece)
        if chunked and last:
            self.wfile.write(b"0\r\n\r\n")

    def _small(self, status: int, text: str) -> None:
        send_text(self, status, text)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    owner: "InstallerServer"

    def get_request(self) -> Tuple[Any, Any]:
        sock, addr = super().get_request()
        if self.owner.ssl_context is not None:
            sock = self.owner.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr


class InstallerServer(LoopbackServer):
    """A loopback HTTP(S) server for installer tarballs (TLS per connection, so that a failed
    handshake is counted, not fatal); use as a context manager."""

    name = "efa-test-server"

    def __init__(self, files: Optional[Dict[str, bytes]] = None,
                 ssl_context: Optional[ssl.SSLContext] = None) -> None:
        super().__init__()
        self.files: Dict[str, bytes] = dict(files or {})
        self.ssl_context = ssl_context
        self.behaviour = Behaviour()
        self.requests: List[Recorded] = []
        self.tls_failures = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.scheme = "https" if ssl_context else "http"

    def listen(self) -> _Server:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.owner = self
        return server

    def stop(self) -> None:
        self.stopping.set()
        super().stop()

    @property
    def base_url(self) -> str:
        return self.url

    def add(self, version: str, data: bytes) -> None:
        self.files[f"/aws-efa-installer-{version}.tar.gz"] = data

    def gets(self) -> List[Recorded]:
        with self.lock:
            return list(self.requests)


def free_port() -> int:
    """A loopback port with nothing listening on it (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ConnectProxy:
    """A forward proxy for HTTPS (``CONNECT host:port``) on loopback, as HTTPS_PROXY names it.

    It records each CONNECT target and pipes bytes both ways; it never sees inside the TLS.
    """

    def __init__(self) -> None:
        self.targets: List[str] = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(0.1)
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._thread = threading.Thread(target=self._accept, name="efa-test-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> "ConnectProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        for t in self._threads:
            t.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._tunnel, args=(client,), daemon=True)
            self._threads.append(t)
            t.start()

    def _tunnel(self, client: socket.socket) -> None:
        import select

        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                data = client.recv(4096)
                if not data:
                    return
                head += data
            method, target = head.split(b" ", 2)[:2]
            if method != b"CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            self.targets.append(target.decode())
            host, port = target.decode().rsplit(":", 1)
            try:
                upstream = socket.create_connection((host, int(port)), timeout=5)
            except OSError:
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            with upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                socks = [client, upstream]
                while not self._stop.is_set():
                    readable, _, _ = select.select(socks, [], [], 0.1)
                    for s in readable:
                        data = s.recv(65536)
                        if not data:
                            return
                        (upstream if s is client else client).sendall(data)


# --- hostile tarballs (tests/efa/test_safetar.py; the install tests check none is ever executed) ----------

SYMLINK, HARDLINK = tarfile.SYMTYPE, tarfile.LNKTYPE
CHR, BLK, FIFO = tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE

# name -> extra tar entries; each tarball also holds a valid efa_installer.sh, which must never run.
OUTSIDE = "gna-efa-extract-escape"
HOSTILE = {
    "dotdot": ((f"aws-efa-installer/../../{OUTSIDE}", {"data": b"x"}),),
    "dotdot-top": ((f"../{OUTSIDE}", {"data": b"x"}),),
    "absolute": ((f"/tmp/{OUTSIDE}", {"data": b"x"}),),
    "symlink-absolute": (("aws-efa-installer/etc", {"type": SYMLINK, "linkname": "/etc"}),),
    "symlink-out": (("aws-efa-installer/up", {"type": SYMLINK, "linkname": "../../.."}),),
    "through-symlink": (("aws-efa-installer/here", {"type": SYMLINK, "linkname": "."}),
                        ("aws-efa-installer/here/x", {"data": b"x"})),
    "symlink-rerouted": (("a", {"type": SYMLINK, "linkname": "b/.."}),  # inside when created...
                         ("b", {"type": SYMLINK, "linkname": "."})),  # ...outside once b exists
    "hardlink-out": (("aws-efa-installer/passwd", {"type": HARDLINK, "linkname": "../../etc/passwd"}),),
    "hardlink-absolute": (("aws-efa-installer/passwd", {"type": HARDLINK, "linkname": "/etc/passwd"}),),
    "char-device": (("aws-efa-installer/null", {"type": CHR, "devmajor": 1, "devminor": 3}),),
    "block-device": (("aws-efa-installer/sda", {"type": BLK, "devmajor": 8, "devminor": 0}),),
    "fifo": (("aws-efa-installer/pipe", {"type": FIFO}),),
    "duplicate": (("aws-efa-installer/efa_installer.sh", {"data": b"#!/bin/sh\necho replaced\n",
                                                          "mode": 0o755}),),
    "backslash-absolute": ((f"\\tmp\\{OUTSIDE}", {"data": b"x"}),),
    "unknown-type": (("aws-efa-installer/odd", {"type": b"Z"}),),
    "directory-over-file": (("aws-efa-installer/efa_installer.sh", {"type": tarfile.DIRTYPE, "mode": 0o755}),),
    "directory-over-symlink": (("aws-efa-installer/d", {"type": SYMLINK, "linkname": "."}),
                               ("aws-efa-installer/d", {"type": tarfile.DIRTYPE, "mode": 0o777})),
    "symlink-over-file": (("aws-efa-installer/efa_installer.sh", {"type": SYMLINK, "linkname": "RPMS"}),),
    "hardlink-to-directory": (("aws-efa-installer/h", {"type": HARDLINK, "linkname": "aws-efa-installer/RPMS"}),),
}
EXPECTED = {
    "dotdot": "path with '..'",
    "dotdot-top": "path with '..'",
    "absolute": "absolute path",
    "symlink-absolute": "symbolic link to the absolute path '/etc'",
    "symlink-out": "symbolic link to '../../..' leaves the installer directory",
    "through-symlink": "would be written through a symbolic link",
    "symlink-rerouted": "a: symbolic link resolves outside the installer directory",
    "hardlink-out": "hard link to '../../etc/passwd' leaves the installer directory",
    "hardlink-absolute": "hard link to '/etc/passwd' leaves the installer directory",
    "char-device": "aws-efa-installer/null: device node not allowed",
    "block-device": "aws-efa-installer/sda: device node not allowed",
    "fifo": "aws-efa-installer/pipe: FIFO not allowed",
    "duplicate": "appears twice in the archive",
    "backslash-absolute": f"\\tmp\\{OUTSIDE}: absolute path",
    "unknown-type": "aws-efa-installer/odd: entry of type b'Z' not allowed in an installer tarball",
    "directory-over-file": "aws-efa-installer/efa_installer.sh: directory entry collides with another entry",
    "directory-over-symlink": "aws-efa-installer/d: directory entry collides with another entry",
    "symlink-over-file": "aws-efa-installer/efa_installer.sh: appears twice in the archive",
    "hardlink-to-directory": "aws-efa-installer/h: hard link to 'aws-efa-installer/RPMS', which is not a file "
                             "extracted before it",
}


def bytes_file(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)
