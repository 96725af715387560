"""Where a password may travel without TLS: the policy for LDAP simple binds and HTTP Basic.

A simple bind or a Basic header carries the password itself. Over a network without TLS
anyone on the path reads it, and a directory account of a gateway hands out signing
containers. Loopback is the exception by default: the README's demo, tests, and a TLS
proxy (stunnel, nginx) on the same host reach the directory there. RFC 4513 5.1.2 lets a
server refuse such binds with confidentialityRequired (13), as OpenLDAP's `security`
directive does.
"""

from __future__ import annotations

import enum
import ipaddress


class CleartextPolicy(enum.Enum):
    LOOPBACK = "loopback"  # cleartext passwords only from loopback peers (the default)
    ANYWHERE = "anywhere"  # the operator accepts the risk (e.g. a trusted segment)
    NEVER = "never"  # TLS for every password, loopback too


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped loopback; anything unparsable is not loopback."""
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def password_allowed(policy: CleartextPolicy, host: str) -> bool:
    """May a password arrive without TLS from `host` (the peer's address)?"""
    if policy is CleartextPolicy.ANYWHERE:
        return True
    return policy is CleartextPolicy.LOOPBACK and is_loopback(host)
