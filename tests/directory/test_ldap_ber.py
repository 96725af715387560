"""The BER codec and message decoder: limits, rejections, and fuzzing (every input ends in
a value or a ProtocolError, memory bounded by the maximum message size)."""

from __future__ import annotations

import contextlib
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ldap_differential import messages

from keypost.directory.ldap import ber, connection
from keypost.directory.ldap import filters as F
from keypost.directory.ldap import messages as M
from keypost.directory.ldap.ber import ProtocolError

SEARCH = M.encode_message(
    M.LDAPMessage(
        5,
        M.SearchRequest(
            "dc=keypost",
            M.Scope.SUB,
            M.DerefAliases.NEVER,
            0,
            0,
            False,
            F.And((F.Present("objectClass"), F.EqualityMatch("mail", b"a@example.com"))),
            ("userCertificate;binary",),
        ),
    )
)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "020100"),
        (127, "02017f"),
        (128, "02020080"),
        (255, "020200ff"),
        (256, "02020100"),
        (-1, "0201ff"),
        (-128, "020180"),
        (-129, "0202ff7f"),
        (2**31 - 1, "02047fffffff"),
    ],
)
def test_integers_minimal_twos_complement(value: int, encoded: str) -> None:
    data = bytes.fromhex(encoded)
    assert ber.encode_int(value) == data
    assert ber.take_int(data, 0, len(data)) == (value, len(data))


@pytest.mark.parametrize("n", [0, 1, 127, 128, 255, 256, 65535, 65536, 2**24])
def test_lengths_short_and_long_form(n: int) -> None:
    element = ber.tlv(0x04, b"x" * n)
    assert ber.read_header(element, 0, len(element)) == (0x04, len(element) - n, len(element))
    if n < 128:
        assert element[1] == n
    else:
        assert element[1] & 0x80 and element[2] != 0  # minimal long form


def test_boolean_true_is_ff_but_any_nonzero_decodes() -> None:
    assert ber.encode_bool(True) == b"\x01\x01\xff"
    assert ber.take_bool(b"\x01\x01\x01", 0, 3) == (True, 3)
    with pytest.raises(ProtocolError):
        ber.take_bool(b"\x01\x02\x00\x00", 0, 4)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x30\x80\x02\x01\x01\x42\x00\x00\x00", "indefinite"),
        (b"\x30\x85\x00\x00\x00\x00\x07", "too long"),
        (b"\x31\x03\x02\x01\x01", "not a SEQUENCE"),
    ],
)
def test_framing_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        ber.frame_length(data)


def test_two_gib_header_rejected_before_any_body() -> None:
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        ber.frame_length(b"\x30\x84\x7f\xff\xff\xff")
    conn = connection.ServerConnection()
    tracemalloc.start()
    conn.receive_data(b"\x30\x84\x7f\xff\xff\xff")
    event = conn.next_event()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert isinstance(event, connection.ProtocolViolation)
    assert peak < 100_000
    assert conn.next_event() is None  # nothing more after a violation


def test_inner_length_beyond_container_rejected() -> None:
    # A search whose base DN claims 4 GiB - 1 bytes inside a 20-byte message.
    data = b"\x30\x12\x02\x01\x01\x63\x0d\x04\x84\xff\xff\xff\xff" + b"\x00" * 7
    with pytest.raises(ProtocolError, match="longer than its container"):
        M.decode_message(data)


def test_incomplete_message_waits_then_completes() -> None:
    assert ber.frame_length(SEARCH[:1]) is None
    assert ber.frame_length(SEARCH[:-1]) is None
    assert ber.frame_length(SEARCH + b"\x30") == len(SEARCH)


def test_max_message_size_is_configurable() -> None:
    with pytest.raises(ProtocolError):
        ber.frame_length(SEARCH, max_size=len(SEARCH) - 1)
    assert ber.frame_length(SEARCH, max_size=len(SEARCH)) == len(SEARCH)


def test_deep_filter_nesting_rejected_without_recursion_error() -> None:
    f: F.Filter = F.EqualityMatch("mail", b"a@example.com")
    for _ in range(200):
        f = F.Not(f)
    data = M.encode_message(
        M.LDAPMessage(
            1, M.SearchRequest("", M.Scope.SUB, M.DerefAliases.NEVER, 0, 0, False, f, ())
        )
    )
    with pytest.raises(ProtocolError, match="nested too deeply"):
        M.decode_message(data)


@pytest.mark.parametrize(
    "data",
    [
        "3006020101" + "4201ff",  # unbind with content
        "3005020101" + "6300",  # empty search
        "30050201ff4200",  # negative messageID
        "3006020101" + "5f2200",  # high tag number
        "3006020101" + "0a0100",  # unknown protocolOp (ENUMERATED)
        "3008020101" + "4200" + "a100",  # controls with the wrong tag
        "300c020101" + "600702010304008001",  # simple password longer than the bind
    ],
)
def test_malformed_messages_rejected(data: str) -> None:
    raw = bytes.fromhex(data)
    with pytest.raises(ProtocolError):
        M.decode_message(raw)


def test_messageid_bounds() -> None:
    ok = M.encode_message(M.LDAPMessage(M.MAX_INT, M.UnbindRequest()))
    assert M.decode_message(ok).message_id == M.MAX_INT
    too_big = bytes.fromhex("3009020500800000004200")
    with pytest.raises(ProtocolError):
        M.decode_message(too_big)


# --------------------------------------------------------------------------- fuzzing


def _decode_or_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        M.decode_message(data)


_CACHE = connection.SearchCache()  # shared across examples, as across a server's connections


def _drive_connection(chunks: list[bytes]) -> None:
    conn = connection.ServerConnection(max_message_size=4096, search_cache=_CACHE)
    for chunk in [*chunks, b""]:
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not None:
            assert isinstance(
                event,
                connection.Bind
                | connection.BindRefused
                | connection.Search
                | connection.Unbind
                | connection.Abandon
                | connection.StartTLSRequested
                | connection.UnsupportedOperation
                | connection.ProtocolViolation
                | connection.ConnectionClosed,
            )
        assert conn.buffered <= 4096 + len(chunk)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_or_error(data)
    _drive_connection([data])


@settings(max_examples=300, deadline=None)
@given(messages, st.data())
def test_fuzz_mutations_of_valid_messages(msg: M.LDAPMessage, data: st.DataObject) -> None:
    raw = bytearray(M.encode_message(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "drop", "insert", "truncate"]))
        if action == "flip":
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif action == "drop":
            del raw[pos]
        elif action == "insert":
            raw.insert(pos, data.draw(st.integers(0, 255)))
        else:
            del raw[pos:]
        if not raw:
            raw.append(0x30)
    _decode_or_error(bytes(raw))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=4)))
    pieces = [bytes(raw[a:b]) for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    _drive_connection([p for p in pieces if p])


@settings(max_examples=200, deadline=None)
@given(messages, st.integers(min_value=0))
def test_fuzz_truncations(msg: M.LDAPMessage, cut: int) -> None:
    raw = M.encode_message(msg)
    cut = cut % (len(raw) - 1) + 1  # 1 .. len - 1 bytes
    with pytest.raises(ProtocolError):
        M.decode_message(raw[:cut])
    conn = connection.ServerConnection()
    conn.receive_data(raw[:cut])
    assert conn.next_event() is None  # waits for the rest
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), connection.ConnectionClosed)
