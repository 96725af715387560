"""The container profile's own extensions: a tiny DER codec, SMIMECapabilities, keypost role.

cryptography has no classes for SMIMECapabilities (RFC 4262), RFC 9608 noRevAvail or
our keypost extension, so they travel as `x509.UnrecognizedExtension` with DER values
built and parsed here. The codec handles just the definite-length DER we need; every
parse error is a `ContainerError`, so a hostile certificate cannot raise anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from keypost.core.errors import ContainerError
from keypost.core.types import Capability, Role

# The keypost OID arc. 2.25.<UUID> (ITU-T X.667) is an arc anyone may allocate without
# registration and that cannot collide with anyone else's, unlike squatting a guessed
# IANA Private Enterprise Number. It is a placeholder until keypost registers a PEN;
# relying parties must match on the OID constants below, never on the digits.
KEYPOST_ARC = "2.25.217150176542613645323811423982682058340"
OID_KEYPOST_CONTAINER = x509.ObjectIdentifier(KEYPOST_ARC + ".1.1")
OID_SMIME_CAPABILITIES = x509.ObjectIdentifier("1.2.840.113549.1.9.15")
OID_NO_REV_AVAIL = x509.ObjectIdentifier("2.5.29.56")
OID_SMTP_UTF8_MAILBOX = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.9")

CAPABILITY_OIDS: dict[Capability, str] = {
    Capability.AES256_CBC: "2.16.840.1.101.3.4.1.42",
    Capability.AES128_CBC: "2.16.840.1.101.3.4.1.2",
}
_CAPABILITY_BY_OID = {oid: cap for cap, oid in CAPABILITY_OIDS.items()}

# keypost extension role values (ENUMERATED); never renumber, only append.
ROLE_CODES: dict[Role, int] = {Role.PROXY_ENCRYPTION: 0, Role.PROXY_SIGNING: 1, Role.GENUINE: 2}
_ROLE_BY_CODE = {code: role for role, code in ROLE_CODES.items()}

TAG_SEQUENCE = 0x30
TAG_OID = 0x06
TAG_ENUMERATED = 0x0A
TAG_OCTET_STRING = 0x04
TAG_IA5STRING = 0x16
TAG_UTF8STRING = 0x0C
TAG_NULL = 0x05

NULL_DER = b"\x05\x00"  # the whole value of noRevAvail


# DER primitives -------------------------------------------------------------------


def der_tlv(tag: int, content: bytes) -> bytes:
    """One DER element with a definite length."""
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + content


def der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return der_tlv(TAG_OID, bytes(body))


def decode_oid(content: bytes) -> str:
    if not content or content[-1] & 0x80:
        raise ContainerError("malformed OID in certificate extension")
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


def der_read(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """Read one element at `pos` -> (tag, content, next position)."""
    try:
        tag = data[pos]
        first = data[pos + 1]
        pos += 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count == 0 or count > 4:
                raise ContainerError("unsupported DER length in certificate extension")
            length = int.from_bytes(data[pos : pos + count], "big")
            pos += count
    except IndexError as exc:
        raise ContainerError("truncated DER in certificate extension") from exc
    end = pos + length
    if end > len(data):
        raise ContainerError("truncated DER in certificate extension")
    return tag, data[pos:end], end


def der_elements(content: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) elements of a constructed value, in order."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(content):
        tag, value, pos = der_read(content, pos)
        out.append((tag, value))
    return out


def der_single(data: bytes, tag: int, what: str) -> bytes:
    """The content of `data`, which must be exactly one element with `tag`."""
    got, content, end = der_read(data)
    if got != tag or end != len(data):
        raise ContainerError(f"malformed {what}")
    return content


def spki_algorithm(spki: bytes) -> str:
    """The dotted algorithm OID of a SubjectPublicKeyInfo DER (cryptography's key objects
    forget it, e.g. an id-RSASSA-PSS key loads as a plain RSA key)."""
    parts = der_elements(der_single(spki, TAG_SEQUENCE, "SubjectPublicKeyInfo"))
    algorithm = der_elements(parts[0][1]) if parts and parts[0][0] == TAG_SEQUENCE else []
    if not algorithm or algorithm[0][0] != TAG_OID:
        raise ContainerError("malformed SubjectPublicKeyInfo")
    return decode_oid(algorithm[0][1])


# SMIMECapabilities (RFC 4262 / RFC 8551 2.5.2) -------------------------------------


def encode_smime_capabilities(caps: Sequence[Capability]) -> bytes:
    """SEQUENCE OF SEQUENCE { capabilityID } in preference order; AES-CBC has no params."""
    return der_tlv(
        TAG_SEQUENCE, b"".join(der_tlv(TAG_SEQUENCE, der_oid(CAPABILITY_OIDS[c])) for c in caps)
    )


def decode_smime_capabilities(value: bytes) -> tuple[Capability, ...]:
    """Known capabilities in the order given; unknown algorithms are skipped."""
    caps: list[Capability] = []
    for tag, entry in der_elements(der_single(value, TAG_SEQUENCE, "SMIMECapabilities")):
        if tag != TAG_SEQUENCE:
            raise ContainerError("malformed SMIMECapabilities entry")
        parts = der_elements(entry)
        if not parts or parts[0][0] != TAG_OID:
            raise ContainerError("malformed SMIMECapabilities entry")
        cap = _CAPABILITY_BY_OID.get(decode_oid(parts[0][1]))
        if cap is not None and cap not in caps:
            caps.append(cap)
    return tuple(caps)


# The keypost extension ---------------------------------------------------------------


@dataclass(frozen=True)
class KeypostExtension:
    """KeypostContainer ::= SEQUENCE { role ENUMERATED, gateway OCTET STRING (SIZE(32)),
    directory IA5String }: what the container stands for, the SHA-256 of the gateway
    certificate (or bare SPKI) it carries, and the URL of the directory that issued it."""

    role: Role
    gateway_sha256: bytes
    directory_url: str

    def encode(self) -> bytes:
        if len(self.gateway_sha256) != 32:
            raise ContainerError("gateway fingerprint must be a SHA-256 digest")
        if not self.directory_url.isascii():
            raise ContainerError("directory URL must be ASCII (IA5String)")
        return der_tlv(
            TAG_SEQUENCE,
            der_tlv(TAG_ENUMERATED, bytes((ROLE_CODES[self.role],)))
            + der_tlv(TAG_OCTET_STRING, self.gateway_sha256)
            + der_tlv(TAG_IA5STRING, self.directory_url.encode("ascii")),
        )

    @staticmethod
    def decode(value: bytes) -> KeypostExtension:
        parts = der_elements(der_single(value, TAG_SEQUENCE, "keypost extension"))
        if [t for t, _ in parts] != [TAG_ENUMERATED, TAG_OCTET_STRING, TAG_IA5STRING]:
            raise ContainerError("malformed keypost extension")
        code = int.from_bytes(parts[0][1], "big", signed=True) if parts[0][1] else -1
        role = _ROLE_BY_CODE.get(code)
        if role is None:
            raise ContainerError(f"unknown role {code} in keypost extension")
        if len(parts[1][1]) != 32:
            raise ContainerError("keypost extension: gateway fingerprint is not SHA-256")
        try:
            url = parts[2][1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise ContainerError("keypost extension: directory URL is not IA5") from exc
        return KeypostExtension(role, parts[1][1], url)


# SmtpUTF8Mailbox (RFC 8398 / RFC 9598) -----------------------------------------------


def rfc822_name_der(address: str) -> bytes:
    """GeneralName rfc822Name: [1] IMPLICIT IA5String."""
    return der_tlv(0x81, address.encode("ascii"))


def smtp_utf8_mailbox_der(address: str) -> bytes:
    """GeneralName otherName: [0] IMPLICIT SEQUENCE { id-on-SmtpUTF8Mailbox,
    [0] EXPLICIT UTF8String }."""
    value = der_tlv(0xA0, der_tlv(TAG_UTF8STRING, address.encode("utf-8")))
    return der_tlv(0xA0, der_oid(OID_SMTP_UTF8_MAILBOX.dotted_string) + value)


def decode_smtp_utf8_mailbox(value: bytes) -> str:
    try:
        return der_single(value, TAG_UTF8STRING, "SmtpUTF8Mailbox").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContainerError("SmtpUTF8Mailbox is not UTF-8") from exc
