"""The LDAP backend's bound principal: an account removed while its bind is checked."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from keypost.core.containers import DirectoryCA
from keypost.directory.accounts import Authenticator, hash_password
from keypost.directory.controller import Controller
from keypost.directory.ldap_backend import BoundAccount, DirectoryLdapBackend
from keypost.directory.store import AccountRecord, AccountRole
from keypost.directory.store.sqlite import SqliteStore


class RemovedDuringCheck(Authenticator):
    """The real check; the account is removed (`keypost directory account remove`) while
    it runs, after the account was read, and the snapshot notices before the bind ends."""

    def __init__(self, store: SqliteStore, controller: Controller) -> None:
        super().__init__(store)
        self.store, self.controller = store, controller

    async def verify(self, name: str, password: bytes, source: str,
                     protocol: str = "ldap") -> AccountRecord | None:
        account = await super().verify(name, password, source, protocol)
        self.store.remove_account(name)
        self.controller.snapshot()  # e.g. another connection's search
        return account


def test_an_account_removed_during_its_bind_is_not_kept(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "d.db")
    store.add_domain("example.com", [])  # the account's domain; no gateway key needed here
    store.add_account(AccountRecord("gw", AccountRole.GATEWAY, ("example.com",),
                                    hash_password(b"right"), dt.datetime.now(dt.UTC)))
    controller = Controller(store, DirectoryCA.generate("ecdsa-p256"), recheck_seconds=0)
    backend = DirectoryLdapBackend(
        controller, RemovedDuringCheck(store, controller), "dc=keypost")
    principal = asyncio.run(backend.authenticate("gw", b"right", "127.0.0.1:4000"))
    assert isinstance(principal, BoundAccount)  # the password was right when checked
    # ...but the account is gone: the connection's lookups run anonymous from the start.
    assert backend._current(principal) is None
