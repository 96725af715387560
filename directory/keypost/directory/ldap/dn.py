"""Distinguished names (RFC 4514) as far as the directory needs them: compare, nest, escape.

DNs are compared in a normalised form: attribute types lower-cased (and a few well-known
OIDs and aliases mapped to their short names), values unescaped and case-folded (every
naming attribute the directory uses - dc, mail, cn, uid, o, ou - matches case-insensitively).
"""

from __future__ import annotations

import functools
import re

from keypost.core.errors import KeypostError

Rdn = tuple[tuple[str, str], ...]  # sorted (type, value) pairs of one RDN
Dn = tuple[Rdn, ...]  # most specific RDN first, as written

_TYPE_ALIASES = {
    "0.9.2342.19200300.100.1.25": "dc",
    "domaincomponent": "dc",
    "0.9.2342.19200300.100.1.1": "uid",
    "userid": "uid",
    "2.5.4.3": "cn",
    "commonname": "cn",
    "0.9.2342.19200300.100.1.3": "mail",
    "rfc822mailbox": "mail",
    "2.5.4.10": "o",
    "organizationname": "o",
    "2.5.4.11": "ou",
    "organizationalunitname": "ou",
    "2.5.4.6": "c",
    "countryname": "c",
    "2.5.4.7": "l",
    "localityname": "l",
    "2.5.4.0": "objectclass",
}
_SPECIAL = ',+"\\<>;='
# Longer DNs are refused (search bases) or taken as they are (bind names) unparsed: an
# entry's DN, mail=<address of at most 254 octets>,<suffix>, stays far below it, and
# parsing ~1 MB (what fits in a message) blocked the event loop for ~0.2-0.5 s.
MAX_DN_LENGTH = 2048
_CACHED_DN_LENGTH = 256  # parse_dn keeps the results of DNs up to this long
_HEX = "0123456789abcdefABCDEF"


class InvalidDN(KeypostError):
    """A DN that does not follow RFC 4514 (answer: invalidDNSyntax)."""


def parse_dn(text: str) -> Dn:
    """Parse and normalise an RFC 4514 string. The empty string is the root (no RDNs).

    Callers refuse texts over MAX_DN_LENGTH first. Short ones are parsed once and kept
    (clients repeat their base DN on every search); longer ones are parsed each time, so
    that what is kept stays small (512 RDNs in 2 KB parse into ~55 KB).
    """
    if len(text) <= _CACHED_DN_LENGTH:
        return _parse_dn_cached(text)
    return _parse_dn(text)


@functools.lru_cache(maxsize=4096)
def _parse_dn_cached(text: str) -> Dn:
    return _parse_dn(text)


def _parse_dn(text: str) -> Dn:
    if not text.strip():
        return ()
    rdns: list[Rdn] = []
    avas: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        eq = text.find("=", i)
        if eq < 0:
            raise InvalidDN(f"invalid DN {text!r}: attribute without '='")
        attr = normalise_type(text[i:eq])
        if not attr or not all(c.isalnum() or c in "-." for c in attr):
            raise InvalidDN(f"invalid DN {text!r}: bad attribute type")
        value, i = _read_value(text, eq + 1)
        avas.append((attr, value))
        if i >= n:
            rdns.append(tuple(sorted(avas)))
            return tuple(rdns)
        if text[i] in ",;":  # ';' is the RFC 1779 separator some old clients still send
            rdns.append(tuple(sorted(avas)))
            avas = []
        i += 1


def normalise_type(name: str) -> str:
    """An attribute type as compared: lower case, well-known OIDs and aliases mapped to
    their short names (`2.5.4.10` and `organizationName` -> `o`)."""
    attr = name.strip().lower()
    return _TYPE_ALIASES.get(attr, attr)


def leading_rdn(text: str) -> Rdn:
    """The first RDN of a valid DN string with its values as written (unescaped, case
    kept), unlike parse_dn's case-folded ones: the suffix entry shows them."""
    avas: list[tuple[str, str]] = []
    i = 0
    while True:
        eq = text.index("=", i)
        _, end = _read_value(text, eq + 1)
        raw = text[eq + 1 : end].strip()
        value = raw[1:-1] if len(raw) > 1 and raw[0] == raw[-1] == '"' else _unescape(raw)
        avas.append((normalise_type(text[i:eq]), value))
        if end >= len(text) or text[end] != "+":
            return tuple(avas)
        i = end + 1


def _read_value(text: str, i: int) -> tuple[str, int]:
    """Read one attribute value starting at `i`; return (normalised value, separator index)."""
    n = len(text)
    while i < n and text[i] == " ":
        i += 1
    out: list[str] = []
    raw: list[int] = []  # pending escaped octets, decoded as UTF-8 together
    trailing = 0  # unescaped trailing spaces are not part of the value
    if i < n and text[i] == '"':  # RFC 2253/1779 quoted value
        end = text.find('"', i + 1)
        if end < 0:
            raise InvalidDN(f"invalid DN {text!r}: unterminated quote")
        out.append(text[i + 1 : end])
        i = end + 1
        while i < n and text[i] == " ":
            i += 1
        if i < n and text[i] not in ",;+":
            raise InvalidDN(f"invalid DN {text!r}: text after a quoted value")
        return "".join(out).casefold(), i
    while i < n:
        c = text[i]
        if c in ",;+":
            break
        if c == "\\":
            if i + 1 >= n:
                raise InvalidDN(f"invalid DN {text!r}: dangling escape")
            d = text[i + 1]
            if d in _HEX and i + 2 < n and text[i + 2] in _HEX:
                raw.append(int(text[i + 1 : i + 3], 16))
                i += 3
                trailing = 0
                continue
            if d not in _SPECIAL and d not in " #":
                raise InvalidDN(f"invalid DN {text!r}: bad escape")
            _flush(raw, out, text)
            out.append(d)
            i += 2
            trailing = 0
            continue
        if c in '"<>':
            raise InvalidDN(f"invalid DN {text!r}: unescaped {c!r}")
        _flush(raw, out, text)
        out.append(c)
        trailing = trailing + 1 if c == " " else 0
        i += 1
    _flush(raw, out, text)
    value = "".join(out)
    if trailing:
        value = value[:-trailing]
    return value.casefold(), i


def _flush(raw: list[int], out: list[str], text: str) -> None:
    if raw:
        try:
            out.append(bytes(raw).decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidDN(f"invalid DN {text!r}: escaped octets are not UTF-8") from None
        raw.clear()


def is_within(dn: Dn, base: Dn) -> bool:
    """True when `dn` is `base` or below it."""
    return len(dn) >= len(base) and dn[len(dn) - len(base) :] == base


# Anything escape_value would change: most addresses have none of it, and a fresh
# entry's DN is built once per new address.
_NEEDS_ESCAPE = re.compile(r'[,+"\\<>;\0]|^[# ]| $')


def escape_value(value: str) -> str:
    """Escape an attribute value for use in a DN string (RFC 4514 2.4)."""
    if _NEEDS_ESCAPE.search(value) is None:
        return value
    out = []
    for k, c in enumerate(value):
        if c in ',+"\\<>;' or (c == "#" and k == 0) or c == "\0":
            out.append("\\" + c if c != "\0" else "\\00")
        elif c == " " and (k == 0 or k == len(value) - 1):
            out.append("\\ ")
        else:
            out.append(c)
    return "".join(out)


def reduce_bind_name(name: str) -> str:
    """The account name in a bind DN: the value of a leading `uid=` or `cn=` RDN, else as is.

    `uid=alice,dc=keypost` -> "alice", `cn=alice,ou=x` -> "alice", `alice` -> "alice".
    The value keeps its case (the backend decides how account names compare).
    """
    stripped = name.strip()
    if len(stripped) > MAX_DN_LENGTH:
        return stripped  # no account has such a name; not worth parsing (MAX_DN_LENGTH)
    attr, eq, _ = stripped.partition("=")
    if not eq or attr.strip().lower() not in ("uid", "cn"):
        return stripped
    start = len(attr) + 1
    try:
        _, end = _read_value(stripped, start)
    except InvalidDN:
        return stripped
    if end < len(stripped) and stripped[end] == "+":
        return stripped  # multi-valued RDN: not an account name form we know
    # _read_value case-folds; re-read the same span without folding to keep the case.
    return _unescape(stripped[start:end].strip())


def _unescape(text: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            d = text[i + 1]
            if d in _HEX and i + 2 < len(text) and text[i + 2] in _HEX:
                raw.append(int(text[i + 1 : i + 3], 16))
                i += 3
                continue
            raw += d.encode("utf-8")
            i += 2
            continue
        raw += c.encode("utf-8")
        i += 1
    return raw.decode("utf-8", errors="replace")
