"""keypost.core.netaddr: the one loopback rule of the directory (peer addresses) and the
host (directory URLs)."""

from __future__ import annotations

import pytest

from keypost.core import netaddr
from keypost.core.netaddr import is_loopback_host

# (text, loopback as a peer address, loopback as a URL host)
CASES = [
    ("127.0.0.1", True, True),
    ("127.255.255.254", True, True),  # all of 127.0.0.0/8
    ("::1", True, True),
    ("[::1]", True, True),
    ("0:0:0:0:0:0:0:1", True, True),
    ("::1%lo", True, True),  # zone ids stripped
    ("[::1%25lo]", True, True),  # whatever the zone, ::1 is ::1
    ("::ffff:127.0.0.1", True, True),  # IPv4-mapped: it reaches 127.0.0.1
    ("[::ffff:127.9.8.7]", True, True),
    ("::ffff:7f00:1", True, True),
    ("localhost", False, True),  # a name: only where a person typed it
    ("LOCALHOST", False, True),
    ("[localhost]", False, False),
    ("sub.localhost", False, False),  # RFC 6761 allows it; glibc sends it to DNS
    ("localhost.", False, False),
    ("128.0.0.1", False, False),
    ("126.255.255.255", False, False),
    ("0.0.0.0", False, False),
    ("::", False, False),
    ("::ffff:192.0.2.7", False, False),
    ("::127.0.0.1", False, False),  # IPv4-compatible (deprecated), not mapped
    ("64:ff9b::7f00:1", False, False),  # NAT64 of 127.0.0.1 is another host's
    ("2001:db8::1", False, False),
    ("fe80::1%eth0", False, False),
    ("127.0.0.1%eth0", False, False),  # no zone ids for IPv4
    ("::1%", False, False),
    ("127.1", False, False),  # inet_aton shorthand: not an address text here
    ("0x7f.0.0.1", False, False),
    ("[127.0.0.1]", True, True),
    ("[::1", False, False),
    ("::1]", False, False),
    (" 127.0.0.1", False, False),
    ("", False, False),
    ("?", False, False),
]


@pytest.mark.parametrize(
    ("text", "as_peer", "as_url_host"), CASES, ids=[c[0] or "empty" for c in CASES]
)
def test_loopback_by_text(text: str, as_peer: bool, as_url_host: bool) -> None:
    assert is_loopback_host(text) is as_peer
    assert is_loopback_host(text, localhost_name=True) is as_url_host


@pytest.mark.parametrize(
    ("host", "canonical"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4-mapped: the IPv4 address
        ("[2001:DB8::1]", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("example.org", None),
        ("?", None),
        ("127.0.0.1%lo", None),  # a zone id belongs to IPv6 only
    ],
)
def test_ip_address_canonical_form(host: str, canonical: str | None) -> None:
    address = netaddr.ip_address(host)
    assert (None if address is None else str(address)) == canonical
