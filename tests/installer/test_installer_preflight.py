"""The checks `keypost install thunderbird` runs before writing: each refusal is one line."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from keypost.core.address import parse_address
from keypost.core.containers import (
    ContainerRequest,
    DirectoryCA,
    GatewayKey,
    Purpose,
    sha256_fingerprint,
    to_pem,
)
from keypost.installer import preflight
from keypost.installer.errors import InstallError

FP = "AB" * 32


@pytest.mark.parametrize(
    "text", [FP, FP.lower(), ":".join(FP[i : i + 2] for i in range(0, 64, 2)), " " + FP]
)
def test_fingerprints_are_read_as_the_host_reads_them(text: str) -> None:
    assert preflight.normalize_fingerprint(text) == ":".join(["AB"] * 32)


@pytest.mark.parametrize("text", ["", "AB:CD", FP + "AB", "G" * 64, FP[:-1]])
def test_anything_else_is_no_fingerprint(text: str) -> None:
    with pytest.raises(InstallError, match="64 hex digits"):
        preflight.normalize_fingerprint(text)


def test_trust_anchor_file_checks(tmp_path: Path) -> None:
    ca = DirectoryCA.generate()
    pem = tmp_path / "ca.pem"
    pem.write_bytes(to_pem(ca.certificate))
    der = tmp_path / "ca.der"
    der.write_bytes(ca.certificate.public_bytes(Encoding.DER))
    fp = sha256_fingerprint(ca.certificate)
    assert preflight.trust_anchor_pem(der, fp.lower()) == to_pem(ca.certificate).decode()
    with pytest.raises(InstallError, match=f"has the fingerprint {fp}, not the one given"):
        preflight.trust_anchor_pem(pem, FP)
    two = tmp_path / "two.pem"
    two.write_bytes(to_pem(ca.certificate) * 2)
    with pytest.raises(InstallError, match="one certificate expected, found 2"):
        preflight.trust_anchor_pem(two, None)
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(InstallError, match=r"trust anchor .*junk\.pem"):
        preflight.trust_anchor_pem(junk, None)


def test_a_leaf_certificate_is_no_trust_anchor(tmp_path: Path) -> None:
    ca = DirectoryCA.generate()
    key = rsa.generate_private_key(65537, 2048).public_key()
    leaf = ca.issue(ContainerRequest(
        parse_address("bob@example.org"), Purpose.ENCRYPT,
        GatewayKey.from_pem(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))))
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    path = tmp_path / "leaf.pem"
    path.write_bytes(to_pem(leaf))
    with pytest.raises(InstallError, match="is not a CA certificate"):
        preflight.trust_anchor_pem(path, None)


def _status(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"trust_anchor": None, "keyring_backend": "keyring.backends.X",
                            "password_in_keyring": False}
    return {**base, **kw}


def test_host_status_checks() -> None:
    preflight.check_host(_status(), anchor_given=True, fingerprint=None, username="alice",
                         keyring_needed=True)
    with pytest.raises(InstallError, match="--trust-anchor is needed"):
        preflight.check_host(_status(), anchor_given=False, fingerprint=None, username=None,
                             keyring_needed=False)
    kept = _status(trust_anchor={"fingerprint": ":".join(["CD"] * 32)})
    preflight.check_host(kept, anchor_given=False, fingerprint="cd" * 32, username=None,
                         keyring_needed=False)
    with pytest.raises(InstallError, match="configured trust anchor has the fingerprint CD:"):
        preflight.check_host(kept, anchor_given=False, fingerprint=FP, username=None,
                             keyring_needed=False)
    for broken in (_status(keyring_backend=preflight.NO_KEYRING),
                   _status(password_in_keyring=None)):
        preflight.check_host(broken, anchor_given=True, fingerprint=None, username="alice",
                             keyring_needed=False)
        with pytest.raises(InstallError, match="no usable OS keyring for alice's password"):
            preflight.check_host(broken, anchor_given=True, fingerprint=None,
                                 username="alice", keyring_needed=True)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://dir.example.com", "must be ldaps://, ldap:// or https://"),
        ("ldaps:///dc=keypost", "must be ldaps://, ldap:// or https://"),
        ("http://dir.example.com", "only accepted for loopback"),
        ("ldaps://dir.example.com:99999", "invalid directory URL"),
        ("ldaps://dir.example.com:0", "port is not a number from 1 to 65535"),
        ("ldap://::1/dc=keypost", r"\[brackets\]"),
        # refused before any connection: it would go into the host's configuration
        ("ldaps://alice@nonexistent.invalid", "must not hold a user name or password"),
        ("ldaps://nonexistent.invalid", "nonexistent.invalid:636 cannot be reached"),
    ],
)
def test_directory_urls_refused_before_writing(url: str, message: str) -> None:
    with pytest.raises(InstallError, match=message):
        preflight.check_reachable(url, timeout=5)


def test_a_password_in_the_url_is_never_echoed() -> None:
    for url in ("ldaps://alice:s3cret", "ldaps://alice:s3cret/dc=keypost"):
        with pytest.raises(InstallError) as err:
            preflight.check_reachable(url, timeout=5)
        assert "s3cret" not in str(err.value), url


def test_a_listening_directory_port_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        preflight.check_reachable(f"ldap://127.0.0.1:{port}/dc=keypost")
        preflight.check_reachable(f"http://localhost:{port}")
    # Through a proxy only the proxy is reached: a direct connection would prove nothing.
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    preflight.check_reachable("https://nonexistent.invalid")
