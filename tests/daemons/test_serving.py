"""Asking the daemons whether they serve: ``ctr plugins ls`` as containerd prints it, kubelet's healthz
address from its config, the wait after a restart, and the states the agent cannot read (warn, bounded).

The ``ctr`` texts are the real ctr 1.6's output (tests/containerd/test_containerd_daemon.py runs the real one
against the real daemon); the healthz server is a loopback HTTP server answering as kubelet does.
"""

import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Iterator, List, Tuple, Type

import pytest

from agent.base.noderoot import NodeRoot
from agent.containerd import cri
from agent.daemons import kubelet, serving
from agent.daemons.serving import NOT_SERVING, SERVING, UNKNOWN, Serving
from tests.support.loopback import LoopbackServer

# ctr pads every column, the last one too: the rows end in blanks (added back below).
PLUGINS_LS = """\
TYPE                                  ID                       PLATFORMS      STATUS
io.containerd.content.v1              content                  -              ok
io.containerd.snapshotter.v1          btrfs                    linux/amd64    skip
io.containerd.grpc.v1                 cri                      linux/amd64    error
"""
PLUGINS_LS = "\n".join(f"{row:<96}" for row in PLUGINS_LS.splitlines()) + "\n"
PLUGINS_LS_D = """\
Type:          io.containerd.grpc.v1
ID:            cri
Platforms:     linux/amd64
Exports:
               CRIVersionAlpha      v1alpha2
               CRIVersion           v1
Error:
               Code:        Unknown
               Message:     invalid plugin config: `mirrors` cannot be set when `config_path` is provided
"""


def test_ctr_output_is_read_as_containerd_prints_it() -> None:
    rows = cri.parse_plugins(PLUGINS_LS)
    assert rows[-1] == cri.PluginStatus("io.containerd.grpc.v1", "cri", "error")
    assert [r.status for r in rows] == ["ok", "skip", "error"]
    assert cri.parse_error(PLUGINS_LS_D) == (
        "invalid plugin config: `mirrors` cannot be set when `config_path` is provided")
    assert cri.parse_error("Type: x\nID: y\n") == ""


def fake_ctr(root: Path, script: str) -> None:
    ctr = root / "usr/bin/ctr"
    ctr.parent.mkdir(parents=True, exist_ok=True)
    ctr.write_text("#!/bin/sh\n" + script)
    ctr.chmod(0o755)


def listening_socket(path: Path) -> "socket.socket":  # noqa: F821
    import socket

    path.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)
    return s


@pytest.fixture
def short_root() -> Iterator[Path]:
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="gna-", dir="/tmp"))  # a socket path must be short
    yield base
    shutil.rmtree(base, ignore_errors=True)


def probe_for(root: Path, major: int = 1) -> cri.CriProbe:
    node = NodeRoot(str(root))
    return cri.CriProbe(str(node.path(cri.CTR)), str(node.path(cri.DEFAULT_SOCKET)), cri.DEFAULT_SOCKET,
                        cri.CRI_PLUGINS[major])


def test_cri_plugin_error_names_containerd_s_reason(short_root: Path) -> None:
    fake_ctr(short_root,
             f'case "$*" in *" -d "*) cat <<"E"\n{PLUGINS_LS_D}E\n;; *) cat <<"E"\n{PLUGINS_LS}E\n;; esac\n')
    with listening_socket(short_root / "run/containerd/containerd.sock"):
        answer = probe_for(short_root).read()
    assert answer.state == NOT_SERVING and answer.final
    assert answer.message == ("CRI plugin io.containerd.grpc.v1 cri: error: invalid plugin config: `mirrors` "
                              "cannot be set when `config_path` is provided")


def test_containerd_2_needs_the_runtime_and_images_plugins_too(short_root: Path) -> None:
    fake_ctr(short_root, f'cat <<"E"\n{PLUGINS_LS.replace("error", "ok   ")}E\n')
    with listening_socket(short_root / "run/containerd/containerd.sock"):
        assert probe_for(short_root, 1).read().state == SERVING
        answer = probe_for(short_root, 2).read()
    assert (answer.state, answer.message) == (NOT_SERVING, "CRI plugin io.containerd.cri.v1 runtime: not loaded by "
                                                           "the daemon")


def test_containerd_2_images_plugin_in_error_is_not_serving(short_root: Path) -> None:
    rows = PLUGINS_LS.replace("error", "ok   ") + "\n".join(f"{row:<96}" for row in (
        "io.containerd.cri.v1                  runtime                  linux/amd64    ok",
        "io.containerd.cri.v1                  images                   -              error")) + "\n"
    fake_ctr(short_root, f'case "$*" in *" -d "*) echo "Error:"; echo "  Message: bad registry config";; '
                         f'*) cat <<"E"\n{rows}E\n;; esac\n')
    with listening_socket(short_root / "run/containerd/containerd.sock"):
        answer = probe_for(short_root, 2).read()
    assert (answer.state, answer.message) == (NOT_SERVING, "CRI plugin io.containerd.cri.v1 images: error: bad "
                                                           "registry config")


def test_what_the_agent_cannot_ask_is_unknown_and_bounded(short_root: Path) -> None:
    probe = probe_for(short_root)
    answer = probe.read()
    assert (answer.state, answer.final) == (UNKNOWN, True)
    assert answer.message == "cannot ask containerd: /usr/bin/ctr not found"
    fake_ctr(short_root, "sleep 60\n")  # a ctr that hangs
    answer = probe.read()
    assert answer.state == UNKNOWN and not answer.final
    assert answer.message == "cannot ask containerd: /run/containerd/containerd.sock: No such file or directory"
    with listening_socket(short_root / "run/containerd/containerd.sock"):
        started = time.monotonic()
        answer = probe.read(timeout=0.5)
        elapsed = time.monotonic() - started
    assert answer.state == UNKNOWN and answer.message == "cannot ask containerd: ctr did not finish within 0.5s"
    assert elapsed < 3


def test_the_socket_is_the_effective_grpc_address(tmp_path: Path) -> None:
    from agent.config.settings import ContainerdSettings
    from agent.containerd import config as containerd

    node = tmp_path / "node"
    (node / "etc/containerd/conf.d").mkdir(parents=True)
    (node / "etc/containerd/config.toml").write_text(
        'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n[grpc]\naddress = "/run/a.sock"\n')
    (node / "etc/containerd/conf.d/10.toml").write_text('version = 2\n[grpc]\naddress = "/run/b.sock"\n')
    config_set = containerd.load(NodeRoot(str(node)), ContainerdSettings())
    probe = cri.probe(NodeRoot(str(node)), config_set)
    assert probe is not None and probe.socket_node_path == "/run/b.sock"
    assert probe.socket == str(node / "run/b.sock") and probe.ctr == str(node / "usr/bin/ctr")


# --- kubelet's healthz ------------------------------------------------------------------------------


class Healthz(LoopbackServer):
    """A loopback server answering /healthz as kubelet does (``ok``, or HTTP 500 with the failing check)."""

    name = "kubelet-healthz"

    def __init__(self) -> None:
        super().__init__()
        self.answers: List[Tuple[int, str]] = []

    def handler(self) -> Type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = outer.answers.pop(0) if len(outer.answers) > 1 else outer.answers[0]
                self.send_response(status)
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def healthz() -> Iterator[Healthz]:
    with Healthz() as server:
        yield server


def write_kubelet(node: Path, config: str, args: str = "--config=/etc/kubernetes/kubelet/config.json") -> None:
    (node / "etc/eks/kubelet").mkdir(parents=True, exist_ok=True)
    (node / "etc/eks/kubelet/environment").write_text(f'NODEADM_KUBELET_ARGS="--node-ip=10.0.0.1 {args}"\n')
    (node / "etc/kubernetes/kubelet").mkdir(parents=True, exist_ok=True)
    (node / "etc/kubernetes/kubelet/config.json").write_text(config)


def test_healthz_address_from_the_kubelet_config_and_its_drop_ins(tmp_path: Path) -> None:
    node = tmp_path / "node"
    assert kubelet.probe(NodeRoot(str(node))) == kubelet.HealthzProbe("127.0.0.1", 10248, kubelet.DEFAULT_CONFIG)
    write_kubelet(node, '{"healthzBindAddress": "0.0.0.0", "healthzPort": 10300}',
                  "--config=/etc/kubernetes/kubelet/config.json --config-dir=/etc/kubernetes/kubelet/config.json.d")
    probe = kubelet.probe(NodeRoot(str(node)))
    assert probe == kubelet.HealthzProbe("127.0.0.1", 10300, "--config in /etc/eks/kubelet/environment")
    (node / "etc/kubernetes/kubelet/config.json.d").mkdir()
    (node / "etc/kubernetes/kubelet/config.json.d/10-port.conf").write_text("healthzPort: 10301\n")  # YAML too
    (node / "etc/kubernetes/kubelet/config.json.d/ignored.json").write_text('{"healthzPort": 1}')
    assert kubelet.probe(NodeRoot(str(node))).port == 10301
    write_kubelet(node, '{"healthzPort": 0}')
    off = kubelet.probe(NodeRoot(str(node)))
    assert isinstance(off, kubelet.Unprobed) and off.off
    assert off.read().state == UNKNOWN
    write_kubelet(node, '{"healthzBindAddress": "10.0.0.1"}')
    assert kubelet.probe(NodeRoot(str(node))).read().message == (
        "kubelet's healthz listens on 10.0.0.1, not on loopback; not probed")
    write_kubelet(node, '{"healthzPort": "10248"')
    assert "config.json:2: invalid YAML" in kubelet.probe(NodeRoot(str(node))).read().message


def test_healthz_answers(healthz: Healthz) -> None:
    probe = kubelet.HealthzProbe("127.0.0.1", healthz.port, "test")
    healthz.answers = [(200, "ok")]
    assert probe.read() == Serving(SERVING, f"kubelet healthz http://127.0.0.1:{healthz.port}/healthz: ok",
                                   details={"url": probe.url, "source": "test"})
    healthz.answers = [(500, "[-]syncloop failed: reason withheld\nhealthz check failed")]
    answer = probe.read()
    assert answer.state == NOT_SERVING
    assert answer.message.endswith("HTTP 500 '[-]syncloop failed: reason withheld'")
    healthz.stop()
    answer = probe.read()
    assert answer.state == NOT_SERVING and "no answer: " in answer.message


def test_healthz_ignores_proxies(healthz: Healthz, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    healthz.answers = [(200, "ok")]
    assert kubelet.HealthzProbe("127.0.0.1", healthz.port, "test").read().ok


# --- waiting after a restart ------------------------------------------------------------------------


class Scripted:
    what = "a scripted daemon"

    def __init__(self, answers: List[Serving]) -> None:
        self.answers = answers
        self.asked = 0

    def read(self, timeout: float) -> Serving:
        self.asked += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_until_serving_and_stop_at_a_final_answer() -> None:
    clock = Clock()
    probe = Scripted([Serving(UNKNOWN, "no socket yet"), Serving(NOT_SERVING, "refused"), Serving(SERVING, "ok")])
    assert serving.wait(probe, 10.0, clock=clock, sleep=clock.sleep).ok
    assert probe.asked == 3 and clock.now == pytest.approx(0.2)
    final = Scripted([Serving(NOT_SERVING, "CRI plugin in error", final=True)])
    assert serving.wait(final, 10.0, clock=clock, sleep=clock.sleep).message == "CRI plugin in error"
    assert final.asked == 1


def test_wait_is_bounded_by_the_deadline() -> None:
    clock = Clock()
    probe = Scripted([Serving(UNKNOWN, "no socket")])
    answer = serving.wait(probe, 1.0, clock=clock, sleep=clock.sleep)
    assert answer.state == UNKNOWN and answer.message == "no socket (still so after waiting for a scripted daemon)"
    assert clock.now == pytest.approx(1.0)


def test_every_cri_answer_in_full(short_root: Path) -> None:
    """What each reading says, to the word, with the details the check and the report carry."""
    base = {"socket": "/run/containerd/containerd.sock", "plugins": ["io.containerd.grpc.v1 cri"]}
    probe = probe_for(short_root)
    assert probe.read() == Serving(UNKNOWN, "cannot ask containerd: /usr/bin/ctr not found", True, base)
    fake_ctr(short_root, "exit 0\n")
    assert probe.read() == Serving(UNKNOWN, "cannot ask containerd: /run/containerd/containerd.sock: No such file "
                                   "or directory", False, base)
    sock = short_root / "run/containerd/containerd.sock"
    sock.parent.mkdir(parents=True)
    sock.write_text("")
    assert probe.read() == Serving(UNKNOWN, "cannot ask containerd: /run/containerd/containerd.sock is not a "
                                   "socket", True, base)
    sock.unlink()
    with listening_socket(sock):
        (short_root / "usr/bin/ctr").write_text("not a program\n")  # executable bit set, no interpreter line
        assert probe.read() == Serving(UNKNOWN, "cannot ask containerd: /usr/bin/ctr cannot be executed", True, base)
        fake_ctr(short_root, "echo 'ctr: connection refused' >&2; exit 1\n")
        assert probe.read() == Serving(UNKNOWN, "cannot ask containerd: ctr exited with 1: ctr: connection "
                                       "refused", False, base)
        fake_ctr(short_root, f'cat <<"E"\n{PLUGINS_LS.replace("error", "ok   ")}E\n')
        assert probe.read() == Serving(SERVING, "CRI plugin io.containerd.grpc.v1 cri: ok", False,
                                       {**base, "plugins": {"io.containerd.grpc.v1 cri": "ok"}})
        rows = PLUGINS_LS.replace("error", "ok   ") + "\n".join(f"{row:<96}" for row in (
            "io.containerd.cri.v1                  runtime                  linux/amd64    ok",
            "io.containerd.cri.v1                  images                   -              ok")) + "\n"
        fake_ctr(short_root, f'cat <<"E"\n{rows}E\n')
        two = probe_for(short_root, 2).read()
        assert two.message == ("CRI plugins io.containerd.grpc.v1 cri, io.containerd.cri.v1 runtime, "
                               "io.containerd.cri.v1 images: ok")
        # the detail is asked for the plugin in error only, by type and id
        fake_ctr(short_root, f'case "$*" in *"-d type==io.containerd.grpc.v1,id==cri"*) cat <<"E"\n{PLUGINS_LS_D}E\n'
                             f';; *" -d "*) exit 3;; *) cat <<"E"\n{PLUGINS_LS}E\n;; esac\n')
        reason = "error: invalid plugin config: `mirrors` cannot be set when `config_path` is provided"
        assert probe.read() == Serving(NOT_SERVING, f"CRI plugin io.containerd.grpc.v1 cri: {reason}", True,
                                       {**base, "plugins": {"io.containerd.grpc.v1 cri": "error"}, "reason": reason})
        fake_ctr(short_root, f'case "$*" in *" -d "*) exit 3;; *) cat <<"E"\n{PLUGINS_LS}E\n;; esac\n')
        assert probe.read().message == "CRI plugin io.containerd.grpc.v1 cri: error"  # no detail: the status only
        long = "x" * 400
        fake_ctr(short_root, f'case "$*" in *" -d "*) printf "Error:\\n  Message: {long}\\n";; '
                             f'*) cat <<"E"\n{PLUGINS_LS}E\n;; esac\n')
        assert probe.read().message == "CRI plugin io.containerd.grpc.v1 cri: " + f"error: {long}"[:297] + "..."


def test_ctr_rows_need_three_columns_and_the_error_its_section() -> None:
    assert cri.parse_plugins("io.containerd.grpc.v1 cri ok\nshort row\n") == (
        cri.PluginStatus("io.containerd.grpc.v1", "cri", "ok"),)
    assert cri.parse_error("Message: not under Error\nError:\n  Message: the reason\n") == "the reason"


def test_a_daemon_of_an_unknown_major_is_asked_for_the_2x_plugins(tmp_path: Path) -> None:
    from agent.config.settings import ContainerdSettings
    from agent.containerd import files

    node = tmp_path / "node"
    (node / "etc/containerd").mkdir(parents=True)
    (node / "etc/containerd/config.toml").write_text("version = 3\n")
    config_set = files.load(NodeRoot(str(node)), ContainerdSettings())
    for major, plugins in ((1, cri.CRI_PLUGINS[1]), (2, cri.CRI_PLUGINS[2]), (3, cri.CRI_PLUGINS[2])):
        daemon = config_set.daemon._replace(major=major)
        probe = cri.probe(NodeRoot(str(node)), config_set._replace(daemon=daemon))
        assert isinstance(probe, cri.CriProbe) and probe.plugins == plugins, major
