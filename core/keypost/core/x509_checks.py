"""Checks behind verify_container: each returns human-readable reasons, none raises.

Chain building is a direct signature check against the pinned anchors rather than
cryptography's `x509.verification.ClientVerifier`: that verifier accepts our containers
only with a permissive end-entity policy (its default insists on id-kp-clientAuth),
requires the issuer name to chain (so compatibility containers, whose issuer name is the
gateway certificate's issuer, always fail) and applies the Web PKI CA profile to whatever
CA a genuine certificate comes from. Containers are issued directly by the directory CA,
so one level, checked the same way for all three cases, is all there is.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from keypost.core.errors import ContainerError
from keypost.core.types import Purpose
from keypost.core.x509_ext import (
    OID_KEYPOST_CONTAINER,
    OID_NO_REV_AVAIL,
    OID_SMIME_CAPABILITIES,
    der_read,
)

MIN_RSA_BITS = 2048
MIN_EC_BITS = 224  # 112-bit security, as RSA-2048: P-192 and smaller curves are refused
# Curves the S/MIME engine agrees keys on (ECDH, RFC 5753): the NIST curves RFC 8551,
# openssl cms and gpgsm have in common. cryptography's name -> the namedCurve OID.
SMIME_EC_CURVES = {
    "secp256r1": "1.2.840.10045.3.1.7",
    "secp384r1": "1.3.132.0.34",
    "secp521r1": "1.3.132.0.35",
}
# What cryptography raises while lazily parsing a hostile certificate (found by fuzzing in
# tests/core/test_containers.py): callers turn these into reasons or ContainerError.
PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)
_WEAK_HASHES = (hashes.SHA1, hashes.MD5)
_TAG_VERSION = 0xA0  # TBSCertificate version [0] EXPLICIT


def first_sentence(exc: Exception) -> str:
    """cryptography's parse errors run to several sentences; a reason needs one."""
    return str(exc).split(". ")[0][:160]


def failure_reason(exc: Exception, what: str = "certificate") -> str:
    """The reason for an error cryptography raised while reading `what` lazily: only a
    parse error makes it malformed; an algorithm cryptography does not implement (a GOST
    key, an unknown curve) is a well-formed certificate keypost cannot use."""
    if isinstance(exc, UnsupportedAlgorithm):
        return f"{what} uses an unsupported algorithm: {first_sentence(exc)}"
    return f"malformed {what}: {first_sentence(exc)}"


@dataclass(frozen=True)
class UnusableKey:
    """A certificate's public key that cryptography cannot load. `unsupported`: its
    algorithm or curve is not implemented; otherwise the key's bytes do not decode."""

    detail: str
    unsupported: bool


def public_key(cert: x509.Certificate) -> CertificatePublicKeyTypes | UnusableKey:
    """cert.public_key() as a value: a key that cannot be loaded becomes a reason in
    key_problem rather than an exception that would hide every other reason."""
    try:
        return cert.public_key()
    except UnsupportedAlgorithm as exc:
        return UnusableKey(first_sentence(exc), unsupported=True)
    except (ValueError, TypeError) as exc:
        return UnusableKey(first_sentence(exc), unsupported=False)


def key_description(key: object) -> str:
    """The key as people name it (RSA-2048, EC P-256, ...) for messages and ContainerInfo."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        names = {"secp224r1": "P-224", "secp256r1": "P-256", "secp384r1": "P-384",
                 "secp521r1": "P-521"}
        return f"EC {names.get(key.curve.name, key.curve.name)}"
    if isinstance(key, UnusableKey):
        return "unsupported key" if key.unsupported else "malformed key"
    return type(key).__name__.removesuffix("PublicKey").lstrip("_") or "unknown key"


def key_problem(key: object, what: str) -> str | None:
    """Why `key` is not acceptable (RSA < 2048, DSA, unusable, ...), or None."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return f"{what} key is RSA-{key.key_size}; at least RSA-{MIN_RSA_BITS} is required"
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.key_size < MIN_EC_BITS:
            return (f"{what} key is {key_description(key)}; at least {MIN_EC_BITS} bits are "
                    "required")
        return None
    if isinstance(key, UnusableKey):
        if key.unsupported:
            return f"{what} key uses an unsupported algorithm ({key.detail}); RSA or EC only"
        return f"malformed certificate: {what} public key does not decode ({key.detail})"
    return f"{what} key type {key_description(key)} is not accepted (RSA or EC only)"


def smime_key_problem(key: object, what: str) -> str | None:
    """Why the S/MIME engine cannot encrypt to `key` (a public key) or decrypt with its
    private half, or None: RSA >= 2048 key transport, ECDH on P-256, P-384 or P-521."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size >= MIN_RSA_BITS:
            return None
        return f"{what} has an RSA-{key.key_size} key; RSA-{MIN_RSA_BITS}+ required"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name in SMIME_EC_CURVES:
            return None
        return (f"{what} has an {key_description(key)} key; S/MIME key agreement uses "
                "P-256, P-384 or P-521")
    return (f"{what} has a {key_description(key)} key; the S/MIME engine uses RSA (>= "
            f"{MIN_RSA_BITS}) and EC (P-256, P-384 or P-521) keys")


def signing_key_problem(key: object, what: str) -> str | None:
    """Why mail clients could not verify S/MIME signatures made with `key` (a public key),
    or None: RSA >= 2048, or ECDSA on P-256, P-384 or P-521 (what Thunderbird's NSS and
    other clients know; RFC 8551 2.2 requires P-256). A gateway signing with another curve
    sends mail whose signatures verify nowhere."""
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name not in SMIME_EC_CURVES:
        return (f"{what} has an {key_description(key)} key; mail clients verify ECDSA on "
                "P-256, P-384 or P-521")
    return key_problem(key, what)


def _content_start(der: bytes) -> int:
    """Offset of the first content byte of the DER element at the start of `der`."""
    return 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)


def signature_algorithm_problem(cert: x509.Certificate, what: str) -> str | None:
    """RFC 5280 4.1.1.2: the outer signatureAlgorithm MUST equal the TBSCertificate's
    signature field. cryptography reads only the outer one (the one the checks here see),
    so a certificate whose signed part names another algorithm passed."""
    # Only the elements up to the two AlgorithmIdentifiers are read (~3 us; all of them ~14).
    try:
        der, tbs = cert.public_bytes(Encoding.DER), cert.tbs_certificate_bytes
        outer = der_read(der, _content_start(der) + len(tbs))[:2]  # after the TBSCertificate
        tag, _, pos = der_read(tbs, _content_start(tbs))  # version [0] or serialNumber
        if tag == _TAG_VERSION:
            pos = der_read(tbs, pos)[2]  # past serialNumber
        if der_read(tbs, pos)[:2] == outer:
            return None
    except (ContainerError, IndexError):
        pass
    return f"{what}'s signature algorithm does not match the one in its signed part"


def algorithm_problems(cert: x509.Certificate, what: str) -> list[str]:
    reasons: list[str] = []
    mismatch = signature_algorithm_problem(cert, what)
    if mismatch:
        reasons.append(mismatch)
    try:
        algo = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        reasons.append(f"{what} uses an unsupported signature algorithm")
    else:
        if isinstance(algo, _WEAK_HASHES):
            reasons.append(f"{what} is signed with {algo.name.upper()}, which is not accepted")
    problem = key_problem(public_key(cert), what)
    if problem:
        reasons.append(problem)
    return reasons


def signature_valid(cert: x509.Certificate, issuer_key: object) -> bool:
    """Does `issuer_key` verify the certificate's signature (any name aside)?"""
    try:
        algo = cert.signature_hash_algorithm
        params = cert.signature_algorithm_parameters
        if (
            isinstance(issuer_key, rsa.RSAPublicKey)
            and isinstance(params, padding.PKCS1v15 | padding.PSS)
            and isinstance(algo, hashes.HashAlgorithm)
        ):
            issuer_key.verify(cert.signature, cert.tbs_certificate_bytes, params, algo)
            return True
        if isinstance(issuer_key, ec.EllipticCurvePublicKey) and isinstance(params, ec.ECDSA):
            issuer_key.verify(cert.signature, cert.tbs_certificate_bytes, params)
            return True
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return False


def ski_extension(cert: x509.Certificate) -> bytes | None:
    """The certificate's subjectKeyIdentifier extension, which a RecipientInfo by key
    identifier names (`openssl cms -keyid`); None without one. Not computed from the key:
    SKI methods differ between issuers, and a computed one would name what no sender did."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def _ski(cert: x509.Certificate) -> bytes | None:
    """The extension, else the key's SHA-1 (RFC 5280 4.2.1.2): what an AKI is compared to."""
    found = ski_extension(cert)
    if found is None:
        key = public_key(cert)
        if isinstance(key, UnusableKey):
            return None
        found = x509.SubjectKeyIdentifier.from_public_key(key).digest
    return found


def _aki(cert: x509.Certificate) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        return None
    return ext.value.key_identifier


# What depends on a trust anchor alone is read once rather than once per container (a
# session verifies hundreds of containers against the same one or two anchors). Keyed by
# the certificate, whose equality and hash are those of its DER; exceptions (a malformed
# anchor) are not cached and surface where they did before.
_anchor_ski = functools.lru_cache(maxsize=64)(_ski)


@functools.lru_cache(maxsize=64)
def _fixed_anchor_problems(anchor: x509.Certificate) -> tuple[str, ...]:
    """All of anchor_problems but the time-dependent validity check."""
    return tuple(algorithm_problems(anchor, "trust anchor") + ca_problems(anchor, "trust anchor"))


def ca_problems(cert: x509.Certificate, what: str) -> list[str]:
    """Why `cert` may not issue certificates: basicConstraints cA, and keyCertSign when it
    has a keyUsage. Without this any end-entity certificate (a gateway's signing container)
    could pose as an intermediate and vouch for certificates its owner makes up."""
    reasons = []
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            reasons.append(f"{what} is not a CA certificate")
    except x509.ExtensionNotFound:
        reasons.append(f"{what} has no basicConstraints (not a CA certificate)")
    try:
        if not cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign:
            reasons.append(f"{what}'s keyUsage does not allow certificate signing")
    except x509.ExtensionNotFound:
        pass  # absent = unrestricted (RFC 5280 4.2.1.3)
    return reasons


def path_length_problems(anchor: x509.Certificate) -> list[str]:
    """Why `anchor` may not issue an intermediate certificate: RFC 5280 4.2.1.9, a
    pathLenConstraint of 0 allows end-entity certificates only (the directory CA's)."""
    try:
        constraints = anchor.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return []  # ca_problems refuses such an anchor
    if constraints.path_length == 0:
        return ["trust anchor's pathLenConstraint 0 allows no intermediate certificate"]
    return []


def _anchor_named(anchor: x509.Certificate, issuer: x509.Name) -> bool | None:
    """Is `issuer` the anchor's subject? None: the anchor's name cannot be read."""
    try:
        return anchor.subject == issuer
    except PARSE_ERRORS:
        return None


def _readable_anchor_ski(anchor: x509.Certificate) -> bytes | None:
    """The anchor's key identifier; None when its extensions cannot be read. Such an anchor
    (one of several pinned) raised here, and every certificate compared with it was
    "malformed", even one that a good anchor further on had issued."""
    try:
        return _anchor_ski(anchor)
    except PARSE_ERRORS:
        return None


def find_issuer(
    cert: x509.Certificate, anchors: Sequence[x509.Certificate]
) -> tuple[x509.Certificate | None, list[str]]:
    """The anchor that signed `cert`. Its issuer name must be the anchor's subject, or (for
    compatibility containers, which carry the gateway certificate's issuer name) its
    authority key identifier must be the anchor's key identifier."""
    issuer = cert.issuer
    aki: bytes | None = None
    aki_read = False  # read only when a name does not match (compatibility containers)
    named = None
    for anchor in anchors:
        by_name = _anchor_named(anchor, issuer)
        if by_name is None:
            continue
        if not by_name:
            if not aki_read:
                aki, aki_read = _aki(cert), True
            if aki is None or aki != _readable_anchor_ski(anchor):
                continue
        if signature_valid(cert, public_key(anchor)):
            return anchor, []
        named = named or (anchor if by_name else None)
    if named is not None:  # e.g. a rotated CA under the same name: every one was tried
        return None, [
            f"signature does not verify with trust anchor {named.subject.rfc4514_string()}"
        ]
    return None, [f"not issued by a trusted directory CA (issuer {issuer.rfc4514_string()})"]


def anchor_problems(anchor: x509.Certificate, now: dt.datetime) -> list[str]:
    try:
        reasons = list(_fixed_anchor_problems(anchor))
    except PARSE_ERRORS as exc:  # the anchor's fault, not the certificate's it issued
        return [failure_reason(exc, "trust anchor")]
    if not anchor.not_valid_before_utc <= now <= anchor.not_valid_after_utc:
        reasons.append("trust anchor is outside its validity period")
    return reasons


def validity_problems(cert: x509.Certificate, now: dt.datetime) -> list[str]:
    if now < cert.not_valid_before_utc:
        return [f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"]
    if now > cert.not_valid_after_utc:
        return [f"expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"]
    return []


# Extensions the checks here read (or that restrict nothing they rely on): only these may
# be critical in a certificate that verify_container or verify_signed accepts.
UNDERSTOOD_EXTENSIONS = frozenset(
    {
        x509.BasicConstraints.oid,
        x509.KeyUsage.oid,
        x509.ExtendedKeyUsage.oid,
        x509.SubjectAlternativeName.oid,
        x509.SubjectKeyIdentifier.oid,
        x509.AuthorityKeyIdentifier.oid,
        OID_NO_REV_AVAIL,
        OID_SMIME_CAPABILITIES,
        OID_KEYPOST_CONTAINER,
    }
)


def critical_problems(
    cert: x509.Certificate, understood: frozenset[x509.ObjectIdentifier] = UNDERSTOOD_EXTENSIONS
) -> list[str]:
    """RFC 5280 4.2: a certificate with a critical extension the relying party does not
    process MUST be rejected (e.g. a genuine certificate's critical policy we cannot read)."""
    return [
        f"unrecognised critical extension {ext.oid.dotted_string}"
        for ext in cert.extensions
        if ext.critical and ext.oid not in understood
    ]


def usage_problems(cert: x509.Certificate, purpose: Purpose, required: bool) -> list[str]:
    """KeyUsage and EKU for `purpose`. `required`: the extensions must be present (keypost
    containers); genuine certificates may omit them (RFC 5280: absent = unrestricted)."""
    reasons: list[str] = []
    key = public_key(cert)
    try:
        ku: x509.KeyUsage | None = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is None:
        if required:
            reasons.append("no keyUsage extension")
    elif purpose is Purpose.SIGN:
        if not ku.digital_signature:
            reasons.append("keyUsage lacks digitalSignature (not a signing certificate)")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if not ku.key_agreement:
            reasons.append("keyUsage lacks keyAgreement (not an encryption certificate)")
    elif not ku.key_encipherment:
        reasons.append("keyUsage lacks keyEncipherment (not an encryption certificate)")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        if required:
            reasons.append("no extendedKeyUsage extension (emailProtection required)")
    else:
        if ExtendedKeyUsageOID.EMAIL_PROTECTION not in eku and (
            required or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku
        ):
            reasons.append("extendedKeyUsage lacks emailProtection")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            reasons.append("is a CA certificate, not an end-entity container")
    except x509.ExtensionNotFound:
        pass
    return reasons
