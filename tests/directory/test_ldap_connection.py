"""The sans-IO server connection: which events PDUs become, and the response encoders."""

from __future__ import annotations

import pytest

from keypost.directory.ldap import connection as C
from keypost.directory.ldap import filters as F
from keypost.directory.ldap import messages as M
from keypost.directory.ldap.paging import PageRequest

SEARCH = M.SearchRequest(
    "dc=keypost",
    M.Scope.SUB,
    M.DerefAliases.NEVER,
    0,
    0,
    False,
    F.EqualityMatch("mail", b"a@x.org"),
    ("userCertificate;binary",),
)


def events(*msgs: M.LDAPMessage | bytes, cache: C.SearchCache | None = None) -> list[C.Event]:
    conn = C.ServerConnection(search_cache=cache)
    for m in msgs:
        conn.receive_data(m if isinstance(m, bytes) else M.encode_message(m))
    out = []
    while (e := conn.next_event()) is not None:
        out.append(e)
    return out


def one(msg: M.LDAPMessage | bytes) -> C.Event:
    (event,) = events(msg)
    return event


def test_search_event() -> None:
    assert one(M.LDAPMessage(4, SEARCH)) == C.Search(4, SEARCH)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (M.BindRequest(3, "", b""), C.Bind(1, "", b"")),
        (M.BindRequest(3, "uid=a,dc=k", b"pw"), C.Bind(1, "uid=a,dc=k", b"pw")),
        (
            M.BindRequest(3, "", M.SaslCredentials("EXTERNAL")),
            C.BindRefused(
                1, M.ResultCode.AUTH_METHOD_NOT_SUPPORTED, "only simple binds are supported"
            ),
        ),
        (
            M.BindRequest(2, "", b""),
            C.BindRefused(1, M.ResultCode.PROTOCOL_ERROR, "only LDAPv3 is supported"),
        ),
        (
            M.BindRequest(3, "uid=a,dc=k", b""),
            C.BindRefused(
                1, M.ResultCode.UNWILLING_TO_PERFORM, "unauthenticated bind is not allowed"
            ),
        ),
        (
            M.BindRequest(3, "", b"pw"),
            C.BindRefused(1, M.ResultCode.INVALID_CREDENTIALS, "invalid credentials"),
        ),
    ],
)
def test_binds(request_: M.BindRequest, expected: C.Event) -> None:
    assert one(M.LDAPMessage(1, request_)) == expected


def test_bind_repr_hides_password() -> None:
    assert "pw-secret" not in repr(C.Bind(1, "uid=a", b"pw-secret"))
    assert "pw-secret" not in repr(M.BindRequest(3, "uid=a", b"pw-secret"))


def test_controls() -> None:
    paged = M.Control(C.OID_PAGED_RESULTS, True, b"\x30\x05\x02\x01\x0a\x04\x00")
    assert one(M.LDAPMessage(2, SEARCH, (paged,))) == C.Search(2, SEARCH, PageRequest(10))
    unknown = M.Control("1.2.3.4", False)
    assert one(M.LDAPMessage(2, SEARCH, (unknown,))) == C.Search(2, SEARCH)
    critical = M.Control("1.2.3.4", True)
    event = one(M.LDAPMessage(2, SEARCH, (critical,)))
    assert isinstance(event, C.UnsupportedOperation)
    assert event.code == M.ResultCode.UNAVAILABLE_CRITICAL_EXTENSION
    assert event.response_tag == M.OpTag.SEARCH_RESULT_DONE
    bind = one(M.LDAPMessage(3, M.BindRequest(3, "", b""), (critical,)))
    assert isinstance(bind, C.BindRefused)
    assert bind.code == M.ResultCode.UNAVAILABLE_CRITICAL_EXTENSION


@pytest.mark.parametrize(
    ("raw", "response_tag"),
    [
        ("300c020105" + "6607" + "0400" + "3003" + "300100", M.OpTag.MODIFY_RESPONSE),
        ("300a020105" + "6805" + "0400" + "3001" + "00", M.OpTag.ADD_RESPONSE),
        ("3008020105" + "4a03" + "613d62", M.OpTag.DEL_RESPONSE),
        ("300f020105" + "6c0a" + "0400" + "0403613d62" + "010100", M.OpTag.MODIFY_DN_RESPONSE),
        ("300f020105" + "6e0a" + "0400" + "3006" + "0401610401" + "62", M.OpTag.COMPARE_RESPONSE),
    ],
)
def test_writes_refused(raw: str, response_tag: M.OpTag) -> None:
    event = one(bytes.fromhex(raw))
    assert event == C.UnsupportedOperation(
        5, response_tag, M.ResultCode.UNWILLING_TO_PERFORM, "the directory is read-only"
    )


def test_extended_operations() -> None:
    start = one(M.LDAPMessage(6, M.ExtendedRequest(M.OID_START_TLS)))
    assert start == C.StartTLSRequested(6)
    other = one(M.LDAPMessage(7, M.ExtendedRequest("1.3.6.1.4.1.4203.1.11.3")))
    assert isinstance(other, C.UnsupportedOperation)
    assert (other.code, other.response_tag) == (
        M.ResultCode.PROTOCOL_ERROR,
        M.OpTag.EXTENDED_RESPONSE,
    )


def test_abandon_unbind_and_nothing_after_unbind() -> None:
    got = events(
        M.LDAPMessage(8, M.AbandonRequest(4)),
        M.LDAPMessage(9, M.UnbindRequest()),
        M.LDAPMessage(10, SEARCH),
    )
    assert got == [C.Abandon(8, 4), C.Unbind()]


def test_byte_at_a_time_and_pipelined() -> None:
    data = M.encode_message(M.LDAPMessage(1, SEARCH)) + M.encode_message(
        M.LDAPMessage(2, M.AbandonRequest(1))
    )
    conn = C.ServerConnection()
    got = []
    for b in data:
        conn.receive_data(bytes([b]))
        while (e := conn.next_event()) is not None:
            got.append(e)
    assert got == [C.Search(1, SEARCH), C.Abandon(2, 1)]
    assert events(data) == got


def test_responses_from_client_are_violations() -> None:
    result = M.LDAPResult(M.ResultCode.SUCCESS)
    event = one(M.LDAPMessage(1, M.SearchResultDone(result)))
    assert isinstance(event, C.ProtocolViolation)


def test_malformed_then_silence_and_eof() -> None:
    conn = C.ServerConnection()
    conn.receive_data(b"\x30\x03\x02\x01")  # an incomplete frame: wait
    assert conn.next_event() is None
    conn.receive_data(b"\x01\x42\x00")  # the frame 30 03 02 01 01 has no protocolOp
    event = conn.next_event()
    assert isinstance(event, C.ProtocolViolation)
    conn.receive_data(M.encode_message(M.LDAPMessage(1, SEARCH)))
    assert conn.next_event() is None
    eof = C.ServerConnection()
    eof.receive_data(b"")
    assert isinstance(eof.next_event(), C.ConnectionClosed)


def test_search_cache_shares_decoded_requests() -> None:
    cache = C.SearchCache()
    first = events(M.LDAPMessage(1, SEARCH), cache=cache)
    second = events(M.LDAPMessage(300, SEARCH), cache=cache)
    assert first == [C.Search(1, SEARCH, small=True)]
    assert second == [C.Search(300, SEARCH, small=True)]
    assert isinstance(first[0], C.Search) and isinstance(second[0], C.Search)
    assert second[0].request is first[0].request  # decoded once
    # Binds are never cached: they carry passwords.
    events(M.LDAPMessage(2, M.BindRequest(3, "uid=a", b"secret")), cache=cache)
    assert len(cache) == 1


def test_encoders_decode() -> None:
    notice = M.decode_message(C.notice_of_disconnection(M.ResultCode.PROTOCOL_ERROR, "bad"))
    assert notice == M.LDAPMessage(
        0,
        M.ExtendedResponse(
            M.LDAPResult(M.ResultCode.PROTOCOL_ERROR, "", "bad"), M.OID_NOTICE_OF_DISCONNECTION
        ),
    )
    done = M.decode_message(C.search_done(9, M.ResultCode.SIZE_LIMIT_EXCEEDED, paged=True))
    assert done.op == M.SearchResultDone(M.LDAPResult(M.ResultCode.SIZE_LIMIT_EXCEEDED))
    assert done.controls[0].oid == C.OID_PAGED_RESULTS
    assert M.decode_message(C.bind_response(3, M.ResultCode.INVALID_CREDENTIALS)).op == (
        M.BindResponse(M.LDAPResult(M.ResultCode.INVALID_CREDENTIALS))
    )


def test_fast_paths_match_full_decoding() -> None:
    msgs = [
        M.LDAPMessage(1, M.BindRequest(3, "", b"")),
        M.LDAPMessage(2, SEARCH),
        M.LDAPMessage(3, SEARCH),
        M.LDAPMessage(4, M.UnbindRequest()),
    ]
    fast = events(*msgs, cache=C.SearchCache())
    slow = events(*msgs)
    assert [(type(e), getattr(e, "message_id", None)) for e in fast] == [
        (type(e), getattr(e, "message_id", None)) for e in slow
    ]
    assert fast[0] == slow[0] == C.Bind(1, "", b"")
    assert fast[-1] == slow[-1] == C.Unbind()
