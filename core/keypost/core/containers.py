"""Key containers: X.509 v3 certificates that bind a gateway's public key to an address.

The container profile (see README, section core-containers):
  subject         CN=<address> (when <= 64 UTF-8 octets) and, for ASCII addresses,
                  emailAddress=<address>: gpgsm and older Outlook/gateway code match on
                  the subject's emailAddress; Thunderbird and modern Outlook use the SAN.
  SAN             rfc822Name (ASCII local part, lower-case A-label domain) or, for a
                  non-ASCII local part, otherName SmtpUTF8Mailbox (RFC 8398/9598,
                  UTF8String, domain as U-labels); critical only if the subject is empty.
  keyUsage        keyEncipherment (RSA) / keyAgreement (EC) to encrypt; digitalSignature
                  to sign (critical).  extendedKeyUsage: emailProtection only.
  basicConstraints CA=false (critical).  SKI = SKI of the gateway key (identical in every
                  container of one key); AKI = the directory CA's key identifier.
  noRevAvail      RFC 9608: short life instead of revocation.
  SMIMECapabilities from the gateway's preferences; keypost extension (x509_ext): role,
                  SHA-256 of the gateway certificate/SPKI, directory URL.
  validity        now - skew (5 min, settable) .. now + lifetime (24 h encrypt, 30 days
                  sign, >= 5 min).
  serial          random, 159 bits.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keypost.core import x509_checks as checks
from keypost.core.address import Address, parse_address, u_labels
from keypost.core.derived import derived_public_key
from keypost.core.dirurl import DirectoryUrlError, parse_directory_url
from keypost.core.errors import AddressError, ContainerError
from keypost.core.types import DEFAULT_CAPABILITIES, Capability, Purpose, Role
from keypost.core.x509_ext import (
    NULL_DER,
    OID_KEYPOST_CONTAINER,
    OID_NO_REV_AVAIL,
    OID_SMIME_CAPABILITIES,
    OID_SMTP_UTF8_MAILBOX,
    TAG_SEQUENCE,
    KeypostExtension,
    decode_smime_capabilities,
    decode_smtp_utf8_mailbox,
    der_tlv,
    encode_smime_capabilities,
    rfc822_name_der,
    smtp_utf8_mailbox_der,
    spki_algorithm,
)

CAKeyType = Literal["ecdsa-p256", "rsa-3072"]
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
CAPrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

DEFAULT_SKEW = dt.timedelta(minutes=5)
MAX_CA_VALIDITY = dt.timedelta(days=100 * 366)
MAX_SKEW = dt.timedelta(hours=1)  # more would hand out containers valid long before issue
DEFAULT_ENCRYPT_LIFETIME = dt.timedelta(hours=24)
DEFAULT_SIGN_LIFETIME = dt.timedelta(days=30)
MIN_LIFETIME = dt.timedelta(minutes=5)
MAX_CN = 64  # ub-common-name (RFC 5280); cryptography counts it in UTF-8 octets
_CACHE_SIZE = 4096  # addresses / gateway keys whose constant certificate parts are kept

_ROLE_FOR_PURPOSE = {Purpose.ENCRYPT: Role.PROXY_ENCRYPTION, Purpose.SIGN: Role.PROXY_SIGNING}
_SHA256 = hashes.SHA256()


def default_lifetime(purpose: Purpose) -> dt.timedelta:
    return DEFAULT_SIGN_LIFETIME if purpose is Purpose.SIGN else DEFAULT_ENCRYPT_LIFETIME


def format_duration(delta: dt.timedelta) -> str:
    """A duration as people say it: "2 d 3 h", "23 h 59 min", "5 min", "40 s"."""
    secs = int(abs(delta.total_seconds()))
    days, rest = divmod(secs, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min" if minutes else f"{secs} s"


def _utcnow(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=dt.UTC)


OID_RSASSA_PSS = "1.2.840.113549.1.1.10"


def _pem_body(data: bytes, label: bytes) -> bytes:
    """The DER inside the first PEM block with `label` (already read by cryptography, so
    well-formed)."""
    begin = b"-----BEGIN " + label + b"-----"
    start = data.index(begin) + len(begin)
    return base64.b64decode(data[start : data.index(b"-----END " + label + b"-----", start)])


def _check_public_key(key: object) -> PublicKey:
    problem = checks.key_problem(key, "gateway")
    if problem:
        raise ContainerError(problem)
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return key


@dataclass(frozen=True)
class GatewayKey:
    """A gateway's public key as registered at the directory (certificate or bare SPKI)."""

    public_key: PublicKey
    certificate: x509.Certificate | None = None
    capabilities: tuple[Capability, ...] = DEFAULT_CAPABILITIES
    # Encryption containers carry the per-address derived key P_A (keypost.core.derived)
    # instead of this key itself: EC P-256/384/521 only. Signing containers never do.
    derived: bool = False

    def __post_init__(self) -> None:
        if self.derived:
            problem = checks.smime_key_problem(self.public_key, "the gateway key")
            if not isinstance(self.public_key, ec.EllipticCurvePublicKey) or problem:
                raise ContainerError("derived keys need an EC gateway key on P-256, P-384 "
                                     "or P-521")

    @staticmethod
    def from_pem(
        data: bytes, capabilities: Sequence[Capability] = DEFAULT_CAPABILITIES,
        derived: bool = False,
    ) -> GatewayKey:
        """Load a certificate or SubjectPublicKeyInfo PEM (or DER). Raises ContainerError."""
        cert: x509.Certificate | None = None
        key: object
        spki = b""
        try:
            if b"-----BEGIN CERTIFICATE-----" in data:
                cert = x509.load_pem_x509_certificate(data)
                key = cert.public_key()
            elif b"-----BEGIN PUBLIC KEY-----" in data:
                key = serialization.load_pem_public_key(data)
                spki = _pem_body(data, b"PUBLIC KEY")
            elif b"-----BEGIN" in data:
                raise ContainerError("expected a certificate or public key PEM (not a private key)")
            else:
                try:
                    cert = x509.load_der_x509_certificate(data)
                    key = cert.public_key()
                except checks.PARSE_ERRORS:
                    key = serialization.load_der_public_key(data)
                    spki = data
            algorithm = (
                cert.public_key_algorithm_oid.dotted_string if cert else spki_algorithm(spki)
            )
        except checks.PARSE_ERRORS as exc:
            raise ContainerError("unreadable gateway certificate or public key") from exc
        if algorithm == OID_RSASSA_PSS:
            # cryptography loads it as a plain RSA key and the container would announce it as
            # rsaEncryption, lifting the owner's restriction to PSS signatures (RFC 4055 1.2):
            # key transport and our PKCS#1 v1.5 signatures are not allowed with it.
            raise ContainerError(
                "gateway key is restricted to RSASSA-PSS signatures (id-RSASSA-PSS); "
                "an rsaEncryption or EC key is needed"
            )
        return GatewayKey(_check_public_key(key), cert, tuple(capabilities), derived)

    @cached_property
    def fingerprint(self) -> str:
        """Lower-case hex SHA-256 of the certificate DER (or of the SPKI DER when bare)."""
        return self.fingerprint_bytes.hex()

    @cached_property
    def fingerprint_bytes(self) -> bytes:
        if self.certificate is not None:
            der = self.certificate.public_bytes(serialization.Encoding.DER)
        else:
            der = self.public_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return hashlib.sha256(der).digest()

    @cached_property
    def ski(self) -> x509.SubjectKeyIdentifier:
        """RFC 5280 method-1 key identifier: the same in every container of this key."""
        return x509.SubjectKeyIdentifier.from_public_key(self.public_key)

    @property
    def smime_usable(self) -> bool:
        """Can the S/MIME engine encrypt to it? RSA >= 2048 (key transport) and EC on
        P-256, P-384 or P-521 (ECDH key agreement); a P-224 or other curve's key is
        accepted as a gateway key but not."""
        return checks.smime_key_problem(self.public_key, "the gateway key") is None


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
    # Copy issuer+serial of the gateway's own certificate, for gateways that pick their
    # private key by the RecipientInfo's issuer+serial. Trade-off: the container's
    # (issuer, serial) pair is no longer unique as RFC 5280 4.1.2.2 requires: every
    # container of the gateway and the gateway's own certificate share it, and the issuer
    # name is not the directory CA's, so name-based path building (openssl verify,
    # Thunderbird) cannot find the signer. verify_container accepts such a container
    # through its authority key identifier. Off by default.
    compat_issuer_serial: bool = False
    extra: dict[str, str] = field(default_factory=dict)
    # Whose memo the address's constant parts (subject, SAN, a derived key P_A) are kept
    # in: a directory issuing to several requestors names the requestor, so that an issue
    # costs one requestor no less for another's earlier issue for that address (the time
    # would tell that someone had looked the address up: ~87 us for a derived key). None:
    # kept nowhere.
    memo_scope: str | None = ""


def _raw_extension(oid: x509.ObjectIdentifier, der: bytes) -> x509.Extension[x509.ExtensionType]:
    """A non-critical extension whose DER value we encode ourselves."""
    return x509.Extension(oid, False, x509.UnrecognizedExtension(oid, der))


def _display_address(address: Address) -> str:
    """The address as certificates write it: A-labels with an ASCII local part (rfc822Name),
    U-labels with a UTF-8 local part (SmtpUTF8Mailbox, RFC 8398 section 3)."""
    if address.ascii_local:
        return str(address)
    return f"{address.local}@{u_labels(address.domain)}"


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _address_parts(address: Address, scope: str = ""
                   ) -> tuple[x509.Name, x509.Extension[x509.ExtensionType]]:
    """Subject and SAN for an address. Cached per `scope` (ContainerRequest.memo_scope):
    x509.Name and cryptography's RFC822Name validation cost more than the rest of issuing
    put together (see bench/bench_issue.py); the SAN is DER-encoded here (its value is
    already validated by parse_address)."""
    display = _display_address(address)
    attrs: list[x509.NameAttribute[str]] = []
    if len(display.encode("utf-8")) <= MAX_CN:  # octets: 64 characters may be 256 of them
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, display))
    if address.ascii_local:
        attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, display))
    subject = x509.Name(attrs)
    name = rfc822_name_der(display) if address.ascii_local else smtp_utf8_mailbox_der(display)
    san_oid = x509.SubjectAlternativeName.oid
    san = x509.Extension(
        san_oid,
        not attrs,  # RFC 5280 4.2.1.6: critical when the subject is empty
        x509.UnrecognizedExtension(san_oid, der_tlv(TAG_SEQUENCE, name)),
    )
    return subject, san


def check_directory_url(url: str) -> None:
    """Refuse a directory URL no client could use: it goes into every container's keypost
    extension (an IA5String), so a typo would be published with each one.

    The rules of keypost.core.dirurl, http:// to any host included: this URL is published,
    not sent a password, and a client refuses plain HTTP to a host that is not loopback.
    """
    try:
        parse_directory_url(url, http_anywhere=True)
    except DirectoryUrlError as exc:
        raise ContainerError(str(exc)) from None


class DirectoryCA:
    """The directory's CA: holds its key and issues containers.

    Everything that does not depend on the request (issuer name, AKI, the constant
    extensions) is built once here, so issuing costs little beyond the signature.
    """

    def __init__(
        self,
        certificate: x509.Certificate,
        key: CAPrivateKey,
        directory_url: str = "",
        skew: dt.timedelta = DEFAULT_SKEW,
    ) -> None:
        """`skew`: how far notBefore lies before the moment of issue, for relying parties
        whose clocks are slow (0 .. MAX_SKEW)."""
        if not dt.timedelta(0) <= skew <= MAX_SKEW:
            raise ContainerError(
                f"clock skew {format_duration(skew)} is outside 0 s .. {format_duration(MAX_SKEW)}"
            )
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ContainerError("directory CA key must be RSA or EC")
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if certificate.public_key().public_bytes(der, spki) != key.public_key().public_bytes(
            der, spki
        ):
            raise ContainerError("directory CA key does not belong to the CA certificate")
        problem = checks.key_problem(key.public_key(), "directory CA")
        if problem:
            raise ContainerError(problem)
        if certificate.public_key_algorithm_oid.dotted_string == OID_RSASSA_PSS:
            # Containers are signed sha256WithRSAEncryption (PKCS#1 v1.5), which a key
            # restricted to PSS must not make (RFC 4055 1.2).
            raise ContainerError("directory CA key is restricted to RSASSA-PSS; use RSA or EC")
        try:
            ca_flag = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca_flag = False
        if not ca_flag:
            raise ContainerError("directory CA certificate is not a CA (basicConstraints)")
        if directory_url:
            check_directory_url(directory_url)
        self._cert = certificate
        self._key = key
        self.directory_url = directory_url
        self.skew = skew
        self._issuer = certificate.subject
        self._not_after = certificate.not_valid_after_utc
        try:
            ca_ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
        self._fixed = (
            x509.Extension(x509.BasicConstraints.oid, True, x509.BasicConstraints(False, None)),
            x509.Extension(
                x509.ExtendedKeyUsage.oid,
                False,
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
            ),
            x509.Extension(x509.AuthorityKeyIdentifier.oid, False, aki),
            _raw_extension(OID_NO_REV_AVAIL, NULL_DER),
        )
        self._per_gateway: dict[
            tuple[bytes, tuple[Capability, ...], Purpose],
            tuple[x509.Extension[x509.ExtensionType], ...],
        ] = {}
        # P_A per (gateway key, address): every requestor gets a container of its own, and
        # each would cost a scalar multiplication and a point check again
        self._derived: dict[tuple[bytes, str, str], ec.EllipticCurvePublicKey] = {}
        self._ku = {
            (Purpose.ENCRYPT, True): _key_usage(key_encipherment=True),
            (Purpose.ENCRYPT, False): _key_usage(key_agreement=True),
            (Purpose.SIGN, True): _key_usage(digital_signature=True),
            (Purpose.SIGN, False): _key_usage(digital_signature=True),
        }

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @staticmethod
    def generate(
        key_type: CAKeyType = "ecdsa-p256",
        common_name: str = "keypost directory CA",
        directory_url: str = "",
        validity: dt.timedelta = dt.timedelta(days=3650),
        skew: dt.timedelta = DEFAULT_SKEW,
    ) -> DirectoryCA:
        key: CAPrivateKey
        if key_type == "ecdsa-p256":
            key = ec.generate_private_key(ec.SECP256R1())
        elif key_type == "rsa-3072":
            key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        else:
            raise ContainerError(f"unknown CA key type {key_type!r} (ecdsa-p256 or rsa-3072)")
        now = dt.datetime.now(dt.UTC)
        if not dt.timedelta(0) < validity <= MAX_CA_VALIDITY:
            # Beyond the year 9999 the date arithmetic itself overflows (a traceback in the
            # CLI); X.509 GeneralizedTime ends there anyway.
            raise ContainerError(
                f"CA validity {format_duration(validity)} is outside 1 s .. "
                f"{format_duration(MAX_CA_VALIDITY)}"
            )
        cn = common_name.encode("utf-8")[:MAX_CN].decode("utf-8", "ignore")  # whole characters
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        pub = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DEFAULT_SKEW)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                _key_usage(key_cert_sign=True, crl_sign=True, digital_signature=True).value,
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pub), critical=False)
            .sign(key, _SHA256)
        )
        return DirectoryCA(cert, key, directory_url, skew)

    @staticmethod
    def load(
        cert_pem: bytes,
        key_pem: bytes,
        password: bytes | None = None,
        directory_url: str = "",
        skew: dt.timedelta = DEFAULT_SKEW,
    ) -> DirectoryCA:
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except checks.PARSE_ERRORS as exc:
            raise ContainerError("unreadable directory CA certificate (PEM expected)") from exc
        try:
            key = serialization.load_pem_private_key(key_pem, password)
        except checks.PARSE_ERRORS as exc:
            # Never echo key material or the password: only say what went wrong.
            raise ContainerError("unreadable directory CA key (PEM, wrong password?)") from exc
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ContainerError("directory CA key must be RSA or EC")
        return DirectoryCA(cert, key, directory_url, skew)

    def key_pem(self, password: bytes | None = None) -> bytes:
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc
        )

    def _gateway_parts(
        self, gateway: GatewayKey, purpose: Purpose
    ) -> tuple[x509.Extension[x509.ExtensionType], ...]:
        """KU, SKI, SMIMECapabilities and keypost extension: the same in every container of
        one gateway key and purpose, so built (and the key checked) once."""
        key = (gateway.fingerprint_bytes, gateway.capabilities, purpose)
        parts = self._per_gateway.get(key)
        if parts is None:
            public_key = _check_public_key(gateway.public_key)
            role = KeypostExtension(
                _ROLE_FOR_PURPOSE[purpose], gateway.fingerprint_bytes, self.directory_url
            )
            caps = encode_smime_capabilities(gateway.capabilities)
            parts = (
                self._ku[(purpose, isinstance(public_key, rsa.RSAPublicKey))],
                x509.Extension(x509.SubjectKeyIdentifier.oid, False, gateway.ski),
                _raw_extension(OID_SMIME_CAPABILITIES, caps),
                _raw_extension(OID_KEYPOST_CONTAINER, role.encode()),
            )
            if len(self._per_gateway) >= _CACHE_SIZE:
                self._per_gateway.clear()
            self._per_gateway[key] = parts
        return parts

    def _derived_key(self, fingerprint: bytes, public_key: ec.EllipticCurvePublicKey,
                     address: Address, scope: str | None) -> ec.EllipticCurvePublicKey:
        if scope is None:
            return derived_public_key(public_key, address)
        key = (fingerprint, address.key(), scope)
        found = self._derived.get(key)
        if found is None:
            found = derived_public_key(public_key, address)
            if len(self._derived) >= _CACHE_SIZE:
                self._derived.clear()
            self._derived[key] = found
        return found

    def issue(self, request: ContainerRequest, now: dt.datetime | None = None) -> x509.Certificate:
        """Make an encryption (role proxy-encryption) or signing (proxy-signing) container."""
        gateway = request.gateway
        purpose = request.purpose
        limit = default_lifetime(purpose)
        lifetime = limit if request.lifetime is None else request.lifetime
        if not MIN_LIFETIME <= lifetime <= limit:
            raise ContainerError(
                f"lifetime {format_duration(lifetime)} is outside "
                f"{format_duration(MIN_LIFETIME)} .. {format_duration(limit)} for {purpose.value}"
            )
        start = _utcnow(now)
        not_after = start + lifetime
        if not_after > self._not_after:
            raise ContainerError("the directory CA expires before the container would")
        issuer, serial = self._issuer, x509.random_serial_number()
        if request.compat_issuer_serial:
            if gateway.certificate is None:
                raise ContainerError("compatibility mode needs the gateway's certificate")
            issuer, serial = gateway.certificate.issuer, gateway.certificate.serial_number

        scope = request.memo_scope
        subject, san = (_address_parts.__wrapped__(request.address) if scope is None
                        else _address_parts(request.address, scope))
        extensions = [*self._fixed, san, *self._gateway_parts(gateway, purpose)]
        public_key = gateway.public_key
        if gateway.derived and purpose is Purpose.ENCRYPT:
            # P_A for this mailbox; the SKI stays the gateway key's (the same in every
            # container of the key), which also tells a reader the key is a derived one
            assert isinstance(public_key, ec.EllipticCurvePublicKey)  # __post_init__
            public_key = self._derived_key(gateway.fingerprint_bytes, public_key,
                                           request.address, scope)
        # The constructor takes everything at once: the fluent setters would copy the
        # builder and re-check duplicate extensions once per call.
        builder = x509.CertificateBuilder(
            issuer_name=issuer,
            subject_name=subject,
            public_key=public_key,
            serial_number=serial,
            not_valid_before=(start - self.skew).replace(tzinfo=None),
            not_valid_after=not_after.replace(tzinfo=None),
            extensions=extensions,
        )
        return builder.sign(self._key, _SHA256)


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_agreement: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.Extension[x509.KeyUsage]:
    ku = x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )
    return x509.Extension(x509.KeyUsage.oid, True, ku)


_SAN_OID = x509.SubjectAlternativeName.oid
# Decoded values of the extensions every container of one gateway shares (keypost role
# extension, SMIMECapabilities): decoding them in Python cost ~15 of the ~60 us describe()
# took per container. Results are immutable; malformed values raise and are not cached;
# long values (a hostile directory) are decoded without being kept.
_MAX_CACHED_VALUE = 512


def _decode_keypost(value: bytes) -> tuple[Role, str, str]:
    kp = KeypostExtension.decode(value)
    return kp.role, kp.gateway_sha256.hex(), kp.directory_url


_keypost_fields = functools.lru_cache(maxsize=_CACHE_SIZE)(_decode_keypost)
_capabilities = functools.lru_cache(maxsize=_CACHE_SIZE)(decode_smime_capabilities)
# The addresses a container names, parsed once per session rather than once per check.
_parsed_address = functools.lru_cache(maxsize=_CACHE_SIZE)(parse_address)


def describe(cert: x509.Certificate) -> ContainerInfo:
    """Read what a container (or any certificate) says about itself. Raises ContainerError
    for malformed extensions; checks nothing."""
    addresses: list[str] = []
    role = fingerprint = url = None
    caps: tuple[Capability, ...] = ()
    try:
        for ext in cert.extensions:
            # Dispatch on the OID: isinstance against cryptography's extension ABCs cost
            # ~0.7 us a call, twice per extension.
            oid = ext.oid
            if oid == _SAN_OID:
                san = ext.value
                assert isinstance(san, x509.SubjectAlternativeName)
                addresses.extend(san.get_values_for_type(x509.RFC822Name))
                for other in san.get_values_for_type(x509.OtherName):
                    if other.type_id == OID_SMTP_UTF8_MAILBOX:
                        addresses.append(decode_smtp_utf8_mailbox(other.value))
            elif oid in (OID_KEYPOST_CONTAINER, OID_SMIME_CAPABILITIES):
                value = ext.value
                if not isinstance(value, x509.UnrecognizedExtension):
                    continue
                raw = value.value
                if oid == OID_KEYPOST_CONTAINER:
                    decode_kp = (_keypost_fields if len(raw) <= _MAX_CACHED_VALUE
                                 else _decode_keypost)
                    role, fingerprint, url = decode_kp(raw)
                else:
                    decode_caps = (_capabilities if len(raw) <= _MAX_CACHED_VALUE
                                   else decode_smime_capabilities)
                    caps = decode_caps(raw)
        if not addresses:
            # Certificates without a SAN (old genuine ones) name the address in the subject.
            for attr in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
                addresses.append(str(attr.value))
        key_text = checks.key_description(checks.public_key(cert))
    except checks.PARSE_ERRORS as exc:  # cryptography parses lazily
        raise ContainerError(checks.failure_reason(exc)) from exc
    return ContainerInfo(
        addresses=tuple(addresses),
        role=role,
        gateway_fingerprint=fingerprint,
        directory_url=url,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        capabilities=caps,
        serial=cert.serial_number,
        key_description=key_text,
    )


def _address_problems(info: ContainerInfo, wanted: Address | str) -> list[str]:
    """The domain case-insensitively (both normalised to lower-case A-labels, RFC 5280
    4.2.1.6) and the local part case-insensitively: RFC 5280 7.5 would compare it exactly,
    but mail systems fold case, NSS (Thunderbird) lower-cases the addresses of
    certificates, and the directory keeps one container per Address.key. Compared
    exactly, the container the directory issued for `Bob@x` and handed out for `bob@x`
    was refused, and so was a genuine certificate for `bob@x` when `Bob@x` was typed."""
    try:
        target = wanted if isinstance(wanted, Address) else parse_address(wanted)
    except AddressError as exc:
        return [str(exc)]
    if names_address(info.addresses, target):
        return []
    named = ", ".join(info.addresses) or "no address"
    return [f"issued for {named}, not for {target}"]


def names_address(written: Sequence[str], target: Address) -> bool:
    """Does one of a certificate's addresses (ContainerInfo.addresses) name `target`, as
    _address_problems matches them? Unparsable ones name nothing.

    By Address.key, the key the directory caches and stores containers under: a
    certificate for `ſam@` must not pass for `sam@` (see there)."""
    wanted = target.key()
    for text in written:
        try:
            if _parsed_address(text).key() == wanted:
                return True
        except AddressError:
            continue
    return False


def _role_problems(
    info: ContainerInfo, purpose: Purpose, expected: Sequence[Role] | None
) -> tuple[list[str], bool]:
    """Role reasons and whether the certificate is treated as a genuine one."""
    allowed = set(expected) if expected is not None else {_ROLE_FOR_PURPOSE[purpose]}
    if info.role is None:
        if Role.GENUINE in allowed:
            return [], True
        return ["no keypost role extension (not a key container)"], False
    if info.role not in allowed:
        wanted = ", ".join(sorted(r.value for r in allowed))
        return [f"role {info.role.value} is not one of the expected roles ({wanted})"], False
    if info.role is not Role.GENUINE and info.role is not _ROLE_FOR_PURPOSE[purpose]:
        return [f"role {info.role.value} does not fit purpose {purpose.value}"], False
    return [], info.role is Role.GENUINE


def verify_container(
    cert: x509.Certificate,
    trust_anchors: Sequence[x509.Certificate],
    address: Address | str,
    purpose: Purpose,
    now: dt.datetime | None = None,
    expected_roles: Sequence[Role] | None = None,
) -> VerificationResult:
    """Chain, validity, key usage/EKU, critical extensions, address, role extension,
    algorithms. Never raises for a bad certificate: the reasons say what is wrong.

    `expected_roles` defaults to the proxy role of `purpose`; include Role.GENUINE to
    accept a recipient's own (non-keypost) certificate issued by one of the anchors."""
    at = _utcnow(now)
    try:
        info = describe(cert)
    except ContainerError as exc:
        return VerificationResult(False, (str(exc),), None)
    try:
        reasons = checks.algorithm_problems(cert, "certificate")
        anchor, chain = checks.find_issuer(cert, trust_anchors)
        reasons += chain
        if anchor is not None:
            reasons += checks.anchor_problems(anchor, at)
        reasons += checks.validity_problems(cert, at)
        role_reasons, genuine = _role_problems(info, purpose, expected_roles)
        reasons += role_reasons
        reasons += checks.usage_problems(cert, purpose, required=not genuine)
        reasons += checks.critical_problems(cert)
        reasons += _address_problems(info, address)
    except checks.PARSE_ERRORS as exc:  # parsed lazily
        reasons = [checks.failure_reason(exc)]
    return VerificationResult(not reasons, tuple(reasons), info)


# Serialisation helpers -------------------------------------------------------------


def to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def to_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """PEM (one or many), DER, or a PKCS#7 certs-only bundle (DER or PEM). Raises ContainerError."""
    certs: list[x509.Certificate]
    try:
        if b"-----BEGIN PKCS7-----" in data:
            certs = pkcs7.load_pem_pkcs7_certificates(data)
        elif b"-----BEGIN CERTIFICATE-----" in data:
            certs = x509.load_pem_x509_certificates(data)
        elif b"-----BEGIN" in data:
            raise ContainerError("PEM data holds no certificate")
        else:
            try:
                certs = [x509.load_der_x509_certificate(data)]
            except checks.PARSE_ERRORS:
                certs = pkcs7.load_der_pkcs7_certificates(data)
    except checks.PARSE_ERRORS as exc:
        raise ContainerError("no readable certificate (PEM, DER or PKCS#7 expected)") from exc
    if not certs:
        raise ContainerError("no certificate in the data")
    return certs


def pkcs7_bundle(certs: Sequence[x509.Certificate]) -> bytes:
    """A DER PKCS#7 certs-only bundle (for LDAP userSMIMECertificate)."""
    if not certs:
        raise ContainerError("a PKCS#7 bundle needs at least one certificate")
    return pkcs7.serialize_certificates(list(certs), serialization.Encoding.DER)


def sha256_fingerprint(cert: x509.Certificate) -> str:
    """Colon-separated upper-case hex SHA-256 of the DER, as `openssl x509 -fingerprint` prints."""
    return cert.fingerprint(_SHA256).hex(":").upper()
