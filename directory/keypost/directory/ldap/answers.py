"""What a search returns: base/scope planning, attribute selection and entry encoding.

Pure functions over values; the server only adds I/O and the backend call. Encoded
entries are cached by (entry, attribute selection, typesOnly), so a cached container
costs one dict lookup, not a re-encoding (nor a new PKCS#7 bundle).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from keypost.core import containers
from keypost.directory.ldap import ber
from keypost.directory.ldap.backend import AddressEntry
from keypost.directory.ldap.cache import FifoCache
from keypost.directory.ldap.connection import SUPPORTED_CONTROLS
from keypost.directory.ldap.dn import (
    MAX_DN_LENGTH,
    Dn,
    InvalidDN,
    Rdn,
    escape_value,
    is_within,
    normalise_type,
    parse_dn,
    value_key,
)
from keypost.directory.ldap.filters import addresses_from_filter, evaluate
from keypost.directory.ldap.messages import (
    OID_START_TLS,
    OpTag,
    ResultCode,
    Scope,
    SearchRequest,
    encode_attribute,
)

OBJECT_CLASSES = (b"top", b"person", b"organizationalPerson", b"inetOrgPerson")


class Attr(enum.Enum):
    """The attributes of an address entry."""

    OBJECT_CLASS = "objectClass"
    MAIL = "mail"
    CN = "cn"
    CERTIFICATES = "userCertificate;binary"
    SMIME = "userSMIMECertificate"


_NAMES = {
    "objectclass": Attr.OBJECT_CLASS,
    "2.5.4.0": Attr.OBJECT_CLASS,
    "mail": Attr.MAIL,
    "rfc822mailbox": Attr.MAIL,
    "0.9.2342.19200300.100.1.3": Attr.MAIL,
    "cn": Attr.CN,
    "commonname": Attr.CN,
    "2.5.4.3": Attr.CN,
    "usercertificate": Attr.CERTIFICATES,
    "2.5.4.36": Attr.CERTIFICATES,
    "usersmimecertificate": Attr.SMIME,
    "2.16.840.1.113730.3.1.40": Attr.SMIME,
}
_BINARY_ATTRS = (Attr.CERTIFICATES, Attr.SMIME)
Selection = tuple[tuple[Attr, str], ...]  # attribute and the name to return it under
ALL_ATTRIBUTES: Selection = tuple((a, a.value) for a in Attr)


# Attribute lists up to this many characters in all are memoised (selections, encoded
# entries); longer ones (a request may carry ~1 MB of names) are worked out each time:
# memo caches keyed by them would keep ~1 MB per entry.
MAX_KEPT_NAMES = 512


def _kept(requested: tuple[str, ...]) -> bool:
    return sum(len(name) for name in requested) <= MAX_KEPT_NAMES


def select_attributes(requested: tuple[str, ...]) -> Selection:
    """Which attributes to return, named as the client asked (RFC 4511 4.5.1.8).

    Empty or `*` = all user attributes (certificates as `userCertificate;binary`, as
    OpenLDAP names them). `1.1` alone = none; `+` adds nothing (no operational
    attributes). Names match case-insensitively, also by OID; `;binary` is accepted on
    the two certificate attributes (RFC 4522) and returned as written; other options
    (e.g. `;lang-de`) name nothing here.
    """
    return _select_kept(requested) if _kept(requested) else _select(requested)


@functools.lru_cache(maxsize=1024)
def _select_kept(requested: tuple[str, ...]) -> Selection:
    return _select(requested)


def _select(requested: tuple[str, ...]) -> Selection:
    if not requested or "*" in requested:
        return ALL_ATTRIBUTES
    out: list[tuple[Attr, str]] = []
    seen: set[Attr] = set()
    for name in requested:
        base, _, options = name.partition(";")
        attr = _NAMES.get(base.lower())
        if attr is None or attr in seen:
            continue
        opts = {o.lower() for o in options.split(";")} if options else set()
        if opts and (opts != {"binary"} or attr not in _BINARY_ATTRS):
            continue
        seen.add(attr)
        out.append((attr, name))
    return tuple(out)


# --------------------------------------------------------------------------- planning


class PlanKind(enum.Enum):
    ROOT_DSE = "root-dse"
    SUFFIX = "suffix"  # the suffix entry itself (scope base)
    ENTRIES = "entries"  # look the addresses up
    RESULT = "result"  # answer with `code` and no entries


@dataclass(frozen=True)
class SearchPlan:
    kind: PlanKind
    addresses: tuple[str, ...] = ()
    code: ResultCode = ResultCode.SUCCESS
    matched_dn: str = ""
    diagnostic: str = ""


_EMPTY = SearchPlan(PlanKind.RESULT)


def plan_search(request: SearchRequest, suffix: Dn, max_addresses: int) -> SearchPlan:
    """Decide what a search is: the root DSE, a lookup of addresses, or a bare result.

    Entries are named `mail=<address>,<suffix>`. A base naming one such entry reads
    it (scope base or sub; filter permitting). The suffix with scope base reads the
    suffix entry when the filter matches it (`suffix_entry`). Any other base inside the
    suffix is treated as the suffix (clients configured with e.g. `ou=people,<suffix>`
    work); the root "" and bases above the suffix see the entries with scope
    sub/subordinate. Other bases get noSuchObject.
    """
    if len(request.base) > MAX_DN_LENGTH:  # refused unparsed, as over-large filters are
        return SearchPlan(
            PlanKind.RESULT,
            code=ResultCode.UNWILLING_TO_PERFORM,
            diagnostic=f"search base longer than {MAX_DN_LENGTH} characters",
        )
    try:
        base = parse_dn(request.base)
    except InvalidDN as exc:
        return SearchPlan(PlanKind.RESULT, code=ResultCode.INVALID_DN_SYNTAX, diagnostic=str(exc))
    scope = request.scope
    if not base and scope == Scope.BASE:
        return SearchPlan(PlanKind.ROOT_DSE)
    if not (is_within(base, suffix) or is_within(suffix, base)):
        return SearchPlan(PlanKind.RESULT, code=ResultCode.NO_SUCH_OBJECT)
    depth = len(base) - len(suffix)  # entries are at depth 1 below the suffix
    if depth == 1 and base[0][0].type == "mail":
        # The base is an entry: only it can be in scope, and only for BASE and SUB.
        if scope not in (Scope.BASE, Scope.SUB):
            return _EMPTY
        entry = base[0][0]
        asked = addresses_from_filter(request.filter, max_addresses + 1)
        if len(asked) > max_addresses:
            return _too_many(max_addresses)
        if not asked:  # the address as written in the base
            return SearchPlan(PlanKind.ENTRIES, (entry.value,))
        # the entry, under the filter's spelling of its address (the same mailbox by
        # Address.key, never by case folding: strasse@ is not Straße@); other addresses
        # are out of scope (they are entries of their own)
        spelt = next((a for a in asked if value_key("mail", a) == entry.key), None)
        return _EMPTY if spelt is None else SearchPlan(PlanKind.ENTRIES, (spelt,))
    if depth == 0 and scope == Scope.BASE:  # the base is the suffix
        attributes = suffix_attributes(suffix[0])
        matched = evaluate(request.filter, dict(attributes), normalise_type)
        return SearchPlan(PlanKind.SUFFIX) if matched else _EMPTY
    # The base is the suffix (or inside it, treated alike) or above it.
    depth = min(depth, 0)
    in_scope = (
        scope == Scope.SUB
        or (scope in (Scope.ONE, Scope.SUBORDINATE) and depth == 0)
        or (scope == Scope.SUBORDINATE and depth < 0)
    )
    if not in_scope:
        return _EMPTY
    addresses = addresses_from_filter(request.filter, max_addresses + 1)
    if len(addresses) > max_addresses:
        return _too_many(max_addresses)
    if not addresses:
        return _EMPTY
    return SearchPlan(PlanKind.ENTRIES, tuple(addresses))


def _too_many(max_addresses: int) -> SearchPlan:
    """A filter naming more addresses than allowed: refused whole, no entries.

    adminLimitExceeded (11), not sizeLimitExceeded (4) with the first entries: RFC 4511
    A.2 gives sizeLimitExceeded to "the size limit specified by the client" (entries
    returned), while this limit is the server's and on the request. Servers refuse such
    requests whole with adminLimitExceeded before looking anything up: OpenLDAP's
    back-mdb when the candidates exceed the "unchecked" limit, 389-ds for its
    lookthrough limit. Above all, clients take sizeLimitExceeded as partial success and
    use the entries they got (ldap3's search() raises nothing and returns True; libldap
    callers commonly keep the entries): a gateway would see no container for the
    addresses dropped and could not tell "none issued" from "not looked up". The HTTP
    API refuses the same request whole (400 too_many_addresses).
    """
    return SearchPlan(
        PlanKind.RESULT,
        code=ResultCode.ADMIN_LIMIT_EXCEEDED,
        diagnostic=f"too many addresses: at most {max_addresses} per search; split it",
    )


# --------------------------------------------------------------------------- encoding


def entry_dn(address: str, suffix: str) -> str:
    return f"mail={escape_value(address)},{suffix}"


def smime_bundle(certificates: Sequence[bytes]) -> bytes:
    """DER PKCS#7 certs-only bundle of DER certificates (for userSMIMECertificate)."""
    return containers.pkcs7_bundle([x509.load_der_x509_certificate(c) for c in certificates])


def encode_entry(
    entry: AddressEntry, suffix: str, selection: Selection, types_only: bool
) -> bytes:
    """The SearchResultEntry protocolOp for one address."""
    attrs = []
    for attr, name in selection:
        values: tuple[bytes, ...] | list[bytes]
        if attr is Attr.OBJECT_CLASS:
            values = OBJECT_CLASSES
        elif attr is Attr.MAIL or attr is Attr.CN:
            values = (entry.address.encode("utf-8"),)
        elif attr is Attr.CERTIFICATES:
            values = entry.certificates
        else:
            if not entry.certificates:
                continue
            values = (smime_bundle(entry.certificates),)
        if not values:
            continue  # an attribute has at least one value (RFC 4512 2.5)
        attrs.append(encode_attribute(name, () if types_only else values))
    return ber.tlv(
        OpTag.SEARCH_RESULT_ENTRY,
        ber.encode_str(entry_dn(entry.address, suffix)) + ber.encode_seq(attrs),
    )


class EntryCache:
    """Encoded entries keyed by (entry, requested attributes, typesOnly); bounded, and
    only for attribute lists of at most MAX_KEPT_NAMES characters."""

    def __init__(self, suffix: str, size: int = 4096) -> None:
        self.suffix = suffix
        self._items: FifoCache[tuple[AddressEntry, tuple[str, ...], bool], bytes] = FifoCache(
            size
        )

    def __len__(self) -> int:
        return len(self._items)

    def encode(self, entry: AddressEntry, requested: tuple[str, ...], types_only: bool) -> bytes:
        """The SearchResultEntry protocolOp for `entry` with the attributes `requested`."""
        key = (entry, requested, types_only)
        op = self._items.get(key)
        if op is None:
            op = encode_entry(entry, self.suffix, select_attributes(requested), types_only)
            if _kept(requested):
                self._items.put(key, op)
        return op


# A structural class for the suffix entry by its naming attribute (RFC 4519, RFC 4524's
# domain for dc: it needs no other attribute, unlike dcObject+organization's `o`).
_SUFFIX_CLASSES = {
    "dc": "domain",
    "o": "organization",
    "ou": "organizationalUnit",
    "c": "country",
    "l": "locality",
}


def suffix_attributes(rdn: Rdn) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The suffix entry's attributes: objectClass and the values of its RDN.

    Keys are normalised attribute types (`dn.normalise_type`). It says nothing about
    addresses: it is what the root DSE's namingContexts promises exists, as slapd's
    suffix entry does.
    """
    kind = next((_SUFFIX_CLASSES[a.type] for a in rdn if a.type in _SUFFIX_CLASSES), None)
    out: dict[str, tuple[str, ...]] = {"objectclass": ("top", kind or "extensibleObject")}
    for ava in rdn:
        out[ava.type] = (*out.get(ava.type, ()), ava.value)
    return tuple(out.items())


_SUFFIX_NAMES = {"objectclass": "objectClass"}  # the others are short names already


def suffix_entry(suffix: str, requested: tuple[str, ...], types_only: bool) -> bytes:
    """The suffix entry (DN = `suffix` as configured) as a SearchResultEntry protocolOp.

    All attributes for an empty list or `*`; otherwise those named (any case, by OID),
    under the name asked for; `+` adds nothing (they are user attributes).
    """
    attributes = suffix_attributes(parse_dn(suffix)[0])
    wanted = {normalise_type(name): name for name in reversed(requested)}
    everything = not requested or "*" in requested
    parts = []
    for attr, values in attributes:
        name = _SUFFIX_NAMES.get(attr, attr) if everything else wanted.get(attr)
        if name is not None:
            encoded = tuple(v.encode("utf-8") for v in values)
            parts.append(encode_attribute(name, () if types_only else encoded))
    return ber.tlv(OpTag.SEARCH_RESULT_ENTRY, ber.encode_str(suffix) + ber.encode_seq(parts))


def root_dse(
    suffix: str, selection_requested: tuple[str, ...], starttls: bool, types_only: bool
) -> bytes:
    """The root DSE entry (RFC 4512 5.1) as a SearchResultEntry protocolOp.

    Its attributes are operational, but they are returned for an empty list, `*` and
    `+` alike so that `ldapsearch -b "" -s base` shows them; by name otherwise.
    """
    attributes: list[tuple[str, tuple[bytes, ...]]] = [
        ("objectClass", (b"top",)),
        ("namingContexts", (suffix.encode("utf-8"),)),
        ("supportedLDAPVersion", (b"3",)),
        ("supportedExtension", (OID_START_TLS.encode(),) if starttls else ()),
        ("supportedControl", tuple(c.encode() for c in SUPPORTED_CONTROLS)),
        ("supportedSASLMechanisms", ()),
        ("vendorName", (b"keypost",)),
    ]
    wanted = {a.lower() for a in selection_requested}
    everything = not wanted or "*" in wanted or "+" in wanted
    parts = [
        encode_attribute(name, () if types_only else values)
        for name, values in attributes
        if values and (everything or name.lower() in wanted)
    ]
    return ber.tlv(OpTag.SEARCH_RESULT_ENTRY, ber.encode_str("") + ber.encode_seq(parts))

