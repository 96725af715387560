"""The pending-batch journal: what a shutdown could not write into a locked store waits in
files beside it (keypost.directory.journal), read whole or not at all, and the writer
restores them exactly once (tests through a real serve: test_directory_shutdown)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pki_util import holds_secret, key_pem
from test_directory_controller import ANON, GATEWAY, USER, Controller, fp, record

from keypost.directory.journal import Journal, JournalError, decode, encode
from keypost.directory.store import AuditRecord, IssuedRecord, KeyUse
from keypost.directory.writer import sqlite_writer


def _batch(controller: Controller) -> tuple[list[IssuedRecord], list[AuditRecord]]:
    """Records as the servers make them: every requestor class, encryption and signing."""
    controller.answer(ANON, ["a@example.com", "b@example.org"], None, "t")
    controller.answer(USER, ["c@example.com"], None, "t")
    controller.answer(GATEWAY, ["d@example.com"], None, "t")  # its own domain: signing
    issued, audit = controller.take_pending()
    assert len(issued) >= 4 and len(audit) >= 4
    return issued, audit


def test_a_journal_file_gives_back_every_field_and_is_its_owners_alone(
        controller: Controller, tmp_path: Path) -> None:
    issued, audit = _batch(controller)
    folder = tmp_path / "data"
    folder.mkdir()
    journal = Journal(folder / "directory.db")
    first = journal.spill(issued, audit)
    second = journal.spill([], audit[:1])
    assert journal.files() == [first, second]  # in the order written
    assert first.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in folder.iterdir()) == [first.name, second.name]  # no .tmp
    assert journal.read(first) == (issued, audit)
    assert journal.read(second) == ([], audit[:1])
    journal.remove(first)
    assert journal.files() == [second]


def test_a_journal_holds_no_key_and_no_password(controller: Controller, tmp_path: Path,
                                                keys: list[rsa.RSAPrivateKey]) -> None:
    """What a batch holds, field by field: certificates, hashes, names of roles. The
    directory CA's key and the gateways' keys are nowhere in it."""
    issued, audit = _batch(controller)
    data = encode(issued, audit)
    assert b"PRIVATE" not in data
    top = json.loads(data)
    assert set(top) == {"format", "version", "sha256", "records"}
    assert {tuple(sorted(r)) for r in top["records"]["issued"]} == {(
        "address_key", "der", "gateway_fingerprint", "not_after", "not_before", "purpose",
        "requestor", "role", "serial")}
    assert {tuple(sorted(a)) for a in top["records"]["audit"]} == {(
        "address_hash", "requestor", "roles", "serials", "time")}
    ders = [base64.b64decode(r["der"]) for r in top["records"]["issued"]]
    for key in [controller.ca._key, *keys]:  # not one of their secret numbers, in any form
        assert not holds_secret(data, key)
        assert not [der for der in ders if holds_secret(der, key)]


def test_the_secret_check_finds_a_key_in_a_journal(keys: list[rsa.RSAPrivateKey]) -> None:
    """The check above can fail: a key's PEM, or its DER in base64, is found."""
    assert holds_secret(key_pem(keys[0]), keys[0])
    der = keys[1].private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    for pad in (b"", b"x", b"xy"):
        assert holds_secret(json.dumps({"der": base64.b64encode(pad + der).decode()}).encode(),
                            keys[1])
        assert holds_secret(pad + der, keys[1])
    assert not holds_secret(key_pem(keys[0]), keys[1])


@pytest.mark.parametrize("damage", ["cut", "flip", "format", "version", "type", "naive"])
def test_a_damaged_journal_reads_as_an_error_never_as_fewer_records(
        controller: Controller, damage: str) -> None:
    issued, audit = _batch(controller)
    data = encode(issued, audit)
    if damage == "cut":
        for end in range(0, len(data) - 1, max(1, len(data) // 97)):
            with pytest.raises(JournalError):
                decode(data[:end])
        return
    top = json.loads(data)
    if damage == "flip":  # a record changed, its digest not
        top["records"]["audit"][0]["serials"] = ["1"]
    elif damage == "format":
        top["format"] = "something-else"
    elif damage == "version":
        top["version"] = 2
    elif damage == "type":
        top["records"]["issued"][0]["serial"] = None
    else:  # a time without its zone would be taken as local time
        top["records"]["audit"][0]["time"] = "2026-01-02T03:04:05"
    with pytest.raises(JournalError):
        decode(json.dumps(top).encode())


def test_restore_writes_a_batch_once_and_leaves_out_retired_keys_containers(
        controller: Controller, keys: list[rsa.RSAPrivateKey]) -> None:
    """A restore cut short after its commit (the file not yet removed) runs again at the
    next start: the second run writes nothing. A rekey in between dropped the old key's
    containers from the store: they stay out (the audit keeps their serials)."""
    issued, audit = _batch(controller)
    store = controller.store
    assert store.restore_batch(issued, audit) == (len(issued), len(audit))
    assert store.restore_batch(issued, audit) == (0, 0)
    assert sorted(a.serials for a in store.audit()) == sorted(a.serials for a in audit)
    for r in issued:
        stored = store.issued(r.key)
        assert stored is not None and stored.serial == r.serial
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    store.rekey_domain("example.com", [record("example.com", new_key, KeyUse.ENCRYPTION)])
    old = fp(keys[0])
    assert store.restore_batch(issued, audit) == (0, 0)
    assert all(store.issued(r.key) is None for r in issued if r.key.gateway_fingerprint == old)


def _held(path: Path) -> sqlite3.Connection:
    """Another process's connection holding the store's write lock."""
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    return lock


def test_drain_journals_what_a_locked_store_refuses_and_replay_writes_it(
        controller: Controller, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    issued, audit = _batch(controller)
    path = tmp_path / "d.db"  # the controller's store
    lock = _held(path)

    async def shut_down() -> bool:
        writer = sqlite_writer(path)
        writer.hurry()  # as after a second SIGTERM: no waiting at all
        kept = await writer.drain(issued, audit, wait=600)
        await writer.close()
        return kept

    with caplog.at_level(logging.INFO, "keypost.directory"):
        assert asyncio.run(shut_down())
        [journal] = Journal(path).files()
        assert controller.store.audit() == []
        lock.execute("COMMIT")

        async def start() -> None:
            writer = sqlite_writer(path)
            await writer.replay()
            await writer.close()

        asyncio.run(start())
    assert Journal(path).files() == []
    assert sorted(a.serials for a in controller.store.audit()) == sorted(
        a.serials for a in audit)
    said = caplog.text
    assert "event=store_locked_at_shutdown" in said
    assert f"event=batch_journaled file={journal.name}" in said
    assert f"event=journal_replayed file={journal.name}" in said


def test_a_batch_neither_store_nor_journal_takes_is_reported_lost(
        controller: Controller, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Drain says so (and `serve` exits non-zero): the one case that loses records. The
    disk refuses here by stand-in: a full disk cannot be had in a test."""
    issued, audit = _batch(controller)
    path = tmp_path / "d.db"
    lock = _held(path)

    def refuse(*_: object) -> Path:
        raise OSError(28, "No space left on device")

    async def shut_down() -> bool:
        writer = sqlite_writer(path)
        writer._journal.spill = refuse  # type: ignore[union-attr, method-assign]
        kept = await writer.drain(issued, audit, wait=0)
        await writer.close()
        return kept

    try:
        assert not asyncio.run(shut_down())
    finally:
        lock.execute("COMMIT")
    assert f"event=batch_lost issued={len(issued)} audit={len(audit)}" in caplog.text


@pytest.mark.parametrize("planted", ["symlink", "writable_by_others", "other_owner"])
def test_a_journal_file_the_directory_did_not_write_is_not_replayed(
        controller: Controller, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        planted: str) -> None:
    """Replayed records go into the store unchecked (the containers in them are served as
    issued), so a file is replayed only as spill writes it: a regular file of this user,
    writable by no one else. One another user could plant or change (the store's folder
    shared, sticky, as /tmp is) is left alone, unread, and logged."""
    if planted == "other_owner" and os.geteuid() != 0:
        pytest.skip("giving a file to another user takes root")
    issued, audit = _batch(controller)
    path = tmp_path / "d.db"  # the controller's store
    journal = Journal(path)
    if planted == "symlink":
        elsewhere = Journal(tmp_path / "elsewhere" / "d.db")
        (tmp_path / "elsewhere").mkdir()
        target = elsewhere.spill(issued, audit)
        file = path.with_name(target.name)
        file.symlink_to(target)
    else:
        file = journal.spill(issued, audit)
        if planted == "writable_by_others":
            file.chmod(0o666)
        else:
            os.chown(file, 65534, 65534)

    async def start() -> None:
        writer = sqlite_writer(path)
        await writer.replay()
        await writer.close()

    with caplog.at_level(logging.INFO, "keypost.directory"):
        asyncio.run(start())
    assert controller.store.audit() == []
    assert all(controller.store.issued(r.key) is None for r in issued)
    assert file.is_symlink() if planted == "symlink" else file.is_file()  # left alone
    assert f"event=journal_refused file={file.name}" in caplog.text


def test_a_journal_file_of_the_stores_owner_is_replayed_by_root(
        controller: Controller, tmp_path: Path) -> None:
    """`serve` run as root on a store of the service's user (or the other way round for
    the files) reads that user's files: the store's owner wrote them, not a stranger."""
    if os.geteuid() != 0:
        pytest.skip("giving files to another user takes root")
    issued, audit = _batch(controller)
    path = tmp_path / "d.db"
    file = Journal(path).spill(issued, audit)
    for owned in (path, file):
        os.chown(owned, 65534, 65534)

    async def start() -> None:
        writer = sqlite_writer(path)
        await writer.replay()
        await writer.close()

    asyncio.run(start())
    assert not file.exists()
    assert sorted(a.serials for a in controller.store.audit()) == sorted(
        a.serials for a in audit)
