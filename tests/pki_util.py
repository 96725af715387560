"""Test certificates in their usual shapes: a test CA, what it issues, self-signed leaves.

Tests that craft an unusual certificate on purpose (a missing extension, an odd validity,
an issuer without its key) build it themselves: the oddity is the point of the test.
Named *_util like proc_util, so pytest does not collect it; and `make_ca`, not `test_ca`,
so a test module importing it does not gain a test of that name.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
KeyCert = tuple[PrivateKey, x509.Certificate]  # a CA as the issuing functions take it

# Valid from an hour ago: a server whose clock is a little behind still accepts it.
BACKDATE = dt.timedelta(hours=1)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def name(common_name: str, email: str | None = None) -> x509.Name:
    """CN=common_name, with an emailAddress attribute when `email` is given."""
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if email is not None:
        attributes.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    return x509.Name(attributes)


def key_pem(key: PrivateKey) -> bytes:
    """The private key as unencrypted PKCS#8 PEM (what servers load with --tls-key)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def secret_values(key: PrivateKey) -> list[bytes]:
    """The numbers only the key's holder knows, big-endian: what a leak would have to hold.

    Tests look for these rather than for lines of the key's PEM: PKCS#8 carries the public
    modulus too, and a certificate of the same key can happen to share a base64 line."""
    def raw(n: int) -> bytes:
        return n.to_bytes((n.bit_length() + 7) // 8, "big")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return [raw(key.private_numbers().private_value)]
    n = key.private_numbers()
    return [raw(v) for v in (n.d, n.p, n.q, n.dmp1, n.dmq1, n.iqmp)]


def holds_secret(blob: bytes, key: PrivateKey) -> bool:
    """True when `blob` holds one of the key's secret numbers, raw or in base64 at any of
    the three byte alignments (the last, partial group of four is left out), also when
    broken into lines as in PEM."""
    flat = b"".join(blob.split())
    for secret in secret_values(key):
        if secret in blob:
            return True
        for shift in range(3):
            if base64.b64encode(secret[shift:])[:-4] in flat:
                return True
    return False


def _builder(subject: x509.Name, issuer: x509.Name, key: PrivateKey, days: float,
             until: dt.datetime | None = None) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    end = now + dt.timedelta(days=days)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(end if until is None else min(end, until)))


def _issue(ca: KeyCert, subject: x509.Name, key: PrivateKey, days: float,
           extensions: Sequence[tuple[x509.ExtensionType, bool]]) -> x509.Certificate:
    """A certificate from `ca` that ends no later than the CA (a path that outlives its
    root is a different test)."""
    ca_key, ca_cert = ca
    builder = _builder(subject, ca_cert.subject, key, days, ca_cert.not_valid_after_utc)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
    return builder.sign(ca_key, hashes.SHA256())


def make_ca(common_name: str, key: PrivateKey | None = None, *, days: float = 30) -> KeyCert:
    """A self-signed root: cA, keyCertSign + cRLSign, a subject key identifier."""
    key = key or ec_key()
    subject = name(common_name)
    cert = (
        _builder(subject, subject, key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def server_cert(ca: KeyCert, hosts: Sequence[str] = ("127.0.0.1", "localhost"),
                key: PrivateKey | None = None, *, days: float = 2) -> KeyCert:
    """A TLS server certificate for `hosts` (IP addresses and DNS names; CN the first)."""
    key = key or ec_key()
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return key, _issue(ca, name(hosts[0]), key, days, [
        (x509.SubjectAlternativeName(names), False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
    ])


def email_cert(ca: KeyCert, address: str, key: rsa.RSAPrivateKey | None = None, *,
               days: float = 30, ski: bool = False) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A genuine S/MIME certificate for `address` (RSA: what S/MIME encrypts to); `ski`:
    with a subjectKeyIdentifier, which `openssl cms -encrypt -keyid` needs."""
    key = key or rsa_key()
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(True, False, True, False, False, False, False, False, False), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False),
        (x509.SubjectAlternativeName([x509.RFC822Name(address)]), False),
    ]
    if ski:
        extensions.append((x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False))
    return key, _issue(ca, name(address, address), key, days, extensions)


def self_signed(key: PrivateKey, common_name: str, email: str | None = None, *,
                days: float = 30) -> x509.Certificate:
    """A plain self-signed leaf (no extensions but an rfc822Name for `email`): a gateway's
    key as a certificate, or a stand-in certificate for an address."""
    subject = name(common_name)
    builder = _builder(subject, subject, key, days)
    if email is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    return builder.sign(key, hashes.SHA256())
