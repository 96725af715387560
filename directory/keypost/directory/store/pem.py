"""A stored gateway key's text cut down to the registered key: one PEM block, no secrets.

Text only (base64 and SHA-256), so that the store still needs no crypto layer: the
fingerprint stored beside the text tells which block was registered.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
# Up to its END line or, were that missing, to the end of the text.
_PRIVATE = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----.*?(?:-----END \1-----\r?\n?|\Z)", re.DOTALL)
# What GatewayKey.from_pem reads, under the label admin._spki_or_cert_pem writes.
_PUBLIC = {b"CERTIFICATE": b"CERTIFICATE", b"X509 CERTIFICATE": b"CERTIFICATE",
           b"PUBLIC KEY": b"PUBLIC KEY"}


def holds_private_key(text: bytes) -> bool:
    return _PRIVATE.search(text) is not None


def registered_key_pem(text: bytes, fingerprint: str) -> bytes:
    """The block of `text` whose DER has SHA-256 `fingerprint` (GatewayKey.fingerprint), as
    `domain add` stores a key today (64-column base64, the canonical label). Failing such a
    block, `text` without its private key blocks."""
    for match in _BLOCK.finditer(text):
        label = _PUBLIC.get(match[1])
        if label is None:
            continue
        try:
            der = base64.b64decode(b"".join(match[2].split()), validate=True)
        except binascii.Error:
            continue
        if hashlib.sha256(der).hexdigest() == fingerprint.lower():
            return _pem(label, der)
    return _PRIVATE.sub(b"", text)


def _pem(label: bytes, der: bytes) -> bytes:
    body = base64.b64encode(der)
    lines = [body[i:i + 64] + b"\n" for i in range(0, len(body), 64)]
    return b"-----BEGIN %s-----\n%s-----END %s-----\n" % (label, b"".join(lines), label)
