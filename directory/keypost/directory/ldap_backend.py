"""The LDAP server's backend: binds through the authenticator, searches through the controller."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from keypost.directory.accounts import Authenticator
from keypost.directory.controller import Controller, requestor_of
from keypost.directory.ldap.backend import AddressEntry, LdapBackend
from keypost.directory.store import AccountRecord


def peer_host(peer: str) -> str:
    """'host:port' or '[v6]:port' -> host (failures are counted per host, not per port)."""
    host, sep, port = peer.rpartition(":")
    if not sep or not port.isdigit():
        return peer
    return host.strip("[]")


@dataclass
class BoundAccount:
    """The principal of a bound LDAP connection: the account as of store change `change`.

    Connections live long (mail clients, gateways) and the server keeps a principal until
    the next bind. An `account remove` (or the removal of its domain) must end the
    account's rights on open connections too, as on HTTP, where every request is checked.
    """

    account: AccountRecord
    change: int


class DirectoryLdapBackend:
    """Implements keypost.directory.ldap.backend.LdapBackend."""

    def __init__(self, controller: Controller, authenticator: Authenticator, suffix: str) -> None:
        self.controller = controller
        self.authenticator = authenticator
        self.suffix = suffix

    async def authenticate(self, name: str, password: bytes, peer: str) -> object | None:
        # The change counter as of before the account is read: a removal while the password
        # is checked (~50 ms of scrypt) then differs from it and the first lookup re-reads.
        change = self.controller.snapshot().change
        account = await self.authenticator.verify(name, password, peer_host(peer))
        self.controller.metrics.request("ldap", "bind_ok" if account else "bind_invalid")
        if account is None:
            return None
        return BoundAccount(account, change)

    def _current(self, bound: BoundAccount) -> AccountRecord | None:
        """The bound account while it still exists unchanged, else None (anonymous).

        Costs a store query only after the store changed (the controller's snapshot
        notices within its recheck interval), once per connection and change.
        """
        change = self.controller.snapshot().change
        if change == bound.change:
            return bound.account
        now = self.controller.store.account(bound.account.name)
        if now is None or replace(now, domains=bound.account.domains) != bound.account:
            return None  # removed, or re-created (new password or role): rebind
        # the same account, its domains perhaps changed (`account domains`): they count now
        bound.account, bound.change = now, change
        return now

    async def lookup(
        self, principal: object | None, addresses: Sequence[str], peer: str
    ) -> Sequence[AddressEntry]:
        account = self._current(principal) if isinstance(principal, BoundAccount) else None
        # who asks: the bound account, else the peer's address (the cache never hands
        # one requestor's container to another: keypost.directory.controller)
        requestor = requestor_of(account, peer_host(peer) if account is None else None)
        answers = self.controller.answer(requestor, addresses, None, "ldap")
        return [AddressEntry(a.address, a.ders) for a in answers]


def _conforms(backend: DirectoryLdapBackend) -> LdapBackend:
    """mypy checks here that the backend still implements the LDAP server's protocol."""
    return backend
