"""S/MIME engine: encrypt for N containers, decrypt as a gateway, sign and verify.

CONTRACT (written first so components can be built in parallel): keep the public
names and signatures stable. Messages are bytes (RFC 5322, CRLF or LF line ends
accepted on input; CRLF on output).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keypost.core.types import Capability

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def choose_cipher(recipients: Sequence[x509.Certificate]) -> Capability:
    """Best content cipher all recipients advertise (SMIMECapabilities); AES-256-CBC when a
    certificate advertises nothing; AES-128-CBC when someone offers only that."""
    raise NotImplementedError


def encrypt_entity(entity: bytes, recipients: Sequence[x509.Certificate]) -> bytes:
    """Encrypt a MIME entity (its Content-* headers + body) -> an application/pkcs7-mime
    entity (headers + base64 body, 76-column lines). Raises SmimeError."""
    raise NotImplementedError


def encrypt_message(message: bytes, recipients: Sequence[x509.Certificate]) -> bytes:
    """Encrypt a whole RFC 5322 message: the outer headers (From, To, Cc, Subject, Date,
    Message-ID, ...) stay in the clear; the content (Content-* headers + body) is
    enveloped. Bcc headers are dropped. Returns a complete RFC 5322 message."""
    raise NotImplementedError


@dataclass(frozen=True)
class RecipientId:
    issuer: x509.Name
    serial: int


def recipient_ids(message_or_der: bytes) -> list[RecipientId]:
    """The issuer+serial RecipientIdentifiers of an enveloped message (whole message or
    raw DER). Raises SmimeError when it is not EnvelopedData."""
    raise NotImplementedError


def is_encrypted(message: bytes) -> bool:
    """True when the message's top-level content is application/(x-)pkcs7-mime enveloped."""
    raise NotImplementedError


@dataclass(frozen=True)
class DecryptResult:
    message: bytes  # the decrypted message: original outer headers + the clear MIME content
    key_index: int  # which of the Decryptor's keys opened it (0 = current)
    algorithm: str  # e.g. "aes256-cbc"


class Decryptor:
    """Decrypts as a gateway holding one or more RSA keys (current first, then retired)
    without knowing which container the sender used. All failures raise the same
    DecryptError (no padding oracle)."""

    def __init__(self, keys: Sequence[PrivateKey]) -> None:
        raise NotImplementedError

    def decrypt_der(self, der: bytes) -> tuple[bytes, int, str]:
        """EnvelopedData DER -> (clear content, key index, algorithm)."""
        raise NotImplementedError

    def decrypt_message(self, message: bytes) -> DecryptResult:
        raise NotImplementedError


def sign_message(
    message: bytes,
    key: PrivateKey,
    container: x509.Certificate,
    extra_certs: Sequence[x509.Certificate] = (),
) -> bytes:
    """multipart/signed (detached, SHA-256) with the container in SignedData certificates and
    signingTime equal to the message's Date header (Date is added if missing)."""
    raise NotImplementedError


@dataclass(frozen=True)
class SignatureResult:
    ok: bool
    signer: x509.Certificate | None
    signing_time: dt.datetime | None
    reasons: tuple[str, ...] = ()
    content: bytes = b""  # the signed MIME entity


def verify_signed(
    message: bytes, trust_anchors: Sequence[x509.Certificate], now: dt.datetime | None = None
) -> SignatureResult:
    raise NotImplementedError
