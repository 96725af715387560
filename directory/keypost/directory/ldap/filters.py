"""RFC 4511 search filters: the full grammar as a tree of values, its BER form, and addresses.

Clients send filters in BER (RFC 4511 4.5.1.7), so no RFC 4515 string parser is needed.

`addresses_from_filter` is how the directory decides what a search asks for. It takes
addresses only from equality assertions on a mail attribute (`mail`, `email`,
`rfc822Mailbox`, `emailAddress` or their OIDs, any case), found through AND and OR.
Everything else - substrings, presence, ordering, approximate or extensible matches -
names no address and so yields no entries: the directory never enumerates.

NOT: an equality under NOT (`(!(mail=a))`) means "every entry except a", i.e. an
enumeration, so addresses below a NOT never count. `(&(mail=a)(!(mail=b)))` gives a.
AND is treated like OR (`(&(mail=a)(mail=b))` gives a and b): the filter only selects
which addresses to answer, and answering both is what every client that sends such a
filter (none known) could mean; the other terms of an AND (`(objectClass=*)`,
`(objectClass=person)`) are not evaluated, since every entry carries all object classes
a client looks for.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from keypost.directory.ldap import ber
from keypost.directory.ldap.ber import ProtocolError
from keypost.directory.ldap.dn import value_key

# Filter CHOICE tags (RFC 4511 4.5.1); all constructed except `present`.
TAG_AND = 0xA0
TAG_OR = 0xA1
TAG_NOT = 0xA2
TAG_EQUALITY = 0xA3
TAG_SUBSTRINGS = 0xA4
TAG_GREATER_OR_EQUAL = 0xA5
TAG_LESS_OR_EQUAL = 0xA6
TAG_PRESENT = 0x87
TAG_APPROX = 0xA8
TAG_EXTENSIBLE = 0xA9

# Most terms one filter may hold. Real clients send a handful (Thunderbird: one per
# recipient, 100 at most here); ~110k terms fit in 1 MiB and cost 0.4 s of decoding.
MAX_FILTER_NODES = 1024
_MIN_NODE_BYTES = 2  # the smallest filter element, e.g. an empty AND (a0 00)


class FilterTooComplex(ProtocolError):
    """A well-formed filter with more than MAX_FILTER_NODES terms, or nested deeper than
    ber.MAX_DEPTH: the search is refused (unwillingToPerform), the connection stays.
    `message_id` is set by the message decoder."""

    message_id = -1


@dataclass(frozen=True)
class And:
    filters: tuple[Filter, ...]  # RFC 4526 allows the empty (absolute true) filter


@dataclass(frozen=True)
class Or:
    filters: tuple[Filter, ...]  # empty = absolute false (RFC 4526)


@dataclass(frozen=True)
class Not:
    filter: Filter


@dataclass(frozen=True)
class AttributeValueAssertion:
    """Base of the four assertion filters; each subclass compares unequal to the others."""

    attribute: str
    value: bytes


@dataclass(frozen=True)
class EqualityMatch(AttributeValueAssertion):
    pass


@dataclass(frozen=True)
class GreaterOrEqual(AttributeValueAssertion):
    pass


@dataclass(frozen=True)
class LessOrEqual(AttributeValueAssertion):
    pass


@dataclass(frozen=True)
class ApproxMatch(AttributeValueAssertion):
    pass


class SubstringKind(enum.IntEnum):
    INITIAL = 0
    ANY = 1
    FINAL = 2


@dataclass(frozen=True)
class Substrings:
    attribute: str
    parts: tuple[tuple[SubstringKind, bytes], ...]  # in wire order; at least one


@dataclass(frozen=True)
class Present:
    attribute: str


@dataclass(frozen=True)
class ExtensibleMatch:
    matching_rule: str | None
    attribute: str | None
    value: bytes
    dn_attributes: bool = False


Filter = (
    And
    | Or
    | Not
    | EqualityMatch
    | Substrings
    | GreaterOrEqual
    | LessOrEqual
    | Present
    | ApproxMatch
    | ExtensibleMatch
)

_AVA_TYPES: dict[int, type[EqualityMatch | GreaterOrEqual | LessOrEqual | ApproxMatch]] = {
    TAG_EQUALITY: EqualityMatch,
    TAG_GREATER_OR_EQUAL: GreaterOrEqual,
    TAG_LESS_OR_EQUAL: LessOrEqual,
    TAG_APPROX: ApproxMatch,
}
_AVA_TAGS = {cls: tag for tag, cls in _AVA_TYPES.items()}


# --------------------------------------------------------------------------- decoding


def check_filter_size(data: bytes, pos: int, end: int, limit: int = MAX_FILTER_NODES) -> None:
    """Raise FilterTooComplex when the filter at `pos` has more than `limit` elements.

    Filters too short to hold that many are passed at once (the usual case costs one
    comparison); otherwise headers are walked without building anything, and the walk
    stops at element `limit + 1`, so a 1 MiB filter costs what a legal one does.
    """
    if end - pos <= limit * _MIN_NODE_BYTES:
        return
    _, _, fend = ber.read_header(data, pos, end)
    count = 0
    stack = [fend]
    p = pos
    while stack:
        if p >= stack[-1]:
            p = stack.pop()
            continue
        tag, s, e = ber.read_header(data, p, stack[-1])
        count += 1
        if count > limit:
            raise FilterTooComplex(f"search filter has more than {limit} terms")
        if tag in (TAG_AND, TAG_OR, TAG_NOT):
            stack.append(e)  # descend; its elements are counted as well
            p = s
        else:
            p = e



def decode_filter(data: bytes, pos: int, end: int, depth: int = 0) -> tuple[Filter, int]:
    """Decode the filter element at `pos`; return it and the position after it."""
    if depth > ber.MAX_DEPTH:
        # Well-formed as far as its container's length says: refused like too many
        # terms (unwillingToPerform, the connection goes on), not a broken PDU.
        raise FilterTooComplex(f"search filter nested too deeply (more than {ber.MAX_DEPTH})")
    tag, s, e = ber.read_header(data, pos, end)
    if tag in _AVA_TYPES:
        attribute, p = ber.take_str(data, s, e)
        value, p = ber.take_octets(data, p, e)
        if p != e:
            raise ProtocolError("trailing data in attribute value assertion")
        return _AVA_TYPES[tag](attribute, value), e
    if tag in (TAG_AND, TAG_OR):
        items: list[Filter] = []
        p = s
        while p < e:
            f, p = decode_filter(data, p, e, depth + 1)
            items.append(f)
        return (And(tuple(items)) if tag == TAG_AND else Or(tuple(items))), e
    if tag == TAG_PRESENT:
        return Present(ber.decode_utf8(data, s, e)), e
    if tag == TAG_NOT:
        inner, p = decode_filter(data, s, e, depth + 1)
        if p != e:
            raise ProtocolError("trailing data in NOT filter")
        return Not(inner), e
    if tag == TAG_SUBSTRINGS:
        return _decode_substrings(data, s, e), e
    if tag == TAG_EXTENSIBLE:
        return _decode_extensible(data, s, e), e
    raise ProtocolError(f"unknown filter choice (tag 0x{tag:02x})")


def _decode_substrings(data: bytes, s: int, e: int) -> Substrings:
    attribute, p = ber.take_str(data, s, e)
    s2, e2 = ber.expect(data, p, e, ber.SEQUENCE, "substrings")
    if e2 != e:
        raise ProtocolError("trailing data in substring filter")
    parts: list[tuple[SubstringKind, bytes]] = []
    p = s2
    while p < e2:
        tag, vs, ve = ber.read_header(data, p, e2)
        if tag == 0x80:
            kind = SubstringKind.INITIAL
            if parts:
                raise ProtocolError("substring 'initial' must come first")
        elif tag == 0x81:
            kind = SubstringKind.ANY
        elif tag == 0x82:
            kind = SubstringKind.FINAL
        else:
            raise ProtocolError(f"unknown substring choice (tag 0x{tag:02x})")
        if parts and parts[-1][0] == SubstringKind.FINAL:
            raise ProtocolError("substring 'final' must come last")
        parts.append((kind, data[vs:ve]))
        p = ve
    if not parts:
        raise ProtocolError("substring filter without substrings")
    return Substrings(attribute, tuple(parts))


def _decode_extensible(data: bytes, s: int, e: int) -> ExtensibleMatch:
    rule: str | None = None
    attribute: str | None = None
    value: bytes | None = None
    dn_attributes = False
    p = s
    last = 0
    while p < e:
        tag, vs, ve = ber.read_header(data, p, e)
        order = tag - 0x80
        if not 1 <= order <= 4 or order <= last:
            raise ProtocolError(f"unexpected element in extensible match (tag 0x{tag:02x})")
        last = order
        if order == 1:
            rule = ber.decode_utf8(data, vs, ve)
        elif order == 2:
            attribute = ber.decode_utf8(data, vs, ve)
        elif order == 3:
            value = data[vs:ve]
        else:
            dn_attributes = ber.decode_bool(data, vs, ve)
        p = ve
    if value is None:
        raise ProtocolError("extensible match without a match value")
    return ExtensibleMatch(rule, attribute, value, dn_attributes)


# --------------------------------------------------------------------------- encoding


def encode_filter(f: Filter) -> bytes:
    """The BER form of a filter (used by tests, the benchmark client and round trips)."""
    if isinstance(f, AttributeValueAssertion):
        return ber.tlv(
            _AVA_TAGS[type(f)], ber.encode_str(f.attribute) + ber.encode_octets(f.value)
        )
    if isinstance(f, And):
        return ber.encode_seq((encode_filter(x) for x in f.filters), TAG_AND)
    if isinstance(f, Or):
        return ber.encode_seq((encode_filter(x) for x in f.filters), TAG_OR)
    if isinstance(f, Not):
        return ber.tlv(TAG_NOT, encode_filter(f.filter))
    if isinstance(f, Present):
        return ber.encode_str(f.attribute, TAG_PRESENT)
    if isinstance(f, Substrings):
        parts = b"".join(ber.encode_octets(v, 0x80 | kind) for kind, v in f.parts)
        return ber.tlv(TAG_SUBSTRINGS, ber.encode_str(f.attribute) + ber.tlv(ber.SEQUENCE, parts))
    out = []
    if f.matching_rule is not None:
        out.append(ber.encode_str(f.matching_rule, 0x81))
    if f.attribute is not None:
        out.append(ber.encode_str(f.attribute, 0x82))
    out.append(ber.encode_octets(f.value, 0x83))
    if f.dn_attributes:  # DEFAULT FALSE: omitted when false
        out.append(ber.encode_bool(True, 0x84))
    return ber.encode_seq(out, TAG_EXTENSIBLE)


# --------------------------------------------------------------------------- addresses

# Attribute names and OIDs whose equality assertions name a mail address.
MAIL_ATTRIBUTES = frozenset(
    {
        "mail",
        "rfc822mailbox",
        "0.9.2342.19200300.100.1.3",
        "email",
        "emailaddress",
        "1.2.840.113549.1.9.1",
    }
)


def addresses_from_filter(f: Filter, limit: int | None = None) -> list[str]:
    """Addresses asked for by equality on a mail attribute, in filter order, each once.

    Duplicates (one mailbox by Address.key, as `dn.value_key` compares `mail`; an
    unparsable value lower-cased) are dropped, the first spelling wins; at most `limit`
    addresses are returned. See the module docstring for AND, OR and NOT.
    """
    found: list[str] = []
    seen: set[str] = set()
    stack: list[Filter] = [f]
    while stack:
        node = stack.pop()
        if isinstance(node, EqualityMatch):
            attr = node.attribute.lower()
            if attr not in MAIL_ATTRIBUTES:
                continue
            try:
                address = node.value.decode("utf-8").strip()
            except UnicodeDecodeError:
                continue
            # one entry per mailbox: Address.key (a@x, a@x., <A@x> and the domain's U- or
            # A-labels are one), as base DNs compare; lower(), not casefold(), which would
            # drop strasse@ after straße@
            key = value_key("mail", address)
            if address and key not in seen:
                seen.add(key)
                found.append(address)
                if limit is not None and len(found) >= limit:
                    break
        elif isinstance(node, And | Or):
            stack.extend(reversed(node.filters))  # reversed: pop() yields filter order
    return found


# --------------------------------------------------------------------------- evaluation


def evaluate(
    f: Filter, entry: Mapping[str, tuple[str, ...]], attribute_type: Callable[[str], str]
) -> bool | None:
    """Whether `f` matches a small entry of text values: True, False or None (Undefined).

    RFC 4511 4.5.1.7's three-valued logic for presence, equality, AND, OR and NOT; values
    compare as in DNs (`dn.value_key`: case-insensitively, the caseIgnoreMatch of
    objectClass and naming attributes, and `mail` by Address.key). An attribute the
    entry lacks is False; substring, ordering, approximate and extensible assertions are
    Undefined. `attribute_type` maps a name as sent to the entry's keys. Only the suffix
    entry is evaluated so; address entries are chosen by `addresses_from_filter`. Filters
    nest at most 32 deep (the decoder's limit), so recursion is bounded.
    """
    if isinstance(f, Present):
        return attribute_type(f.attribute) in entry
    if isinstance(f, EqualityMatch):
        attr = attribute_type(f.attribute)
        wanted = value_key(attr, f.value.decode("utf-8", errors="replace"))
        return any(value_key(attr, v) == wanted for v in entry.get(attr, ()))
    if isinstance(f, Not):
        inner = evaluate(f.filter, entry, attribute_type)
        return None if inner is None else not inner
    if isinstance(f, And | Or):
        results = {evaluate(g, entry, attribute_type) for g in f.filters}
        decisive = isinstance(f, Or)  # True decides an OR, False an AND
        if decisive in results:
            return decisive
        return None if None in results else not decisive
    return None
