"""Simple Paged Results (RFC 2696) without server state: the cookie carries the position.

A search here names at most `max_addresses` addresses and returns one entry per address,
in the filter's order, so a page is a slice of that list: page n looks up only its own
addresses (each address once over the whole paged search). The cookie is the offset of
the next page and a hash of the request it belongs to (RFC 2696 3: the client repeats
the request unchanged but for messageID, cookie and page size); nothing is kept between
pages, so there is no per-connection table to bound or age out, and a cookie survives
neither a changed request nor anything but its own search. A cookie holds no secret: it
names a position in the client's own filter.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from keypost.directory.ldap import ber
from keypost.directory.ldap.ber import ProtocolError
from keypost.directory.ldap.messages import SearchRequest, encode_op

_OFFSET_OCTETS = 4
_HASH_OCTETS = 12


@dataclass(frozen=True)
class PageRequest:
    """The client's paged results control: `size` entries per page (0 with a cookie ends
    the paged search, 0 without one asks for no paging), `cookie` empty on the first."""

    size: int
    cookie: bytes = b""


def decode_page_request(value: bytes | None) -> PageRequest:
    """The control's value, realSearchControlValue ::= SEQUENCE { size INTEGER, cookie
    OCTET STRING }; a missing or malformed one raises ProtocolError."""
    if value is None:
        raise ProtocolError("paged results control without a value")
    s, e = ber.expect(value, 0, len(value), ber.SEQUENCE, "paged results control")
    if e != len(value):
        raise ProtocolError("trailing data after the paged results control")
    size, p = ber.take_int(value, s, e)
    cookie, p = ber.take_octets(value, p, e)
    if p != e or size < 0:
        raise ProtocolError("malformed paged results control")
    return PageRequest(size, cookie)


@dataclass(frozen=True)
class Page:
    """What to answer a paged search with."""

    addresses: tuple[str, ...]  # to look up and return, in order
    size_limit: int | None  # entries this page may carry before sizeLimitExceeded
    cookie: bytes  # for the next page; empty = this is the last
    total: int  # the whole result's size (addresses), returned as the estimate


def plan_page(
    request: SearchRequest, addresses: tuple[str, ...], asked: PageRequest
) -> Page | None:
    """The page `asked` for of a search for `addresses`; None for a cookie that does not
    belong to this request (the paged search cannot be resumed: RFC 2696 3).

    A client's sizeLimit counts over all pages (as OpenLDAP does); a page reaching it is
    the last and carries the rest, so that the limit is reported (and a page size at or
    above the limit gets everything at once: RFC 2696 3 "the server should ignore the
    control as the request can be satisfied in a single page").
    """
    total = len(addresses)
    offset = 0
    if asked.cookie:
        found = _offset(asked.cookie, request)
        if found is None or not 0 < found < total:
            return None
        offset = found
        if asked.size == 0:  # RFC 2696 3: size 0 with a cookie abandons the paged search
            return Page((), None, b"", total)
    limit = request.size_limit - offset if request.size_limit else None
    end = total if asked.size == 0 else offset + asked.size
    if end >= total or (limit is not None and end - offset >= limit):
        return Page(addresses[offset:], limit, b"", total)
    return Page(addresses[offset:end], limit, _cookie(end, request), total)


def _digest(request: SearchRequest) -> bytes:
    return hashlib.blake2b(encode_op(request), digest_size=_HASH_OCTETS).digest()


def _cookie(offset: int, request: SearchRequest) -> bytes:
    return offset.to_bytes(_OFFSET_OCTETS, "big") + _digest(request)


def _offset(cookie: bytes, request: SearchRequest) -> int | None:
    if len(cookie) != _OFFSET_OCTETS + _HASH_OCTETS or cookie[_OFFSET_OCTETS:] != _digest(
        request
    ):
        return None
    return int.from_bytes(cookie[:_OFFSET_OCTETS], "big")
