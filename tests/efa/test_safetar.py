"""Safe extraction (agent/efa/safetar.py) of real ``.tar.gz`` files: hostile entries are refused before
anything is written outside, limits hold exactly, modes are made safe; with and without the
interpreter's own tarfile filter.

The tarballs are EFA installer tarballs (tests/support/efa_helpers.py), each with a valid installer script
that must never be needed: extraction alone is under test here.
"""

import os
import shutil
import tarfile
from pathlib import Path

import pytest

from agent.efa import safetar
from tests.support.efa_helpers import (
    EXPECTED,
    HARDLINK,
    HOSTILE,
    OUTSIDE,
    SYMLINK,
    bytes_file,
    huge_member_tarball,
    installer_script,
    installer_tarball,
)


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "installer-runs.log"


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
        safetar.extract_tarball(bytes_file(data), dest)
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
        safetar.extract_tarball(bytes_file(data), dest)
    # our own check, before (and whatever) the interpreter's tarfile filter says
    assert str(err.value) == ("aws-efa-installer/lib: symbolic link to '../../extract-evil' leaves the "
                              "installer directory")
    assert not os.path.lexists(dest / "aws-efa-installer/lib")
    assert os.listdir(sibling) == []


def test_absurd_sizes_are_refused(tmp_path: Path) -> None:
    dest = tmp_path / "extract"
    dest.mkdir()
    huge = r"huge\.rpm: 5368709120 bytes is more than 2147483648 allowed"
    with pytest.raises(safetar.UnsafeTarball, match=huge):
        safetar.extract_tarball(bytes_file(huge_member_tarball(5 << 30)), dest)
    data = installer_tarball("#!/bin/sh\n", payload=b"y" * 10_000)
    for limits, message in ((safetar.ExtractLimits(max_total_bytes=5000), "more than 5000 bytes in total"),
                            (safetar.ExtractLimits(max_members=3), "more than 3 entries")):
        shutil.rmtree(dest)
        dest.mkdir()
        with pytest.raises(safetar.UnsafeTarball, match=message):
            safetar.extract_tarball(bytes_file(data), dest, limits)


def test_not_a_tarball(tmp_path: Path) -> None:
    with pytest.raises(safetar.UnsafeTarball, match=r"not a valid \.tar\.gz"):
        safetar.extract_tarball(bytes_file(b"<html>503 Service Unavailable</html>"), tmp_path)


def test_a_good_tarball_extracts_with_safe_modes(tmp_path: Path, filter_mode: str) -> None:
    extra = (("aws-efa-installer/setuid-tool", {"data": b"x", "mode": 0o4777}),
             ("aws-efa-installer/lib", {"type": tarfile.DIRTYPE, "mode": 0o777}),
             ("aws-efa-installer/lib/libfabric.so.1", {"data": b"elf"}),
             ("aws-efa-installer/lib/libfabric.so", {"type": SYMLINK, "linkname": "libfabric.so.1"}),
             ("aws-efa-installer/lib/copy.so.1", {"type": HARDLINK,
                                                  "linkname": "aws-efa-installer/lib/libfabric.so.1"}))
    data = installer_tarball("#!/bin/sh\necho ok\n", extra=extra)
    safetar.extract_tarball(bytes_file(data), tmp_path)
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
        safetar.extract_tarball(bytes_file(data), tmp_path)
    finally:
        os.umask(old_umask)
    top = tmp_path / "aws-efa-installer"
    modes = {p: (top / p).stat().st_mode & 0o7777 for p in ("private", "owner-only", "implicit", "implicit/parent")}
    assert modes == {"private": 0o750, "owner-only": 0o700, "implicit": 0o755, "implicit/parent": 0o755}


def test_a_rerouted_symlink_is_named_relative_to_the_installer_directory(tmp_path: Path, filter_mode: str) -> None:
    dest = tmp_path / "extract"
    dest.mkdir()
    with pytest.raises(safetar.UnsafeTarball) as err:
        safetar.extract_tarball(bytes_file(installer_tarball("#!/bin/sh\n", extra=HOSTILE["symlink-rerouted"])), dest)
    assert str(err.value) == "a: symbolic link resolves outside the installer directory"


def test_extraction_needs_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "left-over").write_text("x")
    with pytest.raises(safetar.UnsafeTarball) as err:
        safetar.extract_tarball(bytes_file(installer_tarball("#!/bin/sh\n")), tmp_path)
    assert str(err.value) == f"{tmp_path}: extraction directory is not empty"


def test_a_file_used_as_a_directory_is_one_line(tmp_path: Path) -> None:
    extra = (("aws-efa-installer/efa_installer.sh/x", {"data": b"x"}),)
    with pytest.raises(safetar.ExtractError) as err:
        safetar.extract_tarball(bytes_file(installer_tarball("#!/bin/sh\n", extra=extra)), tmp_path)
    assert str(err.value) == f"{tmp_path}: extraction failed: File exists"


def test_limits_are_inclusive_and_sizes_add_up(tmp_path: Path) -> None:
    # 6 entries: aws-efa-installer/, efa_installer.sh, RPMS/, RPMS/ALINUX2023/, .../x86_64/, one RPM
    data = installer_tarball("#!/bin/sh\n", payload=b"y" * 1000)  # the script is 10 bytes
    for n, limits in enumerate((safetar.ExtractLimits(max_members=6), safetar.ExtractLimits(max_member_bytes=1000),
                                safetar.ExtractLimits(max_total_bytes=1010))):
        dest = tmp_path / f"ok-{n}"
        dest.mkdir()
        safetar.extract_tarball(bytes_file(data), dest, limits)  # exactly at each limit: accepted
    for n, (limits, message) in enumerate((
        (safetar.ExtractLimits(max_members=5), "more than 5 entries"),
        (safetar.ExtractLimits(max_member_bytes=999), "1000 bytes is more than 999 allowed per file"),
        (safetar.ExtractLimits(max_total_bytes=1009), "more than 1009 bytes in total"),  # 10 + 1000 together
    )):
        dest = tmp_path / f"refused-{n}"
        dest.mkdir()
        with pytest.raises(safetar.UnsafeTarball, match=message):
            safetar.extract_tarball(bytes_file(data), dest, limits)


def test_an_uncompressed_tar_is_not_the_installer_tarball(tmp_path: Path) -> None:
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("aws-efa-installer/README"), io.BytesIO(b""))
    with pytest.raises(safetar.UnsafeTarball, match=r"not a valid \.tar\.gz"):
        safetar.extract_tarball(bytes_file(buf.getvalue()), tmp_path)


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
    safetar.extract_tarball(bytes_file(buf.getvalue()), tmp_path)
    assert (tmp_path / "aws-efa-installer/efa_installer.sh").read_text() == "#!/bin/sh\necho ok\n"
    assert (tmp_path / "aws-efa-installer/RPMS/ALINUX2023/x86_64").is_dir()


def test_directories_named_only_by_paths_are_not_world_writable(tmp_path: Path, runs: Path) -> None:
    """Under umask 0 too: parents that the archive has no entry for are 0755, like its own directories."""
    extra = (("aws-efa-installer/docs/en/README.txt", {"data": b"read me"}),)
    data = installer_tarball(installer_script(tmp_path, runs), extra=extra)
    dest = tmp_path / "work" / "extract"
    dest.mkdir(parents=True)
    old = os.umask(0)
    try:
        safetar.extract_tarball(bytes_file(data), dest)
    finally:
        os.umask(old)
    for rel in ("aws-efa-installer/docs", "aws-efa-installer/docs/en"):
        assert (dest / rel).stat().st_mode & 0o777 == 0o755, rel
