"""Verifying the EFA installer tarball against its pins, before anything is extracted.

Two pins, either or both (``efa.sha256``, ``efa.gpg_fingerprint``); without one the installer
never runs. The SHA-256 is compared as the bytes stream in (``agent/efa/download.py``), and again
for a cached copy (``agent/efa/cache.py``). The signature is AWS's
own: each ``aws-efa-installer-<v>.tar.gz`` has a detached ``.tar.gz.sig`` beside it, made with the
key published as ``aws-efa-installer.key`` on the same host. A fetched key proves nothing by
itself, so:

1. ``gpg --import-options show-only`` lists the primary keys the key file holds; the pinned
   fingerprint must be one of them;
2. only that key (with its subkeys) is exported from a throw-away GnuPG home into a fresh keyring:
   a key file carrying more keys cannot bring a second signer in;
3. ``gpgv --keyring <that keyring>`` checks the signature over the very file object that is then
   extracted (its descriptor is gpgv's stdin), and its status output must say ``GOODSIG`` and
   ``VALIDSIG`` by a key whose primary fingerprint is the pin. An expired or revoked key, or a bad
   signature, is refused.

gpg and gpgv are AL2023's gnupg2-minimal (Debian: gpg, gpgv), run through ``agent.base.process``: without
a shell and bounded in time.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, List, Optional, Tuple

from agent.base.errors import AgentError
from agent.base.process import ToolOutput, run_tool
from agent.config.rules import gpg_fingerprint
from agent.config.settings import EfaSettings

GPG = "/usr/bin/gpg"
GPGV = "/usr/bin/gpgv"
KEY_NAME = "aws-efa-installer.key"
GPG_TIMEOUT_SECONDS = 120.0  # gpgv reads the whole tarball (a few hundred MiB at most)
_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
_STATUS = r"^\[GNUPG:\] (\S+)(?: (.*))?$"


class SignatureError(AgentError):
    """The installer's signature is missing, by another key, or bad (one line, exit 1)."""


def pins(settings: EfaSettings) -> str:
    """How the installer is verified, for messages: ``sha256``, ``signature`` or both."""
    found = [name for name, value in (("sha256", settings.sha256), ("signature", settings.gpg_fingerprint))
             if value]
    return " and ".join(found)


def missing_pin(settings: EfaSettings, url: str, name: str) -> str:
    return (
        "neither efa.sha256 nor efa.gpg_fingerprint is set, and the agent never runs an unverified "
        f"installer: set efa.sha256 (`curl -fsSLO {url} && sha256sum {name}`, or AWS's published "
        f"checksum for {settings.version}) or efa.gpg_fingerprint (the fingerprint of AWS's "
        f"{KEY_NAME}, as the EFA user guide publishes it), or both"
    )


def signature_name(tarball: str) -> str:
    return tarball + ".sig"


def _gpg_tool(argv: List[str], what: str, stdin_fd: Optional[int] = None) -> ToolOutput:
    out = run_tool(argv, GPG_TIMEOUT_SECONDS, env=_ENV, stdin_fd=stdin_fd)
    if out is None:
        raise SignatureError(f"cannot run {argv[0]} to {what}: install gnupg2 (AL2023: gnupg2-minimal; "
                             "Debian: gpg and gpgv), or pin efa.sha256 instead")
    if out.returncode is None:
        raise SignatureError(f"{os.path.basename(argv[0])} did not {what} within {GPG_TIMEOUT_SECONDS:g}s")
    return out


def _status(out: ToolOutput) -> List[Tuple[str, str]]:
    found = []
    for line in out.stdout.splitlines():
        match = re.match(_STATUS, line)
        if match:
            found.append((match.group(1), match.group(2) or ""))
    return found


def primary_fingerprints(key: Path, home: Path) -> List[str]:
    """The primary keys' fingerprints in the key file ``key``, without importing it anywhere."""
    out = _gpg_tool([GPG, "--homedir", str(home), "--batch", "--no-tty", "--no-autostart", "--with-colons",
                     "--import-options", "show-only", "--import", str(key)], "read the key")
    found: List[str] = []
    after_pub = False
    for line in out.stdout.splitlines():
        fields = line.split(":")
        if fields[0] == "pub":
            after_pub = True
        elif fields[0] == "fpr" and after_pub and len(fields) > 9:
            found.append(fields[9].upper())
            after_pub = False
    if not out.ok and not found:
        raise SignatureError(f"{key}: not an OpenPGP public key ({out.problem(GPG_TIMEOUT_SECONDS)})")
    return found


def pinned_keyring(key: Path, fingerprint: str, workdir: Path) -> Path:
    """A keyring holding only the key of ``key`` whose primary fingerprint is ``fingerprint``."""
    home = workdir / "gnupg"
    home.mkdir(mode=0o700)
    found = primary_fingerprints(key, home)
    if fingerprint not in found:
        held = ", ".join(found) or "no key"
        raise SignatureError(f"{key}: holds {held}, not the key efa.gpg_fingerprint pins ({fingerprint}); "
                             "nothing executed")
    base = [GPG, "--homedir", str(home), "--batch", "--no-tty", "--no-autostart", "--quiet"]
    imported = _gpg_tool([*base, "--import", str(key)], "import the key")
    if not imported.ok:
        raise SignatureError(f"{key}: cannot import the key: {imported.problem(GPG_TIMEOUT_SECONDS)}")
    keyring = workdir / "pinned.gpg"
    exported = _gpg_tool([*base, "--export-options", "export-minimal", "--output", str(keyring),
                          "--export", fingerprint], "export the pinned key")
    if not exported.ok or not keyring.is_file() or not keyring.stat().st_size:
        raise SignatureError(f"{key}: cannot export the pinned key {fingerprint}: "
                             f"{exported.problem(GPG_TIMEOUT_SECONDS)}")
    return keyring


def verify_signature(data: IO[bytes], signature: Path, key: Path, pinned: str, name: str) -> None:
    """Check ``signature`` over the open file ``data`` (read from its start) with the pinned key only.

    Raises ``SignatureError``; on return the signature is good, by the pinned key.
    """
    fingerprint = gpg_fingerprint(pinned)
    if not signature.is_file():
        raise SignatureError(f"{signature}: no signature for {name} (efa.gpg_fingerprint is set); "
                             "nothing executed")
    workdir = Path(tempfile.mkdtemp(prefix="gpu-node-agent-gpg-"))
    try:
        keyring = pinned_keyring(key, fingerprint, workdir)
        data.seek(0)
        out = _gpg_tool([GPGV, "--keyring", str(keyring), "--status-fd", "1", str(signature), "-"],
                        "check the signature", stdin_fd=data.fileno())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    data.seek(0)
    status = _status(out)
    keywords = {word for word, _ in status}
    for word, why in (("EXPKEYSIG", "by an expired key"), ("REVKEYSIG", "by a revoked key"),
                      ("BADSIG", "bad: the tarball or its signature was altered")):
        if word in keywords:
            raise SignatureError(f"{name}: signature {why} ({fingerprint}); nothing executed")
    valid = [args.split() for word, args in status if word == "VALIDSIG"]
    signers = {fields[-1].upper() if len(fields) >= 10 else fields[0].upper() for fields in valid if fields}
    if not out.ok or "GOODSIG" not in keywords or fingerprint not in signers:
        problem = out.problem(GPG_TIMEOUT_SECONDS) if not out.ok else "no good signature by the pinned key"
        raise SignatureError(f"{name}: signature {signature.name} not verified by {fingerprint}: {problem}; "
                             "nothing executed")
