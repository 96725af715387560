"""A small sans-IO BER codec for the subset of ASN.1 that LDAPv3 (RFC 4511) uses.

Why not pyasn1 (what ldap3 and most Python LDAP code use): its generic, schema-driven
codec costs ~170 us to decode and ~140 us to encode one search round trip, about 15x
the whole rest of a cached lookup (see shared notes on performance). LDAP needs only
definite lengths, low tag numbers, INTEGER/ENUMERATED, OCTET STRING, BOOLEAN and
constructed SEQUENCE/SET with context/application tags, so a few direct functions over
`bytes` with integer offsets do the job in a few microseconds.

Decoding works on (data, pos, end) triples so that nothing is copied until a value
is taken out. Every malformed input raises `ProtocolError` (never IndexError or
ValueError), and every length is checked against its enclosing element before use,
so a header claiming gigabytes is refused without allocating anything.
"""

from __future__ import annotations

from collections.abc import Iterable

from keypost.core.errors import KeypostError

# Tag octets (class | constructed | number) for the universal types LDAP uses.
BOOLEAN = 0x01
INTEGER = 0x02
OCTET_STRING = 0x04
NULL = 0x05
ENUMERATED = 0x0A
SEQUENCE = 0x30
SET = 0x31

CLASS_APPLICATION = 0x40
CLASS_CONTEXT = 0x80
CONSTRUCTED = 0x20

DEFAULT_MAX_MESSAGE = 1 << 20  # 1 MiB: far above any LDAP request a directory client sends
MAX_DEPTH = 32  # nesting of constructed elements (filters are the only recursive part)
_MAX_LENGTH_OCTETS = 4  # lengths up to 4 GiB - 1; anything longer is an attack, not LDAP
_MAX_INT_OCTETS = 16  # LDAP integers are 0..2^31-1; allow slack, refuse bignum bombs


class ProtocolError(KeypostError):
    """The peer sent bytes that are not a well-formed LDAP PDU (answer: protocolError, close)."""


def application(number: int, constructed: bool = True) -> int:
    """Tag octet of [APPLICATION number]."""
    return CLASS_APPLICATION | (CONSTRUCTED if constructed else 0) | number


def context(number: int, constructed: bool = False) -> int:
    """Tag octet of [number] (context-specific)."""
    return CLASS_CONTEXT | (CONSTRUCTED if constructed else 0) | number


# --------------------------------------------------------------------------- decoding


def read_header(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Read the TLV header at `pos`; return (tag, content_start, content_end).

    The element must lie entirely within `end` (its container's end).
    """
    if pos + 2 > end:
        raise ProtocolError("truncated BER element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise ProtocolError("BER high tag numbers are not used by LDAP")
    n = data[pos + 1]
    pos += 2
    if n < 0x80:
        length = n
    else:
        k = _long_length_octets(n)
        if pos + k > end:
            raise ProtocolError("truncated BER length")
        length = int.from_bytes(data[pos : pos + k], "big")
        pos += k
    cend = pos + length
    if cend > end:
        raise ProtocolError("BER element longer than its container")
    return tag, pos, cend


def _long_length_octets(n: int) -> int:
    """How many length octets follow a long-form first octet `n` (0x80 = indefinite)."""
    if n == 0x80:
        raise ProtocolError("BER indefinite length is not allowed in LDAP")
    k = n & 0x7F
    if k > _MAX_LENGTH_OCTETS:
        raise ProtocolError("BER length field too long")
    return k


def expect(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    """Read a header that must carry `tag`; return (content_start, content_end)."""
    t, start, cend = read_header(data, pos, end)
    if t != tag:
        raise ProtocolError(f"expected {what} (tag 0x{tag:02x}), got tag 0x{t:02x}")
    return start, cend


def frame_length(buf: bytes | bytearray, max_size: int = DEFAULT_MAX_MESSAGE) -> int | None:
    """Total length of the complete message at the start of `buf`, or None if incomplete.

    Only the header is inspected, so a message claiming a huge length is rejected as
    soon as its header arrives, before any of its body is buffered.
    """
    avail = len(buf)
    if avail == 0:
        return None
    if buf[0] != SEQUENCE:
        raise ProtocolError("LDAP message is not a SEQUENCE")
    if avail < 2:
        return None
    n = buf[1]
    if n < 0x80:
        total = 2 + n
    else:
        k = _long_length_octets(n)
        if avail < 2 + k:
            return None
        total = 2 + k + int.from_bytes(buf[2 : 2 + k], "big")
    if total > max_size:
        raise ProtocolError(f"LDAP message of {total} bytes exceeds the limit of {max_size}")
    return total if avail >= total else None


def take_octets(data: bytes, pos: int, end: int, tag: int = OCTET_STRING) -> tuple[bytes, int]:
    """Read a primitive element that must carry `tag`; return (content, next position)."""
    # Fast path for the short form, which nearly every element of a request uses.
    if pos + 2 <= end and data[pos] == tag:
        n = data[pos + 1]
        if n < 0x80:
            e = pos + 2 + n
            if e <= end:
                return data[pos + 2 : e], e
    s, e = expect(data, pos, end, tag, f"element with tag 0x{tag:02x}")
    return data[s:e], e


def take_str(data: bytes, pos: int, end: int, tag: int = OCTET_STRING) -> tuple[str, int]:
    """Read an LDAPString (UTF-8 OCTET STRING) carrying `tag`; return (text, next position)."""
    raw, e = take_octets(data, pos, end, tag)
    try:
        return raw.decode("utf-8"), e
    except UnicodeDecodeError:
        raise ProtocolError("LDAP string is not valid UTF-8") from None


def take_int(data: bytes, pos: int, end: int, tag: int = INTEGER) -> tuple[int, int]:
    """Read an INTEGER/ENUMERATED carrying `tag`; return (value, next position)."""
    if pos + 3 <= end and data[pos] == tag and data[pos + 1] == 1:
        b = data[pos + 2]
        return (b - 256 if b > 127 else b), pos + 3
    s, e = expect(data, pos, end, tag, f"integer with tag 0x{tag:02x}")
    return decode_int(data, s, e), e


def take_bool(data: bytes, pos: int, end: int, tag: int = BOOLEAN) -> tuple[bool, int]:
    """Read a BOOLEAN carrying `tag`; return (value, next position)."""
    s, e = expect(data, pos, end, tag, f"boolean with tag 0x{tag:02x}")
    return decode_bool(data, s, e), e


def decode_int(data: bytes, start: int, end: int) -> int:
    """Content octets of an INTEGER or ENUMERATED (two's complement)."""
    if start >= end:
        raise ProtocolError("empty BER integer")
    if end - start > _MAX_INT_OCTETS:
        raise ProtocolError("BER integer too large")
    if end - start == 1:  # the common case: message IDs, scopes, result codes
        b = data[start]
        return b - 256 if b > 127 else b
    return int.from_bytes(data[start:end], "big", signed=True)


def decode_bool(data: bytes, start: int, end: int) -> bool:
    """Content octets of a BOOLEAN (BER: any non-zero octet is TRUE)."""
    if end - start != 1:
        raise ProtocolError("BER boolean must be one octet")
    return data[start] != 0


def decode_utf8(data: bytes, start: int, end: int) -> str:
    """Content octets of an LDAPString (UTF-8, RFC 4511 4.1.2)."""
    try:
        return data[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("LDAP string is not valid UTF-8") from None


# --------------------------------------------------------------------------- encoding

# Short-form length octets, pre-built: nearly every element of a search is < 128 bytes.
_SHORT_LENGTHS = [bytes((n,)) for n in range(128)]


def encode_length(n: int) -> bytes:
    """Definite-form length octets, minimal (as DER and RFC 4511 5.1 want)."""
    if n < 0x80:
        return _SHORT_LENGTHS[n]
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, content: bytes) -> bytes:
    """One element: tag, length, content."""
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    return bytes((tag,)) + encode_length(n) + content


def encode_int(value: int, tag: int = INTEGER) -> bytes:
    """INTEGER/ENUMERATED in the minimal two's complement form."""
    if 0 <= value < 0x80:
        return bytes((tag, 1, value))
    body = value.to_bytes((value + (value < 0)).bit_length() // 8 + 1, "big", signed=True)
    return bytes((tag, len(body))) + body


def encode_bool(value: bool, tag: int = BOOLEAN) -> bytes:
    """BOOLEAN; TRUE is 0xFF as RFC 4511 5.1 requires (plain BER would allow any non-zero)."""
    return bytes((tag, 1, 0xFF if value else 0x00))


def encode_octets(value: bytes, tag: int = OCTET_STRING) -> bytes:
    """OCTET STRING (always primitive: RFC 4511 5.1 forbids the constructed form)."""
    return tlv(tag, value)


def encode_str(value: str, tag: int = OCTET_STRING) -> bytes:
    """LDAPString: an OCTET STRING of UTF-8."""
    return tlv(tag, value.encode("utf-8"))


def encode_seq(parts: Iterable[bytes], tag: int = SEQUENCE) -> bytes:
    """A constructed element from already encoded members."""
    return tlv(tag, b"".join(parts))
