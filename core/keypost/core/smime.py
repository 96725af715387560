"""S/MIME engine: encrypt for N containers, decrypt as a gateway, sign and verify.

CONTRACT (written first so components can be built in parallel): keep the public
names and signatures stable. Messages are bytes (RFC 5322, CRLF or LF line ends
accepted on input; CRLF on output).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import hmac
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

from keypost.core import cms, cms_trim
from keypost.core import mime as m
from keypost.core import x509_checks as checks
from keypost.core.address import parse_address
from keypost.core.containers import describe, names_address
from keypost.core.errors import (
    AddressError,
    ContainerError,
    DecryptError,
    SmimeError,
    UnsupportedCipherError,
)
from keypost.core.types import DEFAULT_CAPABILITIES, Capability, Purpose
from keypost.core.x509_ext import OID_SMIME_CAPABILITIES, decode_smime_capabilities

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_PKCS7_MIME_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")
_PKCS7_SIG_TYPES = ("application/pkcs7-signature", "application/x-pkcs7-signature")
_ENVELOPED_HEADERS = (
    b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=smime.p7m\r\n"
    b"Content-Description: S/MIME Encrypted Message\r\n"
)
# RFC 8551 3.2.2: EnvelopedData, and AuthEnvelopedData (AES-GCM, RFC 5083/5084)
_ENCRYPTED_SMIME_TYPES = ("enveloped-data", "authenveloped-data")
_DROPPED_OUTER = ("bcc", "resent-bcc", "mime-version")
# Signatures within this distance of the Date header are accepted by Thunderbird.
MAX_DATE_SKEW = dt.timedelta(hours=1)
FUTURE_SKEW = dt.timedelta(minutes=5)
# More RecipientInfos are refused as unreadable CMS before any is read or RSA-decrypted
# (the reason for the number is in cms): the uniform DecryptError.
MAX_RECIPIENT_INFOS = cms.MAX_RECIPIENT_INFOS


def _check_recipient(cert: x509.Certificate) -> None:
    key = checks.public_key(cert)
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= checks.MIN_RSA_BITS:
        return  # the usual case: the name (~8 us to format) is only needed to explain
    who = cert.subject.rfc4514_string() or f"serial {cert.serial_number:x}"
    if isinstance(key, checks.UnusableKey):  # was cryptography's exception, not SmimeError
        raise SmimeError(
            f"recipient {who} has a key that cannot be loaded ({key.detail}); the S/MIME "
            "engine encrypts to RSA (>= 2048) and EC (P-256, P-384, P-521) keys"
        )
    problem = checks.smime_key_problem(key, f"recipient {who}")
    if problem is not None:
        raise SmimeError(problem)


_MAX_CACHED_CAPABILITIES = 512  # bytes: a directory's containers all carry the same short value
_cached_capabilities = functools.lru_cache(maxsize=64)(decode_smime_capabilities)


def _decode_capabilities(raw: bytes) -> Sequence[Capability]:
    """Decoding costs ~12 us per certificate and message; the values repeat."""
    if len(raw) > _MAX_CACHED_CAPABILITIES:
        return decode_smime_capabilities(raw)
    return _cached_capabilities(raw)


def _capabilities(cert: x509.Certificate) -> set[Capability]:
    all_caps = set(DEFAULT_CAPABILITIES)
    try:
        ext = cert.extensions.get_extension_for_oid(OID_SMIME_CAPABILITIES)
    except x509.ExtensionNotFound:
        return all_caps  # RFC 8551 2.7.1: no announcement -> the MUST algorithms
    except ValueError as exc:
        raise SmimeError("recipient certificate has malformed extensions") from exc
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        return all_caps
    try:
        caps = set(_decode_capabilities(value.value))
    except ContainerError as exc:
        raise SmimeError("recipient certificate has a malformed SMIMECapabilities") from exc
    return caps or all_caps  # only algorithms we do not know: fall back to the defaults


def choose_cipher(recipients: Sequence[x509.Certificate]) -> Capability:
    """Best content cipher all recipients advertise (SMIMECapabilities); AES-256-CBC when a
    certificate advertises nothing; AES-128-CBC when someone offers only that."""
    common = set(DEFAULT_CAPABILITIES)
    for cert in recipients:
        common &= _capabilities(cert)
    for cap in DEFAULT_CAPABILITIES:  # our order of preference: AES-256 first
        if cap in common:
            return cap
    raise SmimeError("the recipients share no content-encryption algorithm (AES-128/256-CBC)")


def envelope_der(
    entity: bytes | memoryview, recipients: Sequence[x509.Certificate], head: bytes = b""
) -> bytearray:
    """A canonical CRLF entity (`head` + `entity`: a header block may come separately, so
    that the body need not be joined to it) -> EnvelopedData DER for `recipients` (RSA >=
    2048: key transport; EC P-256/384/521: key agreement), with the best content cipher
    they all accept. Raises SmimeError."""
    if not recipients:
        raise SmimeError("no recipient certificates to encrypt for")
    if len(recipients) > MAX_RECIPIENT_INFOS:
        # gateways refuse such an envelope unread (cms.parse_enveloped): say so here
        raise SmimeError(f"{len(recipients)} recipient certificates: at most "
                         f"{MAX_RECIPIENT_INFOS} per message; split the recipients")
    for cert in recipients:
        _check_recipient(cert)
    return cms.build_enveloped(entity, recipients, choose_cipher(recipients), head)


def _envelope(
    parts: tuple[bytes, bytes | memoryview], recipients: Sequence[x509.Certificate], head: bytes
) -> bytes:
    """CRLF entity in two parts -> `head` + the base64 lines of its EnvelopedData. DER +
    our own base64: Encoding.SMIME goes through the email package (10-18x slower)."""
    return m.b64_lines(envelope_der(parts[1], recipients, parts[0]), head)


def encrypt_entity(entity: bytes, recipients: Sequence[x509.Certificate]) -> bytes:
    """Encrypt a MIME entity (its Content-* headers + body) -> an application/pkcs7-mime
    entity (headers + base64 body, 76-column lines). Raises SmimeError."""
    # Already canonical (the usual case): the caller's bytes are encrypted, no copy.
    return _envelope((b"", m.canonical(entity)), recipients, _ENVELOPED_HEADERS + m.CRLF)


def _content_entity(headers: Sequence[m.Header], message: bytes, start: int) -> bytes:
    """The message's content as a CRLF MIME entity: its Content-* fields + the body at
    message[start:]."""
    return m.canonical_entity(_content_headers(headers, message, start), message, start)


def _content_headers(headers: Sequence[m.Header], message: bytes, start: int) -> list[m.Header]:
    """The message's Content-* fields. A message without Content-Type gets an explicit one
    (us-ascii, or utf-8 for 8-bit text in the body at message[start:])."""
    inner = [h for h in headers if m.is_content_header(h)]
    if m.find_header(inner, "Content-Type") is None:
        charset = "us-ascii" if message[start:].isascii() else "utf-8"
        line = f"Content-Type: text/plain; charset={charset}".encode()
        inner.insert(0, m.Header("Content-Type", line))
        if charset == "utf-8" and m.find_header(inner, "Content-Transfer-Encoding") is None:
            inner.append(m.Header("Content-Transfer-Encoding", b"Content-Transfer-Encoding: 8bit"))
    return inner


def _outer_headers(headers: Sequence[m.Header]) -> bytes:
    """Fields that stay in the clear: everything but Content-*, Bcc and Resent-Bcc (must
    never travel) and MIME-Version (written afresh)."""
    kept = [h for h in headers if not m.is_content_header(h) and h.key not in _DROPPED_OUTER]
    return m.header_lines(kept) + b"MIME-Version: 1.0\r\n"


def encrypt_message(message: bytes, recipients: Sequence[x509.Certificate]) -> bytes:
    """Encrypt a whole RFC 5322 message: the outer headers (From, To, Cc, Subject, Date,
    Message-ID, ...) stay in the clear; the content (Content-* headers + body) is
    enveloped. Bcc headers are dropped. Returns a complete RFC 5322 message."""
    headers, start = m.split_entity_at(message)
    # (header block, body): a canonical body is enveloped without being copied
    parts = m.canonical_entity_parts(_content_headers(headers, message, start), message, start)
    head = _outer_headers(headers) + _ENVELOPED_HEADERS + m.CRLF
    return _envelope(parts, recipients, head)


@dataclass(frozen=True)
class RecipientId:
    issuer: x509.Name
    serial: int


def _enveloped_der(message_or_der: bytes) -> bytes | memoryview:
    """The EnvelopedData DER of a message (or the DER itself). Raises SmimeError."""
    if message_or_der[:1] == b"\x30":
        return message_or_der
    return _der_of_parts(*m.split_entity(message_or_der))


def _der_of_parts(headers: Sequence[m.Header], body: memoryview) -> bytes | memoryview:
    ctype = m.content_type_of(headers)
    if ctype.mime_type not in _PKCS7_MIME_TYPES:
        raise SmimeError("not an S/MIME encrypted message (no application/pkcs7-mime content)")
    smime_type = (ctype.param("smime-type") or "enveloped-data").lower()
    if smime_type not in _ENCRYPTED_SMIME_TYPES:
        raise SmimeError(f"not an S/MIME encrypted message (smime-type={smime_type})")
    return _decoded(headers, body)


def _decoded(headers: Sequence[m.Header], body: memoryview) -> bytes | memoryview:
    """An application/pkcs7-mime body as DER (base64 decoded when so encoded)."""
    return m.b64_decode(body) if _base64(headers) else body


def _base64(headers: Sequence[m.Header]) -> bool:
    cte = m.find_header(headers, "Content-Transfer-Encoding")
    return cte is not None and cte.value.lower() == "base64"


def recipient_ids(message_or_der: bytes) -> list[RecipientId]:
    """The issuer+serial RecipientIdentifiers of an enveloped message (whole message or
    raw DER): of the key-transport recipients, then of the key-agreement ones. Raises
    SmimeError when it is not EnvelopedData."""
    return recipient_identifiers(message_or_der)[0]


def recipient_identifiers(message_or_der: bytes) -> tuple[list[RecipientId], list[bytes]]:
    """All RecipientIdentifiers of an enveloped message, from one parse: the issuer+serial
    ones (as recipient_ids) and the subjectKeyIdentifiers. Raises SmimeError when it is
    not EnvelopedData."""
    env = cms.parse_enveloped(_enveloped_der(message_or_der))
    named: list[tuple[bytes | None, int | None, bytes | None]] = [
        (ri.issuer_der, ri.serial, ri.ski) for ri in env.recipients]
    named += [(k.issuer_der, k.serial, k.ski) for kari in env.agreements for k in kari.keys]
    ids = [
        RecipientId(cms.name_from_der(issuer), serial)
        for issuer, serial, _ in named
        if issuer is not None and serial is not None
    ]
    return ids, [ski for _, _, ski in named if ski is not None]


def is_encrypted(message: bytes) -> bool:
    """True when the message's top-level content is application/(x-)pkcs7-mime enveloped."""
    headers, body = m.split_entity(message)
    ctype = m.content_type_of(headers)
    if ctype.mime_type not in _PKCS7_MIME_TYPES:
        return False
    smime_type = ctype.param("smime-type")
    if smime_type is not None:
        return smime_type.lower() in _ENCRYPTED_SMIME_TYPES
    try:  # old clients omit smime-type: look at the CMS content type itself
        cms.parse_enveloped(_der_of_parts(headers, body))
    except SmimeError:
        return False
    return True


def trim_recipients(message: bytes, certificates: Sequence[x509.Certificate]) -> bytes:
    """`message` whose envelope names only `certificates` (keypost.core.cms_trim): the
    same header fields, the body the cut-down envelope, in base64 (76-column lines, the
    line ends the message has) or binary as it came. `message` itself when it names no
    other certificate, or when its top level is no application/pkcs7-mime envelope: a
    signature around the envelope covers its bytes, which must then stay as they are.
    Raises SmimeError: malformed, or the envelope names none of `certificates`."""
    headers, start = m.split_entity_at(message)
    ctype = m.content_type_of(headers)
    smime_type = ctype.param("smime-type")
    if ctype.mime_type not in _PKCS7_MIME_TYPES or (
            smime_type is None and not is_encrypted(message)):  # old clients omit it
        return message
    if smime_type is not None and smime_type.lower() not in _ENCRYPTED_SMIME_TYPES:
        return message
    body = memoryview(message)[start:]
    der = cms_trim.trim(_decoded(headers, body), cms_trim.Kept.of(certificates))
    if der is None:
        return message
    if not _base64(headers):
        return message[:start] + der
    text = m.b64_lines(der)
    if message[start - 2 : start] != m.CRLF:
        text = text.replace(m.CRLF, b"\n")
    return message[:start] + text


_Recipients = tuple[cms.KeyTransRecipient | cms.RecipientEncryptedKey, ...]
# (padded plaintext, pad length, key index, algorithm, the RecipientInfos that yield its
# content key, the indices of every key that yields it)
_Opened = tuple[bytearray, int, int, str, _Recipients, frozenset[int]]


@dataclass(frozen=True)
class OpenedBy:
    """A RecipientInfo whose wrapped key is the content key: issuer and serial of the
    certificate it names, or the SubjectKeyIdentifier (then issuer and serial are None)."""

    issuer: x509.Name | None
    serial: int | None
    ski: bytes | None


@dataclass(frozen=True)
class DecryptResult:
    message: bytes  # the decrypted message: original outer headers + the clear MIME content
    key_index: int  # which of the Decryptor's keys opened it (0 = current)
    algorithm: str  # e.g. "aes256-cbc"
    # The RecipientInfos the content key came out of with one of our keys, in message
    # order: every container of our key the sender encrypted to (one per recipient it
    # meant), none of anyone else's.
    opened_by: tuple[OpenedBy, ...] = ()
    # The indices of every one of the Decryptor's keys that yields the content key from
    # some RecipientInfo: with per-address derived keys, the mailboxes the message was
    # encrypted to (each one's key opens only its own container's RecipientInfo).
    opened_keys: frozenset[int] = frozenset()


def _block_padding_ok(key: bytes, previous: bytes, last: bytes) -> bool:
    """Does the last CBC block decrypt to valid PKCS#7 padding? cryptography's unpadder
    checks in constant time."""
    block = Cipher(algorithms.AES(key), modes.CBC(previous)).decryptor().update(last)
    unpadder = sym_padding.PKCS7(128).unpadder()
    try:
        unpadder.update(block)
        unpadder.finalize()
    except ValueError:
        return False
    return True


_HEADER_TEXT = bytes(range(0x20, 0x7F)) + b"\t\r\n"


def _looks_like_mime(key: bytes, mode: modes.CBC | modes.GCM, first: bytes) -> bool:
    """Does the first block decrypt to printable ASCII, as a MIME entity's header does?
    Random bytes pass with probability ~(99/256)^16, about 2e-7. (A GCM decryptor yields
    it before the tag is checked.)"""
    block = Cipher(algorithms.AES(key), mode).decryptor().update(first)
    return not block.translate(None, _HEADER_TEXT)


def _agreed_keys(
    key: ec.EllipticCurvePrivateKey, agreements: Sequence[cms.KeyAgreeRecipient], key_len: int
) -> Iterator[tuple[bytes, bool, int]]:
    """(content key, whether it unwrapped to the right length, the RecipientEncryptedKey's
    position among all of `agreements`' keys) for every
    RecipientEncryptedKey of every KeyAgreeRecipientInfo `key` can agree with: one ECDH
    and KDF per KeyAgreeRecipientInfo, one AES key unwrap per RecipientEncryptedKey (their
    number is bounded by cms.MAX_RECIPIENT_INFOS). The container the sender used is not
    known, so its issuer+serial cannot pick the RecipientEncryptedKey: all are tried. A
    failed unwrap comes as a random key, like a wrong RSA result."""
    curve_oid = cms.EC_CURVE_OIDS[key.curve.name]
    first = 0
    for kari in agreements:
        first, position = first + len(kari.keys), first
        if kari.kdf is None or kari.curve_oid not in (None, curve_oid):
            continue  # public facts: a form or curve this key cannot agree with
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, kari.point)
            secret = key.exchange(ec.ECDH(), peer)
        except ValueError:
            continue  # not a point on this key's curve: public, it is the sender's key
        kek = cms.shared_kek(secret, kari.kdf, kari.wrap_oid, kari.ukm, kari.wrap_null)
        for n, rek in enumerate(kari.keys):
            filler = os.urandom(key_len)
            try:
                cek = aes_key_unwrap(kek, rek.encrypted_key)
            except (InvalidUnwrap, ValueError):
                cek = b""
            right_length = len(cek) == key_len
            yield (cek if right_length else filler), right_length, position + n


# Full AES-GCM passes per message at most: the right key's content key comes first in
# practice (ranked by the first-block probe), a wrong key yields one of the right length
# about once in 250 (RSA implicit rejection), so three tries leave room for collisions.
MAX_GCM_TRIES = 3


# RFC 5322 3.6: fields a message has at most once (and MIME-Version, RFC 2045 4).
_SINGLE_FIELDS = frozenset({
    "date", "from", "sender", "reply-to", "to", "cc", "bcc", "message-id", "in-reply-to",
    "references", "subject", "mime-version",
})
_HEAD_SCAN = 64 * 1024  # an entity's header block longer than this is left as it is


# RFC 9788 4.2: the value a header-protecting sender leaves outside for a hidden Subject
_OBSCURED_SUBJECT = "[...]"


def _merge_fields(
    kept: list[m.Header], plain: bytearray, end: int
) -> tuple[list[m.Header], bytes | None]:
    """(the outer fields to keep, the decrypted entity rebuilt without the fields it
    repeats, or None to use it as it is: the usual case, clients encrypt the Content-*
    fields and the body).

    A sender that encrypted a whole message (`openssl cms -encrypt -in mail.eml`, RFC 9788
    header protection) repeats From, To, Subject... inside: joined to the outer block they
    would appear twice, which readers show inconsistently and which the gateway's own
    signing refuses (two From). Each field a message has once appears once: the outer
    one, as From is what the receiving MTA's checks (SPF, DKIM, DMARC) looked at and the
    inner copy is no more authentic; except an outer Subject of "[...]", which RFC 9788
    senders put outside in place of the real one they protect inside."""
    outer = {h.key for h in kept} & _SINGLE_FIELDS
    if not outer:
        return kept, None
    head = bytes(memoryview(plain)[: min(end, _HEAD_SCAN)])  # one copy, not two
    fields, body_at = m.split_entity_at(head)
    if body_at >= len(head) and end > len(head):  # no blank line within the scan
        return kept, None
    inner = {f.key for f in fields}
    obscured = {h.key for h in kept
                if h.key == "subject" and h.value == _OBSCURED_SUBJECT} & inner
    kept = [h for h in kept if h.key not in obscured]
    clash = (outer & inner) - obscured
    if not clash:
        return kept, None
    block = m.header_lines(f for f in fields if f.key not in clash)
    return kept, b"".join((block, m.CRLF, memoryview(plain)[body_at:end]))


class Decryptor:
    """Decrypts as a gateway holding one or more keys (current first, then retired; RSA
    or EC) without knowing which container the sender used. All failures raise the same
    DecryptError (no padding oracle).

    How it stays uniform: a RecipientInfo names the container (issuer+serial), never the
    gateway key, so every RSA key is tried against every RSA RecipientInfo, and every EC
    key against every RecipientEncryptedKey of every KeyAgreeRecipientInfo on its curve,
    always all of them. RSA PKCS#1 v1.5 decryption runs with OpenSSL's implicit rejection
    (3.2+, bundled in cryptography's wheels): a wrong key or bad padding yields a
    pseudo-random "key" instead of an error, in constant time. ECDH needs no such care
    (the sender's point is checked to lie on the curve; a wrong key fails the key wrap's
    integrity check, which says nothing about the private key). A result of the wrong
    length, or a failed unwrap, is replaced by a random key, and every candidate gets the
    same two one-block probes (last block: PKCS#7 padding; first block: header text).
    Then exactly one full AES-CBC decryption runs, with the best candidate or a random key
    when none passed, and its padding is checked once more. So "wrong key",
    "garbled key", "tampered padding" all take the same steps and end in the same
    DecryptError; only public facts (structure, number of keys and recipients) shape the
    work. CBC without a MAC cannot detect tampering elsewhere in the content: that is
    EnvelopedData's nature; AuthEnvelopedData (AES-GCM, _open_gcm) has a MAC."""

    def __init__(self, keys: Sequence[PrivateKey]) -> None:
        if not keys:
            raise SmimeError("a Decryptor needs at least one private key")
        for key in keys:
            if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
                raise SmimeError("a Decryptor takes RSA or EC private keys")
            problem = checks.smime_key_problem(key.public_key(), "a decryption key")
            if problem is not None:
                raise SmimeError(problem)
        self._keys = tuple(keys)

    def _open(self, der: bytes | memoryview) -> _Opened:
        """-> (padded plaintext, pad length, key index, algorithm, the RecipientInfos that
        yield its content key, the keys that do). Raises DecryptError."""
        try:
            env = cms.parse_enveloped(der)
        except SmimeError:
            raise DecryptError() from None
        refused = cms.REFUSED_CIPHERS.get(env.cipher_oid)
        if refused is not None:
            raise UnsupportedCipherError(f"content encrypted with {refused}, which keypost "
                                         "does not decrypt")
        if env.mac is not None:
            return self._open_gcm(env)
        cipher = cms.CONTENT_CIPHERS.get(env.cipher_oid)
        ct = env.ciphertext
        if cipher is None or len(env.iv) != 16 or not ct or len(ct) % 16:
            raise DecryptError()
        name, key_len = cipher
        first = bytes(ct[:16])
        previous = bytes(ct[-32:-16]) if len(ct) >= 32 else env.iv
        last = bytes(ct[-16:])
        best: tuple[bytes, int] | None = None  # passed the padding probe, looks like MIME
        fallback: tuple[bytes, int] | None = None  # passed the padding probe only
        tried: list[tuple[bytes, int, int]] = []  # (content key, key index, position)
        for cek, right_length, index, position in self._candidates(env, key_len):
            tried.append((cek, index, position))
            # Every pair gets both probes. A wrong key passes the padding probe about
            # once in 256 tries, so the probe alone would pick a wrong key for some
            # messages when several keys meet several RecipientInfos; the second probe
            # (the first block decrypts to header text) ranks the candidates.
            eligible = right_length & _block_padding_ok(cek, previous, last)
            plausible = _looks_like_mime(cek, modes.CBC(env.iv), first)
            if eligible and plausible and best is None:
                best = (cek, index)
            if eligible and fallback is None:
                fallback = (cek, index)
        chosen = best or fallback
        cek, index = chosen if chosen is not None else (os.urandom(key_len), -1)
        decryptor = Cipher(algorithms.AES(cek), modes.CBC(env.iv)).decryptor()
        # update_into a buffer allocated here: measured ~10% faster over 10 MB than update(),
        # and the caller trims the padding in place instead of slicing a copy.
        plain = bytearray(len(ct) + 15)  # update_into wants block_size - 1 spare bytes
        del plain[decryptor.update_into(ct, plain) :]
        plain += decryptor.finalize()  # CBC without padding: nothing held back
        pad = plain[-1]
        valid = 1 <= pad <= 16 and hmac.compare_digest(plain[-pad:], bytes((pad,)) * pad)
        if not valid or index < 0:
            raise DecryptError()
        return plain, pad, index, name, *_yielding(env, cek, tried)

    def _candidates(self, env: cms.Enveloped,
                    key_len: int) -> Iterator[tuple[bytes, bool, int, int]]:
        """(content key, whether it had the right length, key index, recipient position:
        see _recipient_ids) for every key and usable RecipientInfo (EC keys: every
        RecipientEncryptedKey), all of them decrypted whatever the outcome; a result of
        the wrong length comes as a random key (drawn every time: both outcomes cost the
        same), one of the right length may still be wrong (RSA implicit rejection)."""
        for index, key in enumerate(self._keys):
            if isinstance(key, ec.EllipticCurvePrivateKey):
                first = len(env.recipients)  # the agreements' keys come after the KTRIs
                for cek, right_length, n in _agreed_keys(key, env.agreements, key_len):
                    yield cek, right_length, index, first + n
                continue
            for position, ri in enumerate(env.recipients):
                # An SKI RecipientInfo is not used to skip keys: SKI methods differ between
                # issuers (SHA-1 of the key, RFC 7093 variants), a mismatch proves nothing.
                if ri.padding is None:
                    continue  # a public fact: another key-transport algorithm
                filler = os.urandom(key_len)
                try:
                    cek = key.decrypt(ri.encrypted_key, ri.padding)
                except ValueError:
                    # PKCS#1 v1.5: only public facts (length, range) raise, thanks to
                    # implicit rejection. OAEP: OpenSSL's decoding is constant-time and any
                    # failure continues exactly like a wrong key.
                    cek = b""
                right_length = len(cek) == key_len
                yield (cek if right_length else filler), right_length, index, position

    def _open_gcm(self, env: cms.Enveloped) -> _Opened:
        """AuthEnvelopedData with AES-GCM (RFC 5083/5084). GCM authenticates the content:
        nothing is returned unless the tag verifies, and a modified ciphertext, key or tag
        all end in the same DecryptError, so there is no padding oracle to hide. The
        candidate keys are ranked like CBC's (first block decrypts to header text; a
        GCM decryptor yields it before the tag is checked) and at most MAX_GCM_TRIES are
        tried in full: a hostile message cannot make the gateway run the whole content
        through AES once per key and RecipientInfo."""
        cipher = cms.GCM_CIPHERS.get(env.cipher_oid)
        ct, tag = env.ciphertext, env.mac or b""
        # cryptography's GCM takes nonces of 8-128 bytes (RFC 5084 recommends 12) and tags
        # of 4-16 bytes; RFC 5084 allows 12-16, the declared length must be the one sent
        if (cipher is None or not 8 <= len(env.iv) <= 128 or not 12 <= len(tag) <= 16
                or len(tag) != env.mac_length):
            raise DecryptError()
        name, key_len = cipher
        first = bytes(ct[:16])
        tried = [(cek, index, position) for cek, right_length, index, position
                 in self._candidates(env, key_len) if right_length]
        ranked = sorted(((cek, index) for cek, index, _ in tried),
                        key=lambda c: not _looks_like_mime(c[0], modes.GCM(env.iv), first))
        tries = ranked[:MAX_GCM_TRIES] or [(os.urandom(key_len), -1)]
        plain = bytearray(len(ct) + 15)
        for cek, index in tries:
            decryptor = Cipher(algorithms.AES(cek), modes.GCM(env.iv, tag, len(tag))).decryptor()
            if env.aad:
                decryptor.authenticate_additional_data(env.aad)
            written = decryptor.update_into(ct, plain)
            try:
                decryptor.finalize()
            except InvalidTag:
                continue
            if index >= 0:
                del plain[written:]
                return plain, 0, index, name, *_yielding(env, cek, tried)
        plain[:] = b""  # unauthenticated text is never kept
        raise DecryptError()

    def decrypt_der(self, der: bytes) -> tuple[bytes, int, str]:
        """EnvelopedData DER -> (clear content, key index, algorithm)."""
        plain, pad, index, name, _, _ = self._open(der)
        del plain[len(plain) - pad :]
        return bytes(plain), index, name

    def decrypt_message(self, message: bytes) -> DecryptResult:
        try:
            headers, body = m.split_entity(message)
            der = _der_of_parts(headers, body)
        except SmimeError:
            raise DecryptError() from None
        plain, pad, index, name, recipients, keys = self._open(der)
        opened_by = tuple(
            OpenedBy(None if r.issuer_der is None else cms.name_from_der(r.issuer_der),
                     r.serial, r.ski)
            for r in recipients)
        end = len(plain) - pad
        kept, deduplicated = _merge_fields(
            [h for h in headers if not m.is_content_header(h)], plain, end)
        outer = m.header_lines(kept)
        # The outer fields are CRLF already: only the decrypted entity is scanned (bounds,
        # not a slice: no copy), and a canonical one is copied once, into the result.
        inner: bytes | memoryview = memoryview(plain)[:end]
        if deduplicated is not None:
            inner = deduplicated
            if m.is_canonical(inner):
                return DecryptResult(outer + inner, index, name, opened_by, keys)
        elif m.is_canonical(plain, 0, end):
            return DecryptResult(b"".join((outer, inner)), index, name, opened_by, keys)
        # a sender that encrypted LF text (openssl cms -binary): fix it up
        return DecryptResult(outer + m.canonical(bytes(inner)), index, name, opened_by, keys)


def _yielding(env: cms.Enveloped, cek: bytes,
              tried: Sequence[tuple[bytes, int, int]]) -> tuple[_Recipients, frozenset[int]]:
    """The RecipientInfos that yielded `cek` (after the content opened with it), and the
    indices of the keys that did. Every (candidate, key index, position) is compared, in
    constant time: a wrong key's candidate is random (RSA implicit rejection, or the
    filler), so only RecipientInfos of our key match, and only the keys they were
    encrypted to."""
    hits = [(index, position) for candidate, index, position in tried
            if hmac.compare_digest(candidate, cek)]
    ids = _recipient_ids(env)
    return (tuple(ids[p] for p in sorted({p for _, p in hits})),
            frozenset(i for i, _ in hits))


def _recipient_ids(env: cms.Enveloped) -> _Recipients:
    """Who each candidate position names: the KeyTransRecipientInfos in message order,
    then every KeyAgreeRecipientInfo's RecipientEncryptedKeys (each names a container by
    issuer+serial or SKI, as a KTRI does)."""
    return (*env.recipients, *(rek for kari in env.agreements for rek in kari.keys))


# Signing -------------------------------------------------------------------------------


def _date_of(headers: list[m.Header]) -> dt.datetime:
    """The Date header as the signing time; adds Date (now) when missing or unreadable."""
    date = m.find_header(headers, "Date")
    when = m.parse_date(date.value) if date else None
    if when is None:
        when = dt.datetime.now(dt.UTC).replace(microsecond=0)
        if date is not None:
            headers.remove(date)
        headers.append(m.Header("Date", f"Date: {m.format_date(when)}".encode()))
    return when


def _covers(container: x509.Certificate, when: dt.datetime) -> bool:
    return container.not_valid_before_utc <= when <= container.not_valid_after_utc


def pick_signing_container(
    message: bytes, containers: Sequence[x509.Certificate]
) -> x509.Certificate:
    """Of `containers`, the newest (by notBefore) valid at the message's Date, which
    sign_message writes as signingTime (now when Date is missing or unreadable). When none
    covers it: the newest, which sign_message then refuses with the reason. A signer that
    keeps its previous container across a change signs mail dated before the new one's
    notBefore (queued, a client clock behind) this way."""
    if not containers:
        raise SmimeError("no signing container")
    newest_first = sorted(containers, key=lambda c: c.not_valid_before_utc, reverse=True)
    when = _date_of(m.split_entity_at(message)[0])
    return next((c for c in newest_first if _covers(c, when)), newest_first[0])


def sign_message(
    message: bytes,
    key: PrivateKey,
    container: x509.Certificate,
    extra_certs: Sequence[x509.Certificate] = (),
) -> bytes:
    """multipart/signed (detached, SHA-256) with the container in SignedData certificates and
    signingTime equal to the message's Date header (Date is added if missing)."""
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SmimeError("signing key must be RSA or EC")
    if key.public_key() != container.public_key():
        raise SmimeError("the signing key does not belong to the signing container")
    headers, start = m.split_entity_at(message)
    when = _date_of(headers)
    if not _covers(container, when):
        # Verifiers (Thunderbird, verify_signed) check the signer at the signing time, and
        # signingTime must equal Date: a container that does not cover Date would yield a
        # signature that never verifies. Issue it with DirectoryCA.issue(now=<Date>).
        raise SmimeError(
            f"the signing container is valid {container.not_valid_before_utc:%Y-%m-%d %H:%M}"
            f" .. {container.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, which does not cover"
            f" the message's Date {when.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"
        )
    entity = m.transport_safe(_content_entity(headers, message, start))
    offered = _capabilities(container)
    caps = [c for c in DEFAULT_CAPABILITIES if c in offered]
    der = cms.build_signed_data(entity, key, container, [container, *extra_certs], when, caps)
    boundary = f"----keypost-signed-{secrets.token_hex(12)}"
    while boundary.encode() in entity:  # practically never; but a clash would break MIME
        boundary = f"----keypost-signed-{secrets.token_hex(12)}"
    delim = f"--{boundary}\r\n".encode()
    return b"".join(
        (
            _outer_headers(headers),
            b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
            b'micalg=sha-256;\r\n boundary="' + boundary.encode() + b'"\r\n\r\n',
            b"This is an S/MIME signed message\r\n\r\n",
            delim,
            entity,
            b"\r\n",
            delim,
            b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=smime.p7s\r\n"
            b"Content-Description: S/MIME Cryptographic Signature\r\n\r\n",
            m.b64_lines(der),
            f"--{boundary}--\r\n".encode(),
        )
    )


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
    """Check a multipart/signed message (or an application/pkcs7-mime signed-data one,
    whose content is inside the SignedData): the signature over the signed attributes, the
    messageDigest over the content, the signer's chain to `trust_anchors` (directly or
    through intermediates carried in the SignedData), its validity at the signing time,
    key usage, that it names the From address and that signingTime matches Date.
    Never raises for a bad message: `reasons` says what is wrong."""
    try:
        return _verify(message, trust_anchors, now)
    except checks.PARSE_ERRORS as exc:
        # cryptography parses a carried certificate lazily, so a hostile one fails wherever
        # it is first read (its version, key, extensions...): one reason for all of those.
        return _failed(checks.failure_reason(exc, "certificate in the signature"))


def unsigned(message: bytes) -> bytes | None:
    """The message without its S/MIME signature layer: its header fields but Content-*,
    then the Content-* fields and body of the signed entity (multipart/signed: the first
    part; application/pkcs7-mime signed-data: the content inside). None when the message
    is not signed so. The signature is not checked (verify_signed does). Raises SmimeError
    for a signature layer that cannot be read."""
    try:
        headers, entity, der = _signed_parts(message)
    except _NotSigned:
        return None
    if entity is None:
        signed = cms.parse_signed(der)
        if signed.detached:
            raise SmimeError("signed-data without its content (a detached signature)")
        entity = m.canonical(signed.content)
    inner, start = m.split_entity_at(entity)
    outer = m.header_lines(h for h in headers if not m.is_content_header(h))
    return outer + m.canonical_entity([h for h in inner if m.is_content_header(h)], entity, start)


def _failed(reason: str, content: bytes = b"") -> SignatureResult:
    return SignatureResult(False, None, None, (reason,), content)


def _opaque_signed(headers: Sequence[m.Header], body: memoryview) -> bytes | memoryview | None:
    """The SignedData DER of an application/pkcs7-mime signed-data message (old clients
    omit smime-type: then the CMS content type decides), else None."""
    ctype = m.content_type_of(headers)
    if ctype.mime_type not in _PKCS7_MIME_TYPES:
        return None
    smime_type = (ctype.param("smime-type") or "").lower()
    if smime_type not in ("signed-data", ""):
        return None
    der = _decoded(headers, body)
    if not smime_type:
        try:
            cms.parse_signed(der)
        except SmimeError:
            return None
    return der


class _NotSigned(SmimeError):
    """The message is no S/MIME signature layer at all (rather than a broken one)."""


def _signed_parts(message: bytes) -> tuple[list[m.Header], bytes | None, bytes]:
    """(outer headers, signed entity, SignedData DER) of a multipart/signed message, or
    (outer headers, None, SignedData DER) of an application/pkcs7-mime signed-data one,
    whose entity is inside the DER."""
    headers, body = m.split_entity(m.to_crlf(message))
    opaque = _opaque_signed(headers, body)
    if opaque is not None:
        return headers, None, bytes(opaque)
    ctype = m.content_type_of(headers)
    boundary = ctype.param("boundary")
    if ctype.mime_type != "multipart/signed" or not boundary:
        raise _NotSigned("not a multipart/signed message")
    protocol = (ctype.param("protocol") or "").lower()
    if protocol not in _PKCS7_SIG_TYPES:  # e.g. PGP/MIME
        raise _NotSigned(f"multipart/signed with protocol {protocol or '(none)'}, not S/MIME")
    split = m.split_multipart(bytes(body), boundary)
    if len(split.parts) != 2:
        raise SmimeError("multipart/signed must have exactly two parts")
    content, signature = split.parts
    sig_headers, sig_body = m.split_entity(signature)
    if m.content_type_of(sig_headers).mime_type not in _PKCS7_SIG_TYPES:
        raise SmimeError("the second part is not application/pkcs7-signature")
    cte = m.find_header(sig_headers, "Content-Transfer-Encoding")
    der = m.b64_decode(sig_body) if cte and cte.value.lower() == "base64" else bytes(sig_body)
    return headers, content, der


def _find_signer(
    info: cms.SignerInfo, certs: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    for cert in certs:
        if info.issuer_der is not None:
            if cert.serial_number == info.serial and cert.issuer.public_bytes() == info.issuer_der:
                return cert
        elif info.ski is not None:
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            except (x509.ExtensionNotFound, ValueError):
                continue
            if ski.value.digest == info.ski:
                return cert
    return None


# The longest salt a PSS signature can carry: less than the modulus, and RSA keys have
# at most 16384 bits in practice (OpenSSL's own limit for RSA operations).
MAX_PSS_SALT = 2048


def _pss_scheme(params: cms.PssParams) -> tuple[padding.PSS, hashes.HashAlgorithm] | str:
    """RSASSA-PSS-params as cryptography's padding and hash, or why they are refused. SHA-1
    is refused here as in every signature (also as MGF1's hash, though MGF1 needs no
    collision resistance: no signer needs it, openssl uses the signature's hash)."""
    if cms.OID_SHA1 in (params.digest_oid, params.mgf_digest_oid):
        return "RSASSA-PSS with SHA-1 is refused (SHA-256/384/512)"
    if params.salt_length > MAX_PSS_SALT:
        # cryptography converts it to a C int: a larger one raised OverflowError, which
        # no caller expects (a salt longer than the modulus is refused by its own check)
        return f"unsupported RSASSA-PSS parameters: a salt of more than {MAX_PSS_SALT} octets"
    digest = cms.DIGESTS.get(params.digest_oid)
    mgf_digest = cms.DIGESTS.get(params.mgf_digest_oid or b"")
    if digest is None or mgf_digest is None or params.trailer_field != 1:
        return ("unsupported RSASSA-PSS parameters (SHA-256/384/512, MGF1 with SHA-256/384/512,"
                " trailer field 1)")
    return padding.PSS(mgf=padding.MGF1(mgf_digest), salt_length=params.salt_length), digest


def _signature_problem(info: cms.SignerInfo, cert: x509.Certificate) -> str | None:
    """Why the signature over the signed attributes does not verify, or None."""
    digest = cms.DIGESTS.get(info.digest_oid)
    algorithm = cms.SIGNATURE_ALGORITHMS.get(info.signature_oid)
    rsa_padding: padding.AsymmetricPadding = padding.PKCS1v15()
    if info.pss is not None:  # RFC 8551 2.2: receiving agents SHOULD support RSASSA-PSS
        scheme = _pss_scheme(info.pss)
        if isinstance(scheme, str):
            return scheme
        rsa_padding, pss_hash = scheme
        algorithm = ("rsa", pss_hash)
    if digest is None or algorithm is None:
        return ("unsupported digest or signature algorithm (SHA-256/384/512 with RSA, "
                "RSASSA-PSS or ECDSA)")
    if info.signed_attrs is None:
        return "no signed attributes (messageDigest is required)"
    kind, sig_hash = algorithm
    key = checks.public_key(cert)
    if isinstance(key, checks.UnusableKey):  # algorithm_problems gives the key's reason
        return "the signature cannot be checked: the signer's key is unusable"
    try:
        if kind == "rsa" and isinstance(key, rsa.RSAPublicKey):
            key.verify(info.signature, info.signed_attrs, rsa_padding, sig_hash or digest)
        elif kind == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(info.signature, info.signed_attrs, ec.ECDSA(sig_hash or digest))
        else:
            return "signature algorithm does not match the signer's key"
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        return "the signature does not verify with the signer's certificate"
    return None


def _chain_problems(
    cert: x509.Certificate,
    anchors: Sequence[x509.Certificate],
    carried: Sequence[x509.Certificate],
    now: dt.datetime,
) -> list[str]:
    """Signer -> anchor directly (keypost containers), or through one intermediate that the
    SignedData carries (genuine certificates from a CA hierarchy)."""
    anchor, reasons = checks.find_issuer(cert, anchors)
    if anchor is None:
        for inter in carried:
            if inter.subject != cert.issuer:
                continue
            if not checks.signature_valid(cert, checks.public_key(inter)):
                continue
            anchor, inter_reasons = checks.find_issuer(inter, anchors)
            if anchor is not None:
                reasons = (inter_reasons + checks.validity_problems(inter, now)
                           + checks.ca_problems(inter, "intermediate certificate")
                           + checks.critical_problems(inter)
                           # the algorithm floor holds for the whole path, not only its ends
                           + checks.algorithm_problems(inter, "intermediate certificate")
                           + checks.path_length_problems(anchor))
                break
    if anchor is None:
        return reasons
    # The intermediate's own reasons count too (they were dropped here: an expired or
    # non-CA intermediate passed).
    return reasons + checks.anchor_problems(anchor, now)


def _from_problems(headers: Sequence[m.Header], cert: x509.Certificate) -> list[str]:
    """The certificate must name the sender, and the sender must be one: with a second
    From field or a mailbox-list only the first address was compared, while a reader shows
    the others as senders of a message that verified."""
    fields = [h.value for h in headers if h.key == "from"]
    if not fields:
        return ["the message has no From header"]
    found = [a for _, a in email.utils.getaddresses(fields) if a]
    if len(fields) != 1 or len(found) != 1:
        return [f"the From header names {len(found)} addresses in {len(fields)} field(s), "
                "not one"]
    addr = found[0]
    try:
        wanted = parse_address(addr)
        named = describe(cert).addresses
    except (AddressError, ContainerError) as exc:
        return [str(exc)]
    if names_address(named, wanted):
        return []
    return [f"the signer certificate is for {', '.join(named) or 'no address'}, not for {addr}"]


def _verify(
    message: bytes, trust_anchors: Sequence[x509.Certificate], now: dt.datetime | None
) -> SignatureResult:
    at_now = now or dt.datetime.now(dt.UTC)
    if at_now.tzinfo is None:  # a naive time is taken as UTC, as everywhere in keypost
        at_now = at_now.replace(tzinfo=dt.UTC)
    try:
        headers, entity, der = _signed_parts(message)
    except SmimeError as exc:
        return _failed(str(exc))
    content = entity or b""
    try:
        signed = cms.parse_signed(der)
        certs = [x509.load_der_x509_certificate(c) for c in signed.certificates]
    except SmimeError as exc:
        return _failed(str(exc), content)
    except checks.PARSE_ERRORS as exc:
        return _failed(checks.failure_reason(exc, "certificate in the signature"), content)
    if entity is None:  # application/pkcs7-mime: the content travels inside
        if signed.detached:
            return _failed("signed-data without its content (a detached signature)")
        content = signed.content
    elif not signed.detached:
        return _failed("the signature carries its own content (not detached)", content)
    if len(signed.signers) != 1:
        return _failed(f"expected one signer, found {len(signed.signers)}", content)
    info = signed.signers[0]
    cert = _find_signer(info, certs)
    if cert is None:
        return _failed("the signer's certificate is not in the signature", content)
    when = info.signing_time
    reasons: list[str] = []
    problem = _signature_problem(info, cert)
    if problem:
        reasons.append(problem)
    digest_alg = cms.DIGESTS.get(info.digest_oid)
    # Without signed attributes there is no messageDigest or contentType to compare: the
    # reason above says so, not "changed after signing" (`openssl cms -sign -noattr`).
    if digest_alg is not None and info.signed_attrs is not None:
        h = hashes.Hash(digest_alg)
        h.update(content)
        if info.message_digest is None:
            reasons.append("no messageDigest attribute")
        elif not hmac.compare_digest(h.finalize(), info.message_digest):
            reasons.append("the content was changed after signing (messageDigest mismatch)")
    if info.content_type != cms.OID_DATA and info.signed_attrs is not None:
        reasons.append("signed contentType is not id-data")
    if signed.content_type != cms.OID_DATA:  # RFC 5652 11.1: must equal the attribute
        reasons.append("the SignedData's eContentType is not id-data")
    try:
        reasons += checks.algorithm_problems(cert, "signer certificate")
        reasons += _chain_problems(cert, trust_anchors, certs, at_now)
        reasons += checks.validity_problems(cert, when or at_now)
        reasons += checks.usage_problems(cert, Purpose.SIGN, required=False)
        reasons += checks.critical_problems(cert)
    except checks.PARSE_ERRORS as exc:  # lazily parsed extensions
        reasons.append(checks.failure_reason(exc, "signer certificate"))
    reasons += _from_problems(headers, cert)
    if when is None:
        reasons.append("no signingTime attribute")
    else:
        if when > at_now + FUTURE_SKEW:
            reasons.append("the signing time lies in the future")
        date = m.find_header(headers, "Date")
        sent = m.parse_date(date.value) if date else None
        if sent is not None and abs(sent - when) > MAX_DATE_SKEW:
            reasons.append("the signing time is more than 1 h away from the Date header")
    return SignatureResult(not reasons, cert, when, tuple(reasons), content)
