"""Reads a directory URL (ldap://, ldaps://, http://, https://) into one checked value.

One parser for every component that takes such a URL: the directory's own (written into
each container), the host's, the gateway's and the installer's. Each maps the refusal to
its own error type; the reason kind and the one-line message are the same everywhere.
No message repeats the URL or any part of it: a user may have typed a password into it
("ldaps://alice:secret@host", or "ldaps://alice:secret", where the password reads as the
port), and urllib's own ValueError texts quote the port.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from keypost.core.errors import KeypostError
from keypost.core.netaddr import ip_address, is_loopback_host

DEFAULT_PORTS = {"ldap": 389, "ldaps": 636, "http": 80, "https": 443}
LDAP_SCHEMES = ("ldap", "ldaps")
EXAMPLE = "ldaps://keys.example.org/"

# RFC 3986 URLs are ASCII without spaces; the directory's own URL is also an IA5String.
_FORBIDDEN = re.compile(r"[^\x21-\x7e]")
# A host name as resolvers take it (underscores occur in internal DNS); anything else in
# an unbracketed host, a "%" or a "!" say, is a typo no client could connect to.
_HOST_NAME = re.compile(r"[a-z0-9_.-]+")


class UrlProblem(enum.Enum):
    """Why a directory URL is refused; stable, so callers can map it to their wording."""

    CHARACTERS = "characters"  # not ASCII, or a space or control character
    UNREADABLE_HOST = "unreadable-host"  # e.g. an IPv6 address without [brackets]
    BAD_PORT = "bad-port"  # not a number from 1 to 65535
    CREDENTIALS = "credentials"  # a user name or password in the URL
    WRONG_SCHEME = "wrong-scheme"
    NO_HOST = "no-host"
    EXTRA_PARTS = "extra-parts"  # a ?query or #fragment: nothing reads them
    HTTP_NOT_LOOPBACK = "http-not-loopback"  # where the caller allows http:// on loopback only


class DirectoryUrlError(KeypostError):
    """A directory URL is refused. str(e) is "invalid directory URL: <reason>"; `reason`
    alone suits a caller that prefixes the setting's name. Neither repeats the URL."""

    def __init__(self, problem: UrlProblem, reason: str) -> None:
        super().__init__(f"invalid directory URL: {reason}")
        self.problem = problem
        self.reason = reason


@dataclass(frozen=True)
class DirectoryUrl:
    """A checked directory URL: scheme and host lower-cased, the host without brackets,
    the port filled in with the scheme's default."""

    url: str  # as given
    scheme: str  # ldap, ldaps, http, https
    host: str
    port: int
    base: str  # LDAP base DN (percent-decoded), or the HTTP path as written, no final "/"
    loopback: bool  # the host is the loopback interface (keypost.core.netaddr, `localhost`)

    @property
    def is_ldap(self) -> bool:
        return self.scheme in LDAP_SCHEMES

    @property
    def http_base(self) -> str:
        """scheme://host:port/path, the prefix of the directory's HTTP API."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base}"


def url_host_is_loopback(host: str) -> bool:
    """A URL's host names the loopback interface: an address (keypost.core.netaddr) or the
    name `localhost`, which a person types into a URL."""
    return is_loopback_host(host, localhost_name=True)


_UNREADABLE = (
    UrlProblem.UNREADABLE_HOST,
    "its host cannot be read (a host name, an IPv4 address, or an IPv6 address in "
    "[brackets])",
)


def _schemes(http_anywhere: bool) -> str:
    if http_anywhere:
        return "ldaps://, ldap://, https:// or http:// with a host name"
    return "ldaps://, ldap:// or https:// with a host name (http:// for loopback only)"


def _split_host_port(hostport: str) -> tuple[str, str]:
    """(host, port text) of the part after "//", brackets removed; raises on an IPv6
    address without brackets or anything after the closing bracket but a port."""
    if hostport.startswith("["):
        host, bracket, rest = hostport[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise DirectoryUrlError(*_UNREADABLE)
        # urlsplit takes "[v1.x]" (an RFC 3986 IPvFuture) too: no client can connect to it.
        # nor can any client use a zone ID ("fe80::1%25eth0"), which ip_address takes
        if ip_address(host) is None or ":" not in host or "%" in host:
            raise DirectoryUrlError(*_UNREADABLE)
        return host, rest[1:]
    if hostport.count(":") > 1:
        raise DirectoryUrlError(*_UNREADABLE)
    host, _, port = hostport.partition(":")
    if host and not _HOST_NAME.fullmatch(host):
        raise DirectoryUrlError(*_UNREADABLE)
    return host, port


def parse_directory_url(
    text: str, *, http_anywhere: bool = False, ldap_base: str = ""
) -> DirectoryUrl:
    """Read `text` as a directory URL; raises DirectoryUrlError.

    http:// only to a loopback host unless `http_anywhere` (where the caller refuses it
    later with its own reason, or publishes the URL rather than sending a password to
    it). `ldap_base` is the base DN when an LDAP URL's path names none (RFC 4516)."""
    if _FORBIDDEN.search(text):
        raise DirectoryUrlError(
            UrlProblem.CHARACTERS,
            "it must be ASCII without spaces or control characters (write a space in the "
            "path as %20, a host name in its xn-- form)",
        )
    try:
        parts = urlsplit(text)
    except ValueError:  # an unclosed "[", or a bracketed host that is no address
        raise DirectoryUrlError(*_UNREADABLE) from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise DirectoryUrlError(
            UrlProblem.WRONG_SCHEME, f"it must be {_schemes(http_anywhere)}, e.g. {EXAMPLE}"
        )
    # An "@" anywhere means a password may be in the URL, not only in the netloc: in
    # "ldaps://alice:2024?Secret@host" urlsplit reads host alice and port 2024 and puts the
    # password in the query, where anything that quotes the URL would repeat it.
    if "@" in text:
        raise DirectoryUrlError(
            UrlProblem.CREDENTIALS,
            "it must not hold a user name or password (an @ in the path is written %40)",
        )
    if "?" in text or "#" in text:
        # RFC 4516's ?attributes?scope?filter and any query or fragment: no client here
        # reads them, so a URL holding one does not mean what its writer thinks
        raise DirectoryUrlError(
            UrlProblem.EXTRA_PARTS,
            "it must not have a ?query or #fragment (only scheme, host, port and path count)",
        )
    host, port_text = _split_host_port(parts.netloc.lower())
    port = DEFAULT_PORTS[scheme]
    if port_text:
        # isdecimal() alone takes other scripts' digits ("١"); the length check keeps int()
        # from refusing a 5,000-digit text with its own ValueError
        digits = port_text.isascii() and port_text.isdecimal() and len(port_text) <= 5
        if not digits or not 0 < int(port_text) < 65536:
            raise DirectoryUrlError(
                UrlProblem.BAD_PORT,
                "its port is not a number from 1 to 65535 (or leave it out for the default)",
            )
        port = int(port_text)
    if not host:
        raise DirectoryUrlError(
            UrlProblem.NO_HOST, f"it must be {_schemes(http_anywhere)}, e.g. {EXAMPLE}"
        )
    loopback = url_host_is_loopback(host)
    if scheme == "http" and not http_anywhere and not loopback:
        raise DirectoryUrlError(
            UrlProblem.HTTP_NOT_LOOPBACK,
            "http:// is only accepted for loopback addresses; use https://",
        )
    if scheme in LDAP_SCHEMES:
        base = unquote(parts.path).lstrip("/") or ldap_base
    else:  # kept as written: http_base puts it back into a URL ("%3F" must stay "%3F")
        base = parts.path.rstrip("/")
    return DirectoryUrl(text, scheme, host, port, base, loopback)
