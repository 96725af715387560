"""Building the clear RFC 5322 message from the add-on's compose details."""

from __future__ import annotations

import base64
import json
from email.header import decode_header, make_header
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest
from host_support import parse_mail as parse

from keypost.host.compose import build_message, header_block, parse_compose, recipient_mailboxes
from keypost.host.errors import BadRequest

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40
# Shared with the add-on's tests (extension/tests/recipients.test.mjs): both sides must read
# a recipient string the same way, or the popup shows "ok" for a Send the host refuses.
ADDRESS_LISTS = json.loads(
    (Path(__file__).parents[1] / "data" / "address_lists.json").read_text("utf-8"))["cases"]


def params(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "from": "Älice Example <alice@example.com>",
        "to": ["Bob <bob@example.org>", "carol@example.net"],
        "cc": ['"Dave, D." <dave@example.com>'],
        "bcc": ["secret@example.org"],
        "subject": "Grüße – figures",
        "body_plain": "Hello Bob,\nsee attached. Ünïcödé.\n",
    }
    base.update(extra)
    return base


def test_plain_message_headers_and_no_bcc() -> None:
    c = parse_compose(params())
    data = build_message(c)
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    assert max(data) < 128  # 7-bit: non-ASCII is encoded
    msg = parse(data)
    assert msg["From"].addresses[0].addr_spec == "alice@example.com"
    assert msg["From"].addresses[0].display_name == "Älice Example"
    assert [a.addr_spec for a in msg["To"].addresses] == ["bob@example.org", "carol@example.net"]
    assert msg["Cc"].addresses[0].display_name == "Dave, D."
    assert msg["Subject"] == "Grüße – figures"
    assert msg["Message-ID"].endswith("@example.com>") and msg["Date"]
    assert "Bcc" not in msg and b"secret@example.org" not in data
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content().replace("\r\n", "\n") == "Hello Bob,\nsee attached. Ünïcödé.\n"
    assert [m.address for m in c.recipients] == [
        "bob@example.org", "carol@example.net", "dave@example.com", "secret@example.org"]


def test_alternative_and_mixed_with_attachments() -> None:
    c = parse_compose(params(
        body_html="<p>Hello <b>Bob</b></p>",
        attachments=[
            {"name": "figures.pdf", "content_type": "application/pdf",
             "data_base64": base64.b64encode(PDF).decode()},
            {"name": "notes.txt", "content_type": "bogus",
             "data_base64": base64.b64encode(b"n").decode()},
        ],
        headers={"X-Mozilla-Draft-Info": "internal/draft; vcard=0", "In-Reply-To": "<a@b>"},
    ))
    msg = parse(build_message(c))
    assert msg.get_content_type() == "multipart/mixed"
    body, pdf, txt = msg.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    plain, html = body.iter_parts()
    assert plain.get_content_type() == "text/plain" and html.get_content_type() == "text/html"
    assert "<b>Bob</b>" in html.get_content()
    assert pdf.get_filename() == "figures.pdf" and pdf.get_content() == PDF
    assert txt.get_content_type() == "application/octet-stream"
    assert msg["X-Mozilla-Draft-Info"] == "internal/draft; vcard=0"
    assert msg["In-Reply-To"] == "<a@b>"


def test_html_only_and_outbox_keys() -> None:
    c = parse_compose(params(body_plain=None, body_html="<p>x</p>", identity_key="id3",
                             account_key="account2", for_outbox=True))
    msg = parse(build_message(c))
    assert msg.get_content_type() == "text/html"
    assert msg["X-Identity-Key"] == "id3" and msg["X-Account-Key"] == "account2"
    assert c.for_outbox is True


def test_header_block_is_one_folded_header() -> None:
    c = parse_compose(params(bcc=[f"user{i}@example.org" for i in range(20)]))
    block = header_block("Bcc", c.bcc)
    assert block.startswith(b"Bcc: ") and block.endswith(b"\r\n")
    assert b"\r\n\r\n" not in block
    assert all(len(line) <= 78 for line in block.split(b"\r\n"))
    assert parse(block + b"\r\n")["Bcc"].addresses[19].addr_spec == "user19@example.org"


@pytest.mark.parametrize("name", [
    "Ä" * 400, "x" * 1500, ("Müller " * 200).strip(), 'a "quoted" ' + "é" * 300, "Jörg",
    "Doe, Carol"])
def test_long_display_names_stay_within_the_line_limit(name: str) -> None:
    """A display name became one encoded word of any length: a 400-character name made a
    To line of 1,081 characters, over RFC 5322's 998. Now encoded words of at most 75,
    which an RFC 2047 reader joins back to the very name (whitespace between encoded
    words is no part of it; Python's own address parser adds spaces there, so the check
    decodes the words itself)."""
    to = f"{name} <bob@example.org>" if "," not in name and '"' not in name else (
        '"' + name.replace('"', '\\"') + '" <bob@example.org>')
    c = parse_compose(params(to=[to, "carol@example.net"], **{"from": to.replace(
        "bob@example.org", "alice@example.com")}))
    data = build_message(c)
    head = data.partition(b"\r\n\r\n")[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78
    for field, address in (("To", "bob@example.org"), ("From", "alice@example.com")):
        written = next(line for line in _unfolded(head) if line.startswith(f"{field}: "))
        shown, addr = parseaddr(written.split(": ", 1)[1])
        assert addr == address
        assert str(make_header(decode_header(shown))) == name
    assert [a.addr_spec for a in parse(data)["To"].addresses] == [
        "bob@example.org", "carol@example.net"]


def _unfolded(head: bytes) -> list[str]:
    return head.decode("ascii").replace("\r\n ", " ").split("\r\n")


@pytest.mark.parametrize("bad", [
    {"from": None},
    {"to": [], "cc": [], "bcc": []},
    {"cc": 5},
    {"to": ["Bob <bob@example.org>\r\nBcc: x@example.org"]},
    {"body_plain": None},
    {"attachments": [{"name": "a", "data_base64": "not base64!"}]},
    {"attachments": {"name": "a"}},
    {"headers": {"Received": "from evil"}},
    {"headers": {"X-Ok": "a\r\nBcc: evil@example.org"}},
    {"subject": "hi\r\nBcc: evil@example.org"},
])
def test_bad_compose_params(bad: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        build_message(parse_compose(params(**bad)))


def test_attachment_types_a_header_cannot_carry_become_octet_stream() -> None:
    # Only "one slash" was checked: a space, a parameter or non-ASCII went into the
    # part's Content-Type as given (non-ASCII as an RFC 2047 word no parser takes).
    odd = ["image/p\u00f1g", "a b/c", "text/plain; boundary=x"]
    c = parse_compose(params(attachments=[
        {"name": f"f{i}", "content_type": ctype, "data_base64": "YQ=="}
        for i, ctype in enumerate([*odd, "image/png"])]))
    _, *parts = parse(build_message(c)).iter_parts()
    assert [p["Content-Type"] for p in parts] == ["application/octet-stream"] * 3 + ["image/png"]
    assert [p.get_content() for p in parts] == [b"a"] * 4


def test_internationalised_domains_are_written_as_a_labels() -> None:
    # A non-ASCII domain reached formataddr, which raised UnicodeEncodeError: encrypt
    # answered "internal error" for every IDN recipient or sender the lookup called ok.
    c = parse_compose(params(**{
        "from": "Älice <alice@exämple.com>",
        "to": ["Bob <bob@bücher.example>", "carol@BÜCHER.example"], "cc": [],
        "body_html": '<p><img src="data:image/png;base64,iVBORw0KGgo="></p>'}))
    data = build_message(c)
    assert max(data) < 128
    msg = parse(data)
    assert msg["From"].addresses[0].addr_spec == "alice@xn--exmple-cua.com"
    assert [a.addr_spec for a in msg["To"].addresses] == [
        "bob@xn--bcher-kva.example", "carol@xn--bcher-kva.example"]
    assert msg["Message-ID"].endswith("@xn--exmple-cua.com>")
    image = next(p for p in msg.walk() if p.get_content_type() == "image/png")
    assert image["Content-ID"].endswith("@xn--exmple-cua.com>")
    assert all(not part.defects for part in msg.walk())
    # The resolver still gets the addresses as the add-on gave them.
    assert [m.address for m in c.to] == ["bob@bücher.example", "carol@BÜCHER.example"]


def test_a_non_ascii_local_part_is_refused_in_words() -> None:
    with pytest.raises(BadRequest, match=r"jörg@example\.org"):
        build_message(parse_compose(params(to=["Jörg <jörg@example.org>"])))


@pytest.mark.parametrize("subject", ["日本語の件名です" * 15, "Grüße aus Köln " * 60, "x" * 1200])
def test_long_subjects_fold_into_lines_readers_accept(subject: str) -> None:
    # A non-ASCII subject was one encoded word however long (RFC 2047: at most 75
    # characters), on a line of its own: 120 Japanese characters made a 3,600-character
    # header line, past RFC 5322's 998 in the outer headers as well as inside.
    data = build_message(parse_compose(params(subject=subject)))
    head = data.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78
    assert parse(data)["Subject"] == subject
    plain = build_message(parse_compose(params(subject="Quarterly figures, " * 10)))
    assert b"Subject: Quarterly figures, Quarterly" in plain  # ASCII stays as it is


def test_attached_messages_and_multiparts_keep_the_mime_well_formed() -> None:
    # Every attachment was base64, which RFC 2045/2046 forbid for message/rfc822 and
    # multipart/*: readers parse such a part as a message or multipart and find none (a
    # mail forwarded as attachment; Python's parser reports the defects).
    eml = b"From: a@example.org\nSubject: fwd\n\nhello\n"
    eml_8bit = "From: a@example.org\r\nSubject: x\r\n\r\nGr\u00fc\u00dfe\r\n".encode()
    c = parse_compose(params(attachments=[
        {"name": name, "content_type": ctype, "data_base64": base64.b64encode(data).decode()}
        for name, ctype, data in [("fwd.eml", "message/rfc822", eml),
                                  ("utf8.eml", "message/rfc822", eml_8bit),
                                  ("parts", "multipart/mixed", b"--x\r\n")]]))
    msg = parse(build_message(c))
    assert [p.defects for p in msg.walk()] == [[]] * len(list(msg.walk()))
    _, fwd, utf8, parts = msg.iter_parts()
    assert fwd.get_content_type() == "message/rfc822" and fwd.get_filename() == "fwd.eml"
    assert fwd["Content-Transfer-Encoding"] == "7bit"
    forwarded = fwd.get_content()
    assert forwarded["Subject"] == "fwd"
    assert forwarded.get_content().replace("\r\n", "\n") == "hello\n"
    # Not 7-bit: the file travels as it is, as an opaque attachment.
    assert utf8.get_content_type() == "application/octet-stream"
    assert utf8.get_filename() == "utf8.eml" and utf8.get_content() == eml_8bit
    assert parts.get_content_type() == "application/octet-stream"
    assert parts.get_content() == b"--x\r\n"


@pytest.mark.parametrize("body", [("a" * 100 + "\f") * 20, "a\0b"])
def test_text_marked_7bit_is_7bit(body: str) -> None:
    # str.splitlines() also ends lines at FF, VT and more, the generator only at CR/LF:
    # a body of form-feed separated lines went out as 7bit with a 2,020-character line.
    data = build_message(parse_compose(params(body_plain=body)))
    msg = parse(data)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert max(len(line) for line in data.split(b"\r\n")) <= 998 and b"\0" not in data
    assert msg.get_content() == body


@pytest.mark.parametrize("case", ADDRESS_LISTS, ids=lambda case: repr(case["text"]))
def test_a_recipient_string_is_read_as_an_address_list(case: dict[str, Any]) -> None:
    assert [m.address for m in recipient_mailboxes(case["text"])] == case["addresses"]


def test_lists_and_groups_in_recipient_fields_become_one_recipient_each() -> None:
    c = parse_compose(params(
        to=['Name <a@example.org>, "Last, First" <b@example.net>'],
        cc=["Team: c@example.org, Dee <d@example.net>;", "Nobody:;"],
        bcc=["Hidden: e@example.org, f@example.net;"],
    ))
    assert [m.address for m in c.recipients] == [
        "a@example.org", "b@example.net", "c@example.org", "d@example.net",
        "e@example.org", "f@example.net"]
    data = build_message(c)
    msg = parse(data)
    assert [(a.display_name, a.addr_spec) for a in msg["To"].addresses] == [
        ("Name", "a@example.org"), ("Last, First", "b@example.net")]
    assert [(a.display_name, a.addr_spec) for a in msg["Cc"].addresses] == [
        ("", "c@example.org"), ("Dee", "d@example.net")]
    assert b"e@example.org" not in data and b"f@example.net" not in data
    assert b"Hidden" not in data and "Bcc" not in msg


def assert_no_defects(msg: Any) -> None:
    """The email package (policy=default) found nothing wrong in any part or header."""
    for part in msg.walk():
        assert not part.defects, part.defects
        for name, value in part.items():
            assert not getattr(value, "defects", ()), (name, value.defects)


@pytest.mark.parametrize("reply_to", [
    ["Desk <desk@example.com>", "Älice <alice@example.com>"],
    'Desk <desk@example.com>, "Älice" <alice@example.com>',
])
def test_every_reply_to_address_is_kept(reply_to: str | list[str]) -> None:
    msg = parse(build_message(parse_compose(params(reply_to=reply_to))))
    assert [(a.display_name, a.addr_spec) for a in msg["Reply-To"].addresses] == [
        ("Desk", "desk@example.com"), ("Älice", "alice@example.com")]
    assert len(msg.get_all("Reply-To")) == 1
    assert_no_defects(msg)


@pytest.mark.parametrize("reply_to", [None, []])
def test_no_reply_to_no_header(reply_to: list[str] | None) -> None:
    assert "Reply-To" not in parse(build_message(parse_compose(params(reply_to=reply_to))))


IMAGE = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nimage").decode()
ATTACHMENT = {"name": "notes.txt", "content_type": "text/plain",
              "data_base64": base64.b64encode(b"notes").decode()}


def shape(msg: Any) -> list[str]:
    return [part.get_content_type() for part in msg.walk()]


@pytest.mark.parametrize(("fmt", "expected"), [
    (None, ["multipart/alternative", "text/plain", "multipart/related", "text/html", "image/png"]),
    ("both", ["multipart/alternative", "text/plain", "multipart/related", "text/html",
              "image/png"]),
    ("auto", ["multipart/alternative", "text/plain", "multipart/related", "text/html",
              "image/png"]),
    ("html", ["multipart/related", "text/html", "image/png"]),
    ("plaintext", ["text/plain"]),
])
def test_delivery_format_decides_the_body_parts(fmt: str | None, expected: list[str]) -> None:
    c = parse_compose(params(body_html=f'<p>Hello</p><img src="{IMAGE}">', delivery_format=fmt))
    msg = parse(build_message(c))
    assert shape(msg) == expected
    assert_no_defects(msg)
    with_file = parse(build_message(parse_compose(params(
        body_html="<p>Hello</p>", delivery_format=fmt, attachments=[ATTACHMENT]))))
    assert shape(with_file)[0] == "multipart/mixed" and shape(with_file)[-1] == "text/plain"
    assert_no_defects(with_file)


def test_plaintext_delivery_sends_no_html_and_reports_no_remote_images() -> None:
    html = '<p>Hi</p><img src="https://e.example/x.png" moz-do-not-send="false">'
    c = parse_compose(params(body_html=html, delivery_format="plaintext"))
    assert c.body_html is None and c.remote_images == ()
    assert b"<p>" not in build_message(c)


def test_delivery_format_is_ignored_for_a_plain_text_message() -> None:
    msg = parse(build_message(parse_compose(params(delivery_format="html"))))
    assert shape(msg) == ["text/plain"]


@pytest.mark.parametrize("bad", [
    {"delivery_format": "rtf"},
    {"delivery_format": 4},
    {"delivery_format": "plaintext", "body_plain": None, "body_html": "<p>x</p>"},
])
def test_bad_delivery_format(bad: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_compose(params(**bad))
    assert raised.value.details["param"] in ("delivery_format", "body_plain")


@pytest.mark.parametrize(("priority", "header"), [
    ("highest", "1 (Highest)"), ("high", "2 (High)"), ("low", "4 (Low)"), ("lowest", "5 (Lowest)"),
    ("normal", None), (None, None),
])
def test_priority_is_written_as_thunderbird_writes_it(priority: str | None,
                                                      header: str | None) -> None:
    msg = parse(build_message(parse_compose(params(priority=priority))))
    assert msg.get_all("X-Priority") == ([header] if header else None)
    assert_no_defects(msg)


def test_the_priority_param_replaces_an_x_priority_header() -> None:
    # Thunderbird keeps the priority among its headers: customHeaders may carry "Highest".
    c = parse_compose(params(priority="low", headers={"x-priority": "Highest"}))
    assert parse(build_message(c)).get_all("X-Priority") == ["4 (Low)"]
    c = parse_compose(params(priority="normal", headers={"X-Priority": "Highest"}))
    assert "X-Priority" not in parse(build_message(c))


@pytest.mark.parametrize("bad", [{"priority": "urgent"}, {"priority": 1}, {"priority": []}])
def test_bad_priority(bad: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_compose(params(**bad))
    assert raised.value.details["param"] == "priority"


def test_return_receipt_asks_the_sender_as_thunderbird_does() -> None:
    data = build_message(parse_compose(params(return_receipt=True)))
    msg = parse(data)
    assert msg.get_all("Disposition-Notification-To") == [msg["From"]]
    # The email package reads the field as unstructured text: decoded, it is the mailbox.
    assert parseaddr(msg["Disposition-Notification-To"]) == ("Älice Example", "alice@example.com")
    assert "Return-Receipt-To" not in msg  # Thunderbird's default request_header_type
    assert_no_defects(msg)
    for no in (False, None):
        assert "Disposition-Notification-To" not in parse(
            build_message(parse_compose(params(return_receipt=no))))


def test_bad_return_receipt() -> None:
    with pytest.raises(BadRequest) as raised:
        parse_compose(params(return_receipt="yes"))
    assert raised.value.details["param"] == "return_receipt"
