"""Compose details from the add-on -> a complete RFC 5322 message, with the stdlib email package.

multipart/alternative for plain + HTML, multipart/mixed for attachments, 7-bit output
(non-ASCII text is quoted-printable or base64), a fresh Message-ID. The Bcc header is
never part of the message built here: callers add it only where it belongs.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.policy
from collections.abc import Sequence
from dataclasses import dataclass
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, make_msgid
from typing import Any

from keypost.host.errors import BadRequest

POLICY = email.policy.SMTP.clone(cte_type="7bit")  # CRLF, and 7-bit safe bodies
ALLOWED_HEADERS = ("in-reply-to", "references")  # besides X-*


@dataclass(frozen=True)
class Mailbox:
    display: str
    address: str  # addr-spec as given (the resolver normalises it)

    def header(self) -> HeaderAddress:
        try:
            return HeaderAddress(display_name=self.display, addr_spec=self.address)
        except (ValueError, IndexError) as exc:
            raise BadRequest(
                f"cannot write the address {self.address!r} in a header: {exc}"
            ) from None


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
    reply_to: Mailbox | None
    subject: str
    body_plain: str | None
    body_html: str | None
    attachments: tuple[Attachment, ...]
    headers: tuple[tuple[str, str], ...]
    identity_key: str | None
    account_key: str | None
    for_outbox: bool

    @property
    def recipients(self) -> tuple[Mailbox, ...]:
        return self.to + self.cc + self.bcc


def _mailboxes(value: Any, param: str) -> tuple[Mailbox, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{param} must be a list of strings", {"param": param})
    out: list[Mailbox] = []
    for text in value:
        if "<" not in text:  # a bare address: keep it exactly as typed (errors quote it)
            out.append(Mailbox("", text.strip()))
            continue
        pairs = [(n, a) for n, a in getaddresses([text]) if a]
        if len(pairs) != 1:
            # Keep it: the resolver reports it as an invalid address (fail closed, with why).
            out.append(Mailbox("", text.strip()))
            continue
        out.append(Mailbox(pairs[0][0], pairs[0][1]))
    return tuple(out)


def _opt_str(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name} must be a string", {"param": name})
    return value


def parse_compose(params: dict[str, Any]) -> Compose:
    """Check the `encrypt` params (PROTOCOL.md). Raises BadRequest naming the parameter."""
    sender_text = _opt_str(params, "from")
    if not sender_text:
        raise BadRequest("from is required", {"param": "from"})
    senders = _mailboxes(sender_text, "from")
    reply = _mailboxes(params.get("reply_to"), "reply_to")
    to, cc, bcc = (_mailboxes(params.get(p), p) for p in ("to", "cc", "bcc"))
    if not (to or cc or bcc):
        raise BadRequest("at least one recipient (to, cc or bcc) is required", {"param": "to"})
    plain, html = _opt_str(params, "body_plain"), _opt_str(params, "body_html")
    if plain is None and html is None:
        raise BadRequest("body_plain or body_html is required", {"param": "body_plain"})
    attachments = []
    raw_atts = params.get("attachments") or []
    if not isinstance(raw_atts, list):
        raise BadRequest("attachments must be a list", {"param": "attachments"})
    for item in raw_atts:
        try:
            data = base64.b64decode(item["data_base64"], validate=True)
            ctype = str(item.get("content_type") or "application/octet-stream")
            name = str(item["name"])
        except (KeyError, TypeError, AttributeError, binascii.Error, ValueError):
            raise BadRequest(
                "each attachment needs name and data_base64 (valid base64)",
                {"param": "attachments"},
            ) from None
        if ctype.count("/") != 1:
            ctype = "application/octet-stream"
        attachments.append(Attachment(name, ctype, data))
    headers = params.get("headers") or {}
    if not isinstance(headers, dict):
        raise BadRequest("headers must be an object", {"param": "headers"})
    extra: list[tuple[str, str]] = []
    for name, value in headers.items():
        lname = name.lower()
        if not (lname.startswith("x-") or lname in ALLOWED_HEADERS) or not isinstance(value, str):
            raise BadRequest(
                f"header {name!r} is not allowed (X-*, In-Reply-To, References only)",
                {"param": "headers"},
            )
        extra.append((name, value))
    subject = _opt_str(params, "subject") or ""
    return Compose(
        sender=senders[0],
        to=to,
        cc=cc,
        bcc=bcc,
        reply_to=reply[0] if reply else None,
        subject=subject,
        body_plain=plain,
        body_html=html,
        attachments=tuple(attachments),
        headers=tuple(extra),
        identity_key=_opt_str(params, "identity_key"),
        account_key=_opt_str(params, "account_key"),
        for_outbox=bool(params.get("for_outbox", False)),
    )


def _set_addresses(msg: EmailMessage, name: str, boxes: Sequence[Mailbox]) -> None:
    if boxes:
        msg[name] = tuple(b.header() for b in boxes)


def build_message(
    c: Compose, now: dt.datetime | None = None, message_id: str | None = None
) -> EmailMessage:
    """The clear message, without any Bcc header."""
    msg = EmailMessage(policy=POLICY)
    try:
        _set_addresses(msg, "From", [c.sender])
        _set_addresses(msg, "To", c.to)
        _set_addresses(msg, "Cc", c.cc)
        if c.reply_to:
            _set_addresses(msg, "Reply-To", [c.reply_to])
        msg["Subject"] = c.subject
        msg["Date"] = format_datetime(now or dt.datetime.now(dt.UTC))
        domain = c.sender.address.rpartition("@")[2] or None
        msg["Message-ID"] = message_id or make_msgid(domain=domain)
        if c.identity_key:
            msg["X-Identity-Key"] = c.identity_key
        if c.account_key:
            msg["X-Account-Key"] = c.account_key
        for name, value in c.headers:
            msg[name] = value
    except (ValueError, TypeError) as exc:  # CR/LF in values, malformed header syntax
        raise BadRequest(f"a header value is not allowed: {exc}", {"param": "headers"}) from None
    if c.body_plain is not None and c.body_html is not None:
        msg.set_content(c.body_plain)
        msg.add_alternative(c.body_html, subtype="html")
    elif c.body_html is not None:
        msg.set_content(c.body_html, subtype="html")
    else:
        msg.set_content(c.body_plain or "")
    for att in c.attachments:
        maintype, _, subtype = att.content_type.partition("/")
        msg.add_attachment(att.data, maintype=maintype, subtype=subtype, filename=att.name)
    return msg


def header_block(name: str, boxes: Sequence[Mailbox]) -> bytes:
    """One folded header line (CRLF-terminated), e.g. the Bcc of an Outbox copy."""
    msg = EmailMessage(policy=POLICY)
    _set_addresses(msg, name, boxes)
    head, _, _ = msg.as_bytes().partition(b"\r\n\r\n")
    return head + b"\r\n"

