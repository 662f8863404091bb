"""EFA installer pinned by its signing key: real GnuPG keys and detached signatures made here, served
like AWS serves them (``aws-efa-installer-<v>.tar.gz.sig`` and ``aws-efa-installer.key`` beside the
tarball), checked with the real gpgv. Refused: a key other than the pin, a key file that smuggles a
second signer, a tampered tarball, a missing signature; in each case nothing is cached or executed.
"""

import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from agent.base.noderoot import NodeRoot
from agent.cli import main
from agent.config.settings import EfaSettings
from agent.efa import cache, download
from agent.efa.download import DownloadOptions
from agent.efa.signature import SignatureError
from tests.support.efa_helpers import (
    VERSION,
    InstallerServer,
    converged_node,
    installer_script,
    installer_tarball,
    sha256,
)
from tests.support.paths import which

pytestmark = pytest.mark.usefixtures("units_serving")  # containerd and kubelet as on a healthy node
TARBALL = f"/aws-efa-installer-{VERSION}.tar.gz"
FAST = download.DownloadPolicy(attempts=2, connect_timeout=2.0, read_timeout=2.0, chunk_size=64 * 1024)


class Signer:
    """A GnuPG key made for the test (ed25519, no passphrase) in its own home directory."""

    def __init__(self, home: Path, name: str) -> None:
        self.home = home
        home.mkdir(mode=0o700)
        self.gpg("--passphrase", "", "--quick-gen-key", f"{name} <{name}@efa.test>", "ed25519", "sign", "never")
        colons = self.gpg("--with-colons", "--list-keys").stdout.decode()
        self.fingerprint = next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))

    def gpg(self, *args: str, stdin: bytes = b"") -> "subprocess.CompletedProcess[bytes]":
        return subprocess.run([which("gpg"), "--homedir", str(self.home), "--batch", "--pinentry-mode",
                               "loopback", *args], input=stdin, capture_output=True, check=True)

    def public_key(self) -> bytes:
        return self.gpg("--armor", "--export", self.fingerprint).stdout

    def sign(self, data: bytes) -> bytes:
        return self.gpg("--detach-sign", "--local-user", self.fingerprint, "--output", "-", stdin=data).stdout

    def close(self) -> None:  # the gpg-agent that signing started
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], check=False)


@pytest.fixture(scope="module")
def keys() -> Iterator[Dict[str, Signer]]:
    which("gpgv")
    with tempfile.TemporaryDirectory(prefix="gna-gpg-") as tmp:
        made = {name: Signer(Path(tmp) / name, name) for name in ("aws", "attacker")}
        try:
            yield made
        finally:
            for signer in made.values():
                signer.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return converged_node(tmp_path / "node")


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "installer-runs.log"


@pytest.fixture
def tarball(root: Path, runs: Path) -> bytes:
    return installer_tarball(installer_script(root, runs))


def serve(server: InstallerServer, tarball: bytes, signature: bytes, key: bytes) -> InstallerServer:
    server.files.update({TARBALL: tarball, TARBALL + ".sig": signature, "/aws-efa-installer.key": key})
    return server


def cached(root: Path) -> List[str]:
    d = root / "var/cache/gpu-node-agent"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def fetch(root: Path, settings: EfaSettings) -> Path:
    return cache.fetch(settings, NodeRoot(str(root)),
                       DownloadOptions(policy=FAST, sleep=lambda s: None, rand=lambda: 1.0))


def test_signed_by_the_pinned_key_is_fetched_and_cached_with_its_signature(
    root: Path, tarball: bytes, keys: Dict[str, Signer]
) -> None:
    aws = keys["aws"]
    with serve(InstallerServer(), tarball, aws.sign(tarball), aws.public_key()) as server:
        # written as gpg prints it: groups of four, lower case
        spaced = " ".join(aws.fingerprint[i:i + 4] for i in range(0, 40, 4)).lower()
        settings = EfaSettings(base_url=server.base_url, gpg_fingerprint=spaced)
        assert fetch(root, settings).read_bytes() == tarball
        assert cached(root) == sorted([TARBALL[1:], TARBALL[1:] + ".sig", "aws-efa-installer.key"])
        server.stop()
        assert fetch(root, settings).read_bytes() == tarball  # from the cache: verified again, no network
    assert sorted(r.path for r in server.gets()) == sorted(["/aws-efa-installer.key", TARBALL, TARBALL + ".sig"])


def test_both_pins_are_checked(root: Path, tarball: bytes, keys: Dict[str, Signer]) -> None:
    aws = keys["aws"]
    with serve(InstallerServer(), tarball, aws.sign(tarball), aws.public_key()) as server:
        good = EfaSettings(base_url=server.base_url, gpg_fingerprint=aws.fingerprint, sha256=sha256(tarball))
        assert fetch(root, good).read_bytes() == tarball
        wrong_sha = good._replace(sha256="0" * 64)
        with pytest.raises(download.ChecksumMismatch, match="not efa.sha256"):
            fetch(root, wrong_sha)
    assert TARBALL[1:] not in cached(root)


def test_a_key_other_than_the_pin_is_refused(root: Path, tarball: bytes, keys: Dict[str, Signer]) -> None:
    aws, attacker = keys["aws"], keys["attacker"]
    # a mirror that re-signed the tarball and serves its own key
    with serve(InstallerServer(), tarball, attacker.sign(tarball), attacker.public_key()) as server:
        with pytest.raises(SignatureError) as caught:
            fetch(root, EfaSettings(base_url=server.base_url, gpg_fingerprint=aws.fingerprint))
    message = str(caught.value)
    assert f"holds {attacker.fingerprint}, not the key efa.gpg_fingerprint pins ({aws.fingerprint})" in message
    assert message.endswith("nothing executed") and "\n" not in message
    assert TARBALL[1:] not in cached(root)


def test_a_second_key_in_the_key_file_cannot_sign(root: Path, tarball: bytes, keys: Dict[str, Signer]) -> None:
    aws, attacker = keys["aws"], keys["attacker"]
    both = aws.public_key() + attacker.public_key()  # the pinned key is there, but it did not sign
    with serve(InstallerServer(), tarball, attacker.sign(tarball), both) as server:
        with pytest.raises(SignatureError, match=f"not verified by {aws.fingerprint}"):
            fetch(root, EfaSettings(base_url=server.base_url, gpg_fingerprint=aws.fingerprint))
    assert TARBALL[1:] not in cached(root)


def test_a_tampered_tarball_is_refused(root: Path, tarball: bytes, runs: Path, keys: Dict[str, Signer]) -> None:
    aws = keys["aws"]
    tampered = installer_tarball(installer_script(root, runs) + "echo tampered\n")
    with serve(InstallerServer(), tampered, aws.sign(tarball), aws.public_key()) as server:
        with pytest.raises(SignatureError, match="signature bad: the tarball or its signature was altered"):
            fetch(root, EfaSettings(base_url=server.base_url, gpg_fingerprint=aws.fingerprint))
    assert TARBALL[1:] not in cached(root)


def test_a_missing_signature_is_refused(root: Path, tarball: bytes, keys: Dict[str, Signer]) -> None:
    aws = keys["aws"]
    with InstallerServer({TARBALL: tarball, "/aws-efa-installer.key": aws.public_key()}) as server:
        with pytest.raises(SignatureError) as caught:
            fetch(root, EfaSettings(base_url=server.base_url, gpg_fingerprint=aws.fingerprint))
        assert f"{TARBALL}.sig: HTTP 404" in str(caught.value)
        assert [r.path for r in server.gets()] == [TARBALL + ".sig"]  # the tarball is never fetched
    assert TARBALL[1:] not in cached(root)


def test_a_cached_tarball_altered_after_the_bake_is_never_extracted(
    tmp_path: Path, root: Path, tarball: bytes, runs: Path, keys: Dict[str, Signer],
    capsys: pytest.CaptureFixture[str]
) -> None:
    aws = keys["aws"]
    with serve(InstallerServer(), tarball, aws.sign(tarball), aws.public_key()) as server:
        config = tmp_path / "config.yaml"
        config.write_text(f"report:\n  publish: false\nefa:\n  base_url: {server.base_url}\n"
                          f"  gpg_fingerprint: {aws.fingerprint}\n")
        base = ["--root", str(root), "--config", str(config), "--log-format", "json"]
        assert main([*base, "efa", "fetch"]) == 0
        assert capsys.readouterr().out.endswith(f"aws-efa-installer {VERSION}, signature verified\n")
    # the server is gone (a node booted offline from the image); the cached copy is altered
    cache = root / "var/cache/gpu-node-agent" / TARBALL[1:]
    cache.write_bytes(installer_tarball(installer_script(root, runs) + "echo altered\n"))
    assert main([*base, "run"]) == 1
    captured = capsys.readouterr()
    assert re.search(r"^efa +fail ", captured.out, re.MULTILINE)
    assert not runs.exists()  # the installer never ran
    errors = [json.loads(line).get("error", "") for line in captured.err.splitlines() if line.startswith("{")]
    assert any("failed signature verification" in e for e in errors), errors


def test_signed_install_end_to_end(tmp_path: Path, root: Path, tarball: bytes, runs: Path,
                                   keys: Dict[str, Signer], capsys: pytest.CaptureFixture[str]) -> None:
    aws = keys["aws"]
    with serve(InstallerServer(), tarball, aws.sign(tarball), aws.public_key()) as server:
        config = tmp_path / "config.yaml"
        config.write_text(f"report:\n  publish: false\nefa:\n  base_url: {server.base_url}\n"
                          f"  gpg_fingerprint: {aws.fingerprint}\n")
        base = ["--root", str(root), "--config", str(config)]
        assert main([*base, "plan"]) == 0
        assert f"signed by {aws.fingerprint}" in capsys.readouterr().out
        assert main([*base, "run"]) == 0
    assert f"action: EFA userspace {VERSION} installed" in capsys.readouterr().out
    assert len(runs.read_text().splitlines()) == 1


def test_a_signature_by_a_signing_subkey_of_the_pinned_key_is_good(
    root: Path, tarball: bytes, tmp_path: Path
) -> None:
    """AWS may sign with a subkey: the pin is the primary key's fingerprint, which VALIDSIG gives in
    its last field (its first field is the subkey's)."""
    with tempfile.TemporaryDirectory(prefix="gna-gpg-") as tmp:
        signer = Signer(Path(tmp) / "aws", "aws")
        try:
            signer.gpg("--passphrase", "", "--quick-add-key", signer.fingerprint, "ed25519", "sign", "never")
            colons = signer.gpg("--with-colons", "--list-keys").stdout.decode().splitlines()
            fprs = [line.split(":")[9] for line in colons if line.startswith("fpr:")]
            subkey = fprs[-1]
            assert subkey != signer.fingerprint
            signature = signer.gpg("--detach-sign", "--local-user", subkey + "!", "--output", "-",
                                   stdin=tarball).stdout
            with serve(InstallerServer(), tarball, signature, signer.public_key()) as server:
                settings = EfaSettings(base_url=server.base_url, gpg_fingerprint=signer.fingerprint)
                assert fetch(root, settings).read_bytes() == tarball
        finally:
            signer.close()
