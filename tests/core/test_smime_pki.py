"""Test PKI for the S/MIME tests: a directory CA, a gateway with a current and a retired
RSA key, and containers whose issuer+serial differ from the gateway's own certificate.

Imported by test_smime.py and test_smime_interop.py; its own tests check the property the
engine's decryption depends on."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from pki_util import ec_key, key_pem, self_signed

from keypost.core.address import parse_address
from keypost.core.containers import ContainerRequest, DirectoryCA, GatewayKey
from keypost.core.types import DEFAULT_CAPABILITIES, Capability, Purpose


@dataclass(frozen=True)
class Gateway:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    cert: x509.Certificate  # the gateway's own certificate (its own internal CA)

    def gateway_key(self, caps: tuple[Capability, ...] = DEFAULT_CAPABILITIES) -> GatewayKey:
        return GatewayKey(self.key.public_key(), self.cert, caps)

    def key_pem(self) -> bytes:
        return key_pem(self.key)


def _gateway_cert(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, name: str
) -> x509.Certificate:
    """Self-issued by a "gateway internal CA" name with its own serial: never the
    container's issuer+serial."""
    now = dt.datetime.now(dt.UTC)
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} internal CA")])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )


@cache
def directory_ca() -> DirectoryCA:
    return DirectoryCA.generate(directory_url="https://keys.example.org")


@cache
def gateway(name: str = "gw.b.example") -> Gateway:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Gateway(key, _gateway_cert(key, name))


EC_CURVES = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}


@cache
def ec_gateway(curve: str = "P-256", name: str = "gw-ec.b.example") -> Gateway:
    """A gateway whose encryption key is EC (ECDH key agreement, RFC 5753)."""
    key = ec.generate_private_key(EC_CURVES[curve])
    return Gateway(key, _gateway_cert(key, name))


def container(
    address: str,
    gw: Gateway,
    purpose: Purpose = Purpose.ENCRYPT,
    caps: tuple[Capability, ...] = DEFAULT_CAPABILITIES,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    request = ContainerRequest(parse_address(address), purpose, gw.gateway_key(caps))
    return directory_ca().issue(request, now=now)


def ec_certificate() -> x509.Certificate:
    return self_signed(ec_key(), "ec recipient")


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def test_container_names_a_different_issuer_and_serial_than_the_gateway_cert() -> None:
    gw = gateway()
    cont = container("bob@b.example", gw)
    assert cont.public_key() == gw.key.public_key()
    assert (cont.issuer, cont.serial_number) != (gw.cert.issuer, gw.cert.serial_number)
    assert cont.issuer == directory_ca().certificate.subject
