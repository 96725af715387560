"""The LDAP server's backend: binds through the authenticator, searches through the controller.

Searches answered from the controller's caches return at once (no await: the LDAP
server then needs no Task). Searches that need a new container wait for a batch run
at the start of the next event-loop iteration, so that all misses read in one
iteration, from all connections, are signed back to back (Controller.submit).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from keypost.directory.accounts import Authenticator
from keypost.directory.controller import Answer, Controller, Query, Ticket, requestor_of
from keypost.directory.ldap.backend import AddressEntry, LdapBackend
from keypost.directory.store import AccountRecord

log = logging.getLogger("keypost.directory.ldap")


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
        self._waiting: list[tuple[Ticket, asyncio.Future[list[Answer]]]] = []

    async def authenticate(self, name: str, password: bytes, peer: str) -> object | None:
        account = await self.authenticator.verify(name, password, peer_host(peer))
        self.controller.metrics.request("ldap", "bind_ok" if account else "bind_invalid")
        return account

    async def lookup(
        self, principal: object | None, addresses: Sequence[str], peer: str
    ) -> Sequence[AddressEntry]:
        account = principal if isinstance(principal, AccountRecord) else None
        out = self.controller.submit(Query(requestor_of(account), addresses), "ldap")
        if isinstance(out, Ticket):
            out = await self._wait(out)
        return [AddressEntry(a.address, a.ders, a.bundle_if_built()) for a in out]

    def _wait(self, ticket: Ticket) -> asyncio.Future[list[Answer]]:
        loop = asyncio.get_running_loop()
        if not self._waiting:  # the first miss of this iteration schedules the batch
            loop.call_soon(self._run_batch)
        future: asyncio.Future[list[Answer]] = loop.create_future()
        self._waiting.append((ticket, future))
        return future

    def _run_batch(self) -> None:
        waiting, self._waiting = self._waiting, []
        try:
            self.controller.run_batch()
        except Exception as exc:  # a bug, not a failed issue (that fails its ticket only)
            log.exception("event=batch_failed searches=%d", len(waiting))
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            return
        for ticket, future in waiting:
            if future.done():  # abandoned, or timed out
                continue
            if isinstance(ticket.result, Exception):
                future.set_exception(ticket.result)
            elif ticket.result is not None:
                future.set_result(ticket.result)
            else:  # cannot happen: run_batch completes every submitted ticket
                future.set_exception(RuntimeError("ticket left open by the batch"))


def _conforms(backend: DirectoryLdapBackend) -> LdapBackend:
    """mypy checks here that the backend still implements the LDAP server's protocol."""
    return backend
