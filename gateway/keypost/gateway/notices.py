"""Messages the gateway writes itself: quarantine notices and non-delivery reports."""

from __future__ import annotations

import email.utils
from collections.abc import Sequence


def _message(sender: str, to: Sequence[str], subject: str, text: str, hostname: str) -> bytes:
    lines = [
        f"From: Mail gateway <{sender}>",
        f"To: {', '.join(to)}",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(localtime=False)}",
        f"Message-ID: {email.utils.make_msgid('keypost', domain=hostname)}",
        "Auto-Submitted: auto-generated",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        *text.splitlines(),
        "",
    ]
    return "\r\n".join(lines).encode("utf-8")


def _describe(original_subject: str | None, mail_from: str) -> str:
    subject = original_subject if original_subject is not None else "(no subject)"
    return f"  From (envelope): {mail_from or '<>'}\n  Subject: {subject}\n"


def quarantine_notice(
    recipients: Sequence[str],
    mail_from: str,
    subject: str | None,
    reason: str,
    quarantine_id: str,
    hostname: str,
) -> bytes:
    text = (
        "A message addressed to you was held in quarantine by the mail gateway.\n\n"
        f"{_describe(subject, mail_from)}  Reason: {reason}\n  Quarantine id: {quarantine_id}\n\n"
        "Ask your mail administrator to release it if you expected it.\n"
    )
    return _message(
        f"postmaster@{hostname}", recipients, "Message held in quarantine", text, hostname
    )


def non_delivery_report(
    mail_from: str,
    failed: Sequence[tuple[str, str]],
    subject: str | None,
    hostname: str,
) -> bytes:
    """A plain-text report to the sender for recipients refused after others were accepted."""
    rows = "".join(f"  {rcpt}: {reason}\n" for rcpt, reason in failed)
    text = (
        "Your message could not be delivered to some recipients.\n\n"
        f"{_describe(subject, mail_from)}\nRecipients and reasons:\n{rows}"
    )
    return _message(
        f"MAILER-DAEMON@{hostname}", [mail_from], "Undelivered mail returned to sender", text,
        hostname,
    )
