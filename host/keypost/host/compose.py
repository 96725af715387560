"""Compose details from the add-on -> a complete RFC 5322 message, with the stdlib email package.

multipart/alternative for plain + HTML, multipart/related for the HTML's embedded images
(see `inline_images`), multipart/mixed for attachments, 7-bit output
(non-ASCII text is quoted-printable or base64), a fresh Message-ID. The Bcc header is
never part of the message built here: callers add it only where it belongs.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.charset
import email.policy
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from email.header import Header
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr, getaddresses, make_msgid
from typing import Any

from keypost.core.address import parse_address
from keypost.core.errors import AddressError
from keypost.core.mime import b64_lines
from keypost.host.address_list import split_address_list
from keypost.host.errors import BadRequest
from keypost.host.flowed import drop_self_link_addresses, flow_plain
from keypost.host.inline_images import InlineImage, extract_inline_images, media_type_or_default

# The compat32 classes (email.mime) rather than EmailMessage: the header objects of the
# modern API cost more than the whole encryption (see bench/bench_host.py), and every
# value here is checked and encoded by this module anyway.
POLICY = email.policy.compat32.clone(linesep="\r\n")
ALLOWED_HEADERS = ("in-reply-to", "references")  # besides X-*
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext
_QP_UTF8 = email.charset.Charset("utf-8")
_QP_UTF8.header_encoding = email.charset.QP
_QP_UTF8.body_encoding = email.charset.QP
MAX_LINE = 998
# A word no fold can break must leave room on its line for a field name or a fold's space.
_LONGEST_WORD = MAX_LINE - 100
_LINE_END = re.compile(r"\r\n|\r|\n")
OCTET_STREAM = "application/octet-stream"
# ComposeDetails.deliveryFormat. "auto" is Thunderbird's converter deciding from the editor's
# document (plain text when nothing is formatted, else both); the host cannot see that
# document, so "auto" (and no choice) sends what it is given, and the add-on resolves "auto".
DELIVERY_FORMATS = ("auto", "plaintext", "html", "both")
# ComposeDetails.priority -> X-Priority as Thunderbird writes it (none for normal, as when the
# user chose nothing: the API reports both as "normal").
PRIORITIES = {"highest": "1 (Highest)", "high": "2 (High)", "normal": None,
              "low": "4 (Low)", "lowest": "5 (Lowest)"}


# CR, LF and NUL, and the controls the email package's header folding also ends lines at
# (str.splitlines: VT, FF, FS, GS, RS): in a header value each one was written as a bare line
# break, so the rest of the value became a line of its own (no field, or another field).
_HEADER_BREAKS = re.compile("[\r\n\0\x0b\x0c\x1c-\x1e]")


def _clean(value: str, what: str, param: str = "headers") -> str:
    found = _HEADER_BREAKS.search(value)
    if found is not None:
        raise BadRequest(f"{what} must not contain line breaks or control characters "
                         f"(U+{ord(found.group()):04X})", {"param": param})
    return value


@dataclass(frozen=True)
class Mailbox:
    display: str
    address: str  # addr-spec as given (the resolver normalises it)

    def header(self) -> str:
        """RFC 5322 mailbox; a non-ASCII display name as an RFC 2047 encoded word."""
        _clean(self.address, "an address")
        if any(ch in self.address for ch in " <>,;\""):
            raise BadRequest(f"cannot write the address {self.address!r} in a header")
        display = _clean(self.display, "a display name")
        if _foldable(display):
            return formataddr((display, self.header_address))
        # formataddr makes one encoded word of any length: a long name gave a line of
        # thousands of characters. Encoded words of at most 75, folded between them.
        words = Header(display, "utf-8", header_name="To").encode(linesep="\r\n")
        return f"{words} <{self.header_address}>"

    @property
    def header_address(self) -> str:
        """The addr-spec as a 7-bit header carries it: an internationalised domain as the
        A-labels the resolver looked up. A non-ASCII local part would need RFC 6532 headers
        and SMTPUTF8, which this message does not use: refused in words."""
        if self.address.isascii():
            return self.address
        try:
            address = parse_address(self.address)
        except AddressError:
            raise BadRequest(f"cannot write the address {self.address!r} in a header") from None
        if not address.ascii_local:
            raise BadRequest(
                f"cannot send encrypted mail to {address}: a local part with non-ASCII "
                "characters needs SMTPUTF8, which keypost does not use yet"
            )
        return str(address)

    @property
    def id_domain(self) -> str:
        """The domain for Message-ID and Content-IDs: 7-bit, without asking DNS."""
        try:
            return parse_address(self.address).domain
        except AddressError:
            return "keypost.invalid"


@dataclass(frozen=True)
class Attachment:
    name: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Compose:
    """The validated `encrypt` parameters."""

    sender: Mailbox
    to: tuple[Mailbox, ...]
    cc: tuple[Mailbox, ...]
    bcc: tuple[Mailbox, ...]
    reply_to: tuple[Mailbox, ...]  # every Reply-To mailbox, in order (one header)
    subject: str
    body_plain: str | None
    body_html: str | None  # embedded data: images already replaced by cid: references
    attachments: tuple[Attachment, ...]
    headers: tuple[tuple[str, str], ...]
    identity_key: str | None
    account_key: str | None
    for_outbox: bool
    inline_images: tuple[InlineImage, ...] = ()  # the parts body_html's cid: URLs name
    # Images marked to be attached that are links on the web (the message keeps the links).
    remote_images: tuple[str, ...] = ()
    x_priority: str | None = None  # e.g. "1 (Highest)"
    return_receipt: bool = False  # Disposition-Notification-To: the sender (RFC 8098)

    @property
    def recipients(self) -> tuple[Mailbox, ...]:
        return self.to + self.cc + self.bcc


def parse_mailbox(text: str) -> Mailbox:
    """One mailbox as written. Text that is not exactly one mailbox is kept whole as the
    address: the resolver reports it as an invalid address (fail closed, with why)."""
    if "<" not in text:  # a bare address: keep it exactly as typed (errors quote it)
        return Mailbox("", text.strip())
    pairs = [(n, a) for n, a in getaddresses([text]) if a]
    if len(pairs) != 1:
        return Mailbox("", text.strip())
    return Mailbox(*pairs[0])


def recipient_mailboxes(text: str) -> tuple[Mailbox, ...]:
    """Every mailbox of one recipient string, read as an RFC 5322 address list."""
    return tuple(parse_mailbox(piece) for piece in split_address_list(text))


def _strings(value: Any, param: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{param} must be a list of strings", {"param": param})
    return value


def _recipients(value: Any, param: str) -> tuple[Mailbox, ...]:
    boxes = tuple(m for text in _strings(value, param) for m in recipient_mailboxes(text))
    for box in boxes:  # the addresses are the resolver's to judge (per recipient, with why)
        _clean(box.display, "a display name", param)
    return boxes


def _opt_str(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name} must be a string", {"param": name})
    return value


def _opt_bool(params: dict[str, Any], name: str) -> bool:
    """A bool parameter; absent or null is false (bool("false") would be true)."""
    value = params.get(name)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{name} must be true, false or null", {"param": name})
    return bool(value)


def _bodies(params: dict[str, Any]) -> tuple[str | None, str | None]:
    """The plain and HTML bodies to send, as the delivery format chooses (Thunderbird
    ignores it for a message written as plain text)."""
    plain, html = _opt_str(params, "body_plain"), _opt_str(params, "body_html")
    if plain is None and html is None:
        raise BadRequest("body_plain or body_html is required", {"param": "body_plain"})
    fmt = params.get("delivery_format")
    if fmt is not None and fmt not in DELIVERY_FORMATS:
        raise BadRequest(f"delivery_format must be one of {', '.join(DELIVERY_FORMATS)} or null",
                         {"param": "delivery_format"})
    if html is None:
        return plain, None
    if fmt == "plaintext":
        if plain is None:
            raise BadRequest("delivery_format plaintext needs body_plain", {"param": "body_plain"})
        return plain, None
    if fmt == "html":
        return None, html
    return plain, html


def _flowed(plain: str, written_html: str | None) -> str:
    """The plain text as Thunderbird sends it (format=flowed, see `flowed`): the add-on's
    body_plain is the compose API's plainTextBody, the editor's text for a message written
    as plain text (body_html null) and Thunderbird's flowed rendering of the HTML else."""
    plain = _LINE_END.sub("\n", plain)
    if written_html is None:
        return flow_plain(plain)
    return drop_self_link_addresses(plain, written_html)


def parse_compose(params: dict[str, Any]) -> Compose:
    """Check the `encrypt` params (PROTOCOL.md). Raises BadRequest naming the parameter."""
    sender_text = _opt_str(params, "from")
    if not sender_text:
        raise BadRequest("from is required", {"param": "from"})
    sender = parse_mailbox(sender_text)
    _clean(sender.display, "a display name", "from")
    reply = _recipients(params.get("reply_to"), "reply_to")
    to, cc, bcc = (_recipients(params.get(p), p) for p in ("to", "cc", "bcc"))
    if not (to or cc or bcc):
        raise BadRequest("at least one recipient (to, cc or bcc) is required", {"param": "to"})
    written_as_html = params.get("body_html") is not None
    plain, html = _bodies(params)
    if plain is not None:
        plain = _flowed(plain, params["body_html"] if written_as_html else None)
    attachments = []
    raw_atts = params.get("attachments") or []
    if not isinstance(raw_atts, list):
        raise BadRequest("attachments must be a list", {"param": "attachments"})
    for item in raw_atts:
        try:
            data = base64.b64decode(item["data_base64"], validate=True)
            ctype = item.get("content_type") or OCTET_STREAM
            name = item["name"]
            if not isinstance(name, str) or not isinstance(ctype, str):
                raise TypeError
        except (KeyError, TypeError, AttributeError, binascii.Error, ValueError):
            raise BadRequest(
                "each attachment needs name and data_base64 (valid base64) as strings, "
                "content_type a string or null",
                {"param": "attachments"},
            ) from None
        _clean(name, "an attachment name", "attachments")
        attachments.append(Attachment(name, media_type_or_default(ctype), data))
    headers = params.get("headers") or {}
    if not isinstance(headers, dict):
        raise BadRequest("headers must be an object", {"param": "headers"})
    priority = params.get("priority")
    if priority is not None and (not isinstance(priority, str) or priority not in PRIORITIES):
        raise BadRequest(f"priority must be one of {', '.join(PRIORITIES)} or null",
                         {"param": "priority"})
    extra: list[tuple[str, str]] = []
    for name, value in headers.items():
        lname = name.lower()
        if lname == "x-priority" and priority is not None:
            continue  # the priority param decides; Thunderbird keeps it among its headers
        if not (lname.startswith("x-") or lname in ALLOWED_HEADERS) or not isinstance(value, str):
            raise BadRequest(
                f"header {name!r} is not allowed (X-*, In-Reply-To, References only)",
                {"param": "headers"},
            )
        extra.append((name, _clean(value, f"header {name}")))
    subject = _clean(_opt_str(params, "subject") or "", "the subject", "subject")
    inline: tuple[InlineImage, ...] = ()
    remote: tuple[str, ...] = ()
    if html is not None:
        embedded = extract_inline_images(html, sender.id_domain)
        html, inline, remote = embedded.html, embedded.images, embedded.remote
    return Compose(
        sender=sender,
        to=to,
        cc=cc,
        bcc=bcc,
        reply_to=reply,
        subject=subject,
        body_plain=plain,
        body_html=html,
        attachments=tuple(attachments),
        headers=tuple(extra),
        identity_key=_opt_str(params, "identity_key"),
        account_key=_opt_str(params, "account_key"),
        for_outbox=_opt_bool(params, "for_outbox"),
        inline_images=inline,
        remote_images=remote,
        x_priority=None if priority is None else PRIORITIES[priority],
        return_receipt=_opt_bool(params, "return_receipt"),
    )


def _set_addresses(msg: Message, name: str, boxes: Sequence[Mailbox]) -> None:
    if boxes:
        msg[name] = ", ".join(b.header() for b in boxes)


def _seven_bit(text: str) -> bool:
    """RFC 2045 7bit data: ASCII, no NUL, no line over 998 characters where the email
    generator ends lines (CR, LF, CRLF; str.splitlines also splits at FF, VT, ...)."""
    return (text.isascii() and "\0" not in text
            and all(len(line) <= MAX_LINE for line in _LINE_END.split(text)))


def _text(text: str, subtype: str) -> Message:
    """7bit when it is short-lined ASCII, else UTF-8 quoted-printable. Plain text is
    format=flowed (RFC 3676, delsp=no), as Thunderbird writes it (`_flowed` made it so).
    Quoted-printable keeps a flowed line's trailing space (as =20) and the message is
    encrypted, so no relay sees the encoding (RFC 3676 4.2's reason to avoid it)."""
    if _seven_bit(text):
        part: Message = MIMEText(text, subtype, "us-ascii")
    else:
        part = MIMENonMultipart("text", subtype)
        part.set_payload(text, _QP_UTF8)
    if subtype == "plain":
        part.set_param("format", "flowed", requote=False)
    return part


def _foldable(text: str) -> bool:
    """Can `text` go into a header as it is: ASCII, and foldable at its spaces to lines
    within RFC 5322's 998 characters? Else it is written as RFC 2047 encoded words."""
    return text.isascii() and all(len(word) < _LONGEST_WORD for word in text.split())


def _encoded(value: str, name: str) -> str:
    """A header value: checked, and RFC 2047 encoded when it is not ASCII or has a word
    no fold can bring under RFC 5322's 998 characters a line; folded here into encoded
    words of at most 75 characters (one unbounded word made lines of thousands)."""
    _clean(value, f"header {name}")
    if _foldable(value):
        return value
    return Header(value, _QP_UTF8, header_name=name).encode(linesep="\r\n")


def _binary_part(
    content_type: str, data: bytes, name: str, disposition: str, bodies: dict[bytes, bytes]
) -> MIMEBase:
    """A base64 part whose body is a random placeholder; `bodies` maps it to the base64
    text. The email generator rewrites bodies line by line (~50 ms per MB), so large
    bodies are spliced into the generated bytes instead."""
    maintype, _, subtype = content_type.partition("/")
    part = MIMEBase(maintype, subtype)
    placeholder = f"keypost-body-{secrets.token_hex(16)}"
    part.set_payload(placeholder)
    part["Content-Transfer-Encoding"] = "base64"
    # core's wrapped base64 (pybase64 when installed): ~2x the stdlib's encodebytes.
    bodies[placeholder.encode("ascii")] = b64_lines(data).removesuffix(b"\r\n")
    _disposition(part, disposition, name)
    return part


def _disposition(part: MIMEBase, disposition: str, name: str) -> None:
    """Content-Disposition with the file name (RFC 2231 when it is not ASCII)."""
    name = _clean(name, "an attachment name")
    filename: str | tuple[str, str, str] = name if name.isascii() else ("utf-8", "", name)
    part.add_header("Content-Disposition", disposition, filename=filename)


def _attachment(att: Attachment, bodies: dict[bytes, bytes]) -> MIMEBase:
    """A file as a part. RFC 2045 6.4 and RFC 2046 5.2 forbid base64 for multipart/* and
    for message/* (but message/global): an attached message that is 7-bit goes in as it
    is, anything else of those types as application/octet-stream."""
    maintype, _, subtype = att.content_type.lower().partition("/")
    if maintype == "message" and subtype != "global":
        text = att.data.decode("ascii") if att.data.isascii() else None
        if text is not None and _seven_bit(text):
            part = MIMEBase(maintype, subtype)
            part.set_payload(_LINE_END.sub("\r\n", text))  # written as it is: CRLF here
            part["Content-Transfer-Encoding"] = "7bit"
            _disposition(part, "attachment", att.name)
            return part
    content_type = OCTET_STREAM if maintype in ("message", "multipart") else att.content_type
    return _binary_part(content_type, att.data, att.name, "attachment", bodies)


def _html(c: Compose, html: str, bodies: dict[bytes, bytes]) -> Message:
    """text/html, or RFC 2387 multipart/related with the HTML first and its embedded images
    (each with the Content-ID its cid: URL names), as Thunderbird itself sends them."""
    text = _text(html, "html")
    if not c.inline_images:
        return text
    parts: list[Message] = [text]
    for image in c.inline_images:
        part = _binary_part(image.content_type, image.data, image.name, "inline", bodies)
        part["Content-ID"] = f"<{image.content_id}>"
        parts.append(part)
    related = MIMEMultipart("related", _subparts=parts)
    related.set_param("type", "text/html")
    return related


def _splice(message: bytes, bodies: dict[bytes, bytes]) -> bytes:
    for placeholder, body in bodies.items():
        head, found, tail = message.partition(placeholder)
        if not found or placeholder in tail:
            raise AssertionError("attachment placeholder not found exactly once")
        message = head + body + tail
    return message


def build_message(
    c: Compose, now: dt.datetime | None = None, message_id: str | None = None
) -> bytes:
    """The clear message (CRLF, 7-bit), without any Bcc header."""
    body: Message
    bodies: dict[bytes, bytes] = {}
    if c.body_plain is not None and c.body_html is not None:
        body = MIMEMultipart("alternative", _subparts=[_text(c.body_plain, "plain"),
                                                       _html(c, c.body_html, bodies)])
    elif c.body_html is not None:
        body = _html(c, c.body_html, bodies)
    else:
        body = _text(c.body_plain or "", "plain")
    msg = body
    if c.attachments:
        parts = [_attachment(a, bodies) for a in c.attachments]
        msg = MIMEMultipart("mixed", _subparts=[body, *parts])
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]  # email.mime puts one in every part; only the top wants it
    # Headers first in the usual order: MIME classes already set Content-Type & co.
    content = list(msg.items())
    for name, _ in content:
        del msg[name]
    _set_addresses(msg, "From", [c.sender])
    _set_addresses(msg, "To", c.to)
    _set_addresses(msg, "Cc", c.cc)
    _set_addresses(msg, "Reply-To", c.reply_to)
    if c.return_receipt:
        # As Thunderbird with its default mail.receipt.request_header_type (0): the From
        # mailbox, no Return-Receipt-To.
        _set_addresses(msg, "Disposition-Notification-To", [c.sender])
    msg["Subject"] = _encoded(c.subject, "Subject")
    msg["Date"] = format_datetime(now or dt.datetime.now(dt.UTC))
    msg["Message-ID"] = message_id or make_msgid(domain=c.sender.id_domain)
    extra = [("X-Identity-Key", c.identity_key), ("X-Account-Key", c.account_key),
             ("X-Priority", c.x_priority), *c.headers]
    for name, value in extra:
        if value:
            if not _HEADER_NAME.match(name):
                raise BadRequest(f"invalid header name {name!r}", {"param": "headers"})
            msg[name] = _encoded(value, name)
    for name, value in content:
        msg[name] = value
    if msg["MIME-Version"] is None:
        msg["MIME-Version"] = "1.0"
    return _splice(msg.as_bytes(policy=POLICY), bodies)


def header_block(name: str, boxes: Sequence[Mailbox]) -> bytes:
    """One folded header line (CRLF-terminated), e.g. the Bcc of an Outbox copy."""
    msg = Message()
    _set_addresses(msg, name, boxes)
    head, _, _ = msg.as_bytes(policy=POLICY).partition(b"\r\n\r\n")
    return head + b"\r\n"
