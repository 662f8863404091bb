"""Safe extraction of an installer tarball (``.tar.gz``) into a fresh directory.

The checks are our own and run whatever the interpreter (3.9 has no ``tarfile`` filters): relative
names without ``..``; regular files, directories, and links that stay inside the directory only
(device files, FIFOs and unknown types are refused); nothing is written through a symlink; the
number of entries and their sizes are bounded (``ExtractLimits``). Where ``tarfile.data_filter``
exists it runs too, as an extra layer. Owners are never taken from the archive; set-id bits and
group/other write bits are dropped. Used for the EFA installer (``agent/efa/install.py``).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, NamedTuple, Optional

from agent.base.errors import AgentError

if TYPE_CHECKING:
    import tarfile

CHUNK_SIZE = 1 << 20


class ExtractError(AgentError):
    """The archive could not be extracted (one line, exit 1)."""


class UnsafeTarball(ExtractError):
    """The archive is not a valid ``.tar.gz``, or holds something unsafe; nothing of it is used."""


class ExtractLimits(NamedTuple):
    max_members: int = 100_000
    max_member_bytes: int = 2 << 30
    max_total_bytes: int = 8 << 30


DEFAULT_LIMITS = ExtractLimits()


def extract_tarball(f: IO[bytes], dest: Path, limits: ExtractLimits = DEFAULT_LIMITS) -> None:
    """Extract a ``.tar.gz`` stream into the empty directory ``dest``, refusing anything unsafe.

    Our own checks run whatever the interpreter (3.9 has no ``tarfile`` filters): relative names
    without ``..``, regular files, directories, and links that stay inside ``dest`` only; nothing is
    written through a symlink; sizes are bounded. Where ``tarfile.data_filter`` exists it runs too.
    Owners are never taken from the archive; set-id bits and group/other write bits are dropped.
    """
    import tarfile
    import zlib

    dest_real = os.path.realpath(dest)
    if os.listdir(dest_real):
        raise UnsafeTarball(f"{dest_real}: extraction directory is not empty")
    data_filter = getattr(tarfile, "data_filter", None)
    count = 0
    total = 0
    try:
        with tarfile.open(fileobj=f, mode="r|gz") as archive:
            for member in archive:
                count += 1
                if count > limits.max_members:
                    raise UnsafeTarball(f"more than {limits.max_members} entries")
                rel = _member_path(member.name)
                if member.isreg():
                    if member.size > limits.max_member_bytes:
                        raise UnsafeTarball(f"{member.name}: {member.size} bytes is more than "
                                            f"{limits.max_member_bytes} allowed per file")
                    total += member.size
                    if total > limits.max_total_bytes:
                        raise UnsafeTarball(f"more than {limits.max_total_bytes} bytes in total")
                if rel is not None:
                    _refuse_unsafe(member, rel, dest_real)
                if data_filter is not None:
                    try:
                        data_filter(member, dest_real)
                    except tarfile.FilterError as exc:
                        raise UnsafeTarball(f"{member.name}: {exc}") from None
                if rel is None:
                    continue  # the archive's own "./"
                _extract_member(archive, member, rel, dest_real)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise UnsafeTarball(f"not a valid .tar.gz: {exc}") from None
    except OSError as exc:
        raise ExtractError(f"{dest_real}: extraction failed: {exc.strerror or exc}") from None
    _audit_links(dest_real)


def _member_path(name: str) -> Optional[str]:
    if name.startswith("/") or name.startswith("\\"):
        raise UnsafeTarball(f"{name}: absolute path")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if ".." in parts:
        raise UnsafeTarball(f"{name}: path with '..'")
    return "/".join(parts) or None


def _inside(dest_real: str, path: str) -> bool:
    return path == dest_real or path.startswith(dest_real + os.sep)


def _refuse_unsafe(member: tarfile.TarInfo, rel: str, dest_real: str) -> None:
    """Our own checks of one entry, before anything is written (and before tarfile's filter)."""
    if member.isdir() or member.isreg():
        return
    if member.issym():
        link = member.linkname
        if not link or link.startswith("/"):
            raise UnsafeTarball(f"{member.name}: symbolic link to the absolute path {link!r}")
        parent = os.path.dirname(os.path.join(dest_real, rel))
        if not _inside(dest_real, os.path.normpath(os.path.join(parent, link))):
            raise UnsafeTarball(f"{member.name}: symbolic link to {link!r} leaves the installer directory")
    elif member.islnk():
        try:
            source_rel = _member_path(member.linkname)
        except UnsafeTarball:
            source_rel = None
        if source_rel is None:
            raise UnsafeTarball(f"{member.name}: hard link to {member.linkname!r} leaves the installer "
                                "directory")
    else:
        kind = ("device node" if member.ischr() or member.isblk() else "FIFO" if member.isfifo()
                else f"entry of type {member.type!r}")
        raise UnsafeTarball(f"{member.name}: {kind} not allowed in an installer tarball")


def _make_parents(dest_real: str, parent: str) -> None:
    """Directories the archive names only through its files' paths: 0755 whatever the umask (makedirs
    applies its mode to the last directory only)."""
    missing = []
    while parent != dest_real and not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        os.mkdir(directory, 0o700)
        os.chmod(directory, 0o755)  # noqa: S103 (not writable by others: the point of this function)


def _extract_member(archive: tarfile.TarFile, member: tarfile.TarInfo, rel: str, dest_real: str) -> None:
    """Write one checked entry; the on-disk checks here see links created by earlier entries."""
    target = os.path.join(dest_real, rel)
    parent = os.path.dirname(target)
    # No symlink anywhere in the parent chain: a real path equals its own realpath.
    if os.path.realpath(parent) != parent:
        raise UnsafeTarball(f"{member.name}: would be written through a symbolic link")
    _make_parents(dest_real, parent)
    if member.isdir():
        if os.path.lexists(target):
            if os.path.islink(target) or not os.path.isdir(target):
                raise UnsafeTarball(f"{member.name}: directory entry collides with another entry")
        else:
            os.mkdir(target, 0o700)
        os.chmod(target, (member.mode & 0o755) | 0o700)
    elif member.isreg():
        source = archive.extractfile(member)
        if source is None:
            raise UnsafeTarball(f"{member.name}: unreadable file entry")
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise UnsafeTarball(f"{member.name}: appears twice in the archive") from None
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = source.read(CHUNK_SIZE)
                if not chunk:
                    break
                out.write(chunk)
            os.fchmod(out.fileno(), member.mode & 0o755)
    elif member.issym():
        if not _inside(dest_real, os.path.realpath(os.path.join(parent, member.linkname))):
            raise UnsafeTarball(f"{member.name}: symbolic link to {member.linkname!r} leaves the installer "
                                "directory")
        try:
            os.symlink(member.linkname, target)
        except FileExistsError:
            raise UnsafeTarball(f"{member.name}: appears twice in the archive") from None
    elif member.islnk():
        source_path = os.path.join(dest_real, _member_path(member.linkname) or "")
        if os.path.realpath(source_path) != source_path or not os.path.isfile(source_path):
            raise UnsafeTarball(f"{member.name}: hard link to {member.linkname!r}, which is not a file "
                                "extracted before it")
        os.link(source_path, target, follow_symlinks=False)
    else:  # _refuse_unsafe already refused every other type
        raise UnsafeTarball(f"{member.name}: unexpected entry type {member.type!r}")


def _audit_links(dest_real: str) -> None:
    """After extraction: every symlink must still resolve inside (a later link can re-route one)."""
    for directory, dirs, files in os.walk(dest_real):
        for name in dirs + files:
            path = os.path.join(directory, name)
            if os.path.islink(path) and not _inside(dest_real, os.path.realpath(path)):
                raise UnsafeTarball(f"{os.path.relpath(path, dest_real)}: symbolic link resolves outside "
                                    "the installer directory")
