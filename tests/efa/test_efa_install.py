"""EFA install: the installer run, the verified cache, and `run` end to end (safe extraction alone:
tests/efa/test_safetar.py).

The installer is a real ``sh`` script inside a real ``.tar.gz`` served over loopback HTTP; it writes
the version file and ``fi_info`` under the simulated node root. "Nothing executed" is checked from
the script's own run log, "no request" from the server's request log.
"""

import json
import os
import tarfile
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from agent.base import log
from agent.base.noderoot import NodeRoot
from agent.cli import main
from agent.config.settings import EfaSettings
from agent.efa import cache, download, install, safetar
from agent.efa import decision as efa_decision
from agent.efa import facts as efa_facts
from agent.efa.download import DownloadOptions
from tests.support.efa_helpers import (
    EXPECTED,
    HOSTILE,
    LIBFABRIC,
    VERSION,
    InstallerServer,
    converged_node,
    efa_node,
    installer_script,
    installer_tarball,
    sha256,
    write_config,
)

# The unit checks as on a healthy node: these tests are about files, not systemd (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("units_serving")

@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return efa_node(tmp_path / "node")


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "installer-runs.log"


def run_lines(runs: Path) -> List[str]:
    return runs.read_text().splitlines() if runs.exists() else []


# --- the installer -----------------------------------------------------------------------------------


def seeded_cache(root: Path, data: bytes, version: str = VERSION) -> EfaSettings:
    """The tarball already in the cache (as `efa fetch` leaves it); no server needed."""
    cache = root / "var/cache/gpu-node-agent"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"aws-efa-installer-{version}.tar.gz").write_bytes(data)
    # nothing listens on port 9: a download attempt would fail loudly
    return EfaSettings(version=version, sha256=sha256(data), base_url="http://127.0.0.1:9")


def action_for(root: Path, settings: EfaSettings) -> efa_decision.EfaAction:
    node = NodeRoot(str(root))
    action, problems = efa_decision.decide(efa_facts.discover(node, settings), settings, node)
    assert action.install and not problems
    return action


NO_RETRY = DownloadOptions(policy=download.DownloadPolicy(attempts=1, connect_timeout=1))


@pytest.fixture
def logs(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    log.setup("json", 0)  # structlog bound to this test's captured stderr
    yield capsys
    log.setup("json", 0)


def test_install_runs_the_verified_installer(
    root: Path, runs: Path, logs: pytest.CaptureFixture[str]
) -> None:
    settings = seeded_cache(root, installer_tarball(installer_script(root, runs)))
    assert install.execute(action_for(root, settings), NO_RETRY) == (
        f"EFA userspace {VERSION} installed (libfabric {LIBFABRIC})")
    (line,) = run_lines(runs)
    cwd, args = line.split(" args=")
    assert args == "-y --skip-kmod --no-verify"
    assert cwd.startswith(f"run cwd={root}/var/cache/gpu-node-agent/.efa-installer-")
    assert cwd.endswith("/aws-efa-installer")
    # the extraction directory is gone; the cache keeps only the tarball
    assert os.listdir(root / "var/cache/gpu-node-agent") == [f"aws-efa-installer-{VERSION}.tar.gz"]
    assert (root / "opt/amazon/efa/bin/fi_info").exists()
    events = [json.loads(x) for x in logs.readouterr().err.splitlines()]
    assert {"event": "installer output", "line": "EFA installation complete."}.items() <= events[-2].items()


def test_leftovers_of_a_killed_install_are_removed(root: Path, runs: Path) -> None:
    settings = seeded_cache(root, installer_tarball(installer_script(root, runs)))
    stale = root / "var/cache/gpu-node-agent/.efa-installer-k1ll3d/aws-efa-installer"
    stale.mkdir(parents=True)
    (stale / "efa_installer.sh").write_text("#!/bin/sh\n")
    install.execute(action_for(root, settings), NO_RETRY)
    assert os.listdir(root / "var/cache/gpu-node-agent") == [f"aws-efa-installer-{VERSION}.tar.gz"]


def test_installer_args_come_from_the_config(root: Path, runs: Path) -> None:
    settings = seeded_cache(root, installer_tarball(installer_script(root, runs)))
    settings = settings._replace(installer_args=("-y", "--skip-kmod", "--no-verify", "--enable-gdr"))
    install.execute(action_for(root, settings), NO_RETRY)
    assert run_lines(runs)[0].endswith("args=-y --skip-kmod --no-verify --enable-gdr")


def test_installer_exit_1_carries_the_tail_of_its_output(
    root: Path, runs: Path, logs: pytest.CaptureFixture[str]
) -> None:
    settings = seeded_cache(root, installer_tarball(installer_script(root, runs, behaviour="fail")))
    with pytest.raises(install.InstallerFailed) as err:
        install.execute(action_for(root, settings), NO_RETRY)
    assert str(err.value) == (
        f"aws-efa-installer {VERSION}: efa_installer.sh exited with status 1; "
        "last output: Installing packages"
        " | Error: package libfabric-aws conflicts with libfabric | Error: EFA installation failed")
    assert '"line": "Error: package libfabric-aws conflicts with libfabric"' in logs.readouterr().err


def test_a_hanging_installer_is_killed_at_the_timeout(
    root: Path, runs: Path, tmp_path: Path, logs: pytest.CaptureFixture[str]
) -> None:
    pid_file = tmp_path / "child.pid"
    script = installer_script(root, runs, behaviour="hang", pid_file=pid_file)
    settings = seeded_cache(root, installer_tarball(script))._replace(timeout_seconds=1.0)
    with pytest.raises(install.InstallerFailed) as err:
        install.execute(action_for(root, settings), NO_RETRY)
    assert str(err.value) == (
        f"aws-efa-installer {VERSION}: efa_installer.sh did not finish within 1s (efa.timeout_seconds) and "
        f"was killed; last output: == Testing EFA installer {VERSION} == | "
        "Waiting for the package manager lock")
    # its children went with it (process group): gone, or a zombie waiting for init to reap it
    assert _process_state(int(pid_file.read_text())) in (None, "Z")
    # streamed as it came, not only when the installer ended
    assert '"line": "Waiting for the package manager lock"' in logs.readouterr().err


def _process_state(pid: int) -> "Optional[str]":
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def test_installer_that_installs_nothing_fails_the_verification(root: Path, runs: Path) -> None:
    settings = seeded_cache(root, installer_tarball(installer_script(root, runs, behaviour="noop")))
    with pytest.raises(install.InstallerFailed) as err:
        install.execute(action_for(root, settings), NO_RETRY)
    assert str(err.value) == (f"aws-efa-installer {VERSION}: efa_installer.sh exited 0 but EFA userspace not "
                              "installed (no installer version in /opt/amazon/efa_installed_packages)")


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink-out", "char-device"])
def test_a_hostile_tarball_matching_the_pin_is_never_executed(root: Path, runs: Path, kind: str) -> None:
    data = installer_tarball(installer_script(root, runs), extra=HOSTILE[kind])
    settings = seeded_cache(root, data)
    with pytest.raises(safetar.UnsafeTarball) as err:
        install.execute(action_for(root, settings), NO_RETRY)
    assert str(err.value).startswith(f"{root}/var/cache/gpu-node-agent/aws-efa-installer-{VERSION}.tar.gz: ")
    assert str(err.value).endswith("; nothing executed")
    assert EXPECTED[kind] in str(err.value)
    assert run_lines(runs) == []
    assert os.listdir(root / "var/cache/gpu-node-agent") == [f"aws-efa-installer-{VERSION}.tar.gz"]


def test_a_tampered_cache_is_never_executed(root: Path, runs: Path) -> None:
    good = installer_tarball(installer_script(root, runs))
    settings = seeded_cache(root, good)
    evil = installer_tarball(installer_script(root, runs).replace("EFA installation complete", "pwned"))
    (root / "var/cache/gpu-node-agent" / f"aws-efa-installer-{VERSION}.tar.gz").write_bytes(evil)
    with pytest.raises(download.DownloadError) as err:  # re-verified, removed, and the download fails
        install.execute(action_for(root, settings), NO_RETRY)
    assert "cached copy had sha256" in str(err.value)
    assert run_lines(runs) == []


def test_a_cache_matching_the_pin_only_in_its_first_8_hex_digits_is_never_executed(
    root: Path, runs: Path
) -> None:
    settings = seeded_cache(root, installer_tarball(installer_script(root, runs)))
    pin = settings.sha256[:-1] + ("1" if settings.sha256[-1] == "0" else "0")  # another tarball's pin
    with pytest.raises(download.DownloadError) as err:  # refused, removed, and the download fails
        install.execute(action_for(root, settings._replace(sha256=pin)), NO_RETRY)
    assert "cached copy had sha256" in str(err.value)
    assert run_lines(runs) == []
    assert os.listdir(root / "var/cache/gpu-node-agent") == []


def test_a_tarball_changed_between_download_and_use_is_never_executed(
    root: Path, runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = installer_tarball(installer_script(root, runs))
    settings = seeded_cache(root, good)._replace(base_url="http://127.0.0.1:9")
    cached = root / "var/cache/gpu-node-agent" / f"aws-efa-installer-{VERSION}.tar.gz"
    cached.unlink()

    def racing_fetch(*args: object, **kw: object) -> Path:  # "downloads", then something swaps it
        cached.write_bytes(installer_tarball(installer_script(root, runs).replace("complete", "pwned")))
        return cached

    monkeypatch.setattr(cache, "download_pinned", racing_fetch)
    with pytest.raises(download.ChecksumMismatch, match=r"changed after verification\); not executed$"):
        install.execute(action_for(root, settings), NO_RETRY)
    assert run_lines(runs) == []


def test_a_tarball_without_the_installer(root: Path, runs: Path) -> None:
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("aws-efa-installer/README")
        tar.addfile(info, io.BytesIO(b""))
    settings = seeded_cache(root, buf.getvalue())
    with pytest.raises(install.InstallerFailed, match=r"aws-efa-installer/efa_installer\.sh is missing"):
        install.execute(action_for(root, settings), NO_RETRY)


def test_an_installer_that_cannot_be_executed(root: Path, runs: Path) -> None:
    data = installer_tarball("#!/bin/sh\nexit 0\n")
    data = _with_mode(data, "aws-efa-installer/efa_installer.sh", 0o644)
    settings = seeded_cache(root, data)
    with pytest.raises(install.InstallerFailed, match=r"cannot run efa_installer\.sh: Permission denied"):
        install.execute(action_for(root, settings), NO_RETRY)


def _with_mode(data: bytes, name: str, mode: int) -> bytes:
    import io

    out = io.BytesIO()
    source = io.BytesIO(data)
    with tarfile.open(fileobj=source, mode="r:gz") as src, tarfile.open(fileobj=out, mode="w:gz") as dst:
        for member in src.getmembers():
            fileobj = src.extractfile(member) if member.isreg() else None
            if member.name == name:
                member.mode = mode
            dst.addfile(member, fileobj)
    return out.getvalue()


# --- `run`, `plan`, `check` end to end -------------------------------------------------------------------


@pytest.fixture
def served(root: Path, runs: Path) -> Iterator[InstallerServer]:
    lock = root / "run/gpu-node-agent/lock"
    with InstallerServer() as server:
        server.add(VERSION, installer_tarball(installer_script(root, runs, lock_file=lock)))
        yield server


def cli(root: Path, config: Path, *argv: str) -> int:
    return main(["--root", str(root), "--config", str(config), "--log-format", "json", *argv])


def efa_row(out: str) -> str:
    (row,) = [line for line in out.splitlines() if line.startswith("efa ")]
    return " ".join(row.split())


def test_run_installs_then_does_nothing(
    tmp_path: Path, root: Path, runs: Path, served: InstallerServer, capsys: pytest.CaptureFixture[str]
) -> None:
    converged_node(root)
    config = write_config(tmp_path / "config.yaml", base_url=served.base_url,
                          sha256=sha256(served.files[f"/aws-efa-installer-{VERSION}.tar.gz"]))
    assert cli(root, config, "check") == 1
    assert efa_row(capsys.readouterr().out).startswith("efa fail EFA userspace not installed")

    assert cli(root, config, "run") == 0
    out = capsys.readouterr().out
    assert efa_row(out) == f"efa pass EFA userspace {VERSION}, libfabric {LIBFABRIC} (rdmap0s6)"
    assert f"action: EFA userspace {VERSION} installed (libfabric {LIBFABRIC})" in out
    assert len(served.gets()) == 1
    assert run_lines(runs)[1] == "lock=held"  # the installer ran under the agent's run lock

    # second run: no request reaches the server, nothing is executed
    assert cli(root, config, "run") == 0
    out = capsys.readouterr().out
    assert "action: EFA" not in out and efa_row(out).startswith("efa pass")
    assert len(served.gets()) == 1 and len(run_lines(runs)) == 2
    assert cli(root, config, "plan") == 0
    out = capsys.readouterr().out
    assert f"efa: no action: EFA userspace {VERSION} installed, libfabric {LIBFABRIC}" in out


def test_bake_then_boot_without_network(
    tmp_path: Path, root: Path, runs: Path, served: InstallerServer, capsys: pytest.CaptureFixture[str]
) -> None:
    converged_node(root)
    config = write_config(tmp_path / "config.yaml", base_url=served.base_url,
                          sha256=sha256(served.files[f"/aws-efa-installer-{VERSION}.tar.gz"]))
    assert cli(root, config, "efa", "fetch") == 0  # AMI bake
    served.stop()  # boot: no network
    assert cli(root, config, "plan") == 0
    out = capsys.readouterr().out
    assert "from the cache /var/cache/gpu-node-agent/aws-efa-installer-1.48.0.tar.gz" in out
    assert cli(root, config, "run") == 0
    assert efa_row(capsys.readouterr().out).startswith("efa pass")
    assert len(served.gets()) == 1 and run_lines(runs)[0].endswith("args=-y --skip-kmod --no-verify")


def test_a_pin_change_reinstalls(
    tmp_path: Path, root: Path, runs: Path, served: InstallerServer, capsys: pytest.CaptureFixture[str]
) -> None:
    converged_node(root)
    first = sha256(served.files[f"/aws-efa-installer-{VERSION}.tar.gz"])
    assert cli(root, write_config(tmp_path / "a.yaml", base_url=served.base_url, sha256=first), "run") == 0
    newer = installer_tarball(installer_script(root, runs, version="1.49.0"))
    served.add("1.49.0", newer)
    config = write_config(tmp_path / "b.yaml", base_url=served.base_url, version="1.49.0",
                          sha256=sha256(newer))
    capsys.readouterr()
    assert cli(root, config, "plan") == 0
    assert "efa: install aws-efa-installer 1.49.0: installed 1.48.0, pinned 1.49.0" in capsys.readouterr().out
    assert cli(root, config, "run") == 0
    assert efa_row(capsys.readouterr().out).startswith("efa pass EFA userspace 1.49.0")
    assert [r.path for r in served.gets()] == [
        "/aws-efa-installer-1.48.0.tar.gz", "/aws-efa-installer-1.49.0.tar.gz"]


def test_run_with_a_failing_installer_exits_1(
    tmp_path: Path, root: Path, runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    converged_node(root)
    data = installer_tarball(installer_script(root, runs, behaviour="fail"))
    with InstallerServer() as server:
        server.add(VERSION, data)
        config = write_config(tmp_path / "config.yaml", base_url=server.base_url, sha256=sha256(data))
        assert cli(root, config, "run") == 1
    captured = capsys.readouterr()
    assert efa_row(captured.out).startswith("efa fail EFA userspace not installed")
    (failure,) = [json.loads(x) for x in captured.err.splitlines() if "EFA userspace not installed" in x]
    assert failure["error"].endswith(
        "exited with status 1; last output: Installing packages | Error: package "
        "libfabric-aws conflicts with libfabric | Error: EFA installation failed")


def test_run_without_sha256_refuses_and_says_how(
    tmp_path: Path, root: Path, runs: Path, served: InstallerServer, capsys: pytest.CaptureFixture[str]
) -> None:
    converged_node(root)
    config = write_config(tmp_path / "config.yaml", base_url=served.base_url)
    assert cli(root, config, "run") == 1
    captured = capsys.readouterr()
    assert "neither efa.sha256 nor efa.gpg_fingerprint is set" in efa_row(captured.out)
    assert served.gets() == [] and run_lines(runs) == []


def test_run_without_efa_hardware_skips(tmp_path: Path, runs: Path, served: InstallerServer,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    root = converged_node(tmp_path / "plain", hardware=False)
    config = write_config(tmp_path / "config.yaml", base_url=served.base_url, sha256="ab" * 32)
    assert cli(root, config, "run") == 0
    row = efa_row(capsys.readouterr().out)
    assert row == "efa skip no EFA device under /sys/class/infiniband: not applicable"
    assert served.gets() == [] and run_lines(runs) == []
