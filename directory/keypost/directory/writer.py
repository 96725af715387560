"""Batch writes off the event loop: one thread with its own store connection.

Writing a second's worth of new containers and audit records held the event loop's
thread for the commit and, every thousand WAL pages, a checkpoint with its fsync: wall
time in which no search was answered. The sqlite3 module releases the GIL while SQLite
works, so here the loop keeps answering (the write's CPU, ~14 us per new container, is
unchanged). One worker keeps the batches in order; SQLite's WAL lets the loop's
connection read meanwhile.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from keypost.directory.errors import StoreBusy
from keypost.directory.journal import Batch, ForeignFile, Journal, JournalError
from keypost.directory.store import AuditRecord, IssuedRecord, Store

log = logging.getLogger("keypost.directory")

# At shutdown the lock is waited for in steps this long, so that a second SIGTERM
# (hurry) is heeded within one.
_WAIT_STEP = 0.5


def write_batch(store: Store, issued: Sequence[IssuedRecord],
                audit: Sequence[AuditRecord]) -> None:
    """Issued containers before their audit records (an audit never names a lost one)."""
    store.save_issued(issued)
    store.append_audit(audit)


def purge_store(store: Store, now: dt.datetime, retention: dt.timedelta) -> tuple[int, int]:
    """Drop containers expired at `now` and audit records older than `retention`
    -> (containers, audit records) dropped."""
    return store.purge_issued(now), store.purge_audit(now - retention)


class BatchWriter:
    """Writes batches in a thread of its own, through a store opened in that thread.

    Nothing handed to it is lost: a batch the store refuses goes with the next one; at
    shutdown (`drain`) a store locked by another process is waited for, a bounded time,
    and what it still refuses then goes to a journal file (keypost.directory.journal),
    which the next start writes into the store (`replay`) before serving."""

    def __init__(self, open_store: Callable[[], Store], journal: Journal | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keypost-writer")
        self._store: Store | None = None
        self._open = open_store
        self._journal = journal
        # What a failed batch could not write (the store locked by another process past
        # the busy timeout, say) goes with the next one: dropped, the audit would miss
        # containers that were handed out. Touched by the worker thread only, as is
        # `_kept`: journal files read at start whose records are not in the store yet.
        self._issued: list[IssuedRecord] = []
        self._audit: list[AuditRecord] = []
        self._retracted: list[IssuedRecord] = []  # Controller.take_retracted: to delete
        self._kept: list[tuple[Path, Batch]] = []
        self._hurry = threading.Event()

    def _own_store(self) -> Store:
        if self._store is None:
            self._store = self._open()  # sqlite3 connections belong to their thread
        return self._store

    def _restore_kept(self, store: Store) -> None:
        """Journal files first (their records are older), each in one transaction, and
        each file removed only after its commit."""
        while self._kept:
            path, batch = self._kept[0]
            containers, records = store.restore_batch(batch.issued, batch.audit)
            assert self._journal is not None
            self._journal.remove(path)
            del self._kept[0]
            log.info("event=journal_replayed file=%s issued=%d audit=%d", path.name,
                     containers, records)

    def _flush(self) -> None:
        store = self._own_store()
        self._restore_kept(store)
        # write_batch's order, each part forgotten once written (never written twice)
        store.save_issued(self._issued)
        self._issued = []
        store.append_audit(self._audit)
        self._audit = []
        store.forget_issued(self._retracted)  # after the batch that may have written them
        self._retracted = []

    def _add(self, issued: Sequence[IssuedRecord], audit: Sequence[AuditRecord],
             retracted: Sequence[IssuedRecord]) -> None:
        self._issued += issued
        self._audit += audit
        if retracted:
            gone = {(r.serial, r.key.gateway_fingerprint) for r in retracted}
            # still unwritten (an earlier batch failed): then they are never written
            self._issued = [r for r in self._issued
                            if (r.serial, r.key.gateway_fingerprint) not in gone]
            self._retracted += retracted

    def _write(self, issued: Sequence[IssuedRecord], audit: Sequence[AuditRecord],
               retracted: Sequence[IssuedRecord]) -> None:
        self._add(issued, audit, retracted)
        self._flush()

    def _purge(self, now: dt.datetime, retention: dt.timedelta) -> tuple[int, int]:
        return purge_store(self._own_store(), now, retention)

    async def purge(self, now: dt.datetime, retention: dt.timedelta) -> tuple[int, int]:
        """Drop containers expired at `now` and audit records older than `retention`, in
        the writer's thread like a batch, and in order with the batches: on the loop, a
        store locked by another process (SQLite waits up to its 10 s busy timeout) held
        every answer that long."""
        job = self._pool.submit(self._purge, now, retention)
        return await asyncio.shield(asyncio.wrap_future(job))

    async def write(self, issued: Sequence[IssuedRecord], audit: Sequence[AuditRecord],
                    retracted: Sequence[IssuedRecord] = ()) -> None:
        """Write a batch, after what earlier failed batches left, then delete `retracted`
        (Controller.take_retracted); raises if the store refuses (those records are then
        tried again with the next batch)."""
        # the worker's lists, read here: at worst a stale look that waits a batch longer
        if issued or audit or retracted or self._issued or self._audit or self._kept:
            batch = asyncio.wrap_future(self._pool.submit(self._write, issued, audit,
                                                          retracted))
            # A caller cancelled at shutdown must not cancel a batch still queued: its
            # records would be lost. Shielded, it stays queued ahead of close().
            await asyncio.shield(batch)

    def _replay(self, wait: float) -> None:
        if self._journal is None:
            return
        for path in self._journal.files():
            try:
                self._kept.append((path, self._journal.read(path)))
            except (ForeignFile, OSError) as exc:  # a symbolic link fails to open
                log.error('event=journal_refused file=%s error="%s" (not read: not a file'
                          ' this directory wrote; see README, Cache, store and audit)',
                          path.name, exc)
            except JournalError as exc:
                # Written in part, the rest could never be told from what was written;
                # dropped, it would be lost: kept under a name no start reads again.
                aside = self._journal.set_aside(path)
                log.error('event=journal_corrupt file=%s kept_as=%s error="%s" (its records'
                          ' are not in the store: see README, Cache, store and audit)',
                          path.name, aside.name, exc)
        if not self._kept:
            return
        try:
            store = self._own_store()
            store.set_lock_wait(wait)
            try:
                self._restore_kept(store)
            finally:
                store.set_lock_wait(None)
        except Exception as exc:  # locked, full disk: the server can serve all the same
            log.warning('event=journal_deferred files=%d error="%s" (written with a later'
                        ' batch)', len(self._kept), exc)

    async def replay(self, wait: float = 1.0) -> None:
        """At start: write the journal files earlier shutdowns left into the store. A store
        still locked after `wait` seconds does not stop the start: they go with the next
        batch (the files stay until then). A file that does not read whole is set aside."""
        await asyncio.wrap_future(self._pool.submit(self._replay, wait))

    def _drain(self, issued: Sequence[IssuedRecord], audit: Sequence[AuditRecord],
               retracted: Sequence[IssuedRecord], deadline: float, wait: float) -> bool:
        self._add(issued, audit, retracted)
        if not (self._issued or self._audit or self._retracted or self._kept):
            return True
        started, waiting = time.monotonic(), False
        while True:
            left = deadline - time.monotonic()
            try:
                store = self._own_store()
                store.set_lock_wait(min(max(left, 0.0), _WAIT_STEP))
                self._flush()
            except StoreBusy:
                if not waiting:
                    waiting = True
                    log.warning("event=store_locked_at_shutdown wait_s=%g issued=%d audit=%d"
                                " journals=%d (another process holds the store's write lock:"
                                " waiting for it; a second SIGTERM stops waiting)", wait,
                                len(self._issued), len(self._audit), len(self._kept))
                # (the wait is SQLite's busy handler; this one only keeps a store that
                # answers busy at once from spinning)
                if left > 0 and not self._hurry.wait(0.01):
                    continue
            except Exception as exc:
                log.error('event=store_refused_at_shutdown error="%s"', exc)
            else:
                if waiting:
                    log.info("event=store_unlocked waited_s=%.1f", time.monotonic() - started)
                return True
            return self._spill()

    def _spill(self) -> bool:
        """What the store would not take, into a new journal file -> False if lost."""
        name = "-"
        if self._issued or self._audit:
            try:
                if self._journal is None:
                    raise OSError("no journal")
                name = self._journal.spill(self._issued, self._audit).name
            except OSError as exc:
                log.critical('event=batch_lost issued=%d audit=%d error="%s"',
                             len(self._issued), len(self._audit), exc)
                return False
        log.warning("event=batch_journaled file=%s issued=%d audit=%d journals_pending=%d"
                    " (written into the store by the next start)", name, len(self._issued),
                    len(self._audit), len(self._kept))
        self._issued, self._audit = [], []
        return True

    async def drain(self, issued: Sequence[IssuedRecord], audit: Sequence[AuditRecord],
                    wait: float, retracted: Sequence[IssuedRecord] = ()) -> bool:
        """At shutdown, after every batch handed over so far: write this last one and what
        is left over (deleting `retracted`, as `write`), waiting up to `wait` seconds (from
        now) for a store another process holds locked, then put what is still unwritten
        into a journal file (retracted containers not written yet are not among it). ->
        False only when records were lost (neither the store nor a journal file took
        them)."""
        deadline = time.monotonic() + wait
        job = self._pool.submit(self._drain, issued, audit, retracted, deadline, wait)
        return await asyncio.shield(asyncio.wrap_future(job))

    def hurry(self) -> None:
        """Stop a drain's wait for the store (at its next step): journal what is left."""
        self._hurry.set()

    def _close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    async def close(self) -> None:
        """After every batch handed over so far is written (queued work runs first)."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self._close)
        self._pool.shutdown(wait=True)


def sqlite_writer(path: Path) -> BatchWriter:
    from keypost.directory.store.sqlite import SqliteStore

    return BatchWriter(lambda: SqliteStore(path), Journal(path))
