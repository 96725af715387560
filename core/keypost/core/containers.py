"""Key containers: X.509 v3 certificates that bind a gateway's public key to an address.

CONTRACT (written first so components can be built in parallel): the public names
and signatures below are what the directory, gateway and host use. Bodies marked
`NotImplementedError` are being filled in; keep the signatures stable.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keypost.core.address import Address
from keypost.core.types import DEFAULT_CAPABILITIES, Capability, Purpose, Role

CAKeyType = Literal["ecdsa-p256", "rsa-3072"]
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
CAPrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

DEFAULT_SKEW = dt.timedelta(minutes=5)
DEFAULT_ENCRYPT_LIFETIME = dt.timedelta(hours=24)
DEFAULT_SIGN_LIFETIME = dt.timedelta(days=30)
MIN_LIFETIME = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class GatewayKey:
    """A gateway's public key as registered at the directory (certificate or bare SPKI)."""

    public_key: PublicKey
    certificate: x509.Certificate | None = None
    capabilities: tuple[Capability, ...] = DEFAULT_CAPABILITIES

    @staticmethod
    def from_pem(
        data: bytes, capabilities: Sequence[Capability] = DEFAULT_CAPABILITIES
    ) -> GatewayKey:
        """Load a certificate or SubjectPublicKeyInfo PEM (or DER). Raises ContainerError."""
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        """Lower-case hex SHA-256 of the certificate DER (or of the SPKI DER when bare)."""
        raise NotImplementedError

    @property
    def smime_usable(self) -> bool:
        """True for RSA >= 2048 (the S/MIME engine only does RSA key transport so far)."""
        raise NotImplementedError


@dataclass(frozen=True)
class ContainerInfo:
    """What a container says about itself (parsed; not verified)."""

    addresses: tuple[str, ...]  # from SAN rfc822Name / SmtpUTF8Mailbox, as written
    role: Role | None
    gateway_fingerprint: str | None
    directory_url: str | None
    not_before: dt.datetime
    not_after: dt.datetime
    capabilities: tuple[Capability, ...]
    serial: int
    key_description: str  # e.g. "RSA-2048", "EC P-256"


@dataclass(frozen=True)
class VerificationResult:
    """Outcome of verify_container. `ok` is True only when `reasons` is empty."""

    ok: bool
    reasons: tuple[str, ...] = ()
    info: ContainerInfo | None = None

    def __bool__(self) -> bool:  # a result must be read, not truth-tested by accident
        raise TypeError("use VerificationResult.ok")


@dataclass(frozen=True)
class ContainerRequest:
    address: Address
    purpose: Purpose
    gateway: GatewayKey
    lifetime: dt.timedelta | None = None  # None -> default for the purpose; >= MIN_LIFETIME
    compat_issuer_serial: bool = False  # copy issuer+serial of the gateway's own certificate
    extra: dict[str, str] = field(default_factory=dict)


class DirectoryCA:
    """The directory's CA: holds its key and issues containers."""

    def __init__(
        self, certificate: x509.Certificate, key: CAPrivateKey, directory_url: str = ""
    ) -> None:
        raise NotImplementedError

    @property
    def certificate(self) -> x509.Certificate:
        raise NotImplementedError

    @staticmethod
    def generate(
        key_type: CAKeyType = "ecdsa-p256",
        common_name: str = "keypost directory CA",
        directory_url: str = "",
        validity: dt.timedelta = dt.timedelta(days=3650),
    ) -> DirectoryCA:
        raise NotImplementedError

    @staticmethod
    def load(
        cert_pem: bytes, key_pem: bytes, password: bytes | None = None, directory_url: str = ""
    ) -> DirectoryCA:
        raise NotImplementedError

    def key_pem(self, password: bytes | None = None) -> bytes:
        raise NotImplementedError

    def issue(self, request: ContainerRequest, now: dt.datetime | None = None) -> x509.Certificate:
        """Make an encryption (role proxy-encryption) or signing (proxy-signing) container."""
        raise NotImplementedError


def describe(cert: x509.Certificate) -> ContainerInfo:
    raise NotImplementedError


def verify_container(
    cert: x509.Certificate,
    trust_anchors: Sequence[x509.Certificate],
    address: Address | str,
    purpose: Purpose,
    now: dt.datetime | None = None,
    expected_roles: Sequence[Role] | None = None,
) -> VerificationResult:
    """Chain, validity, key usage/EKU, address, role extension, algorithms. Never raises
    for a bad certificate: the reasons say what is wrong."""
    raise NotImplementedError


# Serialisation helpers -------------------------------------------------------------


def to_pem(cert: x509.Certificate) -> bytes:
    raise NotImplementedError


def to_der(cert: x509.Certificate) -> bytes:
    raise NotImplementedError


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """PEM (one or many), DER, or a PKCS#7 certs-only bundle (DER or PEM). Raises ContainerError."""
    raise NotImplementedError


def pkcs7_bundle(certs: Sequence[x509.Certificate]) -> bytes:
    """A DER PKCS#7 certs-only bundle (for LDAP userSMIMECertificate)."""
    raise NotImplementedError


def sha256_fingerprint(cert: x509.Certificate) -> str:
    """Colon-separated upper-case hex SHA-256 of the DER, as `openssl x509 -fingerprint` prints."""
    raise NotImplementedError
