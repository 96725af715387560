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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from keypost.directory.store import AuditRecord, IssuedRecord, Store


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
    """Writes batches in a thread of its own, through a store opened in that thread."""

    def __init__(self, open_store: Callable[[], Store]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keypost-writer")
        self._store: Store | None = None
        self._open = open_store
        # What a failed batch could not write (the store locked by another process past
        # the busy timeout, say) goes with the next one: dropped, the audit would miss
        # containers that were handed out. Touched by the worker thread only.
        self._issued: list[IssuedRecord] = []
        self._audit: list[AuditRecord] = []

    def _own_store(self) -> Store:
        if self._store is None:
            self._store = self._open()  # sqlite3 connections belong to their thread
        return self._store

    def _write(self, issued: Sequence[IssuedRecord], audit: Sequence[AuditRecord]) -> None:
        self._issued += issued
        self._audit += audit
        store = self._own_store()
        # write_batch's order, each part forgotten once written (never written twice)
        store.save_issued(self._issued)
        self._issued = []
        store.append_audit(self._audit)
        self._audit = []

    def _purge(self, now: dt.datetime, retention: dt.timedelta) -> tuple[int, int]:
        return purge_store(self._own_store(), now, retention)

    async def purge(self, now: dt.datetime, retention: dt.timedelta) -> tuple[int, int]:
        """Drop containers expired at `now` and audit records older than `retention`, in
        the writer's thread like a batch, and in order with the batches: on the loop, a
        store locked by another process (SQLite waits up to its 10 s busy timeout) held
        every answer that long."""
        job = self._pool.submit(self._purge, now, retention)
        return await asyncio.shield(asyncio.wrap_future(job))

    async def write(self, issued: Sequence[IssuedRecord], audit: Sequence[AuditRecord]) -> None:
        """Write a batch, after what earlier failed batches left; raises if the store
        refuses (those records are then tried again with the next batch)."""
        # the worker's lists, read here: at worst a stale look that waits a batch longer
        if issued or audit or self._issued or self._audit:
            batch = asyncio.wrap_future(self._pool.submit(self._write, issued, audit))
            # A caller cancelled at shutdown must not cancel a batch still queued: its
            # records would be lost. Shielded, it stays queued ahead of close().
            await asyncio.shield(batch)

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

    return BatchWriter(lambda: SqliteStore(path))
