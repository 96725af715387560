"""Batches the store could not take at shutdown, kept in files beside it until a start
writes them (keypost.directory.writer).

A batch holds what the controller hands the writer: issued containers (certificates,
public by nature; the address in clear and the requestor as the store's hash, as the
store's `issued` table has them) and audit records (hashes, roles, serials). No private
key and no password is part of either, so a file holds nothing the store does not; it is
still written for its owner only (0600), as the store is. One file per shutdown, named
`<store>.pending-<UTC time, to the microsecond>-<random>.json`: several may wait, and
they sort in the order they were written. A file is written whole or not at all (a
temporary file, fsync, rename) and carries a SHA-256 of its records: one cut short or
changed reads as corrupt, never as fewer records. The digest proves no origin, and what a
file holds goes into the store unchecked (its containers are then served as issued): so
only a file as `spill` writes it is read, a regular file of this user (or of the store's
owner) that no one else may write, never a symbolic link. Another one (planted in a shared
folder) is left alone.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar

from keypost.core.durable import fsync_folder, write_synced
from keypost.directory.errors import DirectoryError
from keypost.directory.store import AuditRecord, CacheKey, IssuedRecord

FORMAT = "keypost-directory-pending-batch"
VERSION = 1
PENDING = ".pending-"
CORRUPT = ".corrupt"  # the suffix of a file set aside (never read again)


class JournalError(DirectoryError):
    """A journal file that does not read whole: cut short, changed or not ours."""


class ForeignFile(DirectoryError):
    """A file named as a journal file that this directory did not write: not read."""


class Batch(NamedTuple):
    issued: list[IssuedRecord]
    audit: list[AuditRecord]


def _time(when: dt.datetime) -> str:
    return when.isoformat()


def _issued(r: IssuedRecord) -> dict[str, object]:
    return {**r.key._asdict(), "serial": str(r.serial),
            "der": base64.b64encode(r.der).decode("ascii"),
            "not_before": _time(r.not_before), "not_after": _time(r.not_after)}


def _audit(a: AuditRecord) -> dict[str, object]:
    return {"time": _time(a.time), "requestor": a.requestor, "address_hash": a.address_hash,
            "roles": list(a.roles), "serials": [str(s) for s in a.serials]}


def _digest(records: object) -> str:
    canonical = json.dumps(records, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def encode(issued: Sequence[IssuedRecord], audit: Sequence[AuditRecord]) -> bytes:
    records = {"issued": [_issued(r) for r in issued], "audit": [_audit(a) for a in audit]}
    return json.dumps({"format": FORMAT, "version": VERSION, "sha256": _digest(records),
                       "records": records}, indent=1).encode() + b"\n"


T = TypeVar("T")


def _get(obj: object, name: str, kind: type[T]) -> T:
    value = obj.get(name) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        raise JournalError(f"{name} missing or not a {kind.__name__}")
    return value


def _parse_time(obj: object, name: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(_get(obj, name, str))
    if when.tzinfo is None:
        raise JournalError(f"{name} has no time zone")
    return when


def _parse_issued(obj: object) -> IssuedRecord:
    key = CacheKey(**{name: _get(obj, name, str) for name in CacheKey._fields})
    return IssuedRecord(key, base64.b64decode(_get(obj, "der", str), validate=True),
                        int(_get(obj, "serial", str)), _parse_time(obj, "not_before"),
                        _parse_time(obj, "not_after"))


def _parse_audit(obj: object) -> AuditRecord:
    roles = _get(obj, "roles", list)
    if not all(isinstance(role, str) for role in roles):
        raise JournalError("roles holds a non-string")
    serials = _get(obj, "serials", list)
    return AuditRecord(_parse_time(obj, "time"), _get(obj, "requestor", str),
                       _get(obj, "address_hash", str), tuple(roles),
                       tuple(int(s) for s in serials))


def decode(data: bytes) -> Batch:
    """A file's batch; raises JournalError for anything but a whole, unchanged file."""
    try:
        top = json.loads(data)
        if _get(top, "format", str) != FORMAT or _get(top, "version", int) != VERSION:
            raise JournalError("not a keypost pending-batch file of a version this reads")
        records = _get(top, "records", dict)
        if _digest(records) != _get(top, "sha256", str):
            raise JournalError("its records do not match their SHA-256 (changed)")
        return Batch([_parse_issued(r) for r in _get(records, "issued", list)],
                     [_parse_audit(a) for a in _get(records, "audit", list)])
    except JournalError:
        raise
    except (ValueError, TypeError, binascii.Error) as exc:  # JSON, int(), times, base64
        raise JournalError(f"unreadable ({exc.__class__.__name__}: {exc})") from None


def _foreign(st: os.stat_result, owners: set[int]) -> str | None:
    """Why a file is not one `spill` wrote (0600, of a user in `owners`), or None."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if owners and st.st_uid not in owners:
        return f"owned by uid {st.st_uid}, neither this user nor the store's owner"
    if st.st_mode & 0o022:
        return f"writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


class Journal:
    """The pending-batch files of one store, in the store's folder."""

    def __init__(self, database: Path) -> None:
        self._database = database
        self._folder = database.parent
        self._prefix = database.name + PENDING

    def files(self) -> list[Path]:
        """Files to write into the store, oldest first (a `.tmp` left by a crash during
        `spill` included: read whole, it is as good as the rest)."""
        return sorted(p for p in self._folder.glob(self._prefix + "*")
                      if not p.name.endswith(CORRUPT))

    def spill(self, issued: Sequence[IssuedRecord], audit: Sequence[AuditRecord]) -> Path:
        """Write a batch to a new file, whole or not at all -> its path."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")  # sorts as written
        path = self._folder / f"{self._prefix}{stamp}-{secrets.token_hex(4)}.json"
        temporary = path.with_name(path.name + ".tmp")
        data = encode(issued, audit)
        try:
            write_synced(temporary, data)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        fsync_folder(self._folder)
        return path

    def read(self, path: Path) -> Batch:
        """The file's batch. Raises ForeignFile for a file `spill` cannot have written (left
        alone), JournalError for one that does not read whole, OSError."""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ForeignFile(f"{path.name}: a symbolic link") from None
            raise
        with os.fdopen(fd, "rb") as f:
            problem = _foreign(os.fstat(f.fileno()), self._owners())
            if problem is not None:
                raise ForeignFile(f"{path.name}: {problem}")
            data = f.read()
        try:
            return decode(data)
        except JournalError as exc:
            raise JournalError(f"{path.name}: {exc}") from None

    def _owners(self) -> set[int]:
        """Who may have written a journal file: this user and the store's owner (`serve`
        run as root once on a store of the service's user, or the other way round)."""
        if not hasattr(os, "geteuid"):
            return set()
        owners = {os.geteuid()}
        with contextlib.suppress(OSError):
            owners.add(self._database.stat().st_uid)
        return owners

    def set_aside(self, path: Path) -> Path:
        """Rename a file that did not read, so that no start reads it again -> new path."""
        aside = path.with_name(path.name + CORRUPT)
        os.replace(path, aside)
        fsync_folder(self._folder)
        return aside

    def remove(self, path: Path) -> None:
        """Once its records are committed to the store (gone already: removed by hand)."""
        path.unlink(missing_ok=True)
        fsync_folder(self._folder)
