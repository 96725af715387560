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

from keypost.core.netaddr import is_loopback_host


class CleartextPolicy(enum.Enum):
    LOOPBACK = "loopback"  # cleartext passwords only from loopback peers (the default)
    ANYWHERE = "anywhere"  # the operator accepts the risk (e.g. a trusted segment)
    NEVER = "never"  # TLS for every password, loopback too


def password_allowed(policy: CleartextPolicy, host: str) -> bool:
    """May a password arrive without TLS from `host` (the peer's address)?"""
    if policy is CleartextPolicy.ANYWHERE:
        return True
    # A peer's address is never a name: `localhost` here is not loopback.
    return policy is CleartextPolicy.LOOPBACK and is_loopback_host(host)
