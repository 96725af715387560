"""The LDAP server's backend: binds through the authenticator, searches through the controller."""

from __future__ import annotations

from collections.abc import Sequence

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


class DirectoryLdapBackend:
    """Implements keypost.directory.ldap.backend.LdapBackend."""

    def __init__(self, controller: Controller, authenticator: Authenticator, suffix: str) -> None:
        self.controller = controller
        self.authenticator = authenticator
        self.suffix = suffix

    async def authenticate(self, name: str, password: bytes, peer: str) -> object | None:
        account = await self.authenticator.verify(name, password, peer_host(peer))
        self.controller.metrics.request("ldap", "bind_ok" if account else "bind_invalid")
        return account

    async def lookup(
        self, principal: object | None, addresses: Sequence[str], peer: str
    ) -> Sequence[AddressEntry]:
        account = principal if isinstance(principal, AccountRecord) else None
        answers = self.controller.answer(requestor_of(account), addresses, None, "ldap")
        return [AddressEntry(a.address, a.ders, a.bundle_if_built()) for a in answers]


def _conforms(backend: DirectoryLdapBackend) -> LdapBackend:
    """mypy checks here that the backend still implements the LDAP server's protocol."""
    return backend
