"""The layers around the content of a message: S/MIME envelopes to the gateway's keys and
signature layers, taken off in one walk with one bound on the depth.

Senders nest them: encrypt-then-sign, RFC 2634's triple wrap (sign, encrypt, sign: the
outer signature covers the envelope), encrypt(sign(encrypt(...))), or an envelope to the
recipient's gateway container encrypted once more to it. Whatever the gateway could open
but left closed would reach the recipient (and the scanner) as ciphertext, so the walk
goes on while the next envelope opens with our keys, taking off the signature layers in
front of it (decrypting invalidates them: the signed bytes are the ciphertext). It stops
at the content: clear text, a signature around clear text (the triple wrap's inner one,
kept for the recipient), or an envelope none of our keys is meant for (end-to-end mail to
the recipient's own certificate), which stays as it is with the signatures around it.

At most MAX_LAYERS layers (envelopes opened and signature layers looked through) lie
between the outside and the content; a message nested deeper is malformed (no client
writes that; each layer costs a decode, a parse and maybe a decryption, and a hostile
message could nest thousands).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from cryptography import x509

from keypost.core import mime as m
from keypost.core import smime
from keypost.core.containers import describe
from keypost.core.errors import ContainerError, SmimeError

MAX_LAYERS = 4
_PKCS7_MIME_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")
OUTER_SIGNATURE_HEADER = "X-Keypost-Outer-Signature"
TOO_DEEP = f"more than {MAX_LAYERS} layers (signatures and envelopes) around the content"
# The header carries the verifier's reasons, which may quote what the sender wrote (a From
# address): one line of printable ASCII, bounded.
MAX_VALUE = 400
MAX_SIGNER = 200  # of MAX_VALUE: the signer's addresses (a certificate may list many)
# In a reason, the characters that delimit the header's own fields: quoted text such as
# `); verified; signer=ceo@...` must not read as a verdict or a signer of its own.
_FIELD_MARKS = str.maketrans({"(": "[", ")": "]", "=": ":", ";": ","})


class Opened(Protocol):
    """What opening an envelope gave: at least the message inside."""

    @property
    def clear(self) -> bytes: ...


T = TypeVar("T", bound=Opened)


@dataclass(frozen=True)
class Layer(Generic[T]):
    """One layer taken off: a signature layer (`signed`: the message as it was, to verify)
    or an envelope (`opened`: what opening it gave)."""

    signed: bytes | None = None
    opened: T | None = None


@dataclass(frozen=True)
class Peeled(Generic[T]):
    content: bytes  # what is left, under the original message's outer fields
    layers: tuple[Layer[T], ...]  # taken off, outermost first; none: nothing opened
    foreign: bool  # the content is (signed around) an envelope none of our keys opens

    @property
    def envelopes(self) -> list[T]:
        """What each envelope opened gave, outermost first."""
        return [layer.opened for layer in self.layers if layer.opened is not None]


def peel(message: bytes, open_envelope: Callable[[bytes], T | str | None]) -> Peeled[T] | str:
    """Take off the layers around the content of `message`. `open_envelope` opens one
    envelope: what it gave, None when it is not for us, or a reason it is malformed (passed
    on as the answer). Also the answer: TOO_DEEP for more than MAX_LAYERS layers."""
    layers: list[Layer[T]] = []
    current = message
    while True:
        signed, inner = _signatures(current, MAX_LAYERS - len(layers))
        if inner is None:
            return TOO_DEEP
        if not _encrypted(inner):
            return Peeled(current, tuple(layers), False)
        opened = open_envelope(inner)
        if opened is None or isinstance(opened, str):
            return Peeled(current, tuple(layers), True) if opened is None else opened
        if len(layers) + len(signed) == MAX_LAYERS:
            return TOO_DEEP  # one to open beyond the bound (one not for us may stay there)
        layers += [Layer(signed=s) for s in signed] + [Layer(opened=opened)]
        current = opened.clear


def _signatures(message: bytes, room: int) -> tuple[list[bytes], bytes | None]:
    """(the signature layers in front of what they hold, outermost first; what they hold),
    (.., None) when there are more than `room`. A layer that cannot be read holds nothing
    that can be told, nor opened: it is the content."""
    layers: list[bytes] = []
    current = message
    while True:
        try:
            inner = smime.unsigned(current) if _may_be_signed(current) else None
        except SmimeError:
            return [], message
        if inner is None:
            return layers, current
        if len(layers) == room:
            return layers, None
        layers.append(current)
        current = inner


def _may_be_signed(message: bytes) -> bool:
    """Whether the top-level Content-Type (read as keypost.core reads it) may be a signature
    layer. Asked first because unsigned() makes the whole message canonical, a pass over
    the clear text (and the ciphertext) of every message: this reads the header alone."""
    ctype = m.content_type_of(m.split_entity_at(message)[0])
    if ctype.mime_type in _PKCS7_MIME_TYPES:  # signed-data, or no smime-type: CMS tells
        return (ctype.param("smime-type") or "signed-data").lower() == "signed-data"
    return ctype.mime_type == "multipart/signed"


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
