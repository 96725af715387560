"""gpgsm + dirmngr find the container in the directory over LDAP; what gpgsm encrypts
with it decrypts at the gateway (openssl cms and keypost's own Decryptor)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dir_support import SUFFIX, Directory
from pki_util import key_pem

pytestmark = pytest.mark.skipif(shutil.which("gpgsm") is None, reason="gpgsm not installed")


@pytest.fixture()
def gnupghome(directory: Directory) -> Iterator[Path]:
    # gpg-agent's socket path must stay short: no deep pytest tmp paths here.
    home = Path(tempfile.mkdtemp(prefix="kpg", dir="/tmp"))
    home.chmod(0o700)
    host, port = directory.ldap
    (home / "dirmngr.conf").write_text(f"ldapserver {host}:{port}:::{SUFFIX}\n")
    (home / "gpgsm.conf").write_text("disable-crl-checks\ndisable-policy-checks\n")
    try:
        yield home
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False,
                       capture_output=True, timeout=30)
        shutil.rmtree(home, ignore_errors=True)


def run(home: Path, *argv: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "GNUPGHOME": str(home)}
    return subprocess.run(list(argv), env=env, capture_output=True, timeout=60,
                          check=False, **kw)  # type: ignore[call-overload]


def test_gpgsm_finds_container_and_gateway_decrypts(directory: Directory, gnupghome: Path,
                                                    tmp_path: Path) -> None:
    home = gnupghome
    # the directory CA is the trust anchor (trustlist.txt: fingerprint + S)
    assert run(home, "gpgsm", "--batch", "--import", str(directory.ca_file)).returncode == 0
    listing = run(home, "gpgsm", "--with-colons", "--list-keys").stdout.decode()
    ca_fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))
    (home / "trustlist.txt").write_text(f"{ca_fpr} S\n")

    # gpgsm asks dirmngr, dirmngr asks the directory with (mail=alice@example.com)
    found = run(home, "gpgsm", "--batch", "--list-external-keys", "<alice@example.com>")
    assert found.returncode == 0, found.stderr.decode()
    assert b"alice@example.com" in found.stdout and b"keyEncipherment" in found.stdout

    # fetch it through dirmngr as a client would, import, encrypt to the address
    der = tmp_path / "alice.der"
    fetched = run(home, "gpg-connect-agent", "--dirmngr", f"/datafile {der}",
                  "LOOKUP --single <alice@example.com>", "/bye")
    assert fetched.returncode == 0 and der.stat().st_size > 0, fetched.stdout
    assert run(home, "gpgsm", "--batch", "--import", str(der)).returncode == 0
    message = b"Content-Type: text/plain\r\n\r\nfor the gateway's eyes\r\n"
    plain = tmp_path / "msg"
    plain.write_bytes(message)
    out = tmp_path / "msg.p7m"
    enc = run(home, "gpgsm", "--batch", "--encrypt", "-r", "alice@example.com", "-o", str(out),
              str(plain))
    assert enc.returncode == 0, enc.stderr.decode()

    key_file = tmp_path / "gw.key"
    key_file.write_bytes(key_pem(directory.gateway_key))
    dec = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(out),
                          "-inkey", str(key_file)], capture_output=True, timeout=30)
    assert dec.returncode == 0 and dec.stdout == message, dec.stderr

    from keypost.core.smime import Decryptor

    content, index, _algorithm = Decryptor([directory.gateway_key]).decrypt_der(
        out.read_bytes())
    assert content.replace(b"\r\n", b"\n") == message.replace(b"\r\n", b"\n") and index == 0
