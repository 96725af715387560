"""Controller: requestor classes, the LDAP purpose rule, the cache and its half-life rule,
rekey, no existence oracle, audit and the request log."""

from __future__ import annotations

import datetime as dt
import gc
import logging
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keypost.core.containers import DirectoryCA, GatewayKey, describe
from keypost.core.types import Purpose, Role
from keypost.directory.controller import (
    Container,
    Controller,
    address_hash,
    ldap_purpose,
    requestor_of,
)
from keypost.directory.store import (
    AccountRecord,
    AccountRole,
    AuditRecord,
    CacheKey,
    GatewayKeyRecord,
    IssuedRecord,
    KeyUse,
    PasswordHash,
)
from keypost.directory.store.sqlite import SqliteStore

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def spki(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]


@pytest.fixture(scope="module")
def ca() -> DirectoryCA:
    return DirectoryCA.generate("ecdsa-p256", directory_url="ldap://dir.test")


def record(domain: str, key: rsa.RSAPrivateKey, use: KeyUse) -> GatewayKeyRecord:
    pem = spki(key)
    return GatewayKeyRecord(domain, use, pem, GatewayKey.from_pem(pem).fingerprint,
                            ("aes256-cbc",), NOW)


@pytest.fixture()
def controller(tmp_path: Path, ca: DirectoryCA, keys: list[rsa.RSAPrivateKey]) -> Controller:
    store = SqliteStore(tmp_path / "d.db")
    store.add_domain("example.com", [record("example.com", keys[0], KeyUse.ENCRYPTION),
                                     record("example.com", keys[1], KeyUse.SIGNING)])
    store.add_domain("example.org", [record("example.org", keys[2], KeyUse.ENCRYPTION)])
    return Controller(store, ca, recheck_seconds=0)


def fp(key: rsa.RSAPrivateKey) -> str:
    return GatewayKey.from_pem(spki(key)).fingerprint


def account(name: str, role: AccountRole = AccountRole.USER,
            domain: str = "example.com") -> AccountRecord:
    return AccountRecord(name, role, (domain,), PasswordHash(b"s", 2, 1, 1, b"d"), NOW)


# Requestors as the servers name them: the cache reuses a container for one of them only.
ANON = requestor_of(None, "192.0.2.1")
USER = requestor_of(account("alice"))
GATEWAY = requestor_of(account("gw", AccountRole.GATEWAY))


def test_anonymous_gets_target_gateway_container(controller: Controller,
                                                 keys: list[rsa.RSAPrivateKey]) -> None:
    [a] = controller.answer(ANON, ["Alice@Example.COM"], None, "test")
    assert a.address == "Alice@example.com"
    [c] = a.containers
    info = describe(x509.load_der_x509_certificate(c.der))
    assert c.role is Role.PROXY_ENCRYPTION and info.role is Role.PROXY_ENCRYPTION
    assert info.addresses == ("Alice@example.com",)
    assert info.gateway_fingerprint == fp(keys[0]) and c.gateway == "example.com"


def test_user_gets_own_gateway_for_external_address(controller: Controller,
                                                    keys: list[rsa.RSAPrivateKey]) -> None:
    [a] = controller.answer(USER, ["bob@example.org"], None, "test")
    fps = [describe(x509.load_der_x509_certificate(c.der)).gateway_fingerprint
           for c in a.containers]
    assert fps == [fp(keys[0]), fp(keys[2])]
    [b] = controller.answer(USER, ["carol@unserved.example"], None, "test")
    assert [c.gateway for c in b.containers] == ["example.com"]


def test_ldap_purpose_rule_gives_gateway_its_signing_container(
        controller: Controller, keys: list[rsa.RSAPrivateKey]) -> None:
    from keypost.core.address import parse_address
    assert ldap_purpose(GATEWAY, parse_address("a@example.com")) is Purpose.SIGN
    assert ldap_purpose(GATEWAY, parse_address("a@example.org")) is Purpose.ENCRYPT
    assert ldap_purpose(USER, parse_address("a@example.com")) is Purpose.ENCRYPT
    [a] = controller.answer(GATEWAY, ["alice@example.com"], None, "test")
    [c] = a.containers
    assert c.role is Role.PROXY_SIGNING
    assert describe(x509.load_der_x509_certificate(c.der)).gateway_fingerprint == fp(keys[1])
    [r] = controller.answer(USER, ["alice@example.com"], Purpose.SIGN, "test")
    assert r.containers == () and r.refused


def test_a_gateway_account_of_two_domains_signs_for_both_and_is_audited_as_such(
        controller: Controller) -> None:
    """LDAP's purpose rule takes an address of any of the account's domains as its own
    sender's; the audit and the request log name the requestor with all its domains."""
    from keypost.core.address import parse_address
    both = requestor_of(AccountRecord("gw2", AccountRole.GATEWAY, ("example.com", "example.org"),
                                      PasswordHash(b"s", 2, 1, 1, b"d"), NOW))
    assert ldap_purpose(both, parse_address("a@example.org")) is Purpose.SIGN
    assert ldap_purpose(both, parse_address("a@example.net")) is Purpose.ENCRYPT
    com, org, net = controller.answer(both, ["alice@example.com", "olga@example.org",
                                             "nat@example.net"], None, "test")
    assert [c.role for c in com.containers] == [Role.PROXY_SIGNING]
    assert org.containers == () and org.refused == "no signing key is registered for example.org"
    assert net.containers == () and net.refused is None  # nobody serves it: nothing to encrypt to
    _, audit = controller.take_pending()
    assert [a.requestor for a in audit] == ["gateway:example.com,example.org"]


def test_no_existence_oracle(controller: Controller) -> None:
    real, made_up = controller.answer(
        ANON, ["alice@example.com", "zq9-nobody@example.com"], None, "test")
    shape = [(c.role, c.gateway, c.not_after - c.not_before) for c in real.containers]
    assert shape == [(c.role, c.gateway, c.not_after - c.not_before)
                     for c in made_up.containers]
    [r], [m] = real.containers, made_up.containers
    ext = [[e.oid for e in x509.load_der_x509_certificate(c.der).extensions] for c in (r, m)]
    assert ext[0] == ext[1]
    # unserved domains get nothing (the domain, not the mailbox, decides)
    [none] = controller.answer(ANON, ["x@unserved.example"], None, "test")
    assert none.containers == ()


def test_malformed_addresses_are_left_out(controller: Controller) -> None:
    answers = controller.answer(ANON, ["not an address", "a@example.com"],
                                None, "test")
    assert [a.address for a in answers] == ["a@example.com"]


def test_mailboxes_that_fold_alike_get_their_own_containers(controller: Controller,
                                                            ca: DirectoryCA) -> None:
    """`straße@` and `strasse@` are two mailboxes (as the certificate match says): each
    gets a container naming its own spelling, which the host-side check accepts, also
    when the other was asked first and sits in the cache."""
    from keypost.core.containers import verify_container
    for asked in (["straße@example.com", "strasse@example.com"],
                  ["ſam@example.com", "sam@example.com"]):
        answers = [controller.answer(ANON, [a], None, "t")[0] for a in asked]
        assert [a.address for a in answers] == asked
        serials = set()
        for address, answer in zip(asked, answers, strict=True):
            [c] = answer.containers
            cert = x509.load_der_x509_certificate(c.der)
            assert describe(cert).addresses == (address,)
            result = verify_container(cert, [ca.certificate], address, Purpose.ENCRYPT)
            assert result.ok, result.reasons
            serials.add(c.serial)
        assert len(serials) == 2


def test_ascii_case_variants_share_one_container(controller: Controller) -> None:
    [upper] = controller.answer(ANON, ["Bob@example.com"], None, "t")
    [lower] = controller.answer(ANON, ["bob@example.com"], None, "t")
    assert upper.address_key == lower.address_key == "bob@example.com"
    assert lower.containers[0].serial == upper.containers[0].serial


def test_cache_reuses_until_half_life(controller: Controller) -> None:
    first = controller.answer(ANON, ["a@example.com"], None, "t", now=NOW)
    again = controller.answer(ANON, ["A@example.com"], None, "t",
                              now=NOW + dt.timedelta(hours=11))
    assert again[0].containers[0].serial == first[0].containers[0].serial
    assert controller.metrics.cache_hits == 1 and controller.metrics.cache_misses == 1
    later = controller.answer(ANON, ["a@example.com"], None, "t",
                              now=NOW + dt.timedelta(hours=12, minutes=5))
    assert later[0].containers[0].serial != first[0].containers[0].serial


def test_store_tier_survives_restart(controller: Controller, ca: DirectoryCA) -> None:
    first = controller.answer(ANON, ["a@example.com"], None, "t")
    controller.flush()
    fresh = Controller(controller.store, ca)
    again = fresh.answer(ANON, ["a@example.com"], None, "t")
    assert again[0].containers[0].serial == first[0].containers[0].serial
    assert fresh.metrics.cache_misses == 0


def test_rekey_drops_cached_containers_at_once(
        tmp_path: Path, controller: Controller, keys: list[rsa.RSAPrivateKey]) -> None:
    before = controller.answer(ANON, ["a@example.com"], None, "t")
    controller.flush()
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cli = SqliteStore(tmp_path / "d.db")  # the CLI is another connection
    cli.rekey_domain("example.com", [record("example.com", new_key, KeyUse.ENCRYPTION)])
    after = controller.answer(ANON, ["a@example.com"], None, "t")
    cert = x509.load_der_x509_certificate(after[0].containers[0].der)
    assert describe(cert).gateway_fingerprint == fp(new_key)
    assert after[0].containers[0].serial != before[0].containers[0].serial
    assert all(k.gateway_fingerprint != fp(keys[0]) for k in controller._cache)


def test_audit_and_log_keep_only_hashes(controller: Controller,
                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="keypost.directory.requests"):
        controller.answer(USER, ["Secret.Person@example.org"], None, "ldap")
    controller.flush()
    entries = controller.store.audit()  # one record per issued container
    assert [e.requestor for e in entries] == ["user:example.com"] * 2
    assert {e.address_hash for e in entries} == {address_hash("secret.person@example.org")}
    assert [e.roles for e in entries] == [("proxy-encryption",)] * 2
    assert len({e.serials for e in entries}) == 2
    controller.answer(USER, ["Secret.Person@example.org"], None, "ldap")  # cached: no issuance
    controller.flush()
    assert len(controller.store.audit()) == 2
    text = caplog.text
    assert "secret" not in text.lower()
    assert "requestor=user:example.com" in text and "protocol=ldap" in text
    assert address_hash("secret.person@example.org") in text


def test_caches_are_bounded(tmp_path: Path, ca: DirectoryCA,
                            keys: list[rsa.RSAPrivateKey]) -> None:
    store = SqliteStore(tmp_path / "b.db")
    store.add_domain("example.com", [record("example.com", keys[0], KeyUse.ENCRYPTION)])
    small = Controller(store, ca, cache_size=8, recheck_seconds=0)
    small.answer(ANON, [f"u{i}@example.com" for i in range(50)], None, "t")
    assert len(small._cache) == 8 and len(small._answers) == 2


def test_cached_containers_cost_full_collections_nothing(controller: Controller) -> None:
    """The caches hold up to cache_size containers (and a quarter as many answers) for
    hours: the cyclic GC must not have to walk them (as dataclasses holding a Role they
    stayed tracked, ~200 ms per full collection at 100,000 entries: a stall of every
    connection)."""
    answers = controller.answer(USER, [f"u{i}@example.org" for i in range(20)], None, "t")
    # Each collection stops tracking the exact tuples that hold only untracked values; a
    # tuple examined before the tuples inside it (they sat in another generation) is left
    # for the next one.
    gc.collect()
    gc.collect()
    entries = controller._cache.entries()
    assert len(entries) == sum(len(a.containers) for a in answers) >= 40
    assert [(k, v) for k, v in entries if gc.is_tracked(k) or gc.is_tracked(v)] == []
    # the answer cache: one tracked object per answer (the Answer itself), nothing it holds
    assert len(controller._answers) == 20
    for key, answer in controller._answers.items():
        assert not gc.is_tracked(key)
        held = [r for r in gc.get_referents(answer) if not isinstance(r, type)]
        assert held and [r for r in held if gc.is_tracked(r)] == []
    # what comes out is what went in, the role as the Role member
    out = [controller._cache.get(CacheKey(*key)) for key, _ in entries]
    assert sorted(out, key=lambda c: c.der if c else b"") == sorted(
        (c for a in answers for c in a.containers), key=lambda c: c.der)
    assert all(c is not None and isinstance(c.role, Role) for c in out)


def test_purge_applies_retention(controller: Controller) -> None:
    controller.answer(ANON, ["a@example.com"], None, "t",
                      now=NOW - dt.timedelta(days=100))
    controller.answer(ANON, ["b@example.com"], None, "t", now=NOW)
    controller.flush()
    issued, audit = controller.purge(dt.timedelta(days=90), now=NOW)
    assert (issued, audit) == (1, 1)  # the 100-day-old container expired long ago
    assert [e.time for e in controller.store.audit()] == [NOW]


def test_genuine_certificates_until_they_expire(controller: Controller,
                                                keys: list[rsa.RSAPrivateKey]) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    from keypost.directory.store import GenuineRecord

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Gus")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(keys[2].public_key()).serial_number(42)
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(hours=6))
            .sign(keys[2], hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    controller.store.add_genuine([GenuineRecord("gus@example.com", der, "fp",
                                                cert.not_valid_after_utc)])
    [a] = controller.answer(ANON, ["Gus@example.com"], None, "t", now=NOW)
    assert [c.role for c in a.containers] == [Role.PROXY_ENCRYPTION, Role.GENUINE]
    assert a.containers[1].der == der
    later = NOW + dt.timedelta(hours=7)
    [b] = controller.answer(ANON, ["Gus@example.com"], None, "t", now=later)
    assert [c.role for c in b.containers] == [Role.PROXY_ENCRYPTION]


def test_store_tier_after_eviction_in_the_same_process(tmp_path: Path, ca: DirectoryCA,
                                                       keys: list[rsa.RSAPrivateKey]) -> None:
    # A miss asks the store only for addresses it may hold: those issued here count too.
    store = SqliteStore(tmp_path / "e.db")
    store.add_domain("example.com", [record("example.com", keys[0], KeyUse.ENCRYPTION)])
    small = Controller(store, ca, cache_size=4, recheck_seconds=0)
    first = small.answer(ANON, ["a@example.com"], None, "t")
    small.answer(ANON, [f"u{i}@example.com" for i in range(20)], None, "t")
    small.flush()
    assert all(k.address_key != "a@example.com" for k in small._cache)
    small._answers.clear()  # not the cached answer
    again = small.answer(ANON, ["a@example.com"], None, "t")
    assert again[0].containers[0].serial == first[0].containers[0].serial
    assert small.metrics.cache_misses == 21


def test_purge_keeps_unflushed_addresses_known(controller: Controller) -> None:
    old = controller.answer(ANON, ["old@example.com"], None, "t",
                            now=NOW - dt.timedelta(days=100))
    controller.flush()
    new = controller.answer(ANON, ["new@example.com"], None, "t", now=NOW)
    controller.purge(dt.timedelta(days=90), now=NOW)  # before the flush of "new"
    controller.flush()
    controller._cache.clear()
    controller._answers.clear()
    again = controller.answer(ANON, ["new@example.com"], None, "t", now=NOW)
    assert again[0].containers[0].serial == new[0].containers[0].serial
    fresh = controller.answer(ANON, ["old@example.com"], None, "t", now=NOW)
    assert fresh[0].containers[0].serial != old[0].containers[0].serial


def _assert_stored(controller: Controller, issued: list[IssuedRecord],
                   audit: list[AuditRecord]) -> None:
    """Every record of a batch reached the store (read through the controller's store)."""
    assert sorted(a.serials for a in controller.store.audit()) == sorted(a.serials for a in audit)
    for record in issued:
        stored = controller.store.issued(record.key)
        assert stored is not None and stored.serial == record.serial


def test_batch_writer_writes_everything_handed_over_before_close(
        controller: Controller, tmp_path: Path) -> None:
    import asyncio

    from keypost.directory.writer import sqlite_writer

    controller.answer(ANON, [f"w{i}@example.com" for i in range(6)], None, "t")
    issued, audit = controller.take_pending()
    assert len(issued) == len(audit) == 6 and controller.take_pending() == ([], [])
    writer = sqlite_writer(tmp_path / "d.db")

    async def run() -> None:
        await writer.write(issued[:3], audit[:3])
        await writer.write(issued[3:], audit[3:])
        await writer.close()

    asyncio.run(run())
    _assert_stored(controller, issued, audit)


def test_batch_writer_keeps_a_queued_batch_whose_caller_was_cancelled(
        controller: Controller, tmp_path: Path) -> None:
    # At shutdown the maintenance task is cancelled, possibly while its batch waits in
    # the writer's queue: the batch must still be written before close() returns.
    import asyncio
    import threading

    from keypost.directory.writer import sqlite_writer

    controller.answer(ANON, ["q1@example.com", "q2@example.com"], None, "t")
    issued, audit = controller.take_pending()
    writer = sqlite_writer(tmp_path / "d.db")
    busy = threading.Event()

    async def run() -> None:
        writer._pool.submit(busy.wait)  # the worker is busy: the next batch is queued
        task = asyncio.ensure_future(writer.write(issued, audit))
        await asyncio.sleep(0)
        task.cancel()
        busy.set()
        await writer.close()

    asyncio.run(run())
    assert sorted(a.serials for a in controller.store.audit()) == sorted(a.serials for a in audit)


def test_batch_writer_keeps_a_batch_the_store_refused_for_the_next_one(
        controller: Controller, tmp_path: Path) -> None:
    """A batch the store refused (locked by another process past SQLite's 10 s busy
    timeout) was dropped: its containers and audit records were lost. Refused once here,
    it goes with the next write, even an empty one (the serve loop's next second)."""
    import asyncio
    import sqlite3

    import pytest

    from keypost.directory.writer import sqlite_writer

    controller.answer(ANON, ["l1@example.com", "l2@example.com"], None, "t")
    issued, audit = controller.take_pending()
    writer = sqlite_writer(tmp_path / "d.db")

    async def run() -> None:
        await writer.write([], [])  # nothing to write: the store is not even opened
        await writer.write(issued[:1], audit[:1])  # opens the writer's own store
        store = writer._store
        assert store is not None
        save = store.save_issued

        def locked(records: object) -> None:
            store.save_issued = save  # type: ignore[method-assign]  # refused once
            raise sqlite3.OperationalError("database is locked")

        store.save_issued = locked  # type: ignore[method-assign]
        with pytest.raises(sqlite3.OperationalError):
            await writer.write(issued[1:], audit[1:])
        await writer.write([], [])
        await writer.close()

    asyncio.run(run())
    _assert_stored(controller, issued, audit)


def test_batch_writer_purges_in_its_thread_while_the_loop_goes_on(
        controller: Controller, tmp_path: Path) -> None:
    """The hourly purge ran on the event loop: a store another process held locked (SQLite
    waits up to 10 s) stopped every answer that long. A purge that blocks (here: until the
    loop has run on) must leave the loop free, and must still purge."""
    import asyncio
    import threading

    from keypost.directory.writer import sqlite_writer

    controller.answer(ANON, ["p1@example.com"], None, "t", now=NOW)
    issued, audit = controller.take_pending()
    writer = sqlite_writer(tmp_path / "d.db")
    loop_ran = threading.Event()
    threads: list[str] = []

    async def run() -> tuple[int, int]:
        await writer.write(issued, audit)  # opens the writer's own store
        opened = writer._store
        assert opened is not None
        purge = opened.purge_issued

        def slow(now: dt.datetime) -> int:
            threads.append(threading.current_thread().name)
            assert loop_ran.wait(5), "the loop did not run while the purge waited"
            return purge(now)

        opened.purge_issued = slow  # type: ignore[method-assign]
        later = NOW + dt.timedelta(days=400)
        job = asyncio.ensure_future(writer.purge(later, dt.timedelta(days=1)))
        await asyncio.sleep(0.05)
        loop_ran.set()  # set by the loop while the purge waits in the writer's thread
        counts = await job
        await writer.close()
        return counts

    issued_gone, audit_gone = asyncio.run(run())
    assert (issued_gone, audit_gone) == (1, 1)
    assert threads and threads[0].startswith("keypost-writer")


# The answer cache: all accounts are one requestor for containers, not for answers -----------
ORG_USER = requestor_of(account("olga", domain="example.org"))


def test_answer_cache_keeps_requestor_classes_apart(controller: Controller) -> None:
    """What a gateway is answered (its senders' signing containers) is no user's answer."""
    [gateway] = controller.answer(GATEWAY, ["alice@example.com"], None, "ldap")
    assert [c.role for c in gateway.containers] == [Role.PROXY_SIGNING]
    [user] = controller.answer(USER, ["alice@example.com"], None, "ldap")
    assert [c.role for c in user.containers] == [Role.PROXY_ENCRYPTION]


def test_answer_cache_keeps_domains_apart(controller: Controller) -> None:
    """A user's own gateway is on the path: users of two domains get different answers."""
    [com] = controller.answer(USER, ["bob@unserved.example"], None, "ldap")
    [org] = controller.answer(ORG_USER, ["bob@unserved.example"], None, "ldap")
    assert [c.gateway for c in com.containers] == ["example.com"]
    assert [c.gateway for c in org.containers] == ["example.org"]


def test_answer_cache_keeps_purposes_apart(controller: Controller) -> None:
    """LDAP's implied purpose (a gateway asking for its own sender: signing) is not an
    HTTP request's stated one."""
    [ldap] = controller.answer(GATEWAY, ["alice@example.com"], None, "ldap")
    [http] = controller.answer(GATEWAY, ["alice@example.com"], Purpose.ENCRYPT, "http")
    assert [c.role for c in ldap.containers] == [Role.PROXY_SIGNING]
    assert [c.role for c in http.containers] == []  # never its own gateway


def test_rekey_to_other_capabilities_drops_unwritten_containers(
        tmp_path: Path, controller: Controller, keys: list[rsa.RSAPrivateKey],
        ca: DirectoryCA) -> None:
    """Same key, other capabilities: the containers issued before, still waiting for the
    batch write, must not reach the store (a restart would serve them again), also when
    no request came between the rekey and the write."""
    [before] = controller.answer(ANON, ["p@example.com"], None, "t")[0].containers
    cli = SqliteStore(tmp_path / "d.db")
    same = record("example.com", keys[0], KeyUse.ENCRYPTION)
    cli.rekey_domain("example.com", [GatewayKeyRecord(
        same.domain, same.use, same.pem, same.fingerprint, ("aes128-cbc",), NOW)])
    controller.flush()
    restarted = Controller(controller.store, ca)
    [again] = restarted.answer(ANON, ["p@example.com"], None, "t")[0].containers
    assert again.serial != before.serial
    cert = x509.load_der_x509_certificate(again.der)
    assert [c.value for c in describe(cert).capabilities] == ["aes128-cbc"]


def test_rekey_while_the_writer_holds_a_batch_keeps_its_old_containers_out_of_the_store(
        tmp_path: Path, controller: Controller, keys: list[rsa.RSAPrivateKey],
        ca: DirectoryCA) -> None:
    """The writer has taken a batch (take_pending) when the CLI's rekey to other
    capabilities commits (it deletes the key's stored containers), and writes the batch
    after it, as it does when the rekey held the store's lock; no request comes in
    between. The containers issued before the rekey must not be served from the store,
    by the running server or after a restart (they were, until their half-life)."""
    import asyncio

    from keypost.directory.writer import sqlite_writer

    [before] = controller.answer(ANON, ["q@example.com"], None, "t")[0].containers

    def ask(answering: Controller) -> Container:
        answering._cache.clear()  # a miss: from the store, or issued anew
        answering._answers.clear()
        [got] = answering.answer(ANON, ["q@example.com"], None, "t")[0].containers
        return got

    async def serve_two_batches() -> Container:
        writer = sqlite_writer(tmp_path / "d.db")
        taken = controller.take_pending()  # the writer's batch
        cli = SqliteStore(tmp_path / "d.db")
        same = record("example.com", keys[0], KeyUse.ENCRYPTION)
        cli.rekey_domain("example.com", [GatewayKeyRecord(
            same.domain, same.use, same.pem, same.fingerprint, ("aes128-cbc",), NOW)])
        await writer.write(*taken)  # after the rekey's commit
        controller.written()
        between = ask(controller)  # before the next batch
        issued, audit = controller.take_pending()  # the next batch, as serve's loop takes it
        await writer.write(issued, audit, controller.take_retracted())
        controller.written()
        await writer.close()
        return between

    between = asyncio.run(serve_two_batches())
    for got in (between, ask(controller), ask(Controller(controller.store, ca))):
        assert got.serial != before.serial
        cert = x509.load_der_x509_certificate(got.der)
        assert [c.value for c in describe(cert).capabilities] == ["aes128-cbc"]
