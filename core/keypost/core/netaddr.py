"""Whether a host is the loopback interface, judged from its text alone (no resolver, pure).

One rule for every caller: the directory asks it of a peer's address (may a password come
without TLS from there?), the host and the gateway of a directory URL's host (may they use
http:// or plain LDAP?). All need the same answer for the same address; only the URL
checks accept a name, `localhost`, because a person types it into a URL.
"""

from __future__ import annotations

import ipaddress

# RFC 6761 6.3 lets any name under .localhost. mean loopback, but only as a SHOULD for
# resolvers: glibc's resolver sends "sub.localhost" to DNS, where a hostile network may
# answer with any address; "localhost" itself comes from /etc/hosts. So the name alone.
LOCALHOST = "localhost"


def ip_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address a host text names, in one canonical form: brackets ("[::1]") and an
    IPv6 zone id ("::1%lo") stripped, an IPv4-mapped IPv6 address as its IPv4 address;
    None for a name or anything unparsable."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    address_text, percent, zone = text.partition("%")
    if percent and (not zone or ":" not in address_text):
        return None  # a zone id belongs to an IPv6 address only, and is never empty
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # Python < 3.13 calls ::ffff:127.0.0.1 not loopback, though it reaches 127.0.0.1.
        return address.ipv4_mapped
    return address


def is_loopback_host(host: str, *, localhost_name: bool = False) -> bool:
    """IPv4 127.0.0.0/8, IPv6 ::1 and IPv4-mapped ::ffff:127.0.0.0/104, written with or
    without brackets ("[::1]") and with an IPv6 zone id ("::1%lo") or not. With
    `localhost_name`, also the name `localhost` (any case). Anything else, an unparsable
    text included, is not loopback: the safe answer where a password is at stake."""
    if localhost_name and host.lower() == LOCALHOST:
        return True
    address = ip_address(host)
    return address is not None and address.is_loopback
