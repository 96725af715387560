"""The directory client against a real `keypost directory serve` (LDAP via ldap3, HTTP)."""

from __future__ import annotations

import datetime as dt
import re
import select
import socket
from pathlib import Path

import pytest
import requests
from cryptography import x509
from host_support import (
    PASSWORD,
    Directory,
    GatewayKeys,
    MemoryKeyring,
    start_directory,
    tls_files,
)
from port_util import refusing_port
from proc_util import stop

from keypost.core.containers import describe, load_certificates, verify_container
from keypost.core.types import Purpose, Role
from keypost.host.actions import Host
from keypost.host.config import parse_directory_url
from keypost.host.directory_client import (
    DirectoryClient,
    LdapDirectoryClient,
    RawContainer,
    make_client,
)
from keypost.host.errors import AuthenticationFailed, DirectoryFailure, DirectoryUnreachable

ADDRESSES = ["bob@example.org", "carol@example.net", "Dave@Example.COM"]


def client(url: str, user: str | None = None, password: str | None = None) -> DirectoryClient:
    return make_client(parse_directory_url(url), user, password)


def gateways(found: list[bytes], keys: GatewayKeys) -> list[str]:
    """Which gateway's key each container carries (by public key)."""
    out = []
    for der in found:
        key = x509.load_der_x509_certificate(der).public_key()
        out += [d for d, k in keys.keys.items() if k.public_key() == key]
    return sorted(out)


@pytest.fixture(params=["ldap", "http"])
def url(request: pytest.FixtureRequest, directory: Directory) -> str:
    return directory.ldap_url if request.param == "ldap" else directory.http_url


def test_anonymous_gets_the_recipient_gateway_only(
    url: str, directory: Directory, gateway_keys: GatewayKeys
) -> None:
    c = client(url)
    try:
        found = c.fetch(ADDRESSES)
    finally:
        c.close()
    assert gateways([r.der for r in found["bob@example.org"]], gateway_keys) == ["example.org"]
    assert found.get("carol@example.net", []) == []
    assert gateways([r.der for r in found["dave@example.com"]], gateway_keys) == ["example.com"]
    anchor = load_certificates(directory.anchor_pem.encode())
    for raw in found["bob@example.org"]:
        cert = x509.load_der_x509_certificate(raw.der)
        result = verify_container(cert, anchor, "bob@example.org", Purpose.ENCRYPT)
        assert result.ok, result.reasons
        assert describe(cert).role is Role.PROXY_ENCRYPTION


def test_authenticated_user_also_gets_own_gateway_in_one_connection(
    url: str, gateway_keys: GatewayKeys
) -> None:
    c = client(url, "alice", PASSWORD)
    try:
        assert c.check() is True
        found = c.fetch(ADDRESSES)
        conn = c._conn if isinstance(c, LdapDirectoryClient) else None
        again = c.fetch(["erin@example.org"])  # the same connection, reused
        if isinstance(c, LdapDirectoryClient):
            assert conn is not None and c._conn is conn and not conn.closed
    finally:
        c.close()
    assert gateways([r.der for r in found["bob@example.org"]], gateway_keys) == [
        "example.com", "example.org"]
    assert gateways([r.der for r in found["carol@example.net"]], gateway_keys) == ["example.com"]
    assert len(again["erin@example.org"]) == 2
    if url.startswith("http"):
        assert {r.gateway for r in found["bob@example.org"]} == {"example.com", "example.org"}


def test_wrong_password_is_authentication_failed(url: str) -> None:
    c = client(url, "alice", "not the password")
    with pytest.raises(AuthenticationFailed):
        c.fetch(["bob@example.org"])
    c.close()


def test_unreachable_directory(url: str) -> None:
    scheme = url.split(":", 1)[0]
    with refusing_port() as port:
        c = make_client(parse_directory_url(f"{scheme}://127.0.0.1:{port}"), None, None, None,
                        2.0)
        with pytest.raises(DirectoryUnreachable):
            c.fetch(["bob@example.org"])
        c.close()


def answered(directory: Directory, protocol: str) -> int:
    """The directory's own count of answered look-ups (its /metrics)."""
    text = requests.get(f"{directory.http_url}/metrics", timeout=10).text
    pattern = rf'keypost_requests_total{{protocol="{protocol}",result="ok"}} (\d+)'
    match = re.search(pattern, text)
    return int(match.group(1)) if match else 0


def fetch_as_alice(url: str, addresses: list[str]) -> dict[str, list[RawContainer]]:
    c = client(url, "alice", PASSWORD)
    try:
        return c.fetch(addresses)
    finally:
        c.close()


def test_many_recipients_one_search(url: str, directory: Directory) -> None:
    addresses = [f"user{i}@example.org" for i in range(60)]
    protocol = url.split(":", 1)[0]
    before = answered(directory, protocol)
    found = fetch_as_alice(url, addresses)
    assert answered(directory, protocol) == before + 1
    assert sorted(found) == sorted(addresses)
    assert all(len(v) == 2 for v in found.values())


def test_host_lookup_against_real_directory(
    url: str, directory: Directory, host_dirs: tuple[Path, Path],
    memory_keyring: MemoryKeyring,
) -> None:
    host = Host(*host_dirs)
    reply = host.handle({"id": 1, "action": "configure", "params": {
        "directory": url, "username": "alice", "password": PASSWORD,
        "trust_anchor_pem": directory.anchor_pem,
        "trust_anchor_fingerprint": directory.fingerprint}})
    assert reply["ok"], reply
    reply = host.handle({"id": 2, "action": "lookup", "params": {
        "from": "alice@example.com", "recipients": [*ADDRESSES, "x@@y"]}})
    assert reply["ok"], reply
    bob, carol, dave, junk = reply["result"]["recipients"]
    assert bob["status"] == "ok"
    assert sorted(c["gateway"] for c in bob["containers"]) == ["example.com", "example.org"]
    assert carol["status"] == "ok" and carol["summary"] == "via the gateway of example.com"
    assert dave["address"] == "Dave@example.com" and dave["status"] == "ok"
    assert junk["status"] == "invalid_address"
    for c in bob["containers"]:
        not_after = dt.datetime.strptime(c["not_after"], "%Y-%m-%dT%H:%M:%SZ")
        assert not_after > dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert host.handle({"id": 3, "action": "test_connection"})["result"]["authenticated"]
    host.close()


def test_spellings_of_one_address_in_any_order_all_verify(
    url: str, directory: Directory, host_dirs: tuple[Path, Path],
    memory_keyring: MemoryKeyring,
) -> None:
    """The directory keeps one container per case-folded address and hands the spelling
    first asked for to every later one: a fresh host asking in another case, and one
    message naming both spellings, must still accept it (the local part compared exactly
    refused it, blocking Send)."""
    def lookup(recipients: list[str]) -> list[dict[str, object]]:
        host = Host(*host_dirs)
        try:
            assert host.handle({"id": 1, "action": "configure", "params": {
                "directory": url, "username": "alice", "password": PASSWORD,
                "trust_anchor_pem": directory.anchor_pem,
                "trust_anchor_fingerprint": directory.fingerprint}})["ok"]
            reply = host.handle({"id": 2, "action": "lookup", "params": {
                "from": "alice@example.com", "recipients": recipients}})
            assert reply["ok"], reply
            return reply["result"]["recipients"]  # type: ignore[no-any-return]
        finally:
            host.close()

    spelt = f"Erin.Case.{url[:4]}@example.org"
    first = lookup([spelt])
    assert first[0]["status"] == "ok", first
    for later in ([spelt.lower()], [spelt.upper().replace("EXAMPLE.ORG", "example.org")],
                  [spelt.lower(), spelt]):
        found = lookup(later)
        assert [r["status"] for r in found] == ["ok"] * len(later), found


@pytest.mark.parametrize("scheme", ["ldaps", "starttls", "https"])
def test_tls_to_the_directory(scheme: str, directory: Directory, tmp_path: Path) -> None:
    url = {"ldaps": directory.ldaps_url, "starttls": directory.ldap_url,
           "https": directory.https_url}[scheme]
    right = directory.tls_ca_pem.encode()
    c = make_client(parse_directory_url(url), "alice", PASSWORD, right, 5.0)
    try:
        assert len(c.fetch(["bob@example.org"])["bob@example.org"]) == 2
    finally:
        c.close()
    # Another CA: the server certificate is refused, so TLS really was in use.
    other = tls_files(tmp_path)[2].encode()
    c = make_client(parse_directory_url(url), "alice", PASSWORD, other, 5.0)
    with pytest.raises(DirectoryUnreachable) as info:
        c.fetch(["bob@example.org"])
    c.close()
    # One line that says why, whichever way TLS was started.
    # (The other CA has the same name, so OpenSSL reports a signature failure.)
    assert re.search(r"failed: the directory's TLS certificate is not trusted \([a-z ]+\)$",
                     str(info.value)), str(info.value)


def test_directory_that_wants_tls_for_passwords(gateway_keys: GatewayKeys,
                                                tmp_path: Path) -> None:
    """`serve --cleartext-passwords never`: over http:// the host says TLS is needed (not
    "wrong password"); over https:// with the directory's TLS CA the same login works."""
    strict, proc = start_directory(tmp_path, gateway_keys, "--cleartext-passwords", "never")
    try:
        plain = make_client(parse_directory_url(strict.http_url), "alice", PASSWORD, None, 5.0)
        with pytest.raises(DirectoryFailure, match="only over TLS"):
            plain.fetch(["bob@example.org"])
        plain.close()
        secure = make_client(parse_directory_url(strict.https_url), "alice", PASSWORD,
                             strict.tls_ca_pem.encode(), 5.0)
        assert secure.check()
        secure.close()
    finally:
        stop(proc, timeout=10)


def test_configure_with_tls_ca(directory: Directory, host_dirs: tuple[Path, Path],
                               memory_keyring: MemoryKeyring) -> None:
    host = Host(*host_dirs)
    reply = host.handle({"id": 1, "action": "configure", "params": {
        "directory": directory.ldaps_url, "username": "alice", "password": PASSWORD,
        "trust_anchor_pem": directory.anchor_pem, "tls_ca_pem": directory.tls_ca_pem}})
    assert reply["ok"], reply
    assert (host_dirs[0] / "tls-ca.pem").read_text() == directory.tls_ca_pem
    again = Host(*host_dirs)  # a new session uses the saved TLS CA
    [bob] = again.handle({"id": 2, "action": "lookup", "params": {
        "recipients": ["bob@example.org"]}})["result"]["recipients"]
    assert bob["status"] == "ok"
    again.close()
    host.close()


def test_ldap_reconnects_once_after_a_dropped_connection(directory: Directory) -> None:
    c = make_client(parse_directory_url(directory.ldap_url), "alice", PASSWORD)
    assert isinstance(c, LdapDirectoryClient)
    try:
        assert len(c.fetch(["bob@example.org"])["bob@example.org"]) == 2
        conn = c._conn  # the session's connection, dropped as an idle timeout would
        assert conn is not None
        conn.socket.shutdown(socket.SHUT_RDWR)
        assert len(c.fetch(["bob@example.org"])["bob@example.org"]) == 2
        assert c._conn is not conn
    finally:
        c.close()


def test_ldap_work_runs_while_the_search_is_in_flight(directory: Directory) -> None:
    c = make_client(parse_directory_url(directory.ldap_url), "alice", PASSWORD)
    assert isinstance(c, LdapDirectoryClient)
    seen: list[bool] = []

    def work() -> None:
        # The request is out and its answer not read yet: the socket becomes readable.
        conn = c._conn
        assert conn is not None
        readable, _, _ = select.select([conn.socket], [], [], 10)
        seen.append(bool(readable))

    addresses = [f"user{i}@example.org" for i in range(150)]  # two searches, one call
    try:
        found = c.fetch(addresses, work)
        assert seen == [True]
        assert sorted(found) == sorted(addresses)
        assert all(len(v) == 2 for v in found.values())
        assert c.fetch(["bob@example.org"])["bob@example.org"] and seen == [True]

        def broken() -> None:
            raise RuntimeError("boom")

        conn = c._conn
        with pytest.raises(RuntimeError, match="boom"):
            c.fetch(["bob@example.org"], broken)
        # The unread answer went with its connection; the next search gets its own answer.
        assert c._conn is None
        assert sorted(c.fetch(["carol@example.net", "bob@example.org"])) == [
            "bob@example.org", "carol@example.net"]
        assert c._conn is not conn
    finally:
        c.close()


def test_tls_checks_the_host_name(directory: Directory) -> None:
    """The right CA is not enough: the server certificate names 127.0.0.1 only, so the same
    server reached as "localhost" is refused (ldap3 matches the name after the handshake)."""
    if socket.gethostbyname("localhost") != "127.0.0.1":
        pytest.skip("localhost does not resolve to 127.0.0.1 here")
    right = directory.tls_ca_pem.encode()
    for url in (directory.ldap_url, directory.ldaps_url, directory.https_url):
        c = make_client(parse_directory_url(url.replace("127.0.0.1", "localhost")), "alice",
                        PASSWORD, right, 5.0)
        with pytest.raises(DirectoryUnreachable) as info:
            c.fetch(["bob@example.org"])
        c.close()
        # One line naming the host asked for and what the certificate names instead; not
        # the whole certificate (issuer, serial, dates) as ldap3 words it.
        message = str(info.value)
        # (Python's own check, used for https://, does not say what the certificate names.)
        names = "" if url.startswith("https:") else " (it names 127.0.0.1)"
        assert message.endswith(
            f"the directory's TLS certificate does not name localhost{names}"
        ), message
        assert "\n" not in message
        assert "serialNumber" not in message and "issuer" not in message


@pytest.mark.parametrize("protocol", ["ldap", "http"])
def test_directory_with_a_lower_address_limit_is_asked_in_smaller_batches(
    protocol: str, gateway_keys: GatewayKeys, tmp_path: Path
) -> None:
    """A directory configured with max_addresses = 3 refuses a search for 8 addresses whole
    (LDAP adminLimitExceeded, HTTP 400 too_many_addresses): the client halves its batches
    until they fit, and every address is still answered."""
    small, proc = start_directory(tmp_path, gateway_keys, max_addresses=3)
    try:
        url = small.ldap_url if protocol == "ldap" else small.http_url
        addresses = [f"user{i}@example.org" for i in range(8)]
        before = answered(small, protocol)
        found = fetch_as_alice(url, addresses)
        assert sorted(found) == sorted(addresses)
        assert all(len(v) == 2 for v in found.values())
        # 8 -> 4 + 4 -> 2 + 2 + 2 + 2 answered, the refused ones not counted as ok
        assert answered(small, protocol) == before + 4
    finally:
        stop(proc, timeout=10)
