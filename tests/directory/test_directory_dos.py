"""Abuse from one unauthenticated source: huge filters, idle sockets, password floods,
/metrics. Each limit is checked through a real server, and so is that others are still
served while it bites."""

from __future__ import annotations

import pytest
from test_ldap_server import ALICE, messages_of, raw_exchange
from test_ldap_support import SUFFIX, MemoryBackend, ServerThread

from keypost.directory.ldap import filters as F
from keypost.directory.ldap import messages as M


def _search(message_id: int, f: F.Filter) -> bytes:
    request = M.SearchRequest(SUFFIX, M.Scope.SUB, M.DerefAliases.NEVER, 0, 0, False, f,
                              ("mail",))
    return M.encode_message(M.LDAPMessage(message_id, request))


def _wide_or(terms: int) -> F.Or:
    """(|(cn=x)(cn=x)...): `terms` equality terms under one OR, terms + 1 nodes; 110k of
    them are the review's ~1 MB filter, within the message size limit."""
    return F.Or((F.EqualityMatch("cn", b"x"),) * terms)


@pytest.mark.parametrize(("f", "refused"), [
    (_wide_or(F.MAX_FILTER_NODES - 1), False),  # exactly the cap
    (_wide_or(F.MAX_FILTER_NODES), True),
    (F.And((F.Not(_wide_or(600)), _wide_or(600))), True),  # counted through nesting
    (_wide_or(110_000), True),
])
def test_filter_node_cap_in_the_decoder(f: F.Filter, refused: bool) -> None:
    pdu = _search(7, f)
    if not refused:
        assert M.decode_message(pdu).op.filter == f  # type: ignore[union-attr]
        return
    with pytest.raises(F.FilterTooComplex) as caught:
        M.decode_message(pdu)
    assert caught.value.message_id == 7


def test_huge_filter_is_unwilling_and_the_connection_stays() -> None:
    """unwillingToPerform (53), not protocolError: the PDU is well-formed (RFC 4511 4.1.1
    keeps protocolError for PDUs that cannot be parsed), only more than we will evaluate.
    The same connection then gets its next search answered."""
    thread = ServerThread(MemoryBackend())
    try:
        big = _search(1, _wide_or(110_000))
        small = _search(2, F.EqualityMatch("mail", ALICE.encode()))
        unbind = M.encode_message(M.LDAPMessage(3, M.UnbindRequest()))
        got = messages_of(raw_exchange(thread.port, big + small + unbind))
        first = got[0]
        assert first.message_id == 1 and isinstance(first.op, M.SearchResultDone)
        assert first.op.result.code == M.ResultCode.UNWILLING_TO_PERFORM
        assert "1024 terms" in first.op.result.diagnostic
        assert [(m.message_id, type(m.op).__name__) for m in got[1:]] == [
            (2, "SearchResultEntry"), (2, "SearchResultDone")]
        assert thread.backend.lookups == [(None, (ALICE,))]
    finally:
        thread.stop()
