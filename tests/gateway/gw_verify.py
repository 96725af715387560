"""Signatures checked by real verifiers: `openssl cms -verify` and `gpgsm --verify`."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes


def openssl_verify(message: bytes, ca: Path, tmp: Path,
                   *extra: str) -> subprocess.CompletedProcess[bytes]:
    """`openssl cms -verify` of a signed message against the CA `ca` (`extra`: more
    options, e.g. `-signer FILE` to write out the signer's certificate)."""
    (tmp / "signed.eml").write_bytes(message)
    return subprocess.run(
        ["openssl", "cms", "-verify", "-in", str(tmp / "signed.eml"), "-CAfile", str(ca),
         *extra],
        capture_output=True, timeout=60, check=False,
    )


def gpgsm_verify(message: bytes, ca: Path, tmp: Path) -> subprocess.CompletedProcess[bytes]:
    """The detached signature of a multipart/signed message (CRLF) checked by gpgsm, with
    the directory CA `ca` as its one trusted root, in a GNUPGHOME of its own below `tmp`."""
    boundary = message.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    parts = message.split(b"--" + boundary)
    signed = parts[1][2:-2]  # between the CRLF after the delimiter and the CRLF before the next
    sig_b64 = parts[2].split(b"\r\n\r\n", 1)[1]
    (tmp / "content").write_bytes(signed)
    (tmp / "sig").write_bytes(base64.b64decode(b"".join(sig_b64.split())))
    home = tmp / "gnupg"
    home.mkdir(mode=0o700)
    (home / "gpgsm.conf").write_text("disable-crl-checks\ndisable-policy-checks\n")
    env = {"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"}
    fpr = x509.load_pem_x509_certificate(ca.read_bytes()).fingerprint(hashes.SHA1())
    (home / "trustlist.txt").write_text(f"{fpr.hex(':').upper()} S relax\n")
    subprocess.run(["gpgsm", "--batch", "--import", str(ca)], env=env,
                   capture_output=True, timeout=60, check=True)
    try:
        return subprocess.run(
            ["gpgsm", "--batch", "--verify", str(tmp / "sig"), str(tmp / "content")],
            env=env, capture_output=True, timeout=60, check=False,
        )
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True, check=False)
