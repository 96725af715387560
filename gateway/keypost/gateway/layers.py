"""Signature layers around encrypted mail: encrypt-then-sign, and RFC 2634's triple wrap
(sign, encrypt, sign), whose outer signature covers the envelope rather than the text.

Such mail arrives as multipart/signed or application/pkcs7-mime signed-data whose content
is an application/pkcs7-mime envelope. Left as it is, the envelope for the gateway's own
container would reach the recipient unopened (unreadable) and the scanner would see
ciphertext. So the gateway takes the signature layers off (decrypting invalidates them:
the signed bytes are the ciphertext), says in a header per layer whether the signature
verified and who signed, and decrypts what was inside. Only when there is an envelope
inside: plain signed mail keeps its signature. At most MAX_SIGNATURE_LAYERS are taken
off; a message nested deeper is malformed (no client writes that; each layer costs a
decode and a parse, and a hostile message could nest thousands).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from keypost.core import smime
from keypost.core.containers import describe
from keypost.core.errors import ContainerError, SmimeError

MAX_SIGNATURE_LAYERS = 3
OUTER_SIGNATURE_HEADER = "X-Keypost-Outer-Signature"
TOO_DEEP = f"more than {MAX_SIGNATURE_LAYERS} signature layers around the content"
# The header carries the verifier's reasons, which may quote what the sender wrote (a From
# address): one line of printable ASCII, bounded.
MAX_VALUE = 400
MAX_SIGNER = 200  # of MAX_VALUE: the signer's addresses (a certificate may list many)
# In a reason, the characters that delimit the header's own fields: quoted text such as
# `); verified; signer=ceo@...` must not read as a verdict or a signer of its own.
_FIELD_MARKS = str.maketrans({"(": "[", ")": "]", "=": ":", ";": ","})


@dataclass(frozen=True)
class Wrapped:
    """An envelope inside signature layers."""

    envelope: bytes  # the encrypted message, under the original message's outer fields
    layers: tuple[bytes, ...]  # each signature layer taken off, outermost first


def signed_envelope(message: bytes) -> Wrapped | str | None:
    """The envelope inside the message's signature layers; None when there is none (not
    signed, signed plain content, a layer that cannot be read), or the reason the message
    is malformed (TOO_DEEP)."""
    layers: list[bytes] = []
    current = message
    while True:
        try:
            inner = smime.unsigned(current)
        except SmimeError:
            return None  # a broken signature: what it holds cannot be told, nor opened
        if inner is None:
            break
        if len(layers) == MAX_SIGNATURE_LAYERS:
            return TOO_DEEP
        layers.append(current)
        current = inner
    if not layers or not _encrypted(current):
        return None
    return Wrapped(current, tuple(layers))


def _encrypted(message: bytes) -> bool:
    try:
        return smime.is_encrypted(message)
    except (SmimeError, ValueError):
        return False


def verdict(layer: bytes, anchors: Sequence[x509.Certificate]) -> str:
    """The OUTER_SIGNATURE_HEADER value for one layer taken off: `verified` or `not
    verified (reasons)`, the signer's addresses, and that the layer was removed."""
    result = smime.verify_signed(layer, anchors)
    signer = _one_line(_addresses(result.signer), MAX_SIGNER)
    tail = (f"; signer={signer}" if signer else "") + "; removed to decrypt"
    if result.ok:
        return "verified" + tail
    # The reasons are what gets cut: the signer and the removal always stay.
    room = MAX_VALUE - len(tail) - len("not verified ()")
    reasons = _one_line("; ".join(r.translate(_FIELD_MARKS) for r in result.reasons), room)
    return f"not verified ({reasons}){tail}"


def _addresses(cert: x509.Certificate | None) -> str:
    if cert is None:
        return ""
    try:
        return ",".join(describe(cert).addresses)
    except ContainerError:
        return ""


def _one_line(text: str, limit: int) -> str:
    clean = "".join(ch if " " <= ch <= "~" else "?" for ch in " ".join(text.split()))
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."
