"""Simple Paged Results (RFC 2696) without server state: pages, cookies, size limits."""

from __future__ import annotations

import dataclasses

import pytest

from keypost.directory.ldap import connection as C
from keypost.directory.ldap import filters as F
from keypost.directory.ldap import messages as M
from keypost.directory.ldap.ber import ProtocolError
from keypost.directory.ldap.paging import Page, PageRequest, decode_page_request, plan_page

ADDRESSES = tuple(f"u{i}@x.org" for i in range(5))
REQUEST = M.SearchRequest(
    "dc=keypost", M.Scope.SUB, M.DerefAliases.NEVER, 0, 0, False,
    F.Or(tuple(F.EqualityMatch("mail", a.encode()) for a in ADDRESSES)), ("mail",),
)


def pages(request: M.SearchRequest, size: int) -> list[Page]:
    out: list[Page] = []
    cookie = b""
    while True:
        page = plan_page(request, ADDRESSES, PageRequest(size, cookie))
        assert page is not None
        out.append(page)
        if not page.cookie:
            return out
        cookie = page.cookie


def test_pages_cover_the_addresses_once() -> None:
    got = pages(REQUEST, 2)
    assert [p.addresses for p in got] == [ADDRESSES[:2], ADDRESSES[2:4], ADDRESSES[4:]]
    assert {p.total for p in got} == {5} and {p.size_limit for p in got} == {None}
    assert [p.addresses for p in pages(REQUEST, 5)] == [ADDRESSES]
    assert [p.addresses for p in pages(REQUEST, 0)] == [ADDRESSES]  # 0, no cookie: no paging


def test_size_limit_counts_over_pages() -> None:
    limited = dataclasses.replace(REQUEST, size_limit=3)
    got = pages(limited, 2)
    assert [(p.addresses, p.size_limit) for p in got] == [
        (ADDRESSES[:2], 3), (ADDRESSES[2:], 1)]  # the last page reports the limit
    assert [p.addresses for p in pages(limited, 3)] == [ADDRESSES]  # page >= limit: one


def test_a_cookie_belongs_to_its_request_and_size_0_ends_the_paging() -> None:
    first = plan_page(REQUEST, ADDRESSES, PageRequest(2))
    assert first is not None and first.cookie
    other = dataclasses.replace(REQUEST, attributes=("cn",))
    assert plan_page(other, ADDRESSES, PageRequest(2, first.cookie)) is None
    assert plan_page(REQUEST, ADDRESSES, PageRequest(2, b"junk")) is None
    assert plan_page(REQUEST, ADDRESSES[:2], PageRequest(2, first.cookie)) is None  # past end
    assert plan_page(REQUEST, ADDRESSES, PageRequest(0, first.cookie)) == Page((), None, b"", 5)


@pytest.mark.parametrize(
    "value", [None, b"", b"\x30\x03\x02\x01\x02", b"\x30\x05\x02\x01\xff\x04\x00",
              b"\x30\x05\x02\x01\x02\x04\x00\x00"])
def test_malformed_control_value_fails_the_search(value: bytes | None) -> None:
    with pytest.raises(ProtocolError):
        decode_page_request(value)
    conn = C.ServerConnection()
    control = M.Control(C.OID_PAGED_RESULTS, False, value)
    conn.receive_data(M.encode_message(M.LDAPMessage(4, REQUEST, (control,))))
    event = conn.next_event()
    assert isinstance(event, C.UnsupportedOperation)
    assert (event.message_id, event.response_tag, event.code) == (
        4, M.OpTag.SEARCH_RESULT_DONE, M.ResultCode.PROTOCOL_ERROR)


def test_done_carries_estimate_and_cookie() -> None:
    done = M.decode_message(C.search_done(3, controls=C.paged_done_controls(5, b"next")))
    (control,) = done.controls
    assert control.oid == C.OID_PAGED_RESULTS
    assert decode_page_request(control.value) == PageRequest(5, b"next")
