"""Distinguished names (RFC 4514) as far as the directory needs them: compare, nest, escape.

A parsed DN keeps every value as written (unescaped) and compares by a key per value:
attribute types lower-cased (a few well-known OIDs and aliases mapped to their short
names); `mail` values by Address.key (the local part lower-cased, the domain as A-labels),
the other naming attributes (dc, o, ou, cn, uid...) case-folded, as caseIgnoreMatch
does (RFC 4518 2.2). Not a case-folded `mail`: that joins other mailboxes (`Straße@`
and `strasse@`), and a base read of `mail=Straße@x,<suffix>` answered for strasse@.
"""

from __future__ import annotations

import dataclasses
import functools
import re

from keypost.core.address import parse_address
from keypost.core.errors import KeypostError


@dataclasses.dataclass(frozen=True, order=True, slots=True)
class Ava:
    """One attribute=value of an RDN: equal, hashed and ordered by (type, key) only."""

    type: str  # normalise_type()d
    key: str  # the value as its matching rule compares it (value_key)
    value: str = dataclasses.field(compare=False)  # as written, unescaped


Rdn = tuple[Ava, ...]  # the AVAs of one RDN, sorted (RDNs compare as sets of AVAs)
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
    avas: list[Ava] = []
    i, n = 0, len(text)
    while True:
        eq = text.find("=", i)
        if eq < 0:
            raise InvalidDN(f"invalid DN {text!r}: attribute without '='")
        attr = normalise_type(text[i:eq])
        if not attr or not all(c.isalnum() or c in "-." for c in attr):
            raise InvalidDN(f"invalid DN {text!r}: bad attribute type")
        value, i = _read_value(text, eq + 1)
        key = value_key(attr, value)
        # one string when they are equal (the usual lower-case DN): parsed DNs are kept
        avas.append(Ava(attr, value if key == value else key, value))
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


def value_key(attr: str, value: str) -> str:
    """`value` of attribute type `attr` (normalised) as compared with other values.

    `mail`: Address.key, the directory's one identity of a mailbox (an unparsable value
    lower-cased; it names no mailbox the directory serves). Every other naming attribute
    the directory meets (dc, o, ou, c, l, cn, uid) has caseIgnoreMatch (or its IA5 form),
    whose case folding (RFC 4518 2.2) casefold() follows.
    """
    if attr == "mail":
        try:
            return parse_address(value).key()
        except KeypostError:
            return value.lower()
    return value.casefold()


def _read_value(text: str, i: int) -> tuple[str, int]:
    """Read one attribute value starting at `i`; return (value as written, unescaped;
    separator index)."""
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
        return "".join(out), i
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
    return value, i


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
    try:
        value, end = _read_value(stripped, len(attr) + 1)
    except InvalidDN:
        return stripped
    if end < len(stripped) and stripped[end] == "+":
        return stripped  # multi-valued RDN: not an account name form we know
    return value
