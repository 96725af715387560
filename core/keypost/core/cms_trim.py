"""An EnvelopedData or AuthEnvelopedData cut down to some of its recipients.

A sender's client encrypts one envelope for every recipient, To, Cc and Bcc alike, and a
RecipientInfo names its certificate (issuer and serial, or subjectKeyIdentifier): relayed
as it came, the envelope tells each recipient who else got it, a Bcc recipient's public
certificate included. Cut down, it names only the certificates kept.

Only what holds the RecipientInfos is written anew, with definite lengths: the SET OF
RecipientInfo, a KeyAgreeRecipientInfo that loses some of its RecipientEncryptedKeys, the
(Auth)EnvelopedData and the ContentInfo. Every RecipientInfo kept whole and everything
after them (the encrypted content, unprotectedAttrs, authAttrs, the MAC) keep their bytes,
BER as the sender wrote it (indefinite lengths from `openssl cms -stream`): BER lets a
definite-length element hold indefinite ones. Nothing the content key protects changes:
CBC has no MAC, and AuthEnvelopedData's MAC covers the content and the authAttrs, not the
RecipientInfos (RFC 5083 2.1), so every kept recipient still opens it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from keypost.core import cms
from keypost.core.cms import T_CTX0, T_CTX1, T_INTEGER, T_OCTETS, T_OID, T_SEQUENCE, T_SET, Tlv
from keypost.core.errors import SmimeError
from keypost.core.x509_checks import ski_extension
from keypost.core.x509_ext import der_tlv

# OriginatorInfo's CertificateChoices and RevocationInfoChoice tags that set the version
T_V2_ATTR_CERT, T_OTHER_CERT, T_OTHER_CRL = 0xA2, 0xA3, 0xA1


@dataclass(frozen=True)
class Kept:
    """The certificates whose RecipientInfos stay: by issuer and serial, and by
    subjectKeyIdentifier (the extension, which `openssl cms -keyid` names)."""

    names: frozenset[tuple[x509.Name, int]]
    skis: frozenset[bytes]

    @classmethod
    def of(cls, certificates: Sequence[x509.Certificate]) -> Kept:
        return cls(frozenset((c.issuer, c.serial_number) for c in certificates),
                   frozenset(ski for c in certificates if (ski := ski_extension(c)) is not None))

    def named(self, buf: memoryview, rid: Tlv) -> bool:
        """Does a RecipientIdentifier (or a KeyAgreeRecipientIdentifier) name one of them?"""
        if rid.tag == T_CTX0:  # rKeyId [0] IMPLICIT RecipientKeyIdentifier
            return bytes(cms.content(buf, cms.expect(buf, rid, [T_OCTETS])[0])) in self.skis
        issuer, serial, ski = cms.identifier(buf, rid)
        if issuer is None or serial is None:
            return ski is not None and ski in self.skis
        return (cms.name_from_der(issuer), serial) in self.names


def trim(der: bytes | memoryview, kept: Kept) -> bytes | None:
    """The ContentInfo `der` with only the RecipientInfos naming a certificate of `kept`
    (of a KeyAgreeRecipientInfo, only such RecipientEncryptedKeys); None when it names no
    other (nothing to take out). Raises SmimeError: malformed, not (Auth)EnvelopedData,
    or naming none of them."""
    buf = memoryview(der)
    try:
        kind, env = cms.content_info(buf, (cms.OID_ENVELOPED_DATA, cms.OID_AUTH_ENVELOPED_DATA),
                                     "EnvelopedData")
        fields = cms.children(buf, env)
        at = 2 if len(fields) > 1 and fields[1].tag == T_CTX0 else 1  # originatorInfo
        if (not fields or fields[0].tag != T_INTEGER or len(fields) < at + 2
                or fields[at].tag != T_SET or fields[at + 1].tag != T_SEQUENCE):
            raise SmimeError("malformed CMS structure")
        infos = cms.children(buf, fields[at], at_most=cms.MAX_RECIPIENT_INFOS + 1)
        if len(infos) > cms.MAX_RECIPIENT_INFOS:
            raise SmimeError(f"more than {cms.MAX_RECIPIENT_INFOS} RecipientInfos")
        staying: list[tuple[Tlv, bytes | memoryview]] = []
        for info in infos:
            part = _kept_part(buf, info, kept)
            if part is not None:
                staying.append((info, part))
        # a part kept whole is a view of `buf`; one cut down is new bytes
        if len(staying) == len(infos) and all(isinstance(p, memoryview) for _, p in staying):
            return None
        if not staying:
            raise SmimeError("the envelope names none of the certificates kept")
        rest = fields[at + 1 :]  # the encrypted content and what follows it, as sent
        originator = fields[1] if at == 2 else None
        if kind == cms.OID_AUTH_ENVELOPED_DATA:
            version = 0  # RFC 5083 2.1: always 0
        else:
            unprotected = any(f.tag == T_CTX1 for f in rest)
            version = _version(buf, originator, [i for i, _ in staying], unprotected)
    except IndexError as exc:  # defensive, as cms's readers: offsets are checked
        raise SmimeError("malformed CMS structure") from exc
    head = der_tlv(T_INTEGER, bytes((version,)))
    if originator is not None:
        head += bytes(buf[originator.head : originator.next])
    head += der_tlv(T_SET, b"".join(part for _, part in staying))
    size = len(head) + sum(f.next - f.head for f in rest)
    env_head = cms.der_head(T_SEQUENCE, size)
    oid = der_tlv(T_OID, kind)
    explicit = cms.der_head(T_CTX0, len(env_head) + size)
    top = cms.der_head(T_SEQUENCE, len(oid) + len(explicit) + len(env_head) + size)
    # one join: the encrypted content (maybe megabytes) is copied once
    return b"".join([top, oid, explicit, env_head, head,
                     *(buf[f.head : f.next] for f in rest)])


def _kept_part(buf: memoryview, info: Tlv, kept: Kept) -> bytes | memoryview | None:
    """What stays of one RecipientInfo: its bytes (a view), a KeyAgreeRecipientInfo with
    fewer RecipientEncryptedKeys (new bytes), or None. KEK, password and other
    RecipientInfos name no certificate: they go."""
    whole = buf[info.head : info.next]
    if info.tag == T_SEQUENCE:  # KeyTransRecipientInfo { version, rid, ... }
        kids = cms.children(buf, info, at_most=2)
        if len(kids) < 2:
            raise SmimeError("malformed CMS structure")
        return whole if kept.named(buf, kids[1]) else None
    if info.tag != T_CTX1:
        return None
    # KeyAgreeRecipientInfo { version, originator, ukm OPTIONAL, algorithm, keys }
    kids = cms.children(buf, info)
    if len(kids) < 4 or kids[-1].tag != T_SEQUENCE:
        raise SmimeError("malformed CMS structure")
    keys = cms.children(buf, kids[-1], at_most=cms.MAX_RECIPIENT_INFOS + 1)
    if len(keys) > cms.MAX_RECIPIENT_INFOS:
        raise SmimeError(f"more than {cms.MAX_RECIPIENT_INFOS} RecipientInfos")
    mine = [k for k in keys if kept.named(buf, _key_rid(buf, k))]
    if len(mine) == len(keys):
        return whole
    if not mine:
        return None
    body = b"".join(bytes(buf[k.head : k.next]) for k in kids[:-1])
    body += der_tlv(T_SEQUENCE, b"".join(bytes(buf[k.head : k.next]) for k in mine))
    return der_tlv(T_CTX1, body)


def _key_rid(buf: memoryview, key: Tlv) -> Tlv:
    """A RecipientEncryptedKey's rid."""
    parts = cms.children(buf, key, at_most=1) if key.tag == T_SEQUENCE else []
    if not parts:
        raise SmimeError("malformed CMS structure")
    return parts[0]


def _version(buf: memoryview, originator: Tlv | None, infos: Sequence[Tlv],
             unprotected: bool) -> int:
    """EnvelopedData's version for what remains (RFC 5652 6.1). Only KeyTrans and
    KeyAgree RecipientInfos remain (password and other ones, which would make it 3, go)."""
    if originator is not None:
        sets = {f.tag: cms.children(buf, f) for f in cms.children(buf, originator)}
        certs = {c.tag for c in sets.get(T_CTX0, [])}
        crls = {c.tag for c in sets.get(T_CTX1, [])}
        if T_OTHER_CERT in certs or T_OTHER_CRL in crls:
            return 4
        if T_V2_ATTR_CERT in certs:
            return 3
    if originator is None and not unprotected and all(
            i.tag == T_SEQUENCE and cms.integer(buf, cms.children(buf, i, at_most=1)[0]) == 0
            for i in infos):
        return 0
    return 2
