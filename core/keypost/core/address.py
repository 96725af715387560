"""Mail addresses as certificates need them: ASCII local parts, lower-case A-label domains."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from keypost.core.errors import AddressError

MAX_ADDRESS = 254  # RFC 5321 path limit less the angle brackets
MAX_LOCAL = 64
# RFC 5322 dot-atom characters; quoted local parts are refused: no CA profile accepts them.
_ATEXT = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True, order=True)
class Address:
    """A normalised mail address. `domain` is lower-case ASCII (IDNs as A-labels).

    `local` keeps its case (local parts are case-sensitive in principle, RFC 5321 2.4).
    """

    local: str
    domain: str

    @property
    def ascii_local(self) -> bool:
        return self.local.isascii()

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    def key(self) -> str:
        """Case-folded form used for matching and caching (real systems fold local parts)."""
        return f"{self.local.casefold()}@{self.domain}"


def normalize_domain(domain: str) -> str:
    """Lower-case, IDNA-encode (A-labels) and check a domain name."""
    d = domain.strip().rstrip(".")
    if not d:
        raise AddressError("empty domain")
    try:
        ace = d.encode("idna").decode("ascii").lower() if not d.isascii() else d.lower()
    except UnicodeError as exc:
        raise AddressError(f"invalid internationalised domain: {domain!r}") from exc
    labels = ace.split(".")
    if len(ace) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise AddressError(f"invalid domain: {domain!r}")
    if labels[-1].isdigit():
        # An all-numeric top-level label is an IP address fragment, never a mail domain.
        raise AddressError(f"invalid domain (numeric top-level label): {domain!r}")
    for label in labels:
        if label.startswith("xn--"):
            # An A-label must decode to a U-label; otherwise the certificate would name a
            # domain no resolver or client can match.
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError as exc:
                raise AddressError(f"invalid A-label {label!r} in domain {domain!r}") from exc
    return ace


def parse_address(text: str) -> Address:
    """Parse and normalise `local@domain` (no display names, no comments)."""
    if not isinstance(text, str):
        raise AddressError("address must be a string")
    s = text.strip()
    if s.startswith("<") and s.endswith(">"):
        s = s[1:-1]
    if not s or len(s) > MAX_ADDRESS or any(ch.isspace() or ord(ch) < 32 for ch in s):
        raise AddressError(f"invalid address: {text!r}")
    local, sep, domain = s.rpartition("@")
    if not sep or not local:
        raise AddressError(f"invalid address (no local part or '@'): {text!r}")
    if not local.isascii():
        # Composed form first, so the limits below and every comparison see one spelling.
        local = unicodedata.normalize("NFC", local)
    if len(local.encode("utf-8")) > MAX_LOCAL:
        raise AddressError(f"local part longer than {MAX_LOCAL} octets: {text!r}")
    if local.isascii():
        if not _ATEXT.match(local):
            raise AddressError(f"invalid local part: {text!r}")
    else:
        # RFC 6531 UTF-8 local part: dot-atom of printable non-space characters.
        if local.startswith(".") or local.endswith(".") or ".." in local or '"' in local:
            raise AddressError(f"invalid local part: {text!r}")
        if any(ch in '()<>[]:;@\\,' for ch in local):
            raise AddressError(f"invalid local part: {text!r}")
        # Invisible and control characters (zero-width space, bidi controls...) would let
        # two different-looking addresses print the same: refuse them (RFC 8398 sec. 3).
        if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp")
               for ch in local):
            raise AddressError(f"invalid character in local part: {text!r}")
    return Address(local, normalize_domain(domain))
