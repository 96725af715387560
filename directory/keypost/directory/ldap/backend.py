"""The hooks the LDAP server calls to authenticate requestors and look up key containers.

The LDAP layer knows nothing about accounts, policies or CAs: the directory plugs an
object satisfying `LdapBackend` into `LdapServer`. The server never logs or keeps a
password after handing it to `authenticate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class BackendBusy(Exception):
    """Raised by `authenticate` when the backend is overloaded: the bind is answered busy
    (51) at once, with the message as its diagnostic, and the client may retry."""


@dataclass(frozen=True)
class AddressEntry:
    """The answer for one address asked for in a search: one LDAP entry.

    `certificates` are DER X.509 certificates (all containers this requestor gets for
    the address), served as the values of `userCertificate;binary`; the server builds
    their DER PKCS#7 certs-only bundle (`userSMIMECertificate`) only when a client asks
    for that attribute (Thunderbird and gpgsm do not) and caches the encoded entry:
    computing it for every fresh answer would cost ~100 us for nothing.
    An entry with no certificates is still returned (same shape for every address:
    no existence oracle), with no certificate attributes.
    """

    address: str
    certificates: tuple[bytes, ...]


class LdapBackend(Protocol):
    """What the directory implements for the LDAP server.

    Contract:
    - `suffix` is the naming context, e.g. "dc=keypost" (compared case-insensitively,
      whitespace around RDN separators ignored). Searches with a base inside it are
      answered; entries are named `mail=<address>,<suffix>`.
    - `authenticate` is called for every simple bind with a non-empty password. `name`
      is already reduced by the server: the value of the first RDN when it is `uid=` or
      `cn=` (`uid=alice,dc=keypost` -> "alice", `cn=alice,ou=x` -> "alice"), otherwise
      the bind name as sent (`alice` -> "alice"). Return an opaque principal object
      or None for wrong credentials (-> invalidCredentials 49). The backend is
      responsible for equal timing of right and wrong passwords and for slowing down
      repeated failures (it may simply `await asyncio.sleep`); the server runs other
      connections meanwhile. An exception -> the bind fails with `unavailable` (52).
      Binds with an empty name and password are anonymous and never reach the backend;
      a name with an empty password (RFC 4513 "unauthenticated bind") is refused by the
      server with unwillingToPerform (53) without calling the backend.
    - `lookup` gets the principal of the connection's last successful bind (None =
      anonymous), the addresses taken from the search filter (as written by the
      client, one per mailbox (Address.key), in order, at most `max_addresses`
      of the server), and the peer ("host:port"). It returns the entries to send, in
      order; the server sends them as returned (size limits applied by the server).
      Addresses the backend cannot serve (malformed, foreign) are simply left out.
      An exception -> the search ends with `other` (80); the connection survives.
      Both must be `async def`. `lookup` runs eagerly: its first step executes inside
      the server's read callback, not in a Task, and only if it awaits something does
      the server wrap the rest in a Task (with the time limit). So before its first
      real `await` it must not rely on `asyncio.current_task()` (e.g. `asyncio.timeout`);
      a lookup answered from a cache should simply not await at all.
    """

    suffix: str

    async def authenticate(self, name: str, password: bytes, peer: str) -> object | None:
        """Check a simple bind; return a principal or None (invalidCredentials)."""
        ...

    async def lookup(
        self, principal: object | None, addresses: Sequence[str], peer: str
    ) -> Sequence[AddressEntry]:
        """Return the entries (with DER certificates) for the addresses searched."""
        ...
