"""Fresh-address searches from many connections at once, pipelined: each search gets the
container of its own address, and a failed issue fails only the search that needed it."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keypost.core.containers import ContainerRequest, DirectoryCA, GatewayKey, describe
from keypost.core.errors import ContainerError
from keypost.directory.accounts import Authenticator
from keypost.directory.controller import Controller
from keypost.directory.ldap import ber
from keypost.directory.ldap import filters as F
from keypost.directory.ldap import messages as M
from keypost.directory.ldap.server import LdapServer
from keypost.directory.ldap_backend import DirectoryLdapBackend
from keypost.directory.store import GatewayKeyRecord, KeyUse
from keypost.directory.store.sqlite import SqliteStore

SUFFIX = "dc=keypost"


class FailingCA:
    """The real CA, except that it refuses addresses whose local part starts with `fail`."""

    def __init__(self, ca: DirectoryCA) -> None:
        self.ca = ca
        self.calls = 0

    def issue(self, request: ContainerRequest, now: dt.datetime | None = None) -> x509.Certificate:
        self.calls += 1
        if request.address.local.startswith("fail"):
            raise ContainerError("refused for the test")
        return self.ca.issue(request, now=now)


def search(address: str, message_id: int) -> bytes:
    request = M.SearchRequest(SUFFIX, M.Scope.SUB, M.DerefAliases.NEVER, 0, 0, False,
                              F.EqualityMatch("mail", address.encode()),
                              ("userCertificate;binary",))
    return M.encode_message(M.LDAPMessage(message_id, request))


async def results(reader: asyncio.StreamReader,
                  count: int) -> dict[int, tuple[list[bytes], M.ResultCode]]:
    """messageID -> (certificates, result code) for `count` searches."""
    out: dict[int, tuple[list[bytes], M.ResultCode]] = {}
    certs: dict[int, list[bytes]] = {}
    data = b""
    while len(out) < count:
        chunk = await reader.read(65536)
        assert chunk, "the server closed the connection"
        data += chunk
        while (n := ber.frame_length(data)) is not None:
            msg = M.decode_message(data[:n])
            data = data[n:]
            if isinstance(msg.op, M.SearchResultEntry):
                for attribute in msg.op.attributes:
                    certs.setdefault(msg.message_id, []).extend(attribute.values)
            elif isinstance(msg.op, M.SearchResultDone):
                out[msg.message_id] = (certs.pop(msg.message_id, []), msg.op.result.code)
    return out


def test_concurrent_fresh_searches_each_get_their_own_container(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    store = SqliteStore(tmp_path / "d.db")
    store.add_domain("example.com", [GatewayKeyRecord(
        "example.com", KeyUse.ENCRYPTION, pem, GatewayKey.from_pem(pem).fingerprint,
        ("aes256-cbc",), dt.datetime.now(dt.UTC))])
    ca = FailingCA(DirectoryCA.generate("ecdsa-p256", directory_url="ldap://dir.test"))
    controller = Controller(store, cast(DirectoryCA, ca))
    backend = DirectoryLdapBackend(controller, Authenticator(store), SUFFIX)
    # 8 connections, 3 pipelined searches each; every fifth address cannot be issued
    asked = {(c, m): f"{'fail' if (c * 3 + m) % 5 == 4 else 'user'}{c}.{m}@example.com"
             for c in range(8) for m in range(1, 4)}

    async def run() -> dict[int, dict[int, tuple[list[bytes], M.ResultCode]]]:
        server = LdapServer(backend)
        host, port = await server.listen("127.0.0.1", 0)
        try:
            streams = [await asyncio.open_connection(host, port) for _ in range(8)]
            for c, (_, writer) in enumerate(streams):  # all written before any is read
                writer.write(b"".join(search(asked[(c, m)], m) for m in range(1, 4)))
            got = await asyncio.wait_for(
                asyncio.gather(*(results(reader, 3) for reader, _ in streams)), 60)
            for _, writer in streams:
                writer.close()
            return dict(enumerate(got))
        finally:
            await server.close()

    answers = asyncio.run(run())
    assert ca.calls == 24  # each address issued once
    for (c, m), address in asked.items():
        certs, code = answers[c][m]
        if address.startswith("fail"):
            assert (certs, code) == ([], M.ResultCode.OTHER)
            continue
        assert code == M.ResultCode.SUCCESS
        [der] = certs
        assert describe(x509.load_der_x509_certificate(der)).addresses == (address,)
    controller.flush()
    assert len(store.audit()) == 24 - sum(a.startswith("fail") for a in asked.values())
