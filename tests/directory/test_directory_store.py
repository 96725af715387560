"""SQLite store: migrations, key history, accounts, genuine certificates, cache tier, audit."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

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
    acct = AccountRecord("alice", AccountRole.USER, "example.com", h, NOW)
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
