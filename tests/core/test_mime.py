"""Edge cases of the byte-level MIME helpers the S/MIME engine's fast paths rely on:
line-end checks with bounds, CRLF conversion, entity assembly at an offset, 76-column
base64, and what the whole-message paths make of LF, CRLF, empty and corrupt input."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7
from hypothesis import given
from hypothesis import strategies as st
from test_smime_pki import container, gateway

from keypost.core import mime, smime
from keypost.core.errors import DecryptError, SmimeError


def _reference_canonical(data: bytes) -> bool:
    return data.count(b"\n") == data.count(b"\r\n")


# is_canonical / to_crlf --------------------------------------------------------------


def _check_against_definition(data: bytes, start: int, length: int) -> None:
    """is_canonical over data[start:start + length] (clipped) and over all of data agrees
    with `_reference_canonical`."""
    start = min(start, len(data))
    end = min(start + length, len(data))
    assert mime.is_canonical(data, start, end) == _reference_canonical(data[start:end])
    assert mime.is_canonical(data) == _reference_canonical(data)


@given(
    st.lists(st.sampled_from([b"a", b"bc", b"\r\n", b"\n", b"\r", b"\r\r\n"]), max_size=300),
    st.integers(0, 400),
    st.integers(0, 400),
)
def test_is_canonical_matches_the_definition_on_any_slice(
    pieces: list[bytes], start: int, length: int
) -> None:
    """Short texts are walked line by line, long ones counted (more than 64 lines here):
    both must agree with 'every LF is part of a CRLF' for the slice [start:end]."""
    _check_against_definition(b"".join(pieces), start, length)


@given(
    st.lists(st.sampled_from([b"x" * 40, b"\r\n", b"\n", b"\r", b"\r\r\n"]), max_size=300),
    st.integers(0, 4000),
    st.integers(0, 13000),
)
def test_is_canonical_matches_the_definition_on_long_lines(
    pieces: list[bytes], start: int, length: int
) -> None:
    """Lines averaging 32 bytes or more are scanned by the regex instead of counted."""
    _check_against_definition(b"".join(pieces), start, length)


@given(
    st.integers(0, 120),
    st.integers(0, 3000),
    st.lists(
        st.tuples(st.integers(0), st.sampled_from([b"\n", b"\r", b"\r\n", b"\n\n", b"y", b""])),
        max_size=4,
    ),
    st.integers(0, 300_000),
    st.integers(0, 300_000),
)
def test_is_canonical_matches_the_definition_on_equal_lines(
    width: int, count: int, edits: list[tuple[int, bytes]], start: int, length: int
) -> None:
    """Runs of equal CRLF lines (base64 attachments) are checked 64 KiB at a time by
    comparing with a pattern: up to 240 KB of them, with a few line ends or characters
    inserted or deleted anywhere (inside a compared block, at its edge, in the tail)."""
    data = (b"x" * width + b"\r\n") * count
    for at, piece in edits:
        at %= len(data) + 1
        data = data[:at] + piece + data[at + (not piece) :]  # b"": delete the byte there
    _check_against_definition(data, start, length)
    assert mime.is_canonical(bytearray(data)) == _reference_canonical(data)


def test_is_canonical_on_each_edit_in_and_around_an_equal_lines_block() -> None:
    """200 KB of base64-like lines with one byte inserted or deleted at each offset of two
    lines inside the first compared block, at its edge and in the tail: a bare LF must be
    found wherever it lands, and nothing else reported."""
    line = b"Q" * 76 + b"\r\n"
    body = b"h: v\r\n\r\n" + line * 2600
    assert mime.is_canonical(body)
    found = 0
    for at in [*range(5000, 5000 + 2 * len(line)), 5009 + 65536, len(body) - 40]:
        for edited in (
            body[:at] + b"\n" + body[at:],
            body[:at] + b"\r" + body[at:],
            body[:at] + body[at + 1 :],
        ):
            expected = _reference_canonical(edited)
            found += not expected
            assert mime.is_canonical(edited) == expected, at
    assert found > 2 * len(line)  # every inserted LF but those after a CR, every deleted CR


def test_is_canonical_after_a_megabyte_of_uneven_lines() -> None:
    """Uneven text is scanned in 1 MiB segments, then equal lines are tried again: a bare
    LF in the second attachment of a multipart body, or in the last text, is found."""
    text = b"".join(b"w" * (n % 97) + b"\r\n" for n in range(25_000))  # ~1.2 MB
    probed = sum(n % 97 + 2 for n in range(64))  # the lines walked one by one
    text = text[: text.index(b"\n", probed + (1 << 20)) + 1]  # one segment, then equal lines
    attachment = b"Q" * 76 + b"\r\n"
    body = text + attachment * 3000 + b"--b\r\n\r\n" + attachment * 3000 + text[:5000]
    assert len(text) > 1 << 20 and mime.is_canonical(body)
    for at in (len(text) + 5, len(text) + 80 * 4000, len(body) - 1000, len(body) - 1):
        assert not mime.is_canonical(body[:at] + b"\n" + body[at:]), at
        cr = body.index(b"\r", at - 80)  # the line end before: its CR lost
        assert not mime.is_canonical(body[:cr] + b"x" + body[cr + 1 :]), cr


def test_is_canonical_bounds_and_late_bare_lf() -> None:
    lines = b"line\r\n" * 200
    assert mime.is_canonical(lines)
    assert not mime.is_canonical(lines + b"late bare\n")  # after the walked lines
    long_lines = b"x" * 76 + b"\r\n"  # after the walked lines: the regex, not the counts
    assert mime.is_canonical(long_lines * 200)
    for bare in (b"late bare\n", b"\n", b"\n\n", b"\r\r\n\n", b"x\r\n\n"):
        assert not mime.is_canonical(long_lines * 200 + bare + long_lines * 50)
    assert mime.is_canonical(lines + b"late bare\n", 0, len(lines))  # outside the bounds
    assert not mime.is_canonical(b"\r\nx", 1)  # the CR before `start` does not count
    assert not mime.is_canonical(b"\n")
    assert mime.is_canonical(b"")
    assert mime.is_canonical(b"no line end at all" * 1000)
    # PKCS#7 padding of 10 bytes is ten 0x0A: a bound that stops before it sees none.
    padded = b"text\r\n" + b"\n" * 10
    assert mime.is_canonical(padded, 0, len(padded) - 10)
    assert not mime.is_canonical(padded)


@pytest.mark.parametrize(
    ("given_text", "expected"),
    [
        (b"a\nb\n", b"a\r\nb\r\n"),  # pure LF: one replace
        (b"a\r\nb\n", b"a\r\nb\r\n"),  # mixed
        (b"a\rb\n", b"a\rb\r\n"),  # a bare CR stays (it is not a line end)
        (b"\n", b"\r\n"),
        (b"", b""),
    ],
)
def test_to_crlf(given_text: bytes, expected: bytes) -> None:
    assert mime.to_crlf(given_text) == expected


def test_canonical_input_is_returned_without_copy() -> None:
    data = b"a\r\nb\r\n" * 100
    assert mime.to_crlf(data) is data
    assert mime.canonical(data) is data


def test_canonical_entity_at_an_offset() -> None:
    message = b"Subject: s\nContent-Type: text/plain\n\nbody\nline\n"
    headers, start = mime.split_entity_at(message)
    assert message[start:] == b"body\nline\n"
    inner = [h for h in headers if mime.is_content_header(h)]
    assert mime.canonical_entity(inner, message, start) == (
        b"Content-Type: text/plain\r\n\r\nbody\r\nline\r\n"
    )
    crlf = message.replace(b"\n", b"\r\n")
    headers, start = mime.split_entity_at(crlf)
    inner = [h for h in headers if mime.is_content_header(h)]
    assert mime.canonical_entity(inner, crlf, start) == (
        b"Content-Type: text/plain\r\n\r\nbody\r\nline\r\n"
    )
    assert mime.canonical_entity(inner, b"\n", 0) == b"Content-Type: text/plain\r\n\r\n\r\n"


def test_canonical_entity_parts_join_to_the_entity_and_keep_a_canonical_body() -> None:
    lf = b"Subject: s\nContent-Type: text/plain\n\nbody\nline\n"
    for message in (lf, lf.replace(b"\n", b"\r\n")):
        headers, start = mime.split_entity_at(message)
        inner = [h for h in headers if mime.is_content_header(h)]
        head, body = mime.canonical_entity_parts(inner, message, start)
        assert head + bytes(body) == mime.canonical_entity(inner, message, start)
        if message is lf:
            assert head == b""  # fixed up as a whole
        else:  # the caller's body itself, not a copy
            assert isinstance(body, memoryview) and body.obj is message
            assert head == b"Content-Type: text/plain\r\n\r\n"


# base64 lines --------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("size", [0, 1, 57, 57 * 3, 57 * 3 + 1, 57 * 3 - 1])
def test_b64_lines_are_76_columns_with_crlf(
    size: int, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not fast:
        monkeypatch.setattr(mime, "_FAST_B64", None)
    elif mime._FAST_B64 is None:
        pytest.skip("pybase64 not installed")
    data = bytes(range(256))[:size] if size <= 256 else bytes(size)
    out = mime.b64_lines(data, b"H: v\r\n")
    head, _, body = out.partition(b"\r\n")
    assert head == b"H: v"
    if size == 0:
        assert body == b""  # empty data: no line at all, not an empty line
        return
    lines = body.split(b"\r\n")
    assert lines[-1] == b""  # the last line ends with CRLF too
    full, rest = divmod(size, 57)  # 57 bytes = exactly one 76-character line
    assert [len(line) for line in lines[:-1]] == [76] * full + (
        [(rest + 2) // 3 * 4] if rest else []
    )
    assert b"\n" not in body.replace(b"\r\n", b"")
    assert base64.b64decode(body) == data
    assert mime.b64_decode(body) == data


def test_b64_lines_refuses_a_head_without_crlf() -> None:
    with pytest.raises(ValueError, match="CRLF"):
        mime.b64_lines(b"x", b"H: v")


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("tail", [b"\r\n", b"  \r\n", b"\r\n\r\n", b"\t\r\n \r\n", b""], ids=repr)
def test_b64_decode_ignores_trailing_whitespace(
    tail: bytes, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relays add blank lines or spaces after the last base64 line (RFC 2045 skips them)."""
    if not fast:
        monkeypatch.setattr(mime, "_FAST_B64", None)
    elif mime._FAST_B64 is None:
        pytest.skip("pybase64 not installed")
    data = bytes(range(256)) * 3
    body = mime.b64_lines(data, b"H: v\r\n").partition(b"\r\n")[2].rstrip(b"\r\n")
    assert mime.b64_decode(body + tail) == data
    spaced = body.replace(b"\r\n", b" \r\n") + tail  # trailing blank on every line
    assert mime.b64_decode(spaced) == data


@pytest.mark.parametrize(
    "junk", [b"MIIBI", b"MIIBIjANBgkqhkiG9w0BAQEFAAOC\r\nAQ8", b"\r\n", b"!!*~"]
)
def test_corrupt_base64_gives_the_engines_error(junk: bytes) -> None:
    with pytest.raises(SmimeError, match="base64"):
        mime.b64_decode(junk)


# whole messages -------------------------------------------------------------------------


OUTER = b"Subject: s\r\nMIME-Version: 1.0\r\n"  # what encrypt_message keeps and adds


def _round_trip(message: bytes) -> bytes:
    gw = gateway()
    out = smime.encrypt_message(message, [container("bob@b.example", gw)])
    _, _, body = out.partition(b"\r\n\r\n")
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))
    return smime.Decryptor([gw.key]).decrypt_message(out).message


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"one line without end",
        b"a\nb\n",
        b"a\r\nb\r\n",
        b"x" * 100 + b"\n" + b"y" * 100_000,  # header-like start, then one long line
        b"line\r\n" * 100 + b"late bare LF\n" + b"z" * 10,
    ],
)
def test_message_bodies_come_back_as_crlf(body: bytes) -> None:
    message = b"Subject: s\nContent-Type: text/plain\n\n" + body
    clear = _round_trip(message)
    assert clear == OUTER + b"Content-Type: text/plain\r\n\r\n" + mime.to_crlf(body)


@pytest.mark.parametrize("pad", range(1, 17))
def test_padding_bytes_never_leak_into_the_line_end_check(pad: int) -> None:
    """Every pad length (pad 10 is ten LF bytes) decrypts to the exact canonical content."""
    entity = b"Content-Type: text/plain\r\n\r\n"
    entity += b"t" * ((16 - (len(entity) + 2 + pad) % 16) % 16) + b"\r\n"
    assert 16 - len(entity) % 16 == pad
    clear = _round_trip(b"Subject: s\r\n" + entity)
    assert clear == OUTER + entity


def test_lf_content_from_another_sender_is_converted() -> None:
    """openssl cms -binary and others may encrypt LF text: the result is still CRLF."""
    gw = gateway()
    entity = b"Content-Type: text/plain\n\nhello\nworld\n"
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(entity)
    builder = builder.add_recipient(container("bob@b.example", gw))
    builder = builder.set_content_encryption_algorithm(algorithms.AES256)
    der = builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    message = b"Subject: s\r\n" + mime.b64_lines(
        der,
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n",
    )
    clear = smime.Decryptor([gw.key]).decrypt_message(message).message
    assert clear == b"Subject: s\r\nContent-Type: text/plain\r\n\r\nhello\r\nworld\r\n"


def test_corrupt_base64_in_a_message_is_the_uniform_error() -> None:
    gw = gateway()
    out = smime.encrypt_message(b"Subject: s\r\n\r\nhi\r\n", [container("bob@b.example", gw)])
    head, _, body = out.partition(b"\r\n\r\n")
    corrupt = head + b"\r\n\r\n" + body[:40] + b"!" + body[41:]
    with pytest.raises(DecryptError) as caught:
        smime.Decryptor([gw.key]).decrypt_message(corrupt)
    assert str(caught.value) == str(DecryptError())


def test_transport_safe_keeps_an_attached_message_a_message() -> None:
    """RFC 2046 5.2.1: a message/rfc822 body may only be 7bit, 8bit or binary. A forwarded
    message with an 8-bit body came out base64-encoded; its own parts are made safe instead.
    One whose header block is 8-bit itself cannot be, and stays base64 as before."""
    inner = (b"From: x@y.example\r\nSubject: =?utf-8?q?=C3=A4?=\r\n"
             b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
             b"\r\n\xc3\xa4 inner\r\n")  # fmt: skip
    part = b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    headers, body = mime.split_entity(mime.transport_safe(part + inner))
    assert mime.find_header(headers, "Content-Transfer-Encoding").value == "7bit"  # type: ignore[union-attr]
    assert bytes(body) == mime.transport_safe(inner)
    assert b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=C3=A4 inner" in bytes(body)
    raw_subject = inner.replace(b"=?utf-8?q?=C3=A4?=", b"\xc3\xa4")
    headers, body = mime.split_entity(mime.transport_safe(part + raw_subject))
    assert mime.find_header(headers, "Content-Transfer-Encoding").value == "base64"  # type: ignore[union-attr]
    assert base64.b64decode(bytes(body)) == raw_subject


def _nested(depth: int, leaf: bytes, newline: bytes = b"\n") -> bytes:
    """`leaf` inside `depth` multipart/mixed levels, with `newline` line ends."""
    entity = leaf
    for level in range(depth):
        b = b"b%d" % level
        entity = (b"Content-Type: multipart/mixed; boundary=" + b + b"\n\n--" + b + b"\n"
                  + entity + b"\n--" + b + b"--\n")
    return entity.replace(b"\n", newline)


_BINARY_LEAF = b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: binary\n\nx\n"
_8BIT_LEAF = (b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
              b"\xc3\xa4\n")


def test_mime_nested_beyond_the_limit_is_a_clear_error_not_a_recursion_error() -> None:
    """canonical() (LF text with a binary part) and transport_safe() (an 8-bit leaf)
    recursed once per multipart level: ~1,000 levels (76 KB) raised RecursionError, from
    decrypt_message too, for a message anyone can encrypt to a gateway's container."""
    ok = _nested(mime.MAX_DEPTH, _BINARY_LEAF)
    done = mime.canonical(ok)  # every line CRLF but the binary part's bytes
    assert b"binary\r\n\r\nx\n\r\n--b0--\r\n" in done and done.endswith(b"--b29--\r\n")
    assert b"quoted-printable" in mime.transport_safe(_nested(mime.MAX_DEPTH, _8BIT_LEAF, b"\r\n"))
    for depth in (mime.MAX_DEPTH + 1, 1200):
        with pytest.raises(SmimeError, match="MIME parts nested deeper than"):
            mime.canonical(_nested(depth, _BINARY_LEAF))
        with pytest.raises(SmimeError, match="MIME parts nested deeper than"):
            mime.transport_safe(_nested(depth, _8BIT_LEAF, b"\r\n"))


def test_decrypting_mime_nested_too_deep_is_an_smime_error() -> None:
    from keypost.core import cms

    gw = gateway()
    bob = container("bob@b.example", gw)
    der = cms.build_enveloped(_nested(1200, _BINARY_LEAF), [bob], smime.choose_cipher([bob]))
    message = (b"From: a@a.example\r\nTo: bob@b.example\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\n" + mime.b64_lines(der))
    with pytest.raises(SmimeError, match="MIME parts nested deeper than"):
        smime.Decryptor([gw.key]).decrypt_message(message)
