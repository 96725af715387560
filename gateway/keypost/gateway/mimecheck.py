"""Decides whether decrypted content is a readable MIME message, so garbage is never delivered."""

from __future__ import annotations

import email
import re
from email import errors as mail_errors
from email.policy import compat32

from keypost.gateway import headers

# Defects that mean the receiver would see garbage or lose parts, not cosmetic slips.
_FATAL = (
    mail_errors.NoBoundaryInMultipartDefect,
    mail_errors.StartBoundaryNotFoundDefect,
    mail_errors.CloseBoundaryNotFoundDefect,
    mail_errors.MultipartInvariantViolationDefect,
    mail_errors.MissingHeaderBodySeparatorDefect,
    mail_errors.InvalidBase64CharactersDefect,
    mail_errors.InvalidBase64LengthDefect,
)
_FIELD = re.compile(rb"^[!-9;-~]+[ \t]*:")


def problem(message: bytes) -> str | None:
    """None when `message` looks like a readable MIME message, else a one-line reason."""
    parts = headers.split(message)
    lines = headers.fields(parts.head)
    if not lines:
        return "no header section"
    for f in lines:
        if not _FIELD.match(f):
            return "malformed header field"
    msg = email.message_from_bytes(message, policy=compat32)
    for part in msg.walk():
        for defect in part.defects:
            if isinstance(defect, _FATAL):
                return f"broken MIME structure ({type(defect).__name__})"
        if part.get_content_maintype() == "multipart" and part.get_boundary() is None:
            return "multipart without boundary"
        cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if cte == "base64" and not part.is_multipart():
            payload = part.get_payload()
            if isinstance(payload, str):
                # decode=True is lenient and only records defects; the check above reads them.
                part.get_payload(decode=True)
                if any(isinstance(d, _FATAL) for d in part.defects):
                    return "invalid base64 content"
    return None
