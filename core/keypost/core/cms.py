"""CMS (RFC 5652) structures the engine reads and writes itself: EnvelopedData recipients,
SignedData for multipart/signed.

The reader walks DER and the BER that real senders produce (indefinite lengths and
chunked OCTET STRINGs, as gpgsm and `openssl cms -stream` write them) by offsets into one
memoryview, so a 10 MB ciphertext is never copied while its envelope is read. Every
malformation becomes SmimeError; nothing else escapes.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from keypost.core.errors import SmimeError
from keypost.core.types import Capability
from keypost.core.x509_checks import SMIME_EC_CURVES
from keypost.core.x509_ext import der_oid, der_tlv, encode_smime_capabilities

MAX_DEPTH = 24  # nesting limit: hostile BER must not exhaust the stack
# Decrypting costs one RSA private operation per key and RecipientInfo (~1.7 ms for
# RSA-3072), and reading one ~20 us: 36,000 RecipientInfos in a 15 MB message took ~60 s
# of a gateway's CPU. Real mail carries one per distinct recipient key plus the sender's;
# the most our own host writes is ~1,001 (500 recipients, each a gateway container and a
# genuine certificate, plus the sender), so the limit sits just above it: no message a
# keypost client sends is refused. More is refused before they are read (not only before
# RSA): recipient_ids and the Decryptor both parse them.
MAX_RECIPIENT_INFOS = 1024
# Elements (tag-length-value) in one CMS structure, counted in one pass before it is read:
# each costs Python work, and a walk per indefinite-length ancestor, so 1,000,000 two-byte
# chunks took 9 s and 380 MB, and a 25 MB message holds ten times as many. Real senders
# write few: chunks of 4096 bytes (openssl -stream, gpgsm; ~6,400 in 25 MB), ~13 per
# RecipientInfo and per RecipientEncryptedKey (~27,000 at both limits), some hundreds per
# certificate. (A CRL of 20,000 revocations inside a SignedData, which nothing here reads,
# would exceed it: that message is refused as malformed, not misread.)
MAX_ELEMENTS = 100_000


def _oid(dotted: str) -> bytes:
    """The content octets of an OID (compared without decoding)."""
    return der_oid(dotted)[2:]


OID_DATA = _oid("1.2.840.113549.1.7.1")
OID_SIGNED_DATA = _oid("1.2.840.113549.1.7.2")
OID_ENVELOPED_DATA = _oid("1.2.840.113549.1.7.3")
OID_AUTH_ENVELOPED_DATA = _oid("1.2.840.113549.1.9.16.1.23")  # RFC 5083
OID_RSA_ENCRYPTION = _oid("1.2.840.113549.1.1.1")
OID_RSAES_OAEP = _oid("1.2.840.113549.1.1.7")
OID_MGF1 = _oid("1.2.840.113549.1.1.8")
OID_SHA1 = _oid("1.3.14.3.2.26")  # the RFC 4055 default in OAEP and PSS parameters
OID_RSASSA_PSS = _oid("1.2.840.113549.1.1.10")  # RFC 4055 3.1, in CMS RFC 4056
OID_CONTENT_TYPE = _oid("1.2.840.113549.1.9.3")
OID_MESSAGE_DIGEST = _oid("1.2.840.113549.1.9.4")
OID_SIGNING_TIME = _oid("1.2.840.113549.1.9.5")
OID_SMIME_CAPABILITIES = _oid("1.2.840.113549.1.9.15")
OID_ECDSA_SHA256 = _oid("1.2.840.10045.4.3.2")

OID_AES256_CBC = _oid("2.16.840.1.101.3.4.1.42")
OID_AES128_CBC = _oid("2.16.840.1.101.3.4.1.2")
# Content ciphers: OID -> (name, key length). AES-192 is read, never written.
CONTENT_CIPHERS: dict[bytes, tuple[str, int]] = {
    OID_AES256_CBC: (Capability.AES256_CBC.value, 32),
    _oid("2.16.840.1.101.3.4.1.22"): ("aes192-cbc", 24),
    OID_AES128_CBC: (Capability.AES128_CBC.value, 16),
}
# AES-GCM for AuthEnvelopedData (RFC 5084): read, never written (mail clients cannot
# read it yet, see README). OID -> (name, key length).
GCM_CIPHERS: dict[bytes, tuple[str, int]] = {
    _oid("2.16.840.1.101.3.4.1.46"): ("aes256-gcm", 32),
    _oid("2.16.840.1.101.3.4.1.26"): ("aes192-gcm", 24),
    _oid("2.16.840.1.101.3.4.1.6"): ("aes128-gcm", 16),
}
GCM_DEFAULT_ICV = 12  # RFC 5084 GCMParameters aes-ICVlen DEFAULT 12
# Ciphers old clients still send, named so that a refusal can say what it was.
REFUSED_CIPHERS: dict[bytes, str] = {
    _oid("1.2.840.113549.3.7"): "3DES (des-ede3-cbc)",
    _oid("1.3.14.3.2.7"): "DES (des-cbc)",
    _oid("1.2.840.113549.3.2"): "RC2 (rc2-cbc)",
    _oid("1.2.840.113549.1.9.16.3.18"): "ChaCha20-Poly1305",
}
# What the writer uses for each negotiated capability: (OID, key length).
WRITTEN_CIPHERS: dict[Capability, tuple[bytes, int]] = {
    Capability.AES256_CBC: (OID_AES256_CBC, 32),
    Capability.AES128_CBC: (OID_AES128_CBC, 16),
}

# Key agreement (RFC 5652 6.2.2) with ephemeral-static ECDH (RFC 5753, RFC 8551 2.7.1.2):
# the KDF scheme OID -> the hash of its ANSI X9.63 KDF. sha256 is written; the others are
# read. SHA-1 too: it is what `openssl cms` writes unless told otherwise, and the KDF
# needs no collision resistance (as OAEP's SHA-1 above). cofactorDH equals stdDH on the
# curves used (P-256/384/521 have cofactor 1), so both are read.
OID_EC_PUBLIC_KEY = _oid("1.2.840.10045.2.1")
OID_ECDH_SHA256_KDF = _oid("1.3.132.1.11.1")  # dhSinglePass-stdDH-sha256kdf-scheme
KEY_AGREEMENT_KDFS: dict[bytes, hashes.HashAlgorithm] = {
    _oid("1.3.133.16.840.63.0.2"): hashes.SHA1(),  # stdDH-sha1kdf
    _oid("1.3.132.1.11.0"): hashes.SHA224(),
    OID_ECDH_SHA256_KDF: hashes.SHA256(),
    _oid("1.3.132.1.11.2"): hashes.SHA384(),
    _oid("1.3.132.1.11.3"): hashes.SHA512(),
    _oid("1.3.133.16.840.63.0.3"): hashes.SHA1(),  # cofactorDH-sha1kdf
    _oid("1.3.132.1.14.0"): hashes.SHA224(),
    _oid("1.3.132.1.14.1"): hashes.SHA256(),
    _oid("1.3.132.1.14.2"): hashes.SHA384(),
    _oid("1.3.132.1.14.3"): hashes.SHA512(),
}
# AES key wrap (RFC 3394) OID -> key-encryption key length; written: the wrap as long as
# the content key (aes128-wrap for AES-128, aes256-wrap for AES-256), as openssl does.
OID_AES128_WRAP = _oid("2.16.840.1.101.3.4.1.5")
OID_AES256_WRAP = _oid("2.16.840.1.101.3.4.1.45")
KEY_WRAPS: dict[bytes, int] = {
    OID_AES128_WRAP: 16,
    _oid("2.16.840.1.101.3.4.1.25"): 24,
    OID_AES256_WRAP: 32,
}
EC_CURVE_OIDS: dict[str, bytes] = {name: _oid(dotted) for name, dotted in SMIME_EC_CURVES.items()}

DIGESTS: dict[bytes, hashes.HashAlgorithm] = {
    _oid("2.16.840.1.101.3.4.2.1"): hashes.SHA256(),
    _oid("2.16.840.1.101.3.4.2.2"): hashes.SHA384(),
    _oid("2.16.840.1.101.3.4.2.3"): hashes.SHA512(),
}
OID_SHA256 = _oid("2.16.840.1.101.3.4.2.1")

# Signature algorithms a SignerInfo may name: OID -> (kind, hash or None = digestAlgorithm).
SIGNATURE_ALGORITHMS: dict[bytes, tuple[str, hashes.HashAlgorithm | None]] = {
    OID_RSA_ENCRYPTION: ("rsa", None),
    _oid("1.2.840.113549.1.1.11"): ("rsa", hashes.SHA256()),
    _oid("1.2.840.113549.1.1.12"): ("rsa", hashes.SHA384()),
    _oid("1.2.840.113549.1.1.13"): ("rsa", hashes.SHA512()),
    OID_ECDSA_SHA256: ("ecdsa", hashes.SHA256()),
    _oid("1.2.840.10045.4.3.3"): ("ecdsa", hashes.SHA384()),
    _oid("1.2.840.10045.4.3.4"): ("ecdsa", hashes.SHA512()),
}

T_INTEGER, T_OCTETS, T_NULL, T_OID = 0x02, 0x04, 0x05, 0x06
T_BIT_STRING = 0x03
T_UTCTIME, T_GENTIME, T_SEQUENCE, T_SET = 0x17, 0x18, 0x30, 0x31
T_CTX0, T_CTX1, T_CTX2, T_CTX3, T_CTX0_PRIM = 0xA0, 0xA1, 0xA2, 0xA3, 0x80


# Reading -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tlv:
    tag: int
    head: int  # offset of the tag byte
    start: int  # first content byte
    end: int  # one past the last content byte
    next: int  # one past the element (after the end-of-contents octets if indefinite)


def _bad(what: str = "malformed CMS structure") -> SmimeError:
    return SmimeError(what)


def read_tlv(buf: memoryview, pos: int, limit: int, depth: int = 0) -> Tlv:
    """One element at `pos` that must end by `limit`."""
    if depth > MAX_DEPTH:
        raise _bad("CMS structure nested too deeply")
    if pos + 2 > limit:
        raise _bad("truncated CMS structure")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise _bad()  # multi-byte tags never occur in CMS
    first = buf[pos + 1]
    start = pos + 2
    if first < 0x80:
        length = first
    elif first == 0x80:  # BER indefinite length: constructed, ends with 00 00
        if not tag & 0x20:
            raise _bad()
        q = start
        while True:
            if q + 2 > limit:
                raise _bad("truncated CMS structure")
            if buf[q] == 0 and buf[q + 1] == 0:
                return Tlv(tag, pos, start, q, q + 2)
            q = read_tlv(buf, q, limit, depth + 1).next
    else:
        count = first & 0x7F
        if count > 8 or start + count > limit:
            raise _bad("truncated CMS structure")
        length = int.from_bytes(buf[start : start + count], "big")
        start += count
    end = start + length
    if end > limit:
        raise _bad("truncated CMS structure")
    return Tlv(tag, pos, start, end, end)


def children(
    buf: memoryview, parent: Tlv, depth: int = 1, at_most: int | None = None
) -> list[Tlv]:
    """The elements inside `parent`; with `at_most`, the walk stops after that many."""
    out: list[Tlv] = []
    pos = parent.start
    while pos < parent.end and (at_most is None or len(out) < at_most):
        child = read_tlv(buf, pos, parent.end, depth)
        out.append(child)
        pos = child.next
    return out


def expect(buf: memoryview, parent: Tlv, tags: Sequence[int]) -> list[Tlv]:
    """Children of `parent` whose leading tags must be `tags` (more may follow)."""
    kids = children(buf, parent)
    if len(kids) < len(tags) or any(k.tag != t for k, t in zip(kids, tags, strict=False)):
        raise _bad()
    return kids


def content(buf: memoryview, t: Tlv) -> memoryview:
    return buf[t.start : t.end]


def octets(buf: memoryview, t: Tlv, depth: int = 1) -> bytes | memoryview:
    """An OCTET STRING's value: a view when primitive; joined chunks when BER-constructed."""
    if not t.tag & 0x20:
        return buf[t.start : t.end]
    if depth > MAX_DEPTH:
        raise _bad("CMS structure nested too deeply")
    return b"".join(octets(buf, c, depth + 1) for c in children(buf, t, depth))


def integer(buf: memoryview, t: Tlv) -> int:
    if t.tag != T_INTEGER or t.start == t.end:
        raise _bad()
    return int.from_bytes(buf[t.start : t.end], "big", signed=True)


def _count_elements(buf: memoryview) -> None:
    """Refuse a structure of more than MAX_ELEMENTS elements, walking it once (each element
    read once, however nested) before read_tlv and children() walk parts of it again.
    Only the count is checked here: what the framing means, the reader decides."""
    count = 0
    ends: list[int | None] = []  # open constructed elements: content end, None = indefinite
    pos, limit = 0, len(buf)
    while pos + 2 <= limit and (ends or pos == 0):
        if ends and ends[-1] is not None and pos >= ends[-1]:
            ends.pop()
            continue
        tag, first = buf[pos], buf[pos + 1]
        if ends and ends[-1] is None and tag == 0 and first == 0:
            ends.pop()  # end-of-contents of an indefinite-length element
            pos += 2
            continue
        count += 1
        if count > MAX_ELEMENTS:
            raise _bad(f"more than {MAX_ELEMENTS} BER elements in one CMS structure")
        start, length = pos + 2, -1
        if first > 0x80:
            n = first & 0x7F
            if n > 8 or start + n > limit:
                return  # the reader says what is wrong
            length = int.from_bytes(buf[start : start + n], "big")
            start += n
        elif first < 0x80:
            length = first
        if tag & 0x20 and len(ends) <= MAX_DEPTH:
            ends.append(None if length < 0 else start + length)
            pos = start
        elif length < 0:
            return
        else:
            pos = start + length


def content_info(buf: memoryview, oids: Sequence[bytes], what: str) -> tuple[bytes, Tlv]:
    """ContentInfo { contentType, [0] EXPLICIT content } whose type is one of `oids` ->
    (that type, the content's SEQUENCE)."""
    _count_elements(buf)
    top = read_tlv(buf, 0, len(buf))
    if top.tag != T_SEQUENCE:
        raise _bad(f"not CMS {what}")
    kids = children(buf, top)
    oid = bytes(content(buf, kids[0])) if kids and kids[0].tag == T_OID else b""
    if len(kids) < 2 or oid not in oids:
        raise _bad(f"not CMS {what}")
    inner = expect(buf, kids[1], [T_SEQUENCE]) if kids[1].tag == T_CTX0 else []
    if not inner:
        raise _bad(f"not CMS {what}")
    return oid, inner[0]


# EnvelopedData -------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyTransRecipient:
    """KeyTransRecipientInfo (RFC 5652 6.2.1): who (issuer+serial or SKI) and the wrapped key."""

    issuer_der: bytes | None
    serial: int | None
    ski: bytes | None
    padding: padding.AsymmetricPadding | None  # PKCS1v15 or OAEP; None: not RSA we can use
    encrypted_key: bytes


@dataclass(frozen=True)
class RecipientEncryptedKey:
    """One recipient of a KeyAgreeRecipientInfo: issuer+serial (or rKeyId's SKI) and the
    wrapped content key."""

    issuer_der: bytes | None
    serial: int | None
    ski: bytes | None
    encrypted_key: bytes


@dataclass(frozen=True)
class KeyAgreeRecipient:
    """KeyAgreeRecipientInfo (RFC 5652 6.2.2) as ECDH ephemeral-static (RFC 5753 3.1):
    the sender's ephemeral public point, the optional ukm, the KDF's hash and the key
    wrap. `kdf` None: a form we do not read (static originator, another scheme or
    wrap, explicit curve parameters): its keys are still listed, never unwrapped."""

    point: bytes  # ECPoint octets of the originatorKey
    curve_oid: bytes | None  # its namedCurve parameter; None: absent or NULL (the recipient's)
    ukm: bytes | None
    kdf: hashes.HashAlgorithm | None
    wrap_oid: bytes
    keys: tuple[RecipientEncryptedKey, ...]
    # the wrap's parameters were an explicit NULL (NSS, so Thunderbird, writes it; RFC 5753
    # says absent): ECC-CMS-SharedInfo's keyInfo carries the AlgorithmIdentifier as sent
    wrap_null: bool = False


@dataclass(frozen=True)
class Enveloped:
    recipients: tuple[KeyTransRecipient, ...]  # KeyTransRecipientInfos
    cipher_oid: bytes
    iv: bytes  # CBC: the IV; GCM: the nonce
    ciphertext: bytes | memoryview
    # AuthEnvelopedData only (RFC 5083): the MAC (GCM tag), its declared length
    # (aes-ICVlen) and the additional authenticated data (the authAttrs as a DER SET)
    mac: bytes | None = None
    mac_length: int = 0
    aad: bytes = b""
    agreements: tuple[KeyAgreeRecipient, ...] = ()  # KeyAgreeRecipientInfos (ECDH)
    # other RecipientInfo kinds (KEK, password, other) are skipped


_ENVELOPED_KINDS = (OID_ENVELOPED_DATA, OID_AUTH_ENVELOPED_DATA)


def parse_enveloped(der: bytes | memoryview) -> Enveloped:
    """Read a ContentInfo holding EnvelopedData or AuthEnvelopedData. Raises SmimeError."""
    buf = memoryview(der)
    try:
        kind, env = content_info(buf, _ENVELOPED_KINDS, "EnvelopedData")
        authenticated = kind == OID_AUTH_ENVELOPED_DATA
        fields = children(buf, env)
        i = 1  # after version
        if len(fields) > i and fields[i].tag == T_CTX0:  # originatorInfo
            i += 1
        if len(fields) < i + 2 or fields[i].tag != T_SET or fields[i + 1].tag != T_SEQUENCE:
            raise _bad()
        infos = children(buf, fields[i], at_most=MAX_RECIPIENT_INFOS + 1)
        if len(infos) > MAX_RECIPIENT_INFOS:
            raise _bad(f"more than {MAX_RECIPIENT_INFOS} RecipientInfos")
        recipients = tuple(_key_trans(buf, ri) for ri in infos if ri.tag == T_SEQUENCE)
        agreements = _key_agreements(buf, [ri for ri in infos if ri.tag == T_CTX1])
        eci = expect(buf, fields[i + 1], [T_OID, T_SEQUENCE])
        alg = expect(buf, eci[1], [T_OID])
        cipher_oid = bytes(content(buf, alg[0]))
        iv = bytes(octets(buf, alg[1])) if len(alg) > 1 and alg[1].tag & 0x1F == T_OCTETS else b""
        if len(eci) < 3 or eci[2].tag not in (T_CTX0_PRIM, T_CTX0):
            raise _bad("EnvelopedData without encrypted content")
        ciphertext = octets(buf, eci[2])
        if not authenticated:
            return Enveloped(recipients, cipher_oid, iv, ciphertext, agreements=agreements)
        mac_length = GCM_DEFAULT_ICV
        if len(alg) > 1 and alg[1].tag == T_SEQUENCE:  # GCMParameters
            params = expect(buf, alg[1], [T_OCTETS])
            iv = bytes(content(buf, params[0]))
            if len(params) > 1:
                mac_length = integer(buf, params[1])
        mac, aad = _auth_tail(buf, fields[i + 2 :])
        return Enveloped(recipients, cipher_oid, iv, ciphertext, mac, mac_length, aad,
                         agreements)
    except IndexError as exc:  # defensive: offsets are checked, but never leak IndexError
        raise _bad() from exc


def _auth_tail(buf: memoryview, rest: list[Tlv]) -> tuple[bytes, bytes]:
    """AuthEnvelopedData after its EncryptedContentInfo: authAttrs [1] IMPLICIT OPTIONAL,
    mac OCTET STRING -> (mac, AAD). The AAD is the authAttrs' DER with the
    universal SET OF tag instead of [1] (RFC 5083 2.2): definite lengths only, as DER."""
    aad = b""
    if rest and rest[0].tag == T_CTX1:
        attrs = rest.pop(0)
        if buf[attrs.head + 1] == 0x80:
            raise _bad("AuthEnvelopedData with indefinite-length authAttrs")
        aad = bytes((T_SET,)) + bytes(buf[attrs.head + 1 : attrs.end])
    if not rest or rest[0].tag != T_OCTETS:
        raise _bad("AuthEnvelopedData without a MAC")
    return bytes(content(buf, rest[0])), aad


def identifier(buf: memoryview, t: Tlv) -> tuple[bytes | None, int | None, bytes | None]:
    """RecipientIdentifier / SignerIdentifier: IssuerAndSerialNumber or [0] SKI ->
    (issuer Name DER, serial, SKI)."""
    if t.tag == T_SEQUENCE:
        ias = expect(buf, t, [T_SEQUENCE, T_INTEGER])
        return bytes(buf[ias[0].head : ias[0].next]), integer(buf, ias[1]), None
    if t.tag == T_CTX0_PRIM:
        return None, None, bytes(content(buf, t))
    raise _bad()


def _key_trans(buf: memoryview, ri: Tlv) -> KeyTransRecipient:
    kids = children(buf, ri)
    if len(kids) < 4:
        raise _bad()
    rid, alg, key = kids[1], kids[2], kids[3]
    issuer, serial, ski = identifier(buf, rid)
    if alg.tag != T_SEQUENCE or key.tag & 0x1F != T_OCTETS:
        raise _bad()
    return KeyTransRecipient(issuer, serial, ski, _key_transport(buf, alg), bytes(octets(buf, key)))


def _key_transport(buf: memoryview, alg: Tlv) -> padding.AsymmetricPadding | None:
    """rsaEncryption -> PKCS#1 v1.5; id-RSAES-OAEP -> OAEP with its hash and MGF1 hash
    (RFC 4055 defaults: SHA-1 for both, which is what `openssl cms -keyopt
    rsa_padding_mode:oaep` sends; OAEP does not rely on collision resistance, RFC 8017
    B.1). A label (pSourceFunc) or anything else: None, the recipient is skipped."""
    oid = content(buf, expect(buf, alg, [T_OID])[0])
    if oid == OID_RSA_ENCRYPTION:
        return padding.PKCS1v15()
    if oid != OID_RSAES_OAEP:
        return None
    digest_oid, mgf_oid, rest = _hash_params(buf, alg)
    if rest:  # pSourceFunc: a label we were never given
        return None
    digest, mgf_digest = _oaep_hash(digest_oid), _oaep_hash(mgf_oid)
    if digest is None or mgf_digest is None:
        return None
    return padding.OAEP(mgf=padding.MGF1(mgf_digest), algorithm=digest, label=None)


def _oaep_hash(oid: bytes | None) -> hashes.HashAlgorithm | None:
    return hashes.SHA1() if oid == OID_SHA1 else DIGESTS.get(oid or b"")


def _hash_params(buf: memoryview, alg: Tlv) -> tuple[bytes, bytes | None, dict[int, Tlv]]:
    """The [0] hash and [1] mask generation function that RSAES-OAEP-params and
    RSASSA-PSS-params share (RFC 4055; both default to SHA-1 and MGF1 with SHA-1) of an
    AlgorithmIdentifier: (hash OID, MGF1's hash OID or None for another function, the
    other parameters by tag). Absent or NULL parameters are the defaults."""
    kids = expect(buf, alg, [T_OID])
    digest: bytes = OID_SHA1
    mgf: bytes | None = OID_SHA1
    rest: dict[int, Tlv] = {}
    params = children(buf, kids[1]) if len(kids) > 1 and kids[1].tag == T_SEQUENCE else []
    # DER has each field once at most; with two hashes, verifiers reading the first and the
    # last would check one signature under different parameters.
    if len({p.tag for p in params}) != len(params):
        raise _bad()
    for param in params:
        if param.tag == T_CTX0:  # hashAlgorithm / hashFunc
            hash_alg = expect(buf, param, [T_SEQUENCE])[0]
            digest = bytes(content(buf, expect(buf, hash_alg, [T_OID])[0]))
        elif param.tag == T_CTX1:  # maskGenAlgorithm: mgf1 with its hash
            gen = expect(buf, expect(buf, param, [T_SEQUENCE])[0], [T_OID, T_SEQUENCE])
            mgf = None
            if content(buf, gen[0]) == OID_MGF1:
                mgf = bytes(content(buf, expect(buf, gen[1], [T_OID])[0]))
        else:
            rest[param.tag] = param
    return digest, mgf, rest


def _key_agreements(buf: memoryview, infos: list[Tlv]) -> tuple[KeyAgreeRecipient, ...]:
    """The KeyAgreeRecipientInfos ([1] IMPLICIT). Their RecipientEncryptedKeys count
    against MAX_RECIPIENT_INFOS together: each costs a key unwrap per EC key, and one
    RecipientInfo could otherwise carry any number of them."""
    out: list[KeyAgreeRecipient] = []
    budget = MAX_RECIPIENT_INFOS
    for ri in infos:
        kari = _key_agree(buf, ri, budget)
        budget -= len(kari.keys)
        out.append(kari)
    return tuple(out)


def _key_agree(buf: memoryview, ri: Tlv, budget: int) -> KeyAgreeRecipient:
    """KeyAgreeRecipientInfo ::= SEQUENCE { version, originator [0] EXPLICIT, ukm [1]
    EXPLICIT OPTIONAL, keyEncryptionAlgorithm, recipientEncryptedKeys }."""
    kids = children(buf, ri)
    if len(kids) < 4 or kids[0].tag != T_INTEGER or kids[1].tag != T_CTX0:
        raise _bad()
    rest = kids[2:]
    ukm: bytes | None = None
    if rest[0].tag == T_CTX1:
        ukm = bytes(octets(buf, expect(buf, rest.pop(0), [T_OCTETS])[0]))
    if len(rest) < 2 or rest[0].tag != T_SEQUENCE or rest[1].tag != T_SEQUENCE:
        raise _bad()
    keys = _encrypted_keys(buf, rest[1], budget)
    usable = True
    point, curve_oid = b"", None
    originator = children(buf, kids[1])
    if len(originator) != 1:
        raise _bad()
    if originator[0].tag == T_CTX1:  # originatorKey: ephemeral-static
        point, curve_oid, usable = _originator_key(buf, originator[0])
    else:  # issuerAndSerialNumber or SKI: static-static ECDH, which RFC 8551 does not use
        usable = False
    algorithm = expect(buf, rest[0], [T_OID])
    kdf = KEY_AGREEMENT_KDFS.get(bytes(content(buf, algorithm[0])))
    wrap_oid = b""
    wrap_null = False
    if len(algorithm) > 1 and algorithm[1].tag == T_SEQUENCE:  # KeyWrapAlgorithm
        wrap = expect(buf, algorithm[1], [T_OID])
        wrap_oid = bytes(content(buf, wrap[0]))
        # RFC 5753 7.2: the AES wraps' parameters are absent; NSS sends NULL
        wrap_null = len(wrap) == 2 and wrap[1].tag == T_NULL and wrap[1].start == wrap[1].end
        usable &= len(wrap) == 1 or wrap_null
    usable &= wrap_oid in KEY_WRAPS
    return KeyAgreeRecipient(point, curve_oid, ukm, kdf if usable else None, wrap_oid, keys,
                             wrap_null)


def _originator_key(buf: memoryview, key: Tlv) -> tuple[bytes, bytes | None, bool]:
    """OriginatorPublicKey ([1] IMPLICIT SEQUENCE { algorithm, publicKey BIT STRING }) ->
    (ECPoint octets, namedCurve OID or None, whether it is an EC key we can read)."""
    parts = expect(buf, key, [T_SEQUENCE, T_BIT_STRING])
    algorithm = expect(buf, parts[0], [T_OID])
    bits = content(buf, parts[1])
    if not len(bits) or bits[0] != 0:
        return b"", None, False  # no octets, or unused bits: no ECPoint
    point = bytes(bits[1:])
    if content(buf, algorithm[0]) != OID_EC_PUBLIC_KEY:
        return point, None, False
    if len(algorithm) == 1 or algorithm[1].tag == T_NULL:
        return point, None, True
    if algorithm[1].tag == T_OID:
        return point, bytes(content(buf, algorithm[1])), True
    return point, None, False  # explicit curve parameters: refused, as RFC 5480 does


def _encrypted_keys(buf: memoryview, keys: Tlv, budget: int) -> tuple[RecipientEncryptedKey, ...]:
    """RecipientEncryptedKeys: SEQUENCE OF { rid (IssuerAndSerialNumber or rKeyId [0]
    IMPLICIT RecipientKeyIdentifier), encryptedKey OCTET STRING }."""
    items = children(buf, keys, at_most=budget + 1)
    if len(items) > budget:
        raise _bad(f"more than {MAX_RECIPIENT_INFOS} RecipientInfos")
    out: list[RecipientEncryptedKey] = []
    for item in items:
        parts = children(buf, item) if item.tag == T_SEQUENCE else []
        if len(parts) < 2 or parts[1].tag & 0x1F != T_OCTETS:
            raise _bad()
        rid, key = parts[0], parts[1]
        wrapped = bytes(octets(buf, key))
        if rid.tag == T_CTX0:  # rKeyId: its subjectKeyIdentifier
            ski = bytes(content(buf, expect(buf, rid, [T_OCTETS])[0]))
            out.append(RecipientEncryptedKey(None, None, ski, wrapped))
        else:
            issuer, serial, _ = identifier(buf, rid)
            out.append(RecipientEncryptedKey(issuer, serial, None, wrapped))
    return tuple(out)


def shared_kek(
    secret: bytes, kdf: hashes.HashAlgorithm, wrap_oid: bytes, ukm: bytes | None,
    wrap_null: bool = False,
) -> bytes:
    """The key-encryption key from an ECDH shared secret: ANSI X9.63 KDF over
    ECC-CMS-SharedInfo { keyInfo (the wrap algorithm as the message names it: parameters
    absent, or NULL where the sender wrote NULL), entityUInfo [0] (the ukm, when sent),
    suppPubInfo [2] (the key length in bits) } (RFC 5753 7.2)."""
    length = KEY_WRAPS[wrap_oid]
    null = der_tlv(T_NULL, b"") if wrap_null else b""
    info = der_tlv(T_SEQUENCE, der_tlv(T_OID, wrap_oid) + null)
    if ukm is not None:
        info += der_tlv(T_CTX0, der_tlv(T_OCTETS, ukm))
    info += der_tlv(T_CTX2, der_tlv(T_OCTETS, (length * 8).to_bytes(4, "big")))
    return X963KDF(kdf, length, der_tlv(T_SEQUENCE, info)).derive(secret)


def name_from_der(der: bytes) -> x509.Name:
    try:
        return x509.Name.from_bytes(der)
    except ValueError as exc:
        raise _bad("malformed issuer name in CMS structure") from exc


# EnvelopedData: writing ---------------------------------------------------------------


def der_head(tag: int, length: int) -> bytes:
    """Tag and definite length of an element whose content is written separately."""
    if length < 0x80:
        return bytes((tag, length))
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size


_RSA_KEY_TRANSPORT = der_tlv(T_SEQUENCE, der_tlv(T_OID, OID_RSA_ENCRYPTION) + der_tlv(T_NULL, b""))
# Fixed elements written once (each der_tlv call costs ~0.5 us, ~1/4 of the DER work)
_VERSION_0 = der_tlv(T_INTEGER, b"\x00")
_VERSION_2 = der_tlv(T_INTEGER, b"\x02")  # EnvelopedData with a KeyAgreeRecipientInfo
_VERSION_3 = der_tlv(T_INTEGER, b"\x03")  # KeyAgreeRecipientInfo
# originatorKey's algorithm: id-ecPublicKey with NULL parameters (RFC 5753 7.1.1)
_EC_ORIGINATOR_ALG = der_tlv(T_SEQUENCE, der_tlv(T_OID, OID_EC_PUBLIC_KEY) + der_tlv(T_NULL, b""))
_WRAP_FOR_KEY = {16: OID_AES128_WRAP, 32: OID_AES256_WRAP}
_DATA_TYPE = der_tlv(T_OID, OID_DATA)
_ENVELOPED_TYPE = der_tlv(T_OID, OID_ENVELOPED_DATA)
_CIPHER_OIDS = {oid: der_tlv(T_OID, oid) for oid, _ in WRITTEN_CIPHERS.values()}


def build_enveloped(
    content: bytes | memoryview,
    recipients: Sequence[x509.Certificate],
    cipher: Capability,
    head: bytes = b"",
) -> bytearray:
    """ContentInfo with EnvelopedData v0 (RFC 5652 6.1) as DER: one KeyTransRecipientInfo
    per certificate (issuer+serial, RSA PKCS#1 v1.5, as PKCS7EnvelopeBuilder and the mail
    clients write it), `head` + `content` in AES-CBC with a fresh key and IV. `head` (a MIME
    entity's header block) is encrypted in front of the content without joining the two:
    the join would copy the body once more (~1.2 ms per 10 MB).

    Written here instead of by PKCS7EnvelopeBuilder, which costs ~0.1 ms besides AES for a
    100 KB body (AES itself ~0.12 ms); here the rest is one RSA public operation per
    recipient (~0.025 ms) and a few small DER headers. The content is not copied before
    AES (the padding is a part of its own) and AES writes the ciphertext into
    the result (a bytearray: bytes() of it would copy 10 MB once more for nothing).
    An EC certificate gets a KeyAgreeRecipientInfo instead (`_key_agree_info`), and the
    EnvelopedData is then version 2 (RFC 5652 6.1). Recipients must be RSA or EC on
    P-256/384/521 (callers check and explain)."""
    oid, key_len = WRITTEN_CIPHERS[cipher]
    secret = os.urandom(key_len + 16)
    cek, iv = secret[:key_len], secret[key_len:]
    infos: list[bytes] = []
    version = _VERSION_0
    for cert in recipients:
        key = cert.public_key()
        rid = der_tlv(T_SEQUENCE, cert.issuer.public_bytes() + _der_int(cert.serial_number))
        if isinstance(key, rsa.RSAPublicKey):
            wrapped = der_tlv(T_OCTETS, key.encrypt(cek, padding.PKCS1v15()))
            infos.append(der_tlv(T_SEQUENCE, _VERSION_0 + rid + _RSA_KEY_TRANSPORT + wrapped))
        elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in EC_CURVE_OIDS:
            infos.append(_key_agree_info(key, rid, cek))
            version = _VERSION_2
        else:
            raise SmimeError("EnvelopedData recipients must have RSA or EC P-256/384/521 keys")
    pad = 16 - (len(head) + len(content)) % 16
    size = len(head) + len(content) + pad
    eci = (
        _DATA_TYPE
        + der_tlv(T_SEQUENCE, _CIPHER_OIDS[oid] + der_tlv(T_OCTETS, iv))
        + der_head(T_CTX0_PRIM, size)  # encryptedContent [0] IMPLICIT OCTET STRING
    )
    env = version + _der_set(infos) + der_head(T_SEQUENCE, len(eci) + size) + eci
    env = der_head(T_SEQUENCE, len(env) + size) + env
    info = _ENVELOPED_TYPE + der_head(T_CTX0, len(env) + size) + env
    der = der_head(T_SEQUENCE, len(info) + size) + info
    # AES writes straight after the DER header: no join copies the ciphertext afterwards.
    # update_into wants block_size - 1 spare bytes, cut off at the end; a part that ends
    # inside a block is held back by the encryptor until the next one completes it.
    out = bytearray(len(der) + size + 15)
    out[: len(der)] = der
    view = memoryview(out)
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    at = len(der)
    for part in (head, content, bytes((pad,)) * pad):
        if part:  # no header block apart (encrypt_entity, envelope_der): no call
            at += encryptor.update_into(part, view[at:])
    encryptor.finalize()  # CBC over whole blocks: nothing is held back
    view.release()
    del out[at:]
    return out


def _key_agree_info(key: ec.EllipticCurvePublicKey, rid: bytes, cek: bytes) -> bytes:
    """KeyAgreeRecipientInfo ([1] IMPLICIT) for one EC recipient (RFC 5753 3.1.1): a fresh
    ephemeral key on its curve (originatorKey), no ukm, dhSinglePass-stdDH-sha256kdf-scheme
    (RFC 8551 2.7.1.2) and the AES key wrap as long as the content key, one
    RecipientEncryptedKey naming the certificate by issuer+serial."""
    ephemeral = ec.generate_private_key(key.curve)
    wrap_oid = _WRAP_FOR_KEY[len(cek)]
    kek = shared_kek(ephemeral.exchange(ec.ECDH(), key), hashes.SHA256(), wrap_oid, None)
    point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    public = der_tlv(T_BIT_STRING, b"\x00" + point)
    originator = der_tlv(T_CTX0, der_tlv(T_CTX1, _EC_ORIGINATOR_ALG + public))
    wrap = der_tlv(T_SEQUENCE, der_tlv(T_OID, wrap_oid))
    algorithm = der_tlv(T_SEQUENCE, der_tlv(T_OID, OID_ECDH_SHA256_KDF) + wrap)
    encrypted = der_tlv(T_SEQUENCE, rid + der_tlv(T_OCTETS, aes_key_wrap(kek, cek)))
    return der_tlv(T_CTX1, _VERSION_3 + originator + algorithm + der_tlv(T_SEQUENCE, encrypted))


# SignedData: writing ------------------------------------------------------------------


def _der_int(value: int) -> bytes:
    return der_tlv(T_INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _der_set(items: Sequence[bytes]) -> bytes:
    return der_tlv(T_SET, b"".join(sorted(items)))  # DER: SET OF sorted by encoding


def _der_time(when: dt.datetime) -> bytes:
    """RFC 5652 11.3: UTCTime for 1950-2049, GeneralizedTime otherwise; always UTC, seconds."""
    when = when.astimezone(dt.UTC)
    if 1950 <= when.year < 2050:
        return der_tlv(T_UTCTIME, when.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return der_tlv(T_GENTIME, when.strftime("%Y%m%d%H%M%SZ").encode("ascii"))


def _attribute(oid: bytes, value: bytes) -> bytes:
    return der_tlv(T_SEQUENCE, der_tlv(T_OID, oid) + _der_set([value]))


SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def build_signed_data(
    content: bytes,
    key: SigningKey,
    signer: x509.Certificate,
    certificates: Sequence[x509.Certificate],
    signing_time: dt.datetime,
    capabilities: Sequence[Capability],
) -> bytes:
    """Detached SignedData (SHA-256) over `content`, with our own signingTime.

    cryptography's PKCS7SignatureBuilder always stamps signingTime with the current time;
    Thunderbird rejects signatures whose signing time is more than an hour from the Date
    header, so the attributes are built here: contentType, signingTime, messageDigest,
    smimeCapabilities, DER-sorted as a SET OF (RFC 5652 5.4)."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(content)
    sha256_alg = der_tlv(T_SEQUENCE, der_tlv(T_OID, OID_SHA256))
    attrs = [
        _attribute(OID_CONTENT_TYPE, der_tlv(T_OID, OID_DATA)),
        _attribute(OID_SIGNING_TIME, _der_time(signing_time)),
        _attribute(OID_MESSAGE_DIGEST, der_tlv(T_OCTETS, digest.finalize())),
        _attribute(OID_SMIME_CAPABILITIES, encode_smime_capabilities(capabilities)),
    ]
    signed_attrs = _der_set(attrs)  # what the signature covers: tagged as SET
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(signed_attrs, padding.PKCS1v15(), hashes.SHA256())
        sig_alg = der_tlv(T_SEQUENCE, der_tlv(T_OID, OID_RSA_ENCRYPTION) + der_tlv(T_NULL, b""))
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(signed_attrs, ec.ECDSA(hashes.SHA256()))
        sig_alg = der_tlv(T_SEQUENCE, der_tlv(T_OID, OID_ECDSA_SHA256))
    else:
        raise SmimeError("signing key must be RSA or EC")
    sid = der_tlv(T_SEQUENCE, signer.issuer.public_bytes() + _der_int(signer.serial_number))
    signer_info = der_tlv(
        T_SEQUENCE,
        _der_int(1)
        + sid
        + sha256_alg
        + bytes((T_CTX0,))
        + signed_attrs[1:]  # same length and content, IMPLICIT [0] instead of SET
        + sig_alg
        + der_tlv(T_OCTETS, signature),
    )
    certs = [c.public_bytes(serialization.Encoding.DER) for c in certificates]
    signed_data = der_tlv(
        T_SEQUENCE,
        _der_int(1)
        + _der_set([sha256_alg])
        + der_tlv(T_SEQUENCE, der_tlv(T_OID, OID_DATA))  # detached: no eContent
        + der_tlv(T_CTX0, b"".join(sorted(certs)))
        + _der_set([signer_info]),
    )
    return der_tlv(T_SEQUENCE, der_tlv(T_OID, OID_SIGNED_DATA) + der_tlv(T_CTX0, signed_data))


# SignedData: reading ------------------------------------------------------------------


@dataclass(frozen=True)
class PssParams:
    """A SignerInfo's RSASSA-PSS-params (RFC 4055 3.1) with the defaults filled in: SHA-1,
    MGF1 with SHA-1, salt 20, trailer field 1. Which of them are acceptable is the
    verifier's decision."""

    digest_oid: bytes  # hashAlgorithm (OID content octets)
    mgf_digest_oid: bytes | None  # MGF1's hash; None: another mask generation function
    salt_length: int
    trailer_field: int


def _pss_params(buf: memoryview, alg: Tlv) -> PssParams:
    digest, mgf, rest = _hash_params(buf, alg)
    if set(rest) - {T_CTX2, T_CTX3}:
        raise _bad()
    salt = integer(buf, expect(buf, rest[T_CTX2], [T_INTEGER])[0]) if T_CTX2 in rest else 20
    trailer = integer(buf, expect(buf, rest[T_CTX3], [T_INTEGER])[0]) if T_CTX3 in rest else 1
    if salt < 0:
        raise _bad()
    return PssParams(digest, mgf, salt, trailer)


@dataclass(frozen=True)
class SignerInfo:
    issuer_der: bytes | None
    serial: int | None
    ski: bytes | None
    digest_oid: bytes
    signature_oid: bytes
    signature: bytes
    signed_attrs: bytes | None  # DER re-tagged as SET OF: the bytes the signature covers
    content_type: bytes | None  # OID content octets
    message_digest: bytes | None
    signing_time: dt.datetime | None
    pss: PssParams | None = None  # signature_oid is id-RSASSA-PSS


@dataclass(frozen=True)
class SignedData:
    certificates: tuple[bytes, ...]  # DER
    signers: tuple[SignerInfo, ...]
    detached: bool
    content_type: bytes = OID_DATA  # eContentType (OID content octets)
    content: bytes = b""  # eContent, the signed bytes (opaque signing; b"" when detached)


def parse_signed(der: bytes | memoryview) -> SignedData:
    """Read a ContentInfo holding SignedData. Raises SmimeError."""
    buf = memoryview(der)
    try:
        _, sd = content_info(buf, (OID_SIGNED_DATA,), "SignedData")
        fields = expect(buf, sd, [T_INTEGER, T_SET, T_SEQUENCE])
        encap = children(buf, fields[2])
        if not encap or encap[0].tag != T_OID:
            raise _bad()
        detached = len(encap) < 2
        econtent = b""
        if not detached:  # [0] EXPLICIT OCTET STRING, chunked in BER (openssl -stream)
            inner = children(buf, encap[1])
            if encap[1].tag != T_CTX0 or len(inner) != 1 or inner[0].tag & 0x1F != T_OCTETS:
                raise _bad()
            econtent = bytes(octets(buf, inner[0]))
        certs: list[bytes] = []
        signer_set: Tlv | None = None
        for field in fields[3:]:
            if field.tag == T_CTX0:
                certs.extend(
                    bytes(buf[c.head : c.next]) for c in children(buf, field) if c.tag == T_SEQUENCE
                )
            elif field.tag == T_SET:
                signer_set = field
        if signer_set is None:
            raise _bad()
        signers = tuple(_signer_info(buf, si) for si in children(buf, signer_set))
    except IndexError as exc:
        raise _bad() from exc
    return SignedData(tuple(certs), signers, detached, bytes(content(buf, encap[0])), econtent)


_SINGLE_ATTRIBUTES = {
    OID_CONTENT_TYPE: "contentType",
    OID_MESSAGE_DIGEST: "messageDigest",
    OID_SIGNING_TIME: "signingTime",
}


def _signer_info(buf: memoryview, si: Tlv) -> SignerInfo:
    # Every tag is checked, not only the ones we read values from: children() would also
    # read a primitive's bytes as TLVs, so a SignerInfo with other tags (not DER of RFC
    # 5652 5.3) had been accepted, and its signature still verified.
    if si.tag != T_SEQUENCE:
        raise _bad()
    kids = children(buf, si)
    if len(kids) < 5 or kids[0].tag != T_INTEGER or kids[2].tag != T_SEQUENCE:
        raise _bad()
    sid, digest_alg = kids[1], kids[2]
    issuer, serial, ski = identifier(buf, sid)
    rest = kids[3:]
    attrs_tlv = rest.pop(0) if rest and rest[0].tag == T_CTX0 else None
    if len(rest) < 2 or rest[0].tag != T_SEQUENCE or rest[1].tag != T_OCTETS:
        raise _bad()
    digest_oid = bytes(content(buf, expect(buf, digest_alg, [T_OID])[0]))
    sig_oid = bytes(content(buf, expect(buf, rest[0], [T_OID])[0]))
    pss = _pss_params(buf, rest[0]) if sig_oid == OID_RSASSA_PSS else None
    signature = bytes(content(buf, rest[1]))
    signed_attrs = content_type = message_digest = signing_time = None
    if attrs_tlv is not None:
        raw = bytes(buf[attrs_tlv.head : attrs_tlv.next])
        signed_attrs = bytes((T_SET,)) + raw[1:]
        seen: set[bytes] = set()
        for attr in children(buf, attrs_tlv):
            if attr.tag != T_SEQUENCE:
                raise _bad()
            parts = expect(buf, attr, [T_OID, T_SET])
            values = children(buf, parts[1])
            if len(values) != 1:
                raise _bad("signed attribute with other than one value")
            oid, value = bytes(content(buf, parts[0])), values[0]
            if oid in _SINGLE_ATTRIBUTES:
                # RFC 5652 11.1-11.3: once at most. Reading the last copy, a signer could
                # send one SignedData that other verifiers (reading the first) see as
                # signing another content or time.
                if oid in seen:
                    raise _bad(f"signed attribute {_SINGLE_ATTRIBUTES[oid]} more than once")
                seen.add(oid)
            if oid == OID_CONTENT_TYPE and value.tag == T_OID:
                content_type = bytes(content(buf, value))
            elif oid == OID_MESSAGE_DIGEST and value.tag == T_OCTETS:
                message_digest = bytes(content(buf, value))
            elif oid == OID_SIGNING_TIME:
                signing_time = _parse_time(value.tag, bytes(content(buf, value)))
    return SignerInfo(
        issuer,
        serial,
        ski,
        digest_oid,
        sig_oid,
        signature,
        signed_attrs,
        content_type,
        message_digest,
        signing_time,
        pss,
    )


def _parse_time(tag: int, text: bytes) -> dt.datetime:
    formats = {T_UTCTIME: "%y%m%d%H%M%SZ", T_GENTIME: "%Y%m%d%H%M%SZ"}
    if tag not in formats:
        raise _bad("malformed signingTime")
    try:
        when = dt.datetime.strptime(text.decode("ascii"), formats[tag])
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad("malformed signingTime") from exc
    if tag == T_UTCTIME and when.year >= 2050:  # RFC 5280 4.1.2.5.1: YY >= 50 is 19YY
        when = when.replace(year=when.year - 100)
    return when.replace(tzinfo=dt.UTC)
