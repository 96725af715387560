"""Raw header surgery keeps every byte it does not mean to change."""

from __future__ import annotations

import email.header

import pytest

from keypost.gateway import headers, mimecheck

MSG = (
    b"Received: from a\r\n\tby b\r\n"
    b"Subject: [SIGN] Quarterly\r\n figures\r\n"
    b"X-Keypost-Sign: yes\r\n"
    b"From: alice@example.com\r\n\r\nbody\r\n\r\nmore\r\n"
)


def test_get_unfolds_and_is_case_insensitive() -> None:
    assert headers.get(MSG, "subject") == "[SIGN] Quarterly figures"
    assert headers.get(MSG, "x-keypost-sign") == "yes"
    assert headers.get(MSG, "Cc") is None


def test_remove_and_prepend_leave_the_rest_untouched() -> None:
    out = headers.remove(MSG, "X-Keypost-Sign")
    assert out == MSG.replace(b"X-Keypost-Sign: yes\r\n", b"")
    out2 = headers.prepend(out, "X-Test", "v")
    assert out2 == b"X-Test: v\r\n" + out
    with pytest.raises(ValueError):
        headers.prepend(MSG, "X-Bad", "a\r\nInjected: yes")


def test_subject_tag_is_removed_once_keeping_folding() -> None:
    out, found = headers.strip_subject_tag(MSG, "[sign]")
    assert found
    assert b"Subject: Quarterly\r\n figures\r\n" in out
    assert out.endswith(b"\r\n\r\nbody\r\n\r\nmore\r\n")
    again, found2 = headers.strip_subject_tag(out, "[sign]")
    assert not found2 and again == out


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        (b"[sign] hi", b"hi"),  # prefix: the space after it goes
        (b"hi [sign]", b"hi"),  # suffix: the space before it goes, none is left trailing
        (b"hi [Sign] there", b"hi there"),  # inside: one of the two spaces goes
        (b"[sign]", b""),
        (b"hi\t[sign]", b"hi"),
        (b"hi  [sign]", b"hi "),  # only the one space that separated it
        (b"hi[sign]", b"hi"),
        (b"hi [sign] [sign]", b"hi [sign]"),  # the first occurrence only
        (b"hi\r\n [sign] there", b"hi\r\n there"),
        (b"hi\r\n [sign]", b"hi"),  # a continuation line of only the tag goes whole
    ],
)
def test_subject_tag_goes_with_exactly_one_separating_space(
    subject: bytes, expected: bytes
) -> None:
    for eol in (b"\r\n", b"\n"):
        value, want = subject.replace(b"\r\n", eol), expected.replace(b"\r\n", eol)
        msg = b"From: a@b.example" + eol + b"Subject: " + value + eol + eol + b"body" + eol
        out, found = headers.strip_subject_tag(msg, "[sign]")
        assert found
        head = b"Subject: " + want if want else b"Subject:"
        assert out == msg.replace(b"Subject: " + value + eol, head + eol)


def test_subject_tag_is_looked_for_in_the_subject_value_only() -> None:
    msg = b"X-Note: [sign]\r\nSubject: hi\r\n\r\n[sign]\r\n"
    assert headers.strip_subject_tag(msg, "[sign]") == (msg, False)


def test_lf_only_messages_and_header_only_messages() -> None:
    lf = b"Subject: x\nFrom: a@b.c\n\nbody\n"
    assert headers.prepend(lf, "X-A", "1") == b"X-A: 1\n" + lf
    only = b"Subject: x\r\n"
    assert headers.get(only, "Subject") == "x"


@pytest.mark.parametrize(
    ("message", "ok"),
    [
        (b"Content-Type: text/plain\r\n\r\nhello\r\n", True),
        (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n", True),
        (b"Content-Type: multipart/mixed; boundary=b\r\n\r\nno parts at all\r\n", False),
        (b"Content-Type: multipart/mixed\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n", False),
        (b"\x00\x81garbage without headers", False),
        (b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!***\r\n",
         False),
    ],
)
def test_mimecheck_tells_messages_from_garbage(message: bytes, ok: bool) -> None:
    assert (mimecheck.problem(message) is None) is ok


@pytest.mark.parametrize(
    ("subject", "expected", "readable"),
    [
        (b"=?UTF-8?Q?=5bsign=5d_Gr=c3=bc=c3=9fe?=", b"=?utf-8?b?R3LDvMOfZQ==?=", "Grüße"),
        (b"=?UTF-8?Q?Gr=c3=bc=c3=9fe_=5bSIGN=5d?=", b"=?utf-8?b?R3LDvMOfZQ==?=", "Grüße"),
        (b"=?UTF-8?Q?=5bsign=5d?=", b"", ""),
        (b"=?UTF-8?Q?=5bsign=5d_hello?=", b"hello", "hello"),  # plain ASCII left: as it is
        (b"=?utf-8?q?=5Bsign=5D?=\r\n =?utf-8?q?_=C3=BC?=", b"=?utf-8?b?w7w=?=", "ü"),
        # "İ".lower() is two characters: a search in the lower-cased text cut one too early
        (b"=?UTF-8?Q?=C4=B0stanbul_=5bsign=5d_x?=", b"=?utf-8?q?=C4=B0stanbul_x?=", "İstanbul x"),
    ],
)
def test_subject_tag_in_encoded_words_is_found_and_the_field_written_anew(
    subject: bytes, expected: bytes, readable: str
) -> None:
    msg = b"From: a@b.example\r\nSubject: " + subject + b"\r\nTo: c@d.example\r\n\r\nbody\r\n"
    out, found = headers.strip_subject_tag(msg, "[sign]")
    assert found
    head = b"Subject: " + expected if expected else b"Subject:"
    assert out == msg.replace(b"Subject: " + subject + b"\r\n", head + b"\r\n")
    assert str(email.header.make_header(email.header.decode_header(
        headers.get(out, "Subject") or ""))) == readable


def test_encoded_words_without_the_tag_or_unreadable_are_left_alone() -> None:
    for subject in (b"=?UTF-8?Q?Gr=c3=bc=c3=9fe?=", b"=?x-unknown?q?=5bsign=5d?=",
                    b"=?\xff?q?=5bsign=5d?="):  # not a charset name: CharsetError
        msg = b"Subject: " + subject + b"\r\n\r\nbody =5bsign=5d\r\n"
        assert headers.strip_subject_tag(msg, "[sign]") == (msg, False)


def test_a_line_break_in_the_decoded_subject_stays_encoded() -> None:
    """Decoded text holding CR LF (=0D=0A) written as it is would start a field of its own."""
    msg = b"Subject: =?UTF-8?Q?=5bsign=5d_hi=0D=0ABcc:_x@y.test?=\r\n\r\nbody\r\n"
    out, found = headers.strip_subject_tag(msg, "[sign]")
    assert found and headers.values(out, "Bcc") == []
    assert len(headers.fields(headers.split(out).head)) == 1  # folded, one field
    assert "Bcc: x@y.test" in str(email.header.make_header(email.header.decode_header(
        headers.get(out, "Subject") or "")))
