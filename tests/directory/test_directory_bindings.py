"""GET /v1/bindings: whether a container serial was issued for an address, answered to
gateway accounts for their own domain's containers only; through a real HTTP client
against `keypost directory serve`, and after the purge against a real store."""

from __future__ import annotations

import datetime as dt
import secrets
import sqlite3
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dir_support import (
    GATEWAY,
    GATEWAY_PW,
    OTHER,
    USER,
    USER_PW,
    Directory,
    assert_documented,
)

from keypost.core.address import parse_address
from keypost.core.containers import DirectoryCA, GatewayKey
from keypost.core.types import Purpose
from keypost.directory.controller import Controller, requestor_of
from keypost.directory.store import (
    AccountRecord,
    AccountRole,
    GatewayKeyRecord,
    KeyUse,
    PasswordHash,
)
from keypost.directory.store.sqlite import MIGRATIONS, SqliteStore
from keypost.directory.writer import write_batch

BOB, MALLORY = "bob@example.com", "mallory@example.com"


def serial_of(d: Directory, address: str, auth: tuple[str, str] | None = None) -> int:
    """The serial of the encryption container `address` gets from the directory."""
    resp = requests.get(d.http + "v1/containers", params={"address": address}, auth=auth,
                        timeout=30)
    assert resp.status_code == 200, resp.text
    pem = resp.json()["results"][0]["containers"][-1]["pem"]
    return int(x509.load_pem_x509_certificate(pem.encode()).serial_number)


def ask(d: Directory, serials: list[str], addresses: list[str],
        auth: tuple[str, str] | None = (GATEWAY, GATEWAY_PW)) -> requests.Response:
    params = [("serial", s) for s in serials] + [("address", a) for a in addresses]
    return requests.get(d.http + "v1/bindings", params=params, auth=auth, timeout=30)


def answers(resp: requests.Response) -> dict[tuple[str, str], str]:
    assert resp.status_code == 200, resp.text
    assert_documented(resp.status_code, resp.json(), "/v1/bindings")
    return {(r["serial"], r["address"]): r["binding"] for r in resp.json()["results"]}


def test_a_serial_is_bound_to_its_address_only(directory: Directory) -> None:
    bob = f"{serial_of(directory, BOB):X}"
    got = answers(ask(directory, [bob], [BOB, MALLORY, "BOB@Example.COM"]))
    assert got == {(bob, BOB): "bound", (bob, MALLORY): "not_bound",
                   (bob, "BOB@Example.COM"): "bound"}  # Address.key(): one mailbox


def test_every_pair_of_serials_and_addresses_is_answered(directory: Directory) -> None:
    bob = f"{serial_of(directory, BOB, (USER, USER_PW)):x}"  # lower-case hex too
    mallory = f"{serial_of(directory, MALLORY):X}"
    got = answers(ask(directory, [bob, mallory], [BOB, MALLORY]))
    bob = bob.upper()  # as the answer writes it
    assert got == {(bob, BOB): "bound", (bob, MALLORY): "not_bound",
                   (mallory, BOB): "not_bound", (mallory, MALLORY): "bound"}


def test_a_serial_never_issued_is_unknown(directory: Directory) -> None:
    made_up = f"{secrets.randbits(120) | 1 << 119:X}"
    assert answers(ask(directory, [made_up], [BOB])) == {(made_up, BOB): "unknown"}


def test_another_domains_container_is_unknown_to_this_gateway(directory: Directory) -> None:
    """The gateway of example.com learns nothing of example.org's containers: neither
    whether a serial is one nor for whom (bound and not_bound alike would tell)."""
    theirs = f"{serial_of(directory, 'carol@' + OTHER):X}"
    got = answers(ask(directory, [theirs], ["carol@" + OTHER, BOB]))
    assert set(got.values()) == {"unknown"}


@pytest.mark.parametrize("auth", [None, (USER, USER_PW)])
def test_only_gateway_accounts_may_ask(directory: Directory,
                                       auth: tuple[str, str] | None) -> None:
    bob = f"{serial_of(directory, BOB):X}"
    resp = ask(directory, [bob], [BOB], auth=auth)
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "forbidden"
    assert_documented(resp.status_code, resp.json(), "/v1/bindings")


def test_wrong_credentials_are_401(directory: Directory) -> None:
    resp = ask(directory, ["1A"], [BOB], auth=(GATEWAY, "wrong"))
    assert resp.status_code == 401 and "WWW-Authenticate" in resp.headers
    assert_documented(resp.status_code, resp.json(), "/v1/bindings")


@pytest.mark.parametrize(("serials", "addresses", "code"), [
    ([], [BOB], "missing_serial"),
    (["1A"], [], "missing_address"),
    (["xyz"], [BOB], "invalid_serial"),
    (["-1"], [BOB], "invalid_serial"),
    (["1" * 41], [BOB], "invalid_serial"),
    (["1A"], ["not an address"], "invalid_address"),
    ([f"{n:X}" for n in range(1, 102)], [BOB], "too_many_serials"),
])
def test_malformed_questions_are_400(directory: Directory, serials: list[str],
                                     addresses: list[str], code: str) -> None:
    resp = ask(directory, serials, addresses)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == code
    assert_documented(resp.status_code, resp.json(), "/v1/bindings")


# --- the controller over a real store: not yet written, and after the purge ------------

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _record(domain: str, key: rsa.RSAPrivateKey) -> GatewayKeyRecord:
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return GatewayKeyRecord(domain, KeyUse.ENCRYPTION, pem, GatewayKey.from_pem(pem).fingerprint,
                            ("aes256-cbc",), NOW)


def _gateway(*domains: str) -> AccountRecord:
    return AccountRecord("gw", AccountRole.GATEWAY, tuple(sorted(domains)),
                         PasswordHash(b"s", 2, 1, 1, b"d"), NOW)


@pytest.fixture()
def controller(tmp_path: Path) -> Controller:
    """example.com and example.net are served by one gateway (one key), example.org by
    another."""
    store = SqliteStore(tmp_path / "d.db")
    shared = rsa.generate_private_key(65537, 2048)
    for domain, key in (("example.com", shared), ("example.net", shared),
                        ("example.org", rsa.generate_private_key(65537, 2048))):
        store.add_domain(domain, [_record(domain, key)])
    return Controller(store, DirectoryCA.generate("ecdsa-p256"), recheck_seconds=0)


def _issue(controller: Controller, address: str) -> int:
    [answer] = controller.answer(requestor_of(None, "192.0.2.1"), [address], Purpose.ENCRYPT,
                                 "http", now=NOW)
    return answer.containers[-1].serial


def _bindings(controller: Controller, serial: int, *addresses: str,
              domain: str | tuple[str, ...] = "example.com") -> list[str]:
    domains = (domain,) if isinstance(domain, str) else domain
    got = controller.bindings(_gateway(*domains), [serial],
                              [parse_address(a) for a in addresses])
    return [b.value for b in got[0]]


def test_a_container_not_yet_written_is_known(controller: Controller) -> None:
    """The server writes new containers once a second: a message can be faster."""
    serial = _issue(controller, BOB)
    assert _bindings(controller, serial, BOB, MALLORY) == ["bound", "not_bound"]
    controller.flush()
    assert _bindings(controller, serial, BOB, MALLORY) == ["bound", "not_bound"]


def test_a_container_the_writer_is_writing_is_known(controller: Controller) -> None:
    """`serve`'s writer takes the pending records and writes them in its thread: a bindings
    question in between found them neither pending nor stored, and bob's own mail was
    refused as "the directory does not know" (seen once in CI). Taken records stay
    visible until the writer says they are written."""
    serial = _issue(controller, BOB)
    issued, audit = controller.take_pending()  # the writer has them, the store not yet
    assert _bindings(controller, serial, BOB, MALLORY) == ["bound", "not_bound"]
    write_batch(controller.store, issued, audit)
    controller.written()
    assert _bindings(controller, serial, BOB, MALLORY) == ["bound", "not_bound"]
    controller.purge(dt.timedelta(days=90), now=NOW + dt.timedelta(days=2))
    assert _bindings(controller, serial, BOB, MALLORY) == ["bound", "unknown"]


def test_after_the_purge_the_audit_confirms_but_never_denies(controller: Controller) -> None:
    """The issued table forgets a container when it expires; the audit keeps its serial
    with the address's hash for audit_retention_days, which can confirm a pair the asker
    names (bound) but not say whose else the serial was (unknown, not not_bound)."""
    serial = _issue(controller, BOB)
    theirs = _issue(controller, "carol@example.org")
    controller.flush()
    controller.purge(dt.timedelta(days=90), now=NOW + dt.timedelta(days=2))
    assert _bindings(controller, serial, BOB, MALLORY) == ["bound", "unknown"]
    # an address of another domain is never confirmed from the audit either
    assert _bindings(controller, theirs, "carol@example.org") == ["unknown"]
    assert _bindings(controller, theirs, "carol@example.org", domain="example.org") == [
        "bound"]
    controller.purge(dt.timedelta(days=90), now=NOW + dt.timedelta(days=91))
    assert _bindings(controller, serial, BOB) == ["unknown"]


def test_domains_of_one_gateway_key_are_answered_to_each_of_its_accounts(
        controller: Controller) -> None:
    """A gateway account asks for its domain's key, and so for every domain registered with
    that key (one gateway serves them); never for another key's domain."""
    net = _issue(controller, "dave@example.net")
    assert _bindings(controller, net, "dave@example.net") == ["bound"]
    assert _bindings(controller, net, "dave@example.net", domain="example.org") == ["unknown"]
    controller.flush()
    controller.purge(dt.timedelta(days=90), now=NOW + dt.timedelta(days=2))
    assert _bindings(controller, net, "dave@example.net") == ["bound"]
    assert _bindings(controller, net, "dave@example.net", domain="example.org") == ["unknown"]


def test_a_gateway_account_of_two_domains_is_answered_for_both_keys(
        controller: Controller) -> None:
    """One gateway serving example.com and example.org, each with a key of its own, asks
    with one account of both: the containers of both keys are answered, from the store and
    after the purge from the audit; an account of example.com alone still learns nothing
    of example.org's."""
    both = ("example.com", "example.org")
    org = _issue(controller, "carol@example.org")
    com = _issue(controller, BOB)
    assert _bindings(controller, org, "carol@example.org", BOB, domain=both) == [
        "bound", "not_bound"]
    assert _bindings(controller, com, BOB, domain=both) == ["bound"]
    assert _bindings(controller, org, "carol@example.org") == ["unknown"]
    controller.flush()
    controller.purge(dt.timedelta(days=90), now=NOW + dt.timedelta(days=2))
    assert _bindings(controller, org, "carol@example.org", domain=both) == ["bound"]
    assert _bindings(controller, org, "carol@example.org") == ["unknown"]


class CountingStore(SqliteStore):
    """The store, counting how often the whole key history is read."""

    history_reads = 0

    def domain_keys(self, domain: str | None = None,
                    history: bool = False) -> list[GatewayKeyRecord]:
        self.history_reads += history
        return super().domain_keys(domain, history)


def test_the_gateway_scope_is_made_once_per_store_change_and_follows_it(
        controller: Controller, tmp_path: Path) -> None:
    """GET /v1/bindings read the whole key history on every request; now once per store
    change. A change another process makes (the CLI's rekey, domain add) counts from the
    next request on, also for a server whose look-ups recheck the store only now and then."""
    db = tmp_path / "d.db"
    store = CountingStore(db)
    server = Controller(store, DirectoryCA.generate("ecdsa-p256"), recheck_seconds=3600)
    old = _issue(controller, BOB)
    controller.flush()
    assert _bindings(server, old, BOB) == ["bound"]
    assert _bindings(server, old, BOB, MALLORY) == ["bound", "not_bound"]
    assert store.history_reads == 1
    cli = SqliteStore(db)
    cli.rekey_domain("example.com", [_record("example.com", rsa.generate_private_key(65537,
                                                                                     2048))])
    new = _issue(controller, BOB)  # a container of the new key, written at once
    controller.flush()
    assert new != old
    # not_bound: the new key's container is found as issued (the audit could only confirm)
    assert _bindings(server, new, BOB, MALLORY) == ["bound", "not_bound"]
    # the rekey dropped the retired key's containers: the audit still confirms the pair
    assert _bindings(server, old, BOB, MALLORY) == ["bound", "unknown"]
    assert store.history_reads == 2
    # example.de joins example.com's gateway, with its key: a container of it that only the
    # audit still knows is confirmed to the example.com account from the next request on
    [current] = cli.domain_keys("example.com")
    cli.add_domain("example.de", [GatewayKeyRecord("example.de", KeyUse.ENCRYPTION,
                                                   current.pem, current.fingerprint,
                                                   current.capabilities, NOW)])
    de = _issue(controller, "dave@example.de")
    controller.flush()
    controller.purge(dt.timedelta(days=90), now=NOW + dt.timedelta(days=2))
    assert _bindings(server, de, "dave@example.de") == ["bound"]
    assert store.history_reads == 3


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE '%serial%'")}


def test_serial_indexes_are_made_by_the_first_question_only(controller: Controller,
                                                            tmp_path: Path) -> None:
    """Indexing every new container's random serial cost ~40 us of a miss in every
    directory (bench_ldap: 316 -> 357 us); only one whose gateways ask for bindings pays,
    from the first question on. A store of the version that made them at migration loses
    them until then."""
    db = tmp_path / "d.db"
    serial = _issue(controller, BOB)
    controller.flush()
    assert _indexes(db) == set()
    assert _bindings(controller, serial, BOB) == ["bound"]
    assert _indexes(db) == {"issued_serial", "audit_serials"}
    old = tmp_path / "old.db"
    SqliteStore(old, MIGRATIONS[:7])
    assert _indexes(old) == {"issued_serial", "audit_serials"}
    assert SqliteStore(old).schema_version() == len(MIGRATIONS)
    assert _indexes(old) == set()
