"""EFA install: safe extraction of real tarballs, the installer run, and `run` end to end.

The installer is a real ``sh`` script inside a real ``.tar.gz`` served over loopback HTTP; it writes
the version file and ``fi_info`` under the simulated node root. "Nothing executed" is checked from
the script's own run log, "no request" from the server's request log.
"""

import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from agent import download, efa, log, safetar
from agent.cli import main
from agent.config import EfaSettings
from agent.download import DownloadOptions
from agent.efa import cache, install
from agent.fs import NodeRoot
from tests.efa_helpers import (
    LIBFABRIC,
    VERSION,
    InstallerServer,
    converged_node,
    efa_node,
    huge_member_tarball,
    installer_script,
    installer_tarball,
    sha256,
    write_config,
)

# The unit checks as on a healthy node: these tests are about files, not systemd (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("units_serving")

SYMLINK, HARDLINK = tarfile.SYMTYPE, tarfile.LNKTYPE
CHR, BLK, FIFO = tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE


@pytest.fixture(autouse=True)
def fresh_log() -> Iterator[None]:
    """Log to this test's stderr, and leave logging unconfigured for the next test."""
    log.setup("json", 0)
    yield
    log.setup("json", 0)


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


# --- safe extraction ---------------------------------------------------------------------------------

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


@pytest.fixture(params=["interpreter-as-is", "own-checks-only"])
def filter_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Interpreters before 3.9.17 / 3.11.4 have no tarfile filters: our own checks must hold alone.
    Where the interpreter has them (e.g. 3.9.18), the first variant runs both layers."""
    if request.param == "own-checks-only":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return str(request.param)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_tarballs_are_refused(tmp_path: Path, runs: Path, kind: str, filter_mode: str) -> None:
    data = installer_tarball(installer_script(tmp_path, runs), extra=HOSTILE[kind])
    dest = tmp_path / "work" / "extract"
    dest.mkdir(parents=True)
    with pytest.raises(safetar.UnsafeTarball) as err:
        safetar.extract_tarball(_bytes_file(data), dest)
    assert EXPECTED[kind] in str(err.value)
    assert "\n" not in str(err.value)
    for outside in (tmp_path / "work" / OUTSIDE, tmp_path / OUTSIDE, Path("/tmp") / OUTSIDE):
        assert not outside.exists()


def test_a_link_into_a_sibling_directory_is_refused(tmp_path: Path, runs: Path, filter_mode: str) -> None:
    # "extract-evil" starts with "extract": inside only by string prefix, not by path.
    work = tmp_path / "work"
    dest, sibling = work / "extract", work / "extract-evil"
    dest.mkdir(parents=True)
    sibling.mkdir()
    extra = (("aws-efa-installer/lib", {"type": SYMLINK, "linkname": "../../extract-evil"}),)
    data = installer_tarball(installer_script(tmp_path, runs), extra=extra)
    with pytest.raises(safetar.UnsafeTarball) as err:
        safetar.extract_tarball(_bytes_file(data), dest)
    # our own check, before (and whatever) the interpreter's tarfile filter says
    assert str(err.value) == ("aws-efa-installer/lib: symbolic link to '../../extract-evil' leaves the "
                              "installer directory")
    assert not os.path.lexists(dest / "aws-efa-installer/lib")
    assert os.listdir(sibling) == []


def _bytes_file(data: bytes):  # type: ignore[no-untyped-def]
    import io

    return io.BytesIO(data)


def test_absurd_sizes_are_refused(tmp_path: Path) -> None:
    dest = tmp_path / "extract"
    dest.mkdir()
    huge = r"huge\.rpm: 5368709120 bytes is more than 2147483648 allowed"
    with pytest.raises(safetar.UnsafeTarball, match=huge):
        safetar.extract_tarball(_bytes_file(huge_member_tarball(5 << 30)), dest)
    data = installer_tarball("#!/bin/sh\n", payload=b"y" * 10_000)
    for limits, message in ((safetar.ExtractLimits(max_total_bytes=5000), "more than 5000 bytes in total"),
                            (safetar.ExtractLimits(max_members=3), "more than 3 entries")):
        shutil.rmtree(dest)
        dest.mkdir()
        with pytest.raises(safetar.UnsafeTarball, match=message):
            safetar.extract_tarball(_bytes_file(data), dest, limits)


def test_not_a_tarball(tmp_path: Path) -> None:
    with pytest.raises(safetar.UnsafeTarball, match=r"not a valid \.tar\.gz"):
        safetar.extract_tarball(_bytes_file(b"<html>503 Service Unavailable</html>"), tmp_path)


def test_a_good_tarball_extracts_with_safe_modes(tmp_path: Path, filter_mode: str) -> None:
    extra = (("aws-efa-installer/setuid-tool", {"data": b"x", "mode": 0o4777}),
             ("aws-efa-installer/lib", {"type": tarfile.DIRTYPE, "mode": 0o777}),
             ("aws-efa-installer/lib/libfabric.so.1", {"data": b"elf"}),
             ("aws-efa-installer/lib/libfabric.so", {"type": SYMLINK, "linkname": "libfabric.so.1"}),
             ("aws-efa-installer/lib/copy.so.1", {"type": HARDLINK,
                                                  "linkname": "aws-efa-installer/lib/libfabric.so.1"}))
    data = installer_tarball("#!/bin/sh\necho ok\n", extra=extra)
    safetar.extract_tarball(_bytes_file(data), tmp_path)
    top = tmp_path / "aws-efa-installer"
    assert (top / "efa_installer.sh").stat().st_mode & 0o7777 == 0o755
    assert (top / "setuid-tool").stat().st_mode & 0o7777 == 0o755  # no set-id, no world write
    assert (top / "lib").stat().st_mode & 0o777 == 0o755
    assert os.readlink(top / "lib/libfabric.so") == "libfabric.so.1"
    assert (top / "lib/copy.so.1").stat().st_ino == (top / "lib/libfabric.so.1").stat().st_ino
    assert (top / "RPMS/ALINUX2023/x86_64").is_dir()


def test_directories_never_become_writable_by_others(tmp_path: Path, filter_mode: str) -> None:
    # The installer runs as root from here: no directory is group/world-writable, and an archive's own
    # stricter modes are kept. Under the service's umask (systemd's default UMask=0022).
    extra = (("aws-efa-installer/private", {"type": tarfile.DIRTYPE, "mode": 0o750}),
             ("aws-efa-installer/owner-only", {"type": tarfile.DIRTYPE, "mode": 0o700}),
             ("aws-efa-installer/implicit/parent/lib.so", {"data": b"elf"}))  # parents not in the archive
    data = installer_tarball("#!/bin/sh\necho ok\n", extra=extra)
    old_umask = os.umask(0o022)
    try:
        safetar.extract_tarball(_bytes_file(data), tmp_path)
    finally:
        os.umask(old_umask)
    top = tmp_path / "aws-efa-installer"
    modes = {p: (top / p).stat().st_mode & 0o7777 for p in ("private", "owner-only", "implicit", "implicit/parent")}
    assert modes == {"private": 0o750, "owner-only": 0o700, "implicit": 0o755, "implicit/parent": 0o755}


def test_a_rerouted_symlink_is_named_relative_to_the_installer_directory(tmp_path: Path, filter_mode: str) -> None:
    dest = tmp_path / "extract"
    dest.mkdir()
    with pytest.raises(safetar.UnsafeTarball) as err:
        safetar.extract_tarball(_bytes_file(installer_tarball("#!/bin/sh\n", extra=HOSTILE["symlink-rerouted"])), dest)
    assert str(err.value) == "a: symbolic link resolves outside the installer directory"


def test_extraction_needs_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "left-over").write_text("x")
    with pytest.raises(safetar.UnsafeTarball) as err:
        safetar.extract_tarball(_bytes_file(installer_tarball("#!/bin/sh\n")), tmp_path)
    assert str(err.value) == f"{tmp_path}: extraction directory is not empty"


def test_a_file_used_as_a_directory_is_one_line(tmp_path: Path) -> None:
    extra = (("aws-efa-installer/efa_installer.sh/x", {"data": b"x"}),)
    with pytest.raises(safetar.ExtractError) as err:
        safetar.extract_tarball(_bytes_file(installer_tarball("#!/bin/sh\n", extra=extra)), tmp_path)
    assert str(err.value) == f"{tmp_path}: extraction failed: File exists"


def test_limits_are_inclusive_and_sizes_add_up(tmp_path: Path) -> None:
    # 6 entries: aws-efa-installer/, efa_installer.sh, RPMS/, RPMS/ALINUX2023/, .../x86_64/, one RPM
    data = installer_tarball("#!/bin/sh\n", payload=b"y" * 1000)  # the script is 10 bytes
    for n, limits in enumerate((safetar.ExtractLimits(max_members=6), safetar.ExtractLimits(max_member_bytes=1000),
                                safetar.ExtractLimits(max_total_bytes=1010))):
        dest = tmp_path / f"ok-{n}"
        dest.mkdir()
        safetar.extract_tarball(_bytes_file(data), dest, limits)  # exactly at each limit: accepted
    for n, (limits, message) in enumerate((
        (safetar.ExtractLimits(max_members=5), "more than 5 entries"),
        (safetar.ExtractLimits(max_member_bytes=999), "1000 bytes is more than 999 allowed per file"),
        (safetar.ExtractLimits(max_total_bytes=1009), "more than 1009 bytes in total"),  # 10 + 1000 together
    )):
        dest = tmp_path / f"refused-{n}"
        dest.mkdir()
        with pytest.raises(safetar.UnsafeTarball, match=message):
            safetar.extract_tarball(_bytes_file(data), dest, limits)


def test_an_uncompressed_tar_is_not_the_installer_tarball(tmp_path: Path) -> None:
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("aws-efa-installer/README"), io.BytesIO(b""))
    with pytest.raises(safetar.UnsafeTarball, match=r"not a valid \.tar\.gz"):
        safetar.extract_tarball(_bytes_file(buf.getvalue()), tmp_path)


def test_a_tarball_made_with_a_leading_dot_entry_extracts_whole(tmp_path: Path) -> None:
    import gzip
    import io

    plain = gzip.decompress(installer_tarball("#!/bin/sh\necho ok\n"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as out, tarfile.open(fileobj=io.BytesIO(plain)) as src:
        dot = tarfile.TarInfo(".")  # `tar -czf x.tar.gz -C dir .` starts with the directory itself
        dot.type, dot.mode = tarfile.DIRTYPE, 0o755
        out.addfile(dot)
        for member in src:
            member.name = "./" + member.name
            out.addfile(member, src.extractfile(member) if member.isreg() else None)
    safetar.extract_tarball(_bytes_file(buf.getvalue()), tmp_path)
    assert (tmp_path / "aws-efa-installer/efa_installer.sh").read_text() == "#!/bin/sh\necho ok\n"
    assert (tmp_path / "aws-efa-installer/RPMS/ALINUX2023/x86_64").is_dir()


# --- the installer -----------------------------------------------------------------------------------


def seeded_cache(root: Path, data: bytes, version: str = VERSION) -> EfaSettings:
    """The tarball already in the cache (as `efa fetch` leaves it); no server needed."""
    cache = root / "var/cache/gpu-node-agent"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"aws-efa-installer-{version}.tar.gz").write_bytes(data)
    # nothing listens on port 9: a download attempt would fail loudly
    return EfaSettings(version=version, sha256=sha256(data), base_url="http://127.0.0.1:9")


def action_for(root: Path, settings: EfaSettings) -> efa.EfaAction:
    action, problems = efa.decide(efa.discover(NodeRoot(str(root)), settings), settings, NodeRoot(str(root)))
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



def test_directories_named_only_by_paths_are_not_world_writable(tmp_path: Path, runs: Path) -> None:
    """Under umask 0 too: parents that the archive has no entry for are 0755, like its own directories."""
    extra = (("aws-efa-installer/docs/en/README.txt", {"data": b"read me"}),)
    data = installer_tarball(installer_script(tmp_path, runs), extra=extra)
    dest = tmp_path / "work" / "extract"
    dest.mkdir(parents=True)
    old = os.umask(0)
    try:
        safetar.extract_tarball(_bytes_file(data), dest)
    finally:
        os.umask(old)
    for rel in ("aws-efa-installer/docs", "aws-efa-installer/docs/en"):
        assert (dest / rel).stat().st_mode & 0o777 == 0o755, rel
