"""Decides whether decrypted content is a readable MIME message, so garbage is never delivered.

A structural walk over the core's MIME helpers (headers, multipart delimiters, base64
bodies); the stdlib email parser would do the same at ~8 ms per 50 KB.
"""

from __future__ import annotations

import re

from keypost.core import mime
from keypost.gateway import headers

# Nested multiparts deeper than the core's walks descend are not mail but an attack on
# parsers; one limit, so what this check admits the core can decrypt, sign and re-encrypt.
MAX_DEPTH = mime.MAX_DEPTH
_FIELD = re.compile(rb"^[!-9;-~]+[ \t]*:")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*=*")


def problem(message: bytes) -> str | None:
    """None when `message` looks like a readable MIME message, else a one-line reason."""
    lines = headers.fields(headers.split(message).head)
    if not lines:
        return "no header section"
    if not all(_FIELD.match(f) for f in lines):
        return "malformed header field"
    return _entity(mime.to_crlf(message), 0)


def _entity(data: bytes, depth: int) -> str | None:
    if depth > MAX_DEPTH:
        return "MIME nesting too deep"
    fields, body = mime.split_entity(data)
    ctype = mime.content_type_of(fields)
    if ctype.mime_type.startswith("multipart/"):
        boundary = ctype.param("boundary")
        if not boundary:
            return "multipart without boundary"
        parts = mime.split_multipart(bytes(body), boundary)
        if not parts.parts:
            return "multipart boundary not found"
        if not parts.closed:
            return "multipart without closing delimiter"
        for part in parts.parts:
            found = _entity(part, depth + 1)
            if found is not None:
                return found
        return None
    cte = mime.find_header(fields, "Content-Transfer-Encoding")
    is_base64 = cte is not None and cte.value.strip().lower() == "base64"
    # Only the alphabet is checked: readers tolerate missing padding, not binary junk.
    if is_base64 and not _BASE64.fullmatch(b"".join(bytes(body).split())):
        return "invalid base64 content"
    return None
