"""SIGTERM loses nothing issued: containers and audit records still waiting for the
once-a-second batch write are flushed before `directory serve` exits; a store another
process holds locked is waited for, and past the wait the batch goes to a journal file
that the next start writes into the store."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import time
from pathlib import Path

import ldap3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from dir_support import DOMAIN, KEYPOST, SUFFIX, USER, keypost, serve_process, write_rsa
from pki_util import holds_secret

from keypost.directory.config import DataDir
from keypost.directory.controller import peer_identity, requestor_key
from keypost.directory.store import AuditRecord, CacheKey
from keypost.directory.store.sqlite import SqliteStore


def test_sigterm_flushes_every_issued_container(tmp_path: Path) -> None:
    data = _data_dir(tmp_path)
    proc = subprocess.Popen(
        [*KEYPOST, "directory", "serve", "--data", str(data), "--ldap", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    issued: dict[str, x509.Certificate] = {}
    try:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:
            if line.startswith("listening ldap://"):
                url = line.split()[1].rsplit("/", 1)[0]
            if line.strip() == "ready":
                break
        conn = ldap3.Connection(ldap3.Server(url), auto_bind=True)
        for i in range(30):
            address = f"u{i}@{DOMAIN}"
            conn.search(SUFFIX, f"(mail={address})", attributes=["userCertificate;binary"])
            [entry] = conn.response
            [der] = entry["attributes"]["userCertificate;binary"]
            issued[address] = x509.load_der_x509_certificate(der)
        conn.unbind()
    finally:
        proc.send_signal(signal.SIGTERM)  # at once: well inside the 1 s batch interval
        proc.wait(timeout=30)
    assert proc.returncode == 0
    store = SqliteStore(DataDir(data).database)
    try:
        serials = sorted(s for record in store.audit() for s in record.serials)
        assert serials == sorted(c.serial_number for c in issued.values())
        assert {key for key, _ in store.issued_holders(dt.datetime.now(dt.UTC))} == set(issued)
        fingerprint = store.domain_keys()[0].fingerprint
        identity = peer_identity("127.0.0.1")  # the anonymous requestor: ldap3 from here
        assert identity is not None
        who = requestor_key(identity)
        for address, cert in issued.items():
            stored = store.issued(CacheKey(address, "proxy-encryption", fingerprint, "encrypt",
                                           who))
            assert stored is not None and stored.serial == cert.serial_number
    finally:
        store.close()



# -- a store locked by another process at SIGTERM -----------------------------------------
# What an operator meets: `sqlite3 directory.db` left in a transaction, a long `keypost
# directory account add`, a backup. The lock is the real sqlite3 shell's; the server, the
# one `keypost directory serve` runs.

PASSWORD = "user-secret-password-do-not-keep"


class StoreLock:
    """The sqlite3 shell holding a write lock on the store until `release()`."""

    def __init__(self, database: Path, mode: str = "IMMEDIATE") -> None:
        self._shell = subprocess.Popen(["sqlite3", str(database)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
        assert self._shell.stdin is not None and self._shell.stdout is not None
        # .timeout: the server's batch may hold the lock for a moment right now
        self._shell.stdin.write(f".timeout 10000\nBEGIN {mode};\nSELECT 'locked';\n")
        self._shell.stdin.flush()
        line = self._shell.stdout.readline()
        assert line.strip() == "locked", line

    def release(self) -> None:
        if self._shell.returncode is None:
            assert self._shell.stdin is not None
            self._shell.stdin.write("COMMIT;\n.quit\n")
            self._shell.stdin.close()
            self._shell.wait(timeout=30)


def _data_dir(tmp_path: Path) -> Path:
    """A data dir through the CLI: the CA, one domain, one user account."""
    data = tmp_path / "data"
    keypost("directory", "init", "--data", str(data))
    _, pub = write_rsa(tmp_path / "gw.pem")
    keypost("directory", "domain", "add", DOMAIN, "--encryption-cert", str(pub),
            "--data", str(data))
    keypost("directory", "account", "add", USER, "--role", "user", "--domain", DOMAIN,
            "--password-stdin", "--data", str(data), stdin=PASSWORD + "\n")
    return data


def _look_up(url: str, addresses: list[str], user: str | None = None) -> set[int]:
    """LDAP searches (anonymous, or bound as a user account) -> the serials handed out."""
    who = {} if user is None else {"user": f"uid={user},{SUFFIX}", "password": PASSWORD}
    conn = ldap3.Connection(ldap3.Server(url.rsplit("/", 1)[0]), auto_bind=True, **who)
    serials = set()
    for address in addresses:
        conn.search(SUFFIX, f"(mail={address})", attributes=["userCertificate;binary"])
        [entry] = conn.response
        for der in entry["attributes"]["userCertificate;binary"]:
            serials.add(x509.load_der_x509_certificate(der).serial_number)
    conn.unbind()
    return serials


def _await_log(proc: subprocess.Popen[str], log: Path, text: str) -> None:
    """Until the server's log has `text` (fails if the server exits first)."""
    for _ in range(1200):
        if text in log.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"serve exited before logging {text!r}: {log.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"serve never logged {text!r}: {log.read_text()}")


def _stored_serials(data: Path) -> tuple[list[int], list[int]]:
    """(audited serials, serials of stored containers), each as often as stored."""
    store = SqliteStore(DataDir(data).database)
    try:
        audited = sorted(s for record in store.audit() for s in record.serials)
        rows = store._db.execute("SELECT serial FROM issued").fetchall()
        return audited, sorted(int(serial) for (serial,) in rows)
    finally:
        store.close()


def _journals(data: Path) -> list[Path]:
    return sorted(data.glob("directory.db.pending-*"))


def test_sigterm_waits_for_a_locked_store_and_then_writes_the_last_batch(
        tmp_path: Path) -> None:
    """The last batch was lost when another process held the store locked at SIGTERM (one
    log line said so). Now the server waits, says it waits, and writes once it can; here
    the batch had already been refused once while serving (SQLite's 10 s busy timeout)."""
    data = _data_dir(tmp_path)
    log = tmp_path / "serve.log"
    lock = StoreLock(DataDir(data).database)
    try:
        with serve_process(data, log) as (proc, urls):
            serials = _look_up(urls["ldap"], [f"w{i}@{DOMAIN}" for i in range(10)])
            _await_log(proc, log, "event=maintenance_failed")
            proc.send_signal(signal.SIGTERM)
            _await_log(proc, log, "event=store_locked_at_shutdown")
            assert proc.poll() is None  # still waiting for the store
            lock.release()
            assert proc.wait(timeout=60) == 0
    finally:
        lock.release()
    assert len(serials) == 10
    assert _stored_serials(data) == (sorted(serials), sorted(serials))
    assert _journals(data) == []


def test_a_store_locked_past_the_wait_keeps_the_batch_in_a_journal_until_a_start_writes_it(
        tmp_path: Path) -> None:
    """Locked past the wait (or a second SIGTERM), the batch goes to a journal file next
    to the store, readable by its owner only and holding no secret the store does not;
    a start writes it into the store before serving (here the first start after the lock
    went; one while it is still held serves, and its own shutdown adds a second file)."""
    data = _data_dir(tmp_path)
    database = DataDir(data).database
    logs = [tmp_path / f"serve-{i}.log" for i in range(3)]
    lock = StoreLock(database, "EXCLUSIVE")
    try:
        # a long wait cut short by a second SIGTERM
        with serve_process(data, logs[0], "--shutdown-store-wait", "600") as (proc, urls):
            first = _look_up(urls["ldap"], [f"a{i}@{DOMAIN}" for i in range(10)], user=USER)
            proc.send_signal(signal.SIGTERM)
            _await_log(proc, logs[0], "event=store_locked_at_shutdown")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        [journal] = _journals(data)
        said = logs[0].read_text()
        assert f"event=batch_journaled file={journal.name} issued=10 audit=10" in said
        assert journal.stat().st_mode & 0o777 == 0o600
        kept = journal.read_bytes()
        assert b"PRIVATE KEY" not in kept and PASSWORD.encode() not in kept
        ca_key = serialization.load_pem_private_key(DataDir(data).ca_key.read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
        assert not holds_secret(kept, ca_key)
        assert _stored_serials(data) == ([], [])  # the lock holder saw to that
        # a start while the store is still locked serves all the same; its shutdown,
        # after the 1 s wait, leaves a second file beside the first
        with serve_process(data, logs[1], "--shutdown-store-wait", "1") as (proc, urls):
            second = _look_up(urls["ldap"], [f"b{i}@{DOMAIN}" for i in range(10)])
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        assert "event=journal_deferred files=1" in logs[1].read_text()
        assert "journals_pending=1" in logs[1].read_text()
        assert len(_journals(data)) == 2 and journal in _journals(data)
        assert journal.read_bytes() == kept
    finally:
        lock.release()
    assert len(first) == len(second) == 10
    with serve_process(data, logs[2]) as (proc, urls):
        assert _journals(data) == []  # written before `ready`
        assert _stored_serials(data) == (sorted(first | second),) * 2
    assert logs[2].read_text().count("event=journal_replayed") == 2
    assert _stored_serials(data) == (sorted(first | second),) * 2  # each once


def test_a_corrupt_journal_is_kept_aside_and_reported_and_the_rest_is_written(
        tmp_path: Path) -> None:
    """A journal file that does not read whole (cut short, changed) is not written in part
    or dropped: it is renamed aside, named in an error line, and the others are written."""
    from keypost.directory.journal import Journal

    data = _data_dir(tmp_path)
    journal = Journal(DataDir(data).database)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    good = journal.spill([], [AuditRecord(now, "anonymous", "ab" * 8, ("proxy-encryption",),
                                          (1111,))])
    cut = journal.spill([], [AuditRecord(now, "anonymous", "cd" * 8, ("proxy-encryption",),
                                         (2222,))])
    whole = cut.read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    log = tmp_path / "serve.log"
    with serve_process(data, log):
        pass
    assert _stored_serials(data) == ([1111], [])
    assert not good.exists() and not cut.exists()
    aside = cut.with_name(cut.name + ".corrupt")
    assert aside.read_bytes() == whole[: len(whole) // 2]
    [line] = [line for line in log.read_text().splitlines() if "event=journal_corrupt" in line]
    assert "level=ERROR" in line and aside.name in line
    with serve_process(data, log):  # set aside once: a later start leaves it be
        pass
    assert sorted(p.name for p in data.iterdir() if "pending" in p.name) == [aside.name]


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "1e9", "soon"])
def test_shutdown_store_wait_takes_seconds_only(tmp_path: Path, value: str) -> None:
    """A wait that never ends (inf, NaN) would make shutdown unbounded: refused at once."""
    done = keypost("directory", "serve", "--data", str(tmp_path), "--shutdown-store-wait",
                   value, check=False)
    assert done.returncode == 2
    assert "--shutdown-store-wait: a number of seconds from 0 to 86400" in done.stderr
