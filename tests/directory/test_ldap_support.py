"""Helpers for the LDAP server tests: an in-memory backend, test certificates, a server
running on its own event loop thread (so blocking clients - ldapsearch, ldap3 - can talk
to it), and TLS material. No tests here."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keypost.directory.cleartext import CleartextPolicy
from keypost.directory.ldap.backend import AddressEntry
from keypost.directory.ldap.server import LdapServer, Limits

SUFFIX = "dc=keypost"
PASSWORD = b"right-password"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_cert(address: str, issuer_key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """A small self-signed (or issued) DER certificate naming `address` (test data only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=1))
        .not_valid_after(_now() + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(address)]), critical=False)
        .sign(issuer_key or key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


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
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ldap test CA")])
    start, end = _now() - dt.timedelta(hours=1), _now() + dt.timedelta(days=1)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file, key_file = folder / "server.pem", folder / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context
