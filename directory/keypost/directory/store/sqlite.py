"""The embedded default store: one SQLite file in the data dir (WAL, numbered migrations)."""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509

from keypost.core.address import Address, parse_address
from keypost.core.containers import describe
from keypost.core.errors import KeypostError
from keypost.core.x509_ext import OID_SMTP_UTF8_MAILBOX, der_oid
from keypost.directory.errors import StoreBusy, StoreError
from keypost.directory.store import (
    AccountRecord,
    AccountRole,
    AuditRecord,
    CacheKey,
    GatewayKeyRecord,
    GenuineRecord,
    IssuedRecord,
    KeyUse,
    PasswordHash,
    Store,
)
from keypost.directory.store.pem import holds_private_key, registered_key_pem

log = logging.getLogger("keypost.directory.store")

# How long a write waits for another process's lock (the sqlite3 busy timeout).
LOCK_WAIT = 10.0
_SQLITE_BUSY = 5

# A meta row that says free pages may hold a secret no row holds any more.
_WIPE_PENDING = "wipe_pending"


def _strip_gateway_keys(db: sqlite3.Connection) -> None:
    """Migration 4: every stored gateway key text becomes the registered key's PEM alone.

    Before bf9c7e1 `domain add` and `rekey` stored the key file as given, so a file with
    the gateway's private key beside its certificate (`cat key.pem cert.pem`) put that
    key into the store, in the history too. Fingerprints stay: they name the block kept.
    """
    changed = private = 0
    # Zero the cells and overflow pages the old text frees, in this very commit (most
    # SQLite builds do not; Debian's does). SqliteStore._wipe_free_pages does the rest.
    (secure,) = db.execute("PRAGMA secure_delete").fetchone()
    db.execute("PRAGMA secure_delete=ON")
    for key_id, text, fingerprint in db.execute(
            "SELECT id, pem, fingerprint FROM gateway_keys").fetchall():
        stored = bytes(text)
        kept = registered_key_pem(stored, fingerprint)
        if kept != stored:
            db.execute("UPDATE gateway_keys SET pem = ? WHERE id = ?", (kept, key_id))
            changed += 1
            private += holds_private_key(stored)
    db.execute(f"PRAGMA secure_delete={int(secure)}")
    db.execute("INSERT INTO meta VALUES (?, 1)", (_WIPE_PENDING,))
    if changed:
        # WARNING, so that the CLI shows it too (logging's last resort handler)
        log.warning("event=store_cleaned gateway_keys=%d private_keys_removed=%d",
                    changed, private)


# A non-ASCII local part can only be written as an SmtpUTF8Mailbox (RFC 8398): a
# certificate without this OID names ASCII local parts only, whose keys migration 5 keeps.
_SMTP_UTF8_OID = der_oid(OID_SMTP_UTF8_MAILBOX.dotted_string)


def _named(der: bytes) -> list[Address]:
    """The addresses a stored certificate names (unparsable ones left out)."""
    try:
        written = describe(x509.load_der_x509_certificate(der)).addresses
    except (ValueError, KeypostError):
        return []
    out = []
    for text in written:
        try:
            out.append(parse_address(text))
        except KeypostError:
            continue
    return out


def _casefold_key(address: Address) -> str:
    """Address.key as it was before migration 5, the key older rows are stored under."""
    return f"{address.local.casefold()}@{address.domain}"


def _rekey_addresses(db: sqlite3.Connection) -> None:
    """Migration 5: rows keyed by the casefold()ed address move to Address.key (lower()).

    Full case folding joined other mailboxes (`straße@` and `strasse@`, `ſam@` and
    `sam@`). A genuine certificate moves to the key of the address it names whose old key
    the row has (one row per address, as `genuine add` writes them); an issued container
    whose key is none of its addresses' keys is deleted (the table is a cache: the next
    request issues one under the new key; the audit keeps its serial). Certificates
    without an SmtpUTF8Mailbox name ASCII local parts only, where casefold() is lower():
    their rows are not touched. Audit hashes are not recomputed (they are one-way).
    """
    moved = dropped = 0
    for rowid, key, der in db.execute("SELECT rowid, address_key, der FROM genuine").fetchall():
        if _SMTP_UTF8_OID not in bytes(der):
            continue
        named = _named(bytes(der))
        if any(a.key() == key for a in named):
            continue
        new = sorted({a.key() for a in named if _casefold_key(a) == key})
        for new_key in new:
            db.execute(
                "INSERT OR REPLACE INTO genuine (address_key, fingerprint, der, not_after)"
                " SELECT ?, fingerprint, der, not_after FROM genuine WHERE rowid = ?",
                (new_key, rowid),
            )
        if new:
            db.execute("DELETE FROM genuine WHERE rowid = ?", (rowid,))
            moved += 1
    for rowid, key, der in db.execute("SELECT rowid, address_key, der FROM issued").fetchall():
        if _SMTP_UTF8_OID in bytes(der) and all(a.key() != key for a in _named(bytes(der))):
            db.execute("DELETE FROM issued WHERE rowid = ?", (rowid,))
            dropped += 1
    if moved or dropped:
        log.warning("event=store_rekeyed genuine_moved=%d issued_dropped=%d", moved, dropped)


# SQL (statements split at ';') or a function run in the step's transaction.
Migration = str | Callable[[sqlite3.Connection], None]

# Migrations are append-only: never edit a released step, add the next one.
MIGRATIONS: tuple[Migration, ...] = (
    # 1: the first schema
    """
    CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta VALUES ('changes', 0);
    CREATE TABLE domains (name TEXT PRIMARY KEY, added INTEGER NOT NULL);
    CREATE TABLE gateway_keys (
        id INTEGER PRIMARY KEY,
        domain TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
        use TEXT NOT NULL CHECK (use IN ('encryption', 'signing')),
        pem BLOB NOT NULL,
        fingerprint TEXT NOT NULL,
        capabilities TEXT NOT NULL,
        added INTEGER NOT NULL,
        retired INTEGER
    );
    CREATE TABLE accounts (
        name TEXT PRIMARY KEY COLLATE NOCASE,
        role TEXT NOT NULL CHECK (role IN ('user', 'gateway')),
        domain TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
        salt BLOB NOT NULL, n INTEGER NOT NULL, r INTEGER NOT NULL, p INTEGER NOT NULL,
        digest BLOB NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE TABLE genuine (
        address_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        der BLOB NOT NULL,
        not_after INTEGER NOT NULL,
        PRIMARY KEY (address_key, fingerprint)
    );
    CREATE TABLE issued (
        address_key TEXT NOT NULL, role TEXT NOT NULL,
        gateway_fingerprint TEXT NOT NULL, purpose TEXT NOT NULL,
        serial TEXT NOT NULL, der BLOB NOT NULL,
        not_before INTEGER NOT NULL, not_after INTEGER NOT NULL
    );
    CREATE INDEX issued_key ON issued (address_key, role, gateway_fingerprint, purpose);
    CREATE TABLE audit (
        time INTEGER NOT NULL, requestor TEXT NOT NULL, address_hash TEXT NOT NULL,
        roles TEXT NOT NULL, serials TEXT NOT NULL
    );
    """,
    # 2: indexes for the purges that run while serving
    """
    CREATE INDEX audit_time ON audit (time);
    CREATE INDEX issued_expiry ON issued (not_after);
    CREATE INDEX issued_gateway ON issued (gateway_fingerprint);
    """,
    # 3: an issued container belongs to the one requestor it was handed to (CacheKey).
    # Rows from before were shared by every requestor: they are deleted, not adopted by
    # anyone (the table is only a cache, the audit keeps their serials). The default ''
    # matches no requestor key, so a row written without one is never served either.
    """
    DELETE FROM issued;
    ALTER TABLE issued ADD COLUMN requestor TEXT NOT NULL DEFAULT '';
    DROP INDEX issued_key;
    CREATE INDEX issued_key ON issued
        (address_key, requestor, role, gateway_fingerprint, purpose);
    """,
    # 4: gateway keys without the private keys older versions stored beside them
    _strip_gateway_keys,
    # 5: address keys lower-cased instead of case-folded (Address.key)
    _rekey_addresses,
    # 6: GET /v1/bindings looks containers and audit records up by serial
    """
    CREATE INDEX issued_serial ON issued (serial);
    CREATE INDEX audit_serials ON audit (serials);
    """,
    # 7: per-address derived keys (`domain add/rekey --derived-keys`); keys before: plain
    """
    ALTER TABLE gateway_keys ADD COLUMN derived INTEGER NOT NULL DEFAULT 0;
    """,
    # 8: the serial indexes of 6 are made when GET /v1/bindings is first asked
    # (ensure_serial_indexes): random serials cost every new container two B-tree
    # insertions, ~40 us of the server's ~320 us per miss, paid by directories no
    # gateway asks for bindings
    """
    DROP INDEX IF EXISTS issued_serial;
    DROP INDEX IF EXISTS audit_serials;
    """,
    # 9: an account has a set of domains (a gateway account may stand for several, each
    # user account keeps its one). The accounts table is rebuilt without its domain column
    # (SQLite cannot drop a column a foreign key names), the domains move to
    # account_domains: removing a domain then removes only the links to it.
    """
    CREATE TABLE accounts_9 (
        name TEXT PRIMARY KEY COLLATE NOCASE,
        role TEXT NOT NULL CHECK (role IN ('user', 'gateway')),
        salt BLOB NOT NULL, n INTEGER NOT NULL, r INTEGER NOT NULL, p INTEGER NOT NULL,
        digest BLOB NOT NULL,
        created INTEGER NOT NULL
    );
    INSERT INTO accounts_9 SELECT name, role, salt, n, r, p, digest, created FROM accounts;
    CREATE TABLE account_domains_9 AS SELECT name AS account, domain FROM accounts;
    DROP TABLE accounts;
    ALTER TABLE accounts_9 RENAME TO accounts;
    CREATE TABLE account_domains (
        account TEXT NOT NULL COLLATE NOCASE REFERENCES accounts(name) ON DELETE CASCADE,
        domain TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
        PRIMARY KEY (account, domain)
    );
    INSERT INTO account_domains SELECT account, domain FROM account_domains_9;
    DROP TABLE account_domains_9;
    """,
)

_SERIAL_INDEXES = """
    CREATE INDEX IF NOT EXISTS issued_serial ON issued (serial);
    CREATE INDEX IF NOT EXISTS audit_serials ON audit (serials);
"""


def _ts(when: dt.datetime) -> int:
    return int(when.timestamp())


def _dt(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def _now() -> int:
    return _ts(dt.datetime.now(dt.UTC))


_ISSUED_COLUMNS = ("(address_key, role, gateway_fingerprint, purpose, serial, der,"
                   " not_before, not_after, requestor)")
_ISSUED_VALUES = ("(:address_key, :role, :gateway_fingerprint, :purpose, :serial, :der,"
                  " :not_before, :not_after, :requestor)")


def _issued_row(r: IssuedRecord) -> dict[str, object]:
    """An issued row's parameters, bound by name (CacheKey: never by position)."""
    return {**r.key._asdict(), "serial": str(r.serial), "der": r.der,
            "not_before": _ts(r.not_before), "not_after": _ts(r.not_after)}


def _audit_row(a: AuditRecord) -> tuple[int, str, str, str, str]:
    return (_ts(a.time), a.requestor, a.address_hash, ",".join(a.roles),
            ",".join(str(s) for s in a.serials))


class SqliteStore:
    """`Store` over one SQLite file. Use from one thread (the event loop's)."""

    def __init__(self, path: Path | str, migrations: Sequence[Migration] = MIGRATIONS) -> None:
        self._serial_indexes = False  # made on first use: ensure_serial_indexes
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, timeout=LOCK_WAIT)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate(migrations)
            self._wipe_free_pages()
            # Both False only for a store opened at an older schema (migration tests do)
            self._derived_column = any(
                row[1] == "derived" for row in self._db.execute("PRAGMA table_info(gateway_keys)"))
            self._account_domains = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'account_domains'").fetchone() is not None
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        self._data_version = -1
        self._changes = 0

    # schema ------------------------------------------------------------------------
    def _migrate(self, migrations: Sequence[Migration]) -> None:
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version INTEGER PRIMARY KEY, applied INTEGER NOT NULL)"
        )
        current = self.schema_version()
        if current > len(migrations):
            raise StoreError(
                f"store schema version {current} is newer than this keypost ({len(migrations)})"
            )
        for version in range(current + 1, len(migrations) + 1):
            step = migrations[version - 1]
            with self._tx():
                if callable(step):
                    step(self._db)
                else:
                    for statement in step.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                self._db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?)", (version, _now())
                )

    def _wipe_free_pages(self) -> None:
        """Rebuild the file without the free pages a migration left secrets in.

        secure_delete during migration 4 zeroes only what that step frees. A private key
        can also lie in pages freed before, by a `domain remove` of a domain that held
        one, where only VACUUM reaches (it rebuilds the file from the live rows). VACUUM
        cannot run in the migration's transaction, so the migration leaves a meta row and
        this runs on every open until it finished: a crash or a full disk in between
        costs a retry, not the wipe. In WAL mode VACUUM writes to the -wal, which keeps
        older frames too (a key written while a server held the file open): a TRUNCATE
        checkpoint copies the pages into the file and empties the -wal. It cannot while
        another connection reads an older snapshot; then the next open tries again.
        """
        if self._db.execute(
                "SELECT 1 FROM meta WHERE name = ?", (_WIPE_PENDING,)).fetchone() is None:
            return
        try:
            self._db.execute("VACUUM")
            busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.OperationalError as exc:  # full disk, locked: not worth refusing
            busy, reason = 1, str(exc).replace(" ", "_")
        else:
            reason = "readers"
        if busy:
            log.warning("event=store_wipe_pending reason=%s (retried on the next open)",
                        reason)
            return
        self._db.execute("DELETE FROM meta WHERE name = ?", (_WIPE_PENDING,))

    def schema_version(self) -> int:
        row = self._db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def set_lock_wait(self, seconds: float | None) -> None:
        wait = LOCK_WAIT if seconds is None else max(0.0, seconds)
        self._db.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")

    @contextmanager
    def _tx(self) -> Iterator[None]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            # the one place a write waits for another process (in WAL mode readers never
            # block a writer, nor the reverse): named, so that callers can wait longer
            if exc.sqlite_errorcode & 0xFF == _SQLITE_BUSY:
                raise StoreBusy(f"the store is locked by another process ({exc})") from exc
            raise
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _bump(self) -> None:
        self._db.execute("UPDATE meta SET value = value + 1 WHERE name = 'changes'")
        self._data_version = -1  # our own commit does not move data_version

    def change_counter(self) -> int:
        # PRAGMA data_version moves only when another connection committed: a cheap
        # check on every request, and a real read only after the CLI changed something.
        version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        if version != self._data_version:
            self._data_version = version
            row = self._db.execute("SELECT value FROM meta WHERE name = 'changes'").fetchone()
            self._changes = int(row[0])
        return self._changes

    # domains and gateway keys --------------------------------------------------------
    def _insert_keys(self, keys: Sequence[GatewayKeyRecord]) -> None:
        for k in keys:
            row: dict[str, object] = {
                "domain": k.domain, "use": k.use.value, "pem": k.pem,
                "fingerprint": k.fingerprint, "capabilities": ",".join(k.capabilities),
                "added": _ts(k.added)}
            if self._derived_column:
                row["derived"] = int(k.derived)
            self._db.execute(
                f"INSERT INTO gateway_keys ({', '.join(row)})"
                f" VALUES ({', '.join(':' + name for name in row)})", row)

    def add_domain(self, domain: str, keys: Sequence[GatewayKeyRecord]) -> None:
        with self._tx():
            if self._has_domain(domain):
                raise StoreError(f"domain {domain} is already registered (use `domain rekey`)")
            self._db.execute("INSERT INTO domains VALUES (?, ?)", (domain, _now()))
            self._insert_keys(keys)
            self._bump()

    def _has_domain(self, domain: str) -> bool:
        row = self._db.execute("SELECT 1 FROM domains WHERE name = ?", (domain,)).fetchone()
        return row is not None

    def _require_domain(self, domain: str) -> None:
        if not self._has_domain(domain):
            raise StoreError(f"unknown domain {domain} (see `domain list`)")

    def rekey_domain(self, domain: str, keys: Sequence[GatewayKeyRecord]) -> list[str]:
        retired: list[str] = []
        with self._tx():
            self._require_domain(domain)
            now = _now()
            for k in keys:
                rows = self._db.execute(
                    "SELECT id, fingerprint FROM gateway_keys"
                    " WHERE domain = ? AND use = ? AND retired IS NULL",
                    (domain, k.use.value),
                ).fetchall()
                for key_id, fingerprint in rows:
                    self._db.execute(
                        "UPDATE gateway_keys SET retired = ? WHERE id = ?", (now, key_id)
                    )
                    self._db.execute(
                        "DELETE FROM issued WHERE gateway_fingerprint = ?", (fingerprint,)
                    )
                    retired.append(str(fingerprint))
            self._insert_keys(keys)
            self._bump()
        return retired

    def remove_domain(self, domain: str) -> int:
        with self._tx():
            self._require_domain(domain)
            fps = [r[0] for r in self._db.execute(
                "SELECT fingerprint FROM gateway_keys WHERE domain = ?", (domain,))]
            for fp in fps:
                self._db.execute("DELETE FROM issued WHERE gateway_fingerprint = ?", (fp,))
            # accounts of this domain alone go; the others only lose it (cascade)
            n = self._db.execute(
                "DELETE FROM accounts WHERE name IN"
                " (SELECT account FROM account_domains WHERE domain = ?1) AND name NOT IN"
                " (SELECT account FROM account_domains WHERE domain != ?1)"
                if self._account_domains else "DELETE FROM accounts WHERE domain = ?1",
                (domain,)).rowcount
            self._db.execute("DELETE FROM domains WHERE name = ?", (domain,))
            self._bump()
        return int(n)

    def domains(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT name FROM domains ORDER BY name")]

    def domain_keys(
        self, domain: str | None = None, history: bool = False
    ) -> list[GatewayKeyRecord]:
        derived = "derived" if self._derived_column else "0"
        sql = ("SELECT domain, use, pem, fingerprint, capabilities, added, retired, "
               f"{derived} FROM gateway_keys")
        where: list[str] = []
        params: list[object] = []
        if domain is not None:
            where.append("domain = ?")
            params.append(domain)
        if not history:
            where.append("retired IS NULL")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY domain, use, id DESC"
        return [
            GatewayKeyRecord(
                domain=d, use=KeyUse(u), pem=bytes(pem), fingerprint=fp,
                capabilities=tuple(c for c in caps.split(",") if c),
                added=_dt(added), retired=None if retired is None else _dt(retired),
                derived=bool(derived),
            )
            for d, u, pem, fp, caps, added, retired, derived in self._db.execute(sql, params)
        ]

    # accounts ------------------------------------------------------------------------
    def _require_domains(self, domains: Sequence[str]) -> None:
        if not domains:
            raise StoreError("an account needs a domain")
        for domain in domains:
            self._require_domain(domain)

    def _link_domains(self, name: str, domains: Sequence[str]) -> None:
        self._db.executemany("INSERT OR IGNORE INTO account_domains VALUES (?, ?)",
                             [(name, d) for d in domains])

    def add_account(self, account: AccountRecord) -> None:
        with self._tx():
            self._require_domains(account.domains)
            if self.account(account.name) is not None:
                raise StoreError(f"account {account.name} already exists")
            h = account.password
            self._db.execute(
                "INSERT INTO accounts (name, role, salt, n, r, p, digest, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (account.name, account.role.value, h.salt, h.n, h.r, h.p, h.digest,
                 _ts(account.created)),
            )
            self._link_domains(account.name, account.domains)

    def set_account_domains(self, name: str, domains: Sequence[str]) -> None:
        with self._tx():
            found = self.account(name)
            if found is None:
                raise StoreError(f"no account named {name}")
            self._require_domains(domains)
            self._db.execute("DELETE FROM account_domains WHERE account = ?", (found.name,))
            self._link_domains(found.name, domains)
            self._bump()  # a running server re-reads accounts bound on open connections

    def _account_rows(self, where: str = "", params: Sequence[object] = ()) -> list[AccountRecord]:
        # the domains as one space-separated text (no domain holds a space), sorted below
        rows = self._db.execute(
            "SELECT a.name, a.role, group_concat(d.domain, ' '), a.salt, a.n, a.r, a.p,"
            " a.digest, a.created FROM accounts a"
            " LEFT JOIN account_domains d ON d.account = a.name"
            + where + " GROUP BY a.name ORDER BY a.name",
            tuple(params),
        )
        return [
            AccountRecord(name, AccountRole(role), tuple(sorted((domains or "").split())),
                          PasswordHash(bytes(salt), n, r, p, bytes(digest)), _dt(created))
            for name, role, domains, salt, n, r, p, digest, created in rows
        ]

    def account(self, name: str) -> AccountRecord | None:
        found = self._account_rows(" WHERE a.name = ?", (name,))
        return found[0] if found else None

    def accounts(self) -> list[AccountRecord]:
        return self._account_rows()

    def remove_account(self, name: str) -> bool:
        with self._tx():
            n = self._db.execute("DELETE FROM accounts WHERE name = ?", (name,)).rowcount
            self._bump()  # a running server re-checks accounts bound on open connections
        return bool(n)

    # genuine certificates ------------------------------------------------------------
    def add_genuine(self, records: Sequence[GenuineRecord]) -> None:
        with self._tx():
            for g in records:
                self._db.execute(
                    "INSERT OR REPLACE INTO genuine VALUES (?, ?, ?, ?)",
                    (g.address_key, g.fingerprint, g.der, _ts(g.not_after)),
                )
            self._bump()

    def remove_genuine(self, address_key: str) -> int:
        with self._tx():
            n = self._db.execute(
                "DELETE FROM genuine WHERE address_key = ?", (address_key,)
            ).rowcount
            self._bump()
        return int(n)

    def genuine(self) -> list[GenuineRecord]:
        rows = self._db.execute(
            "SELECT address_key, der, fingerprint, not_after FROM genuine"
            " ORDER BY address_key, not_after DESC"
        )
        return [GenuineRecord(a, bytes(d), fp, _dt(na)) for a, d, fp, na in rows]

    # issued containers ---------------------------------------------------------------
    def save_issued(self, records: Sequence[IssuedRecord]) -> None:
        if not records:
            return
        with self._tx():
            self._db.executemany(f"INSERT INTO issued {_ISSUED_COLUMNS} VALUES {_ISSUED_VALUES}",
                                 [_issued_row(r) for r in records])

    def issued(self, key: CacheKey) -> IssuedRecord | None:
        row = self._db.execute(
            "SELECT serial, der, not_before, not_after FROM issued WHERE address_key = ?"
            " AND requestor = ? AND role = ? AND gateway_fingerprint = ? AND purpose = ?"
            " ORDER BY not_after DESC LIMIT 1",
            (key.address_key, key.requestor, key.role, key.gateway_fingerprint, key.purpose),
        ).fetchone()
        if row is None:
            return None
        return IssuedRecord(key, bytes(row[1]), int(row[0]), _dt(row[2]), _dt(row[3]))

    def issued_holders(self, now: dt.datetime) -> set[tuple[str, str]]:
        rows = self._db.execute(
            "SELECT DISTINCT address_key, requestor FROM issued WHERE not_after > ?",
            (_ts(now),))
        # one str per requestor, not per row: a few requestors hold most containers
        requestors: dict[str, str] = {}
        return {(str(key), requestors.setdefault(who, str(who))) for key, who in rows}

    def ensure_serial_indexes(self) -> None:
        """Index containers and audit records by serial, once (the first GET /v1/bindings;
        on a store of many audit records this first call takes a while)."""
        if self._serial_indexes:
            return
        with self._tx():
            for statement in _SERIAL_INDEXES.split(";"):
                if statement.strip():
                    self._db.execute(statement)
        self._serial_indexes = True

    def issued_with_serial(self, serial: int) -> list[tuple[str, str]]:
        rows = self._db.execute(
            "SELECT address_key, gateway_fingerprint FROM issued WHERE serial = ?",
            (str(serial),))
        return [(str(key), str(fp)) for key, fp in rows]

    def purge_issued(self, now: dt.datetime) -> int:
        with self._tx():
            n = self._db.execute("DELETE FROM issued WHERE not_after <= ?", (_ts(now),)).rowcount
        return int(n)

    def forget_issued(self, records: Sequence[IssuedRecord]) -> None:
        if not records:
            return
        with self._tx():
            self._db.executemany(
                "DELETE FROM issued WHERE serial = ? AND gateway_fingerprint = ?",
                [(str(r.serial), r.key.gateway_fingerprint) for r in records])

    def restore_batch(self, issued: Sequence[IssuedRecord],
                      audit: Sequence[AuditRecord]) -> tuple[int, int]:
        # The caller deletes its only other copy once this returns: FULL makes the commit
        # durable across a power loss too (NORMAL, the default here, may lose the last one).
        self._db.execute("PRAGMA synchronous=FULL")
        try:
            with self._tx():
                containers = sum(self._db.execute(
                    f"INSERT INTO issued {_ISSUED_COLUMNS} SELECT {_ISSUED_VALUES[1:-1]}"
                    " WHERE EXISTS (SELECT 1 FROM gateway_keys"
                    "  WHERE fingerprint = :gateway_fingerprint AND retired IS NULL)"
                    " AND NOT EXISTS (SELECT 1 FROM issued WHERE address_key = :address_key"
                    "  AND requestor = :requestor AND role = :role"
                    "  AND gateway_fingerprint = :gateway_fingerprint"
                    "  AND purpose = :purpose AND serial = :serial)",
                    _issued_row(r),
                ).rowcount for r in issued)
                records = sum(self._db.execute(
                    "INSERT INTO audit SELECT ?1, ?2, ?3, ?4, ?5 WHERE NOT EXISTS"
                    " (SELECT 1 FROM audit WHERE time = ?1 AND requestor = ?2"
                    "  AND address_hash = ?3 AND roles = ?4 AND serials = ?5)",
                    _audit_row(a),
                ).rowcount for a in audit)
        finally:
            self._db.execute("PRAGMA synchronous=NORMAL")
        return containers, records

    # audit ---------------------------------------------------------------------------
    def append_audit(self, records: Sequence[AuditRecord]) -> None:
        if not records:
            return
        with self._tx():
            self._db.executemany("INSERT INTO audit VALUES (?, ?, ?, ?, ?)",
                                 [_audit_row(a) for a in records])

    def audit(self, since: dt.datetime | None = None) -> list[AuditRecord]:
        rows = self._db.execute(
            "SELECT time, requestor, address_hash, roles, serials FROM audit"
            " WHERE time >= ? ORDER BY time, rowid",
            (0 if since is None else _ts(since),),
        )
        return [
            AuditRecord(_dt(t), req, h, tuple(x for x in roles.split(",") if x),
                        tuple(int(s) for s in serials.split(",") if s))
            for t, req, h, roles, serials in rows
        ]

    def audit_hashes(self, serial: int) -> set[str]:
        # `serials = ?` uses the index; a record naming several serials is not found
        rows = self._db.execute("SELECT address_hash FROM audit WHERE serials = ?",
                                (str(serial),))
        return {str(r[0]) for r in rows}

    def purge_audit(self, older_than: dt.datetime) -> int:
        with self._tx():
            n = self._db.execute("DELETE FROM audit WHERE time < ?", (_ts(older_than),)).rowcount
        return int(n)

    def close(self) -> None:
        self._db.close()


def _conforms(store: SqliteStore) -> Store:
    """mypy checks here that SqliteStore still implements the Store protocol."""
    return store
