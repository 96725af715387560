"""SQLite store: migrations (4: stored gateway keys lose private keys; 5: address keys
lower-cased, not case-folded), key history, accounts, genuine certificates, cache tier, audit."""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pki_util import key_pem, rsa_key, self_signed
from test_directory_controller import ANON, GATEWAY

from keypost.core.containers import DirectoryCA, GatewayKey, describe, to_der, to_pem
from keypost.directory.controller import Controller
from keypost.directory.errors import StoreError
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
from keypost.directory.store.sqlite import MIGRATIONS, SqliteStore

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def key(domain: str, fp: str, use: KeyUse = KeyUse.ENCRYPTION) -> GatewayKeyRecord:
    return GatewayKeyRecord(domain, use, b"PEM " + fp.encode(), fp, ("aes256-cbc",), NOW)


def test_fresh_store_is_at_latest_version_with_wal(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "d.db")
    assert store.schema_version() == len(MIGRATIONS) >= 2
    mode = sqlite3.connect(tmp_path / "d.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    rows = sqlite3.connect(tmp_path / "d.db").execute(
        "SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))


def test_migration_from_version_1_keeps_data(tmp_path: Path) -> None:
    old = SqliteStore(tmp_path / "d.db", migrations=MIGRATIONS[:1])
    assert old.schema_version() == 1
    old.add_domain("example.com", [key("example.com", "aa")])
    old.close()
    new = SqliteStore(tmp_path / "d.db")
    assert new.schema_version() == len(MIGRATIONS)
    assert new.domains() == ["example.com"]
    indexes = {r[0] for r in sqlite3.connect(tmp_path / "d.db").execute(
        "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "audit_time" in indexes


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "d.db", migrations=(*MIGRATIONS, "CREATE TABLE x (y)")).close()
    with pytest.raises(StoreError, match="newer"):
        SqliteStore(tmp_path / "d.db")


def test_rekey_keeps_history_and_drops_issued(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "d.db")
    store.add_domain("example.com", [key("example.com", "old")])
    with pytest.raises(StoreError, match="already registered"):
        store.add_domain("example.com", [key("example.com", "x")])
    ck = CacheKey("a@example.com", "proxy-encryption", "old", "encrypt", "r1")
    store.save_issued([IssuedRecord(ck, b"der", 7, NOW, NOW + dt.timedelta(days=1))])
    assert store.issued(ck) is not None
    before = store.change_counter()
    assert store.rekey_domain("example.com", [key("example.com", "new")]) == ["old"]
    assert store.change_counter() != before
    assert store.issued(ck) is None
    assert [k.fingerprint for k in store.domain_keys("example.com")] == ["new"]
    history = store.domain_keys("example.com", history=True)
    assert {k.fingerprint: k.retired is None for k in history} == {"new": True, "old": False}
    with pytest.raises(StoreError, match="unknown domain"):
        store.rekey_domain("nope.example", [key("nope.example", "z")])


def test_change_counter_sees_other_connections(tmp_path: Path) -> None:
    server = SqliteStore(tmp_path / "d.db")
    first = server.change_counter()
    cli = SqliteStore(tmp_path / "d.db")
    cli.add_domain("example.org", [key("example.org", "f")])
    assert server.change_counter() != first
    assert server.domains() == ["example.org"]


def test_accounts(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "d.db")
    h = PasswordHash(b"salt", 2**14, 8, 1, b"d" * 32)
    acct = AccountRecord("alice", AccountRole.USER, ("example.com",), h, NOW)
    with pytest.raises(StoreError, match="unknown domain"):
        store.add_account(acct)
    store.add_domain("example.com", [key("example.com", "k")])
    store.add_account(acct)
    with pytest.raises(StoreError, match="already exists"):
        store.add_account(acct)
    assert store.account("ALICE") == acct
    assert [a.name for a in store.accounts()] == ["alice"]
    assert store.remove_domain("example.com") == 1
    assert store.account("alice") is None
    assert store.remove_account("alice") is False


def test_a_gateway_account_of_several_domains(tmp_path: Path) -> None:
    """A gateway account stands for a set of domains; `domain remove` of one of them takes
    it from the account, and removes only the accounts left without any."""
    store = SqliteStore(tmp_path / "d.db")
    h = PasswordHash(b"salt", 2**14, 8, 1, b"d" * 32)
    for d in ("example.com", "example.de", "example.org"):
        store.add_domain(d, [key(d, "k-" + d)])
    gw = AccountRecord("gw", AccountRole.GATEWAY, ("example.com", "example.de"), h, NOW)
    store.add_account(gw)
    store.add_account(AccountRecord("alice", AccountRole.USER, ("example.de",), h, NOW))
    assert store.account("GW") == gw
    before = store.change_counter()
    store.set_account_domains("Gw", ["example.com", "example.de", "example.org"])
    assert store.change_counter() != before  # a server re-reads bound accounts
    assert store.account("gw") == AccountRecord(
        "gw", AccountRole.GATEWAY, ("example.com", "example.de", "example.org"), h, NOW)
    with pytest.raises(StoreError, match=r"unknown domain nope\.example"):
        store.set_account_domains("gw", ["example.com", "nope.example"])
    with pytest.raises(StoreError, match="no account named nobody"):
        store.set_account_domains("nobody", ["example.com"])
    with pytest.raises(StoreError, match="needs a domain"):
        store.set_account_domains("gw", [])
    assert [a.domains for a in store.accounts() if a.name == "gw"] == [
        ("example.com", "example.de", "example.org")]
    assert store.remove_domain("example.de") == 1  # alice, not gw
    assert [(a.name, a.domains) for a in store.accounts()] == [
        ("gw", ("example.com", "example.org"))]
    store.set_account_domains("gw", ["example.org"])
    assert store.remove_domain("example.org") == 1
    assert store.accounts() == []


def test_migration_9_gives_every_account_its_one_domain(tmp_path: Path) -> None:
    """A store of the previous schema (one domain column per account) opens with each
    account standing for that domain; removing the account or the domain still removes
    what hangs on it (the rebuilt table's foreign keys)."""
    old = SqliteStore(tmp_path / "d.db", migrations=MIGRATIONS[:8])
    old.add_domain("example.com", [key("example.com", "c")])
    old.add_domain("example.de", [key("example.de", "d")])
    for name, role, domain in (("gw", "gateway", "example.com"), ("Alice", "user", "example.de"),
                               ("bob", "user", "example.com")):
        old._db.execute("INSERT INTO accounts VALUES (?, ?, ?, ?, 16384, 8, 1, ?, ?)",
                        (name, role, domain, b"salt-" + name.encode(), b"d" * 32, 1767323045))
    old.close()
    store = SqliteStore(tmp_path / "d.db")
    assert store.schema_version() == len(MIGRATIONS) >= 9
    got = {a.name: (a.role, a.domains, a.password.salt, a.created) for a in store.accounts()}
    assert got == {
        "gw": (AccountRole.GATEWAY, ("example.com",), b"salt-gw", NOW),
        "Alice": (AccountRole.USER, ("example.de",), b"salt-Alice", NOW),
        "bob": (AccountRole.USER, ("example.com",), b"salt-bob", NOW)}
    assert store.account("alice") is not None  # names still compare without case
    store.set_account_domains("gw", ["example.com", "example.de"])
    assert store.remove_account("ALICE")
    links = sqlite3.connect(tmp_path / "d.db").execute(
        "SELECT account, domain FROM account_domains ORDER BY account, domain").fetchall()
    assert links == [("bob", "example.com"), ("gw", "example.com"), ("gw", "example.de")]
    assert store.remove_domain("example.com") == 1  # bob; gw keeps example.de
    assert [(a.name, a.domains) for a in store.accounts()] == [("gw", ("example.de",))]


def test_audit_retention(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "d.db")
    old = AuditRecord(NOW - dt.timedelta(days=100), "anonymous", "ab", ("proxy-encryption",),
                      (1,))
    new = AuditRecord(NOW, "user:example.com", "cd", ("proxy-encryption", "genuine"), (2, 3))
    store.append_audit([old, new])
    assert store.audit() == [old, new]
    assert store.purge_audit(NOW - dt.timedelta(days=90)) == 1
    assert store.audit() == [new]


def test_issued_expiry_purge(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "d.db")
    ck = CacheKey("a@example.com", "proxy-encryption", "fp", "encrypt", "r1")
    store.save_issued([
        IssuedRecord(ck, b"1", 2**100, NOW - dt.timedelta(days=2), NOW - dt.timedelta(days=1)),
        IssuedRecord(ck, b"2", 2, NOW, NOW + dt.timedelta(days=1)),
    ])
    got = store.issued(ck)
    assert got is not None and got.der == b"2"
    assert store.purge_issued(NOW) == 1
    rec = store.issued(ck)
    assert rec is not None and rec.serial == 2


# migration 4: a gateway key's stored text is the key alone --------------------------------
# Before bf9c7e1 `domain add` and `rekey` stored the key file as given: `cat key.pem
# cert.pem > gw.pem` put the gateway's private key into directory.db.
STORED_VERBATIM = MIGRATIONS[:3]  # the schema those versions wrote


@dataclass(frozen=True)
class OldStore:
    path: Path
    today: dict[str, bytes]  # fingerprint -> the text today's `domain add` stores
    secrets: tuple[bytes, ...]  # the private keys' PEM that the old store holds


def spki_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def verbatim(domain: str, use: KeyUse, text: bytes) -> GatewayKeyRecord:
    """A key file as an old `domain add` stored it: the text, fingerprint of what parsed."""
    return GatewayKeyRecord(domain, use, text, GatewayKey.from_pem(text).fingerprint,
                            ("aes256-cbc",), NOW)


def old_store(path: Path) -> OldStore:
    keys = [rsa_key() for _ in range(6)]
    certs = [to_pem(self_signed(k, "gateway")) for k in keys]
    old = SqliteStore(path, migrations=STORED_VERBATIM)
    # Debian's SQLite zeroes what it deletes, most builds do not (python.org's, macOS'):
    # the store must not rely on that.
    old._db.execute("PRAGMA secure_delete=OFF")
    enc, sign = KeyUse.ENCRYPTION, KeyUse.SIGNING
    old.add_domain("example.com", [verbatim("example.com", enc, key_pem(keys[0]) + certs[0]),
                                   verbatim("example.com", sign,
                                            spki_pem(keys[1]) + key_pem(keys[1]))])
    # the first key is retired into the history, private key and all
    old.rekey_domain("example.com", [verbatim("example.com", enc, certs[2] + key_pem(keys[2]))])
    # `openssl pkcs12 -nodes` output: bag attributes around the certificate and the key
    bags = b"Bag Attributes\n    friendlyName: gateway\nsubject=CN = gateway\n"
    old.add_domain("example.net", [verbatim("example.net", enc, bags + certs[3] + bags
                                            + key_pem(keys[3]))])
    old.add_domain("example.org", [verbatim("example.org", enc, spki_pem(keys[4]))])
    # a domain removed before the upgrade: its rows are gone, the pages they used are not
    old.add_domain("gone.example", [verbatim("gone.example", enc,
                                             key_pem(keys[5]) + certs[5])])
    old.remove_domain("gone.example")
    old.close()
    today = {verbatim("", enc, c).fingerprint: c for c in certs[:1] + certs[2:4]}
    today.update((verbatim("", enc, spki_pem(k)).fingerprint, spki_pem(k))
                 for k in (keys[1], keys[4]))
    return OldStore(path, today, tuple(key_pem(k) for k in keys[:4] + keys[5:]))


def on_disk(path: Path) -> bytes:
    """The database file and its -wal and -shm files, as they are now."""
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


def base64_lines(pem: bytes) -> list[bytes]:
    return [line for line in pem.splitlines() if len(line) >= 20 and b"-----" not in line]


def test_migration_4_keeps_only_the_registered_public_key(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old = old_store(tmp_path / "d.db")
    with caplog.at_level(logging.WARNING, logger="keypost.directory.store"):
        store = SqliteStore(old.path)
    assert store.schema_version() == len(MIGRATIONS)
    keys = store.domain_keys(history=True)
    assert {k.fingerprint: k.pem for k in keys} == old.today  # the retired key's too
    assert [k.domain for k in keys if k.retired] == ["example.com"]
    for k in keys:
        assert GatewayKey.from_pem(k.pem).fingerprint == k.fingerprint
    [line] = [r.getMessage() for r in caplog.records]
    assert line == "event=store_cleaned gateway_keys=4 private_keys_removed=4"
    store.close()
    caplog.clear()
    SqliteStore(old.path).close()
    assert caplog.records == []


def test_migration_4_leaves_no_private_key_on_disk(tmp_path: Path) -> None:
    old = old_store(tmp_path / "d.db")
    lines = [line for secret in old.secrets for line in base64_lines(secret)]
    before = on_disk(old.path)
    assert all(line in before for line in lines)  # the removed domain's key too
    store = SqliteStore(old.path)
    assert not [line for line in lines if line in on_disk(old.path)]  # -wal included
    store.close()
    assert not [line for line in lines if line in on_disk(old.path)]


def test_an_unfinished_wipe_is_done_on_the_next_open(tmp_path: Path) -> None:
    """Free pages are wiped after migration 4 commits (VACUUM cannot run inside it): one
    that did not finish (a crash, a full disk, a reader holding the -wal) is retried."""
    path = tmp_path / "d.db"
    SqliteStore(path).close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA secure_delete=OFF")
    db.execute("CREATE TABLE leftover (x BLOB)")
    db.execute("INSERT INTO leftover VALUES (?)", (b"secret-" * 1000,))
    db.execute("DROP TABLE leftover")
    db.execute("INSERT INTO meta VALUES ('wipe_pending', 1)")
    db.close()
    assert b"secret-" in on_disk(path)
    store = SqliteStore(path)
    assert b"secret-" not in on_disk(path)
    assert store._db.execute("SELECT name FROM meta").fetchall() == [("changes",)]


def test_migration_4_drops_private_keys_of_a_row_it_cannot_match(tmp_path: Path) -> None:
    """A row whose fingerprint names none of its blocks keeps them, less any private key."""
    key = rsa_key()
    cert = to_pem(self_signed(key, "gateway"))
    old = SqliteStore(tmp_path / "d.db", migrations=STORED_VERBATIM)
    for domain, text in (("odd.example", b"note\n" + cert + key_pem(key)),
                         ("fake.example", b"PEM aa")):
        old.add_domain(domain, [GatewayKeyRecord(domain, KeyUse.ENCRYPTION, text, "00" * 32,
                                                 (), NOW)])
    old.close()
    store = SqliteStore(tmp_path / "d.db")
    assert {k.domain: k.pem for k in store.domain_keys()} == {
        "odd.example": b"note\n" + cert, "fake.example": b"PEM aa"}


def test_containers_carry_the_same_gateway_key_after_migration_4(tmp_path: Path) -> None:
    old = old_store(tmp_path / "d.db")
    ca = DirectoryCA.generate("ecdsa-p256", directory_url="ldap://dir.test")
    asks = ((ANON, "a@example.com"), (ANON, "b@example.net"), (GATEWAY, "c@example.com"))

    def issued(store: SqliteStore) -> list[tuple[int, str | None, bytes]]:
        controller = Controller(store, ca, recheck_seconds=0)
        out = []
        for requestor, address in asks:
            [answer] = controller.answer(requestor, [address], None, "test")
            [container] = answer.containers
            cert = x509.load_der_x509_certificate(container.der)
            out.append((container.serial, describe(cert).gateway_fingerprint,
                        cert.public_key().public_bytes(
                            serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)))
        store.close()
        return out

    before = issued(SqliteStore(old.path, migrations=STORED_VERBATIM))
    after = issued(SqliteStore(old.path))
    assert [b[1:] for b in before] == [a[1:] for a in after]
    assert {b[0] for b in before}.isdisjoint(a[0] for a in after)  # newly issued
    assert {b[1] for b in before} <= set(old.today)


# migration 5: address keys lower-cased, no longer case-folded ---------------------------
CASEFOLDED = MIGRATIONS[:4]  # the versions whose Address.key was local.casefold()


def utf8_mailbox_cert(address: str) -> bytes:
    """A recipient's own certificate naming a non-ASCII address (SmtpUTF8Mailbox)."""
    from keypost.core.x509_ext import OID_SMTP_UTF8_MAILBOX, TAG_UTF8STRING, der_tlv
    k = rsa_key()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, address)])
    other = x509.OtherName(OID_SMTP_UTF8_MAILBOX,
                           der_tlv(TAG_UTF8STRING, address.encode("utf-8")))
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(k.public_key()).serial_number(7)
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([other]), critical=False)
            .sign(k, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER))


def test_migration_5_moves_casefolded_keys_to_lower_cased_ones(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from keypost.core.address import parse_address
    from keypost.core.types import Role
    from keypost.directory.store import GenuineRecord

    path = tmp_path / "d.db"
    ca = DirectoryCA.generate("ecdsa-p256", directory_url="ldap://dir.test")
    gw = rsa_key()
    old = SqliteStore(path, migrations=CASEFOLDED)
    old.add_domain("example.com", [GatewayKeyRecord(
        "example.com", KeyUse.ENCRYPTION, spki_pem(gw), GatewayKey.from_pem(spki_pem(gw))
        .fingerprint, ("aes256-cbc",), NOW)])
    strasse_der = utf8_mailbox_cert("Straße@example.com")
    jorg_der = utf8_mailbox_cert("jörg@example.com")  # casefold() is lower(): kept
    ascii_der = to_der(self_signed(rsa_key(), "bob", "Bob@example.com"))
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    old.add_genuine([  # as the old `genuine add` keyed them: local.casefold()
        GenuineRecord("strasse@example.com", strasse_der, "f1", until),
        GenuineRecord("jörg@example.com", jorg_der, "f2", until),
        GenuineRecord("bob@example.com", ascii_der, "f3", until)])
    # issued containers, as the old controller cached them: the one made for straße@ under
    # strasse@ (it would be handed to strasse@), an ASCII one under the same key
    issuer = Controller(old, ca)
    made = {a: issuer.answer(ANON, [a], None, "t")[0] for a in
            ("straße@example.com", "strasse@example.com", "Bob@example.com")}
    issuer.flush()
    old._db.execute("UPDATE issued SET address_key = 'strasse@example.com'"
                    " WHERE address_key = 'straße@example.com'")
    before = {(r[0], r[1]) for r in old._db.execute("SELECT address_key, serial FROM issued")}
    old.close()

    with caplog.at_level(logging.WARNING, "keypost.directory.store"):
        store = SqliteStore(path)
    assert store.schema_version() == len(MIGRATIONS) >= 5
    assert "genuine_moved=1 issued_dropped=1" in caplog.text
    assert {(g.address_key, g.fingerprint) for g in store.genuine()} == {
        ("straße@example.com", "f1"), ("jörg@example.com", "f2"), ("bob@example.com", "f3")}
    serial = {a: str(made[a].containers[0].serial) for a in made}
    after = {(r[0], r[1]) for r in store._db.execute("SELECT address_key, serial FROM issued")}
    assert after == before - {("strasse@example.com", serial["straße@example.com"])}
    assert ("strasse@example.com", serial["strasse@example.com"]) in after
    assert ("bob@example.com", serial["Bob@example.com"]) in after

    controller = Controller(store, ca)
    [found] = controller.answer(ANON, ["straße@example.com"], None, "t")
    assert [c.der for c in found.containers if c.role is Role.GENUINE] == [strasse_der]
    assert found.address_key == parse_address("straße@example.com").key()
    [other] = controller.answer(ANON, ["strasse@example.com"], None, "t")
    assert [c.role for c in other.containers] == [Role.PROXY_ENCRYPTION]
    assert other.containers[0].serial == made["strasse@example.com"].containers[0].serial
