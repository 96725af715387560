"""Helpers for the LDAP server tests: an in-memory backend, test certificates, a server
running on its own event loop thread (so blocking clients - ldapsearch, ldap3 - can talk
to it), and TLS material. No tests here."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pki_util import ec_key, key_pem, make_ca, self_signed, server_cert

from keypost.core.containers import to_der, to_pem
from keypost.directory.cleartext import CleartextPolicy
from keypost.directory.ldap.backend import AddressEntry
from keypost.directory.ldap.server import LdapServer, Limits

SUFFIX = "dc=keypost"
PASSWORD = b"right-password"


def make_cert(address: str) -> bytes:
    """A small self-signed DER certificate naming `address` (test data only)."""
    return to_der(self_signed(ec_key(), address, address))


@dataclass
class MemoryBackend:
    """An LdapBackend over dicts: two certificates per address, one account `alice`.

    Authenticated requestors get a third certificate, so tests can tell binds apart.
    `fail` makes lookups raise; `delay` makes them wait (exercising the Task path).
    """

    suffix: str = SUFFIX
    fail: bool = False
    delay: float = 0.0
    certs: dict[str, tuple[bytes, ...]] = field(default_factory=dict)
    lookups: list[tuple[object | None, tuple[str, ...]]] = field(default_factory=list)
    cancelled: int = 0

    def certificates(self, address: str) -> tuple[bytes, ...]:
        key = address.casefold()
        if key not in self.certs:
            self.certs[key] = (make_cert(address), make_cert(address))
        return self.certs[key]

    async def authenticate(self, name: str, password: bytes, peer: str) -> object | None:
        return f"account:{name}" if name == "alice" and password == PASSWORD else None

    async def lookup(
        self, principal: object | None, addresses: Sequence[str], peer: str
    ) -> Sequence[AddressEntry]:
        self.lookups.append((principal, tuple(addresses)))
        if self.delay:
            try:
                await asyncio.sleep(self.delay)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if self.fail:
            raise RuntimeError("backend broke")
        out = []
        for a in addresses:
            if "@" not in a:
                continue  # a backend leaves out what it cannot serve
            certs = self.certificates(a)
            if principal is not None:
                certs = (*certs, make_cert(f"internal-{a}"))
            out.append(AddressEntry(a, certs))
        return out


class ServerThread:
    """An LdapServer on an event loop in a daemon thread."""

    def __init__(
        self,
        backend: MemoryBackend,
        tls: ssl.SSLContext | None = None,
        limits: Limits | None = None,
        cleartext: CleartextPolicy = CleartextPolicy.LOOPBACK,
    ) -> None:
        self.backend = backend
        self.refused: list[str] = []  # what on_bind_refused was told
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self.call(self._make(backend, tls, limits, cleartext, self.refused.append))
        self.port = self.call(self.server.listen("127.0.0.1", 0))[1]
        self.ldaps_port = (
            self.call(self.server.listen("127.0.0.1", 0, implicit_tls=True))[1]
            if tls is not None
            else 0
        )

    @staticmethod
    async def _make(
        backend: MemoryBackend,
        tls: ssl.SSLContext | None,
        limits: Limits | None,
        cleartext: CleartextPolicy,
        on_bind_refused: Callable[[str], None],
    ) -> LdapServer:
        return LdapServer(backend, tls=tls, limits=limits, cleartext_passwords=cleartext,
                          on_bind_refused=on_bind_refused)

    def call(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout=30)

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def tls_files(folder: Path) -> tuple[Path, ssl.SSLContext]:
    """A test CA and a server certificate for 127.0.0.1 -> (CA file, server context)."""
    ca = make_ca("ldap test CA")
    key, cert = server_cert(ca)
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(to_pem(ca[1]))
    cert_file, key_file = folder / "server.pem", folder / "server.key"
    cert_file.write_bytes(to_pem(cert))
    key_file.write_bytes(key_pem(key))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context
