"""A container is never served to a second requestor (README "Containers and the cache").

Shared containers were an oracle: every RecipientInfo names its container by issuer and
serial, so whoever carries a message could look a guessed address up anonymously and
compare serials (Bcc recipients included), and a notBefore hours in the past told a
prober that someone had looked the mailbox up. The controller tests pin the rule with
controlled clocks; the server tests go through `keypost directory serve` with ldap3
clients from two loopback addresses (the server binds 127.0.0.1; a client socket bound
to 127.0.0.2 reaches it) and with two accounts.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import ldap3
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dir_support import DOMAIN, SUFFIX, USER, USER_PW, Directory, keypost, spki_der, write_rsa
from test_directory_controller import account, record
from test_directory_ldap_clients import ldap3_certs

from keypost.core.containers import DirectoryCA
from keypost.core.types import Requestor, RequestorKind
from keypost.directory.controller import (
    Answer,
    Controller,
    KnownRequestor,
    peer_identity,
    requestor_key,
    requestor_of,
)
from keypost.directory.store import (
    AccountRole,
    CacheKey,
    IssuedRecord,
    KeyUse,
)
from keypost.directory.store.sqlite import MIGRATIONS, SqliteStore

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
ADDRESS = "target@example.com"


@pytest.fixture(scope="module")
def ca() -> DirectoryCA:
    return DirectoryCA.generate("ecdsa-p256", directory_url="ldap://dir.test")


@pytest.fixture(scope="module")
def gateway_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture()
def controller(tmp_path: Path, ca: DirectoryCA, gateway_key: rsa.RSAPrivateKey) -> Controller:
    store = SqliteStore(tmp_path / "d.db")
    store.add_domain("example.com", [record("example.com", gateway_key, KeyUse.ENCRYPTION)])
    return Controller(store, ca, recheck_seconds=0)


def serial(controller: Controller, requestor: Requestor, when: dt.datetime = NOW) -> int:
    [answer] = controller.answer(requestor, [ADDRESS], None, "t", now=when)
    [container] = answer.containers
    return container.serial


def only(answers: list[Answer]) -> x509.Certificate:
    [answer] = answers
    [container] = answer.containers
    return x509.load_der_x509_certificate(container.der)


# the controller ---------------------------------------------------------------------------
def test_two_anonymous_peers_get_different_containers(controller: Controller) -> None:
    first, second = requestor_of(None, "192.0.2.1"), requestor_of(None, "192.0.2.2")
    assert serial(controller, first) != serial(controller, second)
    assert controller.metrics.cache_misses == 2


def test_the_same_requestor_gets_the_same_container_from_every_tier(
        controller: Controller, ca: DirectoryCA) -> None:
    peer = requestor_of(None, "192.0.2.1")
    first = serial(controller, peer)
    assert serial(controller, peer, NOW + dt.timedelta(hours=1)) == first  # answer cache
    controller._answers.clear()
    assert serial(controller, peer, NOW + dt.timedelta(hours=2)) == first  # container LRU
    controller.flush()
    restarted = Controller(controller.store, ca, recheck_seconds=0)
    assert serial(restarted, peer, NOW + dt.timedelta(hours=3)) == first  # the store
    assert serial(restarted, requestor_of(None, "192.0.2.9"),
                  NOW + dt.timedelta(hours=3)) != first  # ... for that requestor only
    # the half-life rule holds per requestor
    assert serial(restarted, peer, NOW + dt.timedelta(hours=12, minutes=5)) != first


def test_accounts_share_containers_anonymous_peers_do_not(controller: Controller) -> None:
    """Every account (users and gateways of any domain) gets the same container: a gateway,
    which may serve several domains with one account, recognises by serial what its users'
    add-ons encrypted to. Anonymous peers get their own."""
    alice, bob = requestor_of(account("alice")), requestor_of(account("bob"))
    gw = requestor_of(account("gw", AccountRole.GATEWAY))
    other_user = requestor_of(account("carol", domain="example.net"))
    foreign = "x@example.org"  # gateways encrypt to foreign addresses (no signing rule)
    controller.store.add_domain("example.org", [record("example.org", rsa.generate_private_key(
        public_exponent=65537, key_size=2048), KeyUse.ENCRYPTION)])

    def foreign_serial(r: Requestor) -> int:
        [container] = [c for a in controller.answer(r, [foreign], None, "t")
                       for c in a.containers if c.gateway == "example.org"]
        return container.serial

    mine = foreign_serial(alice)
    # a gateway account of example.com serves the users of example.net too
    assert {foreign_serial(r) for r in (bob, gw, other_user, alice)} == {mine}
    here = foreign_serial(requestor_of(None, "192.0.2.1"))
    there = foreign_serial(requestor_of(None, "192.0.2.2"))
    assert len({mine, here, there}) == 3


def test_a_requestor_without_identity_never_gets_a_kept_container(
        controller: Controller) -> None:
    # e.g. HTTP before it hands the controller the peer's address, or a peer that is no
    # IP address: such requestors cannot be told apart, so nothing is kept for them
    unknown = Requestor.anonymous()
    assert serial(controller, unknown) != serial(controller, unknown)
    assert requestor_of(None, "?") == unknown
    nameless = KnownRequestor(RequestorKind.ANONYMOUS)  # who = "": names nobody either
    assert serial(controller, nameless) != serial(controller, nameless)
    controller.flush()
    assert len(controller._cache) == 0 and controller._answers == {}
    assert len(controller.store.audit()) == 4  # audited all the same
    assert controller.store.issued_holders(NOW) == set()


def test_a_miss_costs_the_same_whoever_else_looked_the_address_up(
        controller: Controller, ca: DirectoryCA) -> None:
    """A miss asks the store only when it may hold a container of *this* requestor: keyed by
    the address alone, a prober's first look-up of an address someone else had looked up
    cost one more SQLite query than that of an address nobody had, a timing oracle for
    "this mailbox is in use" (the very fact per-requestor containers keep from probers).
    Counted on the real store, before and after a restart, instead of timed."""
    queries: list[CacheKey] = []

    def counting(store: SqliteStore) -> None:
        real = store.issued

        def issued(key: CacheKey) -> IssuedRecord | None:
            queries.append(key)
            return real(key)
        store.issued = issued  # type: ignore[method-assign]

    assert isinstance(controller.store, SqliteStore)
    counting(controller.store)
    victim, prober = requestor_of(None, "192.0.2.1"), requestor_of(None, "192.0.2.66")
    serial(controller, victim)
    controller.flush()
    serial(controller, prober)  # its first look-up of an address in use
    assert queries == []
    restarted = Controller(controller.store, ca, recheck_seconds=0)
    serial(restarted, requestor_of(None, "192.0.2.67"))
    assert queries == []
    # ... while a requestor's own container is still taken from the store
    first = serial(restarted, victim)
    assert [q.requestor for q in queries] == [requestor_key("peer:192.0.2.1")]
    restarted.purged(NOW)  # the set reloaded after a purge keeps the same rule
    restarted._cache.clear()
    restarted._answers.clear()
    queries.clear()
    serial(restarted, requestor_of(None, "192.0.2.68"))
    assert queries == []
    assert serial(restarted, victim) == first


def test_an_issue_costs_the_same_whoever_else_had_one_for_the_address(
        tmp_path: Path, ca: DirectoryCA, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CA memoised an address's derived key P_A (~87 us of EC arithmetic) and its
    subject and SAN (~8 us) for everyone: a prober's container for an address someone else
    had just been issued one for took that much less time, which told him the mailbox was
    in use. Memoised per requestor now; counted through the real CA, not timed."""
    import dataclasses

    from cryptography.hazmat.primitives.asymmetric import ec

    from keypost.core import containers
    from keypost.core.containers import GatewayKey

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    store = SqliteStore(tmp_path / "d.db")
    store.add_domain("example.com", [dataclasses.replace(
        record("example.com", rsa.generate_private_key(public_exponent=65537, key_size=2048),
               KeyUse.ENCRYPTION),
        pem=pem, fingerprint=GatewayKey.from_pem(pem).fingerprint, derived=True)])
    fresh = DirectoryCA.generate("ecdsa-p256", directory_url="ldap://dir.test")
    controller = Controller(store, fresh, recheck_seconds=0)
    derivations: list[str] = []
    real = containers.derived_public_key

    def counting(public: ec.EllipticCurvePublicKey, address: object) -> object:
        derivations.append(str(address))
        return real(public, address)  # type: ignore[arg-type]
    monkeypatch.setattr(containers, "derived_public_key", counting)
    containers._address_parts.cache_clear()
    serial(controller, requestor_of(None, "192.0.2.1"))
    built = containers._address_parts.cache_info().misses
    serial(controller, requestor_of(None, "192.0.2.66"))  # another requestor: all anew
    assert derivations == [ADDRESS, ADDRESS]
    assert containers._address_parts.cache_info().misses == built + 1
    # the accounts are one requestor: theirs are memoised for each other
    serial(controller, requestor_of(account("alice")))
    serial(controller, requestor_of(account("bob")))
    assert derivations == [ADDRESS] * 3


def test_rekey_drops_the_containers_of_every_requestor(
        tmp_path: Path, controller: Controller) -> None:
    requestors = [requestor_of(None, "192.0.2.1"), requestor_of(None, "2001:db8::1"),
                  requestor_of(account("alice")), requestor_of(None, "192.0.2.3")]
    before = {serial(controller, r) for r in requestors}
    controller.flush()
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cli = SqliteStore(tmp_path / "d.db")  # the CLI is another connection
    cli.rekey_domain("example.com", [record("example.com", new_key, KeyUse.ENCRYPTION)])
    after = {serial(controller, r) for r in requestors}
    assert len(after) == 4 and not after & before
    controller.flush()
    controller._answers.clear()
    controller._cache.clear()  # the store tier has none of the old ones either
    assert {serial(controller, r) for r in requestors} == after


def test_not_before_tells_a_prober_nothing(ca: DirectoryCA, gateway_key: rsa.RSAPrivateKey,
                                           tmp_path: Path) -> None:
    """The prober's container looks the same whether or not someone asked 6 h earlier."""
    prober = requestor_of(None, "198.51.100.7")
    probe_time = NOW + dt.timedelta(hours=6)
    seen: list[tuple[dt.timedelta, dt.timedelta]] = []
    for someone_asked in (False, True):
        store = SqliteStore(tmp_path / f"{someone_asked}.db")
        store.add_domain("example.com", [record("example.com", gateway_key, KeyUse.ENCRYPTION)])
        controller = Controller(store, ca, recheck_seconds=0)
        if someone_asked:
            serial(controller, requestor_of(account("alice")), NOW)
            serial(controller, requestor_of(None, "192.0.2.1"), NOW)
            controller.flush()
        cert = only(controller.answer(prober, [ADDRESS], None, "t", now=probe_time))
        seen.append((probe_time - cert.not_valid_before_utc,
                     cert.not_valid_after_utc - probe_time))
    assert seen[0] == seen[1]


def test_peer_identity_is_the_full_address() -> None:
    assert peer_identity("::ffff:192.0.2.1") == peer_identity("192.0.2.1") == "peer:192.0.2.1"
    assert peer_identity("[2001:DB8:0::1]") == peer_identity("2001:db8::1")
    # the full IPv6 address, not its /64 (neighbours on one LAN are different requestors)
    assert peer_identity("2001:db8::1") != peer_identity("2001:db8::2")
    assert peer_identity("?") is None and peer_identity("") is None
    assert requestor_of(None, "2001:db8::1") != requestor_of(None, "2001:db8::2")
    # an account is the same requestor from any address; never the anonymous one there
    assert requestor_of(account("alice"), "192.0.2.1") == requestor_of(account("alice"))
    assert requestor_of(account("alice")) != requestor_of(None, "192.0.2.1")


# the store ----------------------------------------------------------------------------------
def test_store_keys_issued_containers_by_requestor(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "d.db")
    end = NOW + dt.timedelta(days=1)
    mine, theirs, nobody = (CacheKey("a@example.com", "proxy-encryption", "fp", "encrypt", who)
                            for who in ("r1", "r2", "r3"))
    store.save_issued([IssuedRecord(mine, b"1", 1, NOW, end),
                       IssuedRecord(theirs, b"2", 2, NOW, end)])
    got = store.issued(mine), store.issued(theirs), store.issued(nobody)
    assert [g.serial if g else None for g in got] == [1, 2, None]


def test_migration_drops_containers_issued_before_the_requestor_key(tmp_path: Path) -> None:
    old = SqliteStore(tmp_path / "d.db", migrations=MIGRATIONS[:2])
    old.close()
    db = sqlite3.connect(tmp_path / "d.db")
    db.execute("INSERT INTO issued VALUES ('a@example.com', 'proxy-encryption', 'fp',"
               " 'encrypt', '7', x'00', 0, 4102444800)")
    db.commit()
    db.close()
    store = SqliteStore(tmp_path / "d.db")
    assert store.schema_version() == len(MIGRATIONS) >= 3
    assert store.issued_holders(NOW) == set()  # shared rows are gone, not adopted
    # a row without a requestor (the column's default) is served to nobody
    store._db.execute("INSERT INTO issued (address_key, role, gateway_fingerprint, purpose,"
                      " serial, der, not_before, not_after) VALUES ('a@example.com',"
                      " 'proxy-encryption', 'fp', 'encrypt', '8', x'00', 0, 4102444800)")
    who = requestor_key("peer:192.0.2.1")
    assert store.issued(CacheKey("a@example.com", "proxy-encryption", "fp", "encrypt",
                                 who)) is None


# the real server ------------------------------------------------------------------------------
def ldap_serials(d: Directory, address: str, source: str = "127.0.0.1",
                 bind: tuple[str, str] | None = None) -> list[x509.Certificate]:
    """The containers of `address` for a client whose socket is bound to `source`."""
    server = ldap3.Server(d.ldap[0], port=d.ldap[1], get_info=ldap3.NONE)
    user, password = bind if bind else (None, None)
    with ldap3.Connection(server, user, password, auto_bind=True,
                          source_address=source) as conn:
        return ldap3_certs(conn, address)


@pytest.fixture()
def bob(directory: Directory) -> Iterator[tuple[str, str]]:
    password = "bob-privacy-pw"
    keypost("directory", "account", "add", "bob", "--role", "user", "--domain", DOMAIN,
            "--password-stdin", "--data", str(directory.data), stdin=password + "\n")
    try:
        yield f"uid=bob,{SUFFIX}", password
    finally:
        keypost("directory", "account", "remove", "bob", "--data", str(directory.data))


def test_server_two_anonymous_peers_get_different_containers(directory: Directory) -> None:
    address = "privacy-peers@example.com"
    [here] = ldap_serials(directory, address, "127.0.0.1")
    [there] = ldap_serials(directory, address, "127.0.0.2")
    assert here.serial_number != there.serial_number
    # the same peer again (a new connection, another port): the same container
    assert [c.serial_number for c in ldap_serials(directory, address, "127.0.0.1")] == [
        here.serial_number]
    assert [c.serial_number for c in ldap_serials(directory, address, "127.0.0.2")] == [
        there.serial_number]


def test_server_accounts_of_one_domain_share_an_anonymous_peer_does_not(
        directory: Directory, bob: tuple[str, str]) -> None:
    alice = (f"uid={USER},{SUFFIX}", USER_PW)
    address = "privacy-accounts@example.com"  # a user gets one container for her own domain
    [a] = ldap_serials(directory, address, bind=alice)
    [b] = ldap_serials(directory, address, bind=bob)
    [anon] = ldap_serials(directory, address)
    # accounts share one container; the anonymous peer gets its own
    assert a.serial_number == b.serial_number
    assert anon.serial_number != a.serial_number
    # alice from another address is still alice
    assert [c.serial_number for c in ldap_serials(directory, address, "127.0.0.2",
                                                   bind=alice)] == [a.serial_number]


def test_server_http_accounts_of_one_domain_share(
        directory: Directory, bob: tuple[str, str]) -> None:
    def pem(auth: tuple[str, str]) -> str:
        resp = requests.get(directory.http + "v1/containers", auth=auth, timeout=30,
                            params={"address": "privacy-http@example.com"})
        assert resp.status_code == 200, resp.text
        [container] = resp.json()["results"][0]["containers"]
        return str(container["pem"])

    bob_account = ("bob", bob[1])
    alice = pem((USER, USER_PW))
    assert pem(bob_account) == alice  # accounts share
    assert pem((USER, USER_PW)) == alice


def test_server_not_before_tells_a_prober_nothing(directory: Directory) -> None:
    address = "privacy-probe@example.com"
    alice = (f"uid={USER},{SUFFIX}", USER_PW)
    [looked_up] = ldap_serials(directory, address, bind=alice)
    time.sleep(2.1)
    [probe] = ldap_serials(directory, address, "127.0.0.2")
    # issued for the prober, now: not the one alice got, which is 2 s older
    assert probe.serial_number != looked_up.serial_number
    assert probe.not_valid_before_utc - looked_up.not_valid_before_utc >= dt.timedelta(seconds=1)


def test_server_rekey_serves_none_of_the_old_containers(directory: Directory,
                                                        tmp_path: Path) -> None:
    domain, address = "privacy-rekey.example", "x@privacy-rekey.example"
    old_key, old_pub = write_rsa(tmp_path / "old.pem")
    new_key, new_pub = write_rsa(tmp_path / "new.pem")
    data = str(directory.data)
    keypost("directory", "domain", "add", domain, "--encryption-cert", str(old_pub),
            "--data", data)
    try:
        sources = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
        before = {s: ldap_serials(directory, address, s) for s in sources}
        assert all(spki_of(c) == spki_der(old_key) for [c] in before.values())
        assert len({c.serial_number for [c] in before.values()}) == 3
        keypost("directory", "domain", "rekey", domain, "--encryption-cert", str(new_pub),
                "--data", data)
        time.sleep(0.2)  # the server notices within its 50 ms recheck interval
        after = {s: ldap_serials(directory, address, s) for s in sources}
        assert all(spki_of(c) == spki_der(new_key) for [c] in after.values())
        old = {c.serial_number for [c] in before.values()}
        assert not old & {c.serial_number for [c] in after.values()}
    finally:
        keypost("directory", "domain", "remove", domain, "--data", data)


def spki_of(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def http_anonymous_serial(d: Directory, address: str, source: str) -> int:
    """One anonymous GET /v1/containers from `source` (a loopback address of its own)."""
    url = urlsplit(d.http)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30,
                                      source_address=(source, 0))
    try:
        conn.request("GET", f"/v1/containers?address={address}")
        resp = conn.getresponse()
        assert resp.status == 200
        [container] = json.loads(resp.read())["results"][0]["containers"]
    finally:
        conn.close()
    return x509.load_pem_x509_certificate(container["pem"].encode()).serial_number


def test_server_http_anonymous_peers_keep_containers_of_their_own(directory: Directory) -> None:
    """Over HTTP too an anonymous requestor is its address: the same peer gets its container
    again, another peer its own (HTTP had passed no peer: a fresh one every time)."""
    address = "privacy-http-anon@example.com"
    here = http_anonymous_serial(directory, address, "127.0.0.1")
    assert http_anonymous_serial(directory, address, "127.0.0.1") == here
    there = http_anonymous_serial(directory, address, "127.0.0.2")
    assert there != here
    assert http_anonymous_serial(directory, address, "127.0.0.2") == there
