"""Logging: JSON lines off a TTY, journald priority prefixes, no secrets, structlog loaded lazily."""

import io
import json
import os
import subprocess
import sys
from typing import Any, Iterator

import pytest

from agent.base import log
from tests.support.paths import REPO


@pytest.fixture(autouse=True)
def default_logging() -> Iterator[None]:
    yield
    log.setup()  # back to stderr for whatever runs next


class Stream(io.StringIO):
    def __init__(self, tty: bool = False) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def emit(stream: Any, verbosity: int = 0, fmt: str = "auto") -> None:
    log.setup(fmt, verbosity, stream=stream)
    logger = log.get_logger("test").bind(unit="containerd.service")
    logger.debug("debug detail")
    logger.info("restarted", token="s3cr3t-token", authorization="Bearer abc.def", note="sent Bearer xyz123")
    logger.warning("pending")


def test_json_lines_when_not_a_tty_with_secrets_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = Stream()
    emit(stream)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in lines] == ["restarted", "pending"]  # debug filtered at the default level
    first = lines[0]
    assert first["component"] == "test" and first["unit"] == "containerd.service" and first["level"] == "info"
    assert first["token"] == log.REDACTED and first["authorization"] == log.REDACTED
    assert first["note"] == f"sent Bearer {log.REDACTED}"
    assert "s3cr3t" not in stream.getvalue() and "xyz123" not in stream.getvalue()
    assert "timestamp" in first


def test_values_that_are_not_text_are_logged_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = Stream()
    log.setup("json", 0, stream=stream)
    log.get_logger("test").info("restarted", pid=4242, seconds=0.25, units=["containerd.service"],
                                expires=None, token=None)
    (event,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert (event["pid"], event["seconds"], event["units"]) == (4242, 0.25, ["containerd.service"])
    assert event["expires"] is None and event["token"] is None  # no token: nothing to hide


def test_verbosity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = Stream()
    emit(stream, verbosity=1)
    assert "debug detail" in stream.getvalue()
    stream = Stream()
    emit(stream, verbosity=-1)
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["pending"]


def test_console_rendering_on_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = Stream(tty=True)
    emit(stream)
    text = stream.getvalue()
    assert "restarted" in text and not text.lstrip().startswith("{")


def test_journald_priority_prefixes_when_stderr_is_the_journal(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "journal", "w+") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        emit(f)
        f.seek(0)
        lines = f.read().splitlines()
    assert lines[0].startswith("<6>{") and lines[1].startswith("<4>{")
    assert "timestamp" not in json.loads(lines[0][3:])  # the journal stamps lines itself


def test_check_does_not_import_heavy_modules(tmp_path: Any) -> None:
    """structlog and requests load only when used (gi/pydbus: the one D-Bus client reads unit state)."""
    node = tmp_path / "node"
    (node / "etc/containerd").mkdir(parents=True)
    (node / "etc/containerd/config.toml").write_text("version = 3\n")
    code = (
        "import sys\nfrom agent.cli import main\n"
        f"main(['--root', {str(node)!r}, 'check'])\n"
        "print(sorted(m for m in ('structlog', 'requests') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    assert out.splitlines()[-1] == "[]"
