"""One user-facing line for a failed TLS handshake with the directory.

ldap3 reports a host-name mismatch as "certificate {<the whole getpeercert() dict>} doesn't
match any name in [...]": subject, issuer, serial, dates, every SAN. The user needs one
sentence: which name was asked for and which names the certificate has.
"""

from __future__ import annotations

import ast
import re
from typing import Any

_MISMATCH = re.compile(r"certificate (\{.*\}) doesn't match any name in", re.DOTALL)
# Python's own check (requests, for https://) names only the host asked for.
_SSL_MISMATCH = re.compile(r"(?:Hostname|IP address) mismatch, certificate is not valid for")
_VERIFY = re.compile(r"certificate verify failed: ([^(\n]*)")
_NAME_TYPES = ("DNS", "IP Address")
_MAX_NAMES = 5  # a certificate may list hundreds of SANs; a few make the point


def _names(cert: Any) -> list[str]:
    """The names a getpeercert() dict certifies: SAN DNS/IP entries, else the subject CN
    (as ssl.match_hostname falls back to it)."""
    if not isinstance(cert, dict):
        return []
    names = [
        str(value)
        for kind, value in cert.get("subjectAltName", ())
        if kind in _NAME_TYPES
    ]
    if not names:
        for rdn in cert.get("subject", ()):
            names += [str(value) for key, value in rdn if key == "commonName"]
    # A certificate's names are the server's words: no control characters into our line.
    return ["".join(ch if ch.isprintable() else "?" for ch in n) for n in names]


def describe_tls_failure(text: str, host: str) -> str | None:
    """One line for a TLS failure found in an exception's text, or None when the text is
    not a certificate problem (the caller keeps its own wording then)."""
    found = _MISMATCH.search(text)
    if found:
        try:
            names = _names(ast.literal_eval(found.group(1)))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            names = []
        line = f"the directory's TLS certificate does not name {host}"
        if names:
            shown = ", ".join(names[:_MAX_NAMES])
            more = f" and {len(names) - _MAX_NAMES} more" if len(names) > _MAX_NAMES else ""
            line += f" (it names {shown}{more})"
        return line
    if _SSL_MISMATCH.search(text):
        return f"the directory's TLS certificate does not name {host}"
    verify = _VERIFY.search(text)
    if verify:
        reason = verify.group(1).strip().rstrip(".") or "not trusted"
        return f"the directory's TLS certificate is not trusted ({reason})"
    return None
