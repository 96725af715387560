"""Mail addresses as certificates need them: ASCII local parts, lower-case A-label domains."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import idna

from keypost.core.errors import AddressError

MAX_ADDRESS = 254  # RFC 5321 path limit less the angle brackets
MAX_LOCAL = 64
# RFC 5322 dot-atom characters; quoted local parts are refused: no CA profile accepts them.
_ATEXT = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# Whitespace (\s is str.isspace in a str pattern), control characters and lone surrogates,
# in one C-level scan: a per-character generator cost ~3 us of every directory miss.
_FORBIDDEN = re.compile("[\\s\x00-\x1f\ud800-\udfff]")
# Unicode Default_Ignorable_Code_Point (DerivedCoreProperties.txt, Unicode 14-16): code
# points that render as nothing, so "jo\u034frg" prints as "jorg" and names another
# mailbox (a spoofed recipient). The Cf ones among them were refused already, by category;
# the combining grapheme joiner, variation selectors and Hangul fillers (Mn, Lo) were not.
# One regex scan: it runs on the directory's per-miss path (non-ASCII local parts only).
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
# Label separators IDNA accepts besides "." (RFC 3490 3.1): ideographic, fullwidth, halfwidth.
_DOT_VARIANTS = re.compile("[\u3002\uff0e\uff61]")


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
        """The mailbox as matched and cached: the local part lower-cased (mail systems
        ignore its case), the domain as it is (already lower-case A-labels).

        The one rule for both a certificate's address match (containers.names_address)
        and the directory's cache, store and audit keys, so that they cannot disagree.
        Lower-cased, not str.casefold()ed: full case folding also joins letters that are
        no case pair (long s and `s`, the `fi` ligature and `fi`, `ß` and `ss`), i.e.
        other mailboxes. For ASCII the two are the same."""
        return f"{self.local.lower()}@{self.domain}"


def _to_a_labels(domain: str, original: str) -> str:
    """A non-ASCII domain as lower-case A-labels (IDNA 2008), refusing lossy mappings.

    IDNA 2008 (RFC 5891), as RFC 9598 and RFC 9549 require, through the `idna` package:
    Python's own "idna" codec is IDNA 2003, which maps "faß" to "fass" (another domain;
    IDNA 2008 keeps ß: "xn--fa-hia"). The UTS 46 mapping (what browsers and mail clients
    apply to typed input) folds case and full stops but also drops zero-width characters
    and folds compatibility forms ("⒈com" -> "1.com", fullwidth letters): so a domain is
    accepted only when it comes back from ToASCII/ToUnicode as its own lower-case NFC
    form, and the certificate names exactly the domain that was asked for.
    """
    try:
        ace = idna.encode(domain, uts46=True).decode("ascii")
        back = idna.decode(ace)
    except (idna.IDNAError, UnicodeError) as exc:
        # The idna package's reason names the offending code point and its position; one
        # line of it (its messages quote labels with repr, so no raw control characters).
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise AddressError(f"invalid internationalised domain {original!r}: {reason}") from exc
    if back != unicodedata.normalize("NFC", _DOT_VARIANTS.sub(".", domain)).lower():
        raise AddressError(
            f"internationalised domain {original!r} would change under IDNA mapping "
            f"(to {back!r}, another name); give it in lower case without such characters"
        )
    return ace


def u_labels(domain: str) -> str:
    """A normalised (A-label) domain as U-labels, IDNA 2008 (e.g. for SmtpUTF8Mailbox)."""
    try:
        return idna.decode(domain)
    except (idna.IDNAError, UnicodeError) as exc:
        raise AddressError(f"cannot write domain {domain!r} as U-labels") from exc


def normalize_domain(domain: str) -> str:
    """Lower-case, IDNA-encode (A-labels) and check a domain name."""
    d = domain.strip()
    # One trailing dot is the DNS root (same name); "example.org.." is malformed.
    d = d[:-1] if d.endswith(".") else d
    if not d:
        raise AddressError("empty domain")
    ace = _to_a_labels(d, domain) if not d.isascii() else d.lower()
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
                idna.decode(label)
            except (idna.IDNAError, UnicodeError) as exc:
                raise AddressError(f"invalid A-label {label!r} in domain {domain!r}") from exc
    return ace


def parse_address(text: str) -> Address:
    """Parse and normalise `local@domain` (no display names, no comments)."""
    if not isinstance(text, str):
        raise AddressError("address must be a string")
    s = text.strip()
    if s.startswith("<") and s.endswith(">"):
        s = s[1:-1]
    # Lone surrogates (a JSON "\ud800", undecodable bytes in argv) are no characters: they
    # would surface as UnicodeEncodeError from the length check below, not AddressError.
    if not s or len(s) > MAX_ADDRESS or _FORBIDDEN.search(s):
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
        invisible = _INVISIBLE.search(local)
        if invisible:
            raise AddressError(
                f"invisible character U+{ord(invisible.group()):04X} in local part: {text!r}"
            )
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
