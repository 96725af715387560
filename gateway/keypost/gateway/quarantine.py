"""Stores held messages durably in a Maildir (tmp/ -> fsync -> new/) before anyone gets a 250."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import stat
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from keypost.gateway.errors import ReleaseRefused, TempFailure
from keypost.gateway.files import folder_problem, fsync_folder, make_private_dirs, write_synced

ONWARD_HEADER = "X-Keypost-Onward"  # the outbound steps a release must still apply


def open_to_others(path: Path) -> int | None:
    """The mode of an existing folder that grants group or other any access, else None."""
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode if mode & 0o077 else None


def loose_warning(folder: Path, mode: int) -> str:
    return (f"quarantine folder {folder} is mode {mode:04o}: others may read held (decrypted)"
            " mail; chmod 700 it")


@dataclass(frozen=True)
class Onward:
    """The outbound steps a held message still needs before it may go to a recipient outside
    the served domains: recorded when it is held, applied when it is released, so a release
    never sends out clear text that the pipeline would have encrypted or signed."""

    encrypt: bool = False  # the gateway decrypted it: re-encrypt per outbound_no_genuine
    sign: bool = False  # a signature was asked for (request or sign_all_outbound)

    def __str__(self) -> str:
        steps = [name for name, on in (("encrypt", self.encrypt), ("sign", self.sign)) if on]
        return " ".join(steps) or "none"


def parse_onward(text: str | None) -> Onward | None:
    """What `str(Onward)` wrote; None when nothing (an older gateway) or something unknown
    was recorded: then nobody can tell whether the held bytes may leave as they are."""
    if text is None:
        return None
    steps = set(text.split())
    if steps == {"none"}:
        return Onward()
    if not steps or not steps <= {"encrypt", "sign"}:
        return None
    return Onward("encrypt" in steps, "sign" in steps)


class Maildir:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def folders(self) -> tuple[Path, ...]:
        return (self.root, *(self.root / sub for sub in ("tmp", "new", "cur")))

    def ensure(self) -> None:
        for folder in self.folders:
            make_private_dirs(folder)

    def problem(self) -> str | None:
        """Why `ensure` would fail, found without creating anything (check-config), or None."""
        for folder in self.folders:
            if folder.exists() and not folder.is_dir():
                return f"{folder} is not a folder"
        return folder_problem(self.root)

    def loose_folders(self) -> list[tuple[Path, int]]:
        """Existing folders of this Maildir that group or other may enter, with their mode."""
        out = []
        for folder in self.folders:
            mode = open_to_others(folder) if folder.is_dir() else None
            if mode is not None:
                out.append((folder, mode))
        return out

    def store(self, message: bytes, mail_from: str, rcpts: Sequence[str], reason: str,
              onward: Onward | None) -> str:
        """Write the message with a small envelope header; returns its quarantine id.
        `onward` None: the message is not outbound mail of a served domain (not recorded).
        Raises TempFailure when the disk refuses (the sender retries; nothing is lost)."""
        envelope = (
            f"{_FORMAT_LINE}\r\n"
            f"X-Keypost-Quarantine-Reason: {' '.join(reason.split())}\r\n"
            f"X-Keypost-Envelope-From: <{mail_from}>\r\n"
            f"X-Keypost-Envelope-To: {', '.join(f'<{r}>' for r in rcpts)}\r\n"
            f"{ONWARD_HEADER}: {onward if onward is not None else 'unrecorded'}\r\n"
        ).encode("utf-8", "replace")
        return self.deliver(envelope + message)

    def deliver(self, message: bytes) -> str:
        """Write one message durably (tmp/, fsync, rename into new/); returns its file name."""
        qid = f"{int(time.time())}.{uuid.uuid4().hex}.{socket.gethostname()}"
        try:
            self.ensure()
            tmp = self.root / "tmp" / qid
            write_synced(tmp, message)
            os.rename(tmp, self.root / "new" / qid)
            fsync_folder(self.root / "new")
        except OSError as exc:
            raise TempFailure(f"quarantine unavailable ({exc.strerror})", "4.3.0") from None
        return qid


@dataclass(frozen=True)
class Held:
    """A quarantined message: its id, original envelope, reason, content and the outbound
    steps it still needs (None: not recorded)."""

    qid: str
    mail_from: str
    rcpts: tuple[str, ...]
    reason: str
    message: bytes
    onward: Onward | None = None


_ENVELOPE = ("x-keypost-quarantine-reason", "x-keypost-envelope-from", "x-keypost-envelope-to",
             ONWARD_HEADER.lower())


# The first line of every file `store` writes. Its envelope lines follow in a fixed order
# and number, and the message starts right after them: the message's own first lines
# (which its sender chose) are never read as envelope, however they are named.
_FORMAT_LINE = "X-Keypost-Quarantine-Format: 2"
# `<addr>, <addr>` as `store` writes it; a quoted local part may hold `,`, `<` or `>`
_ANGLED = re.compile(r'<((?:"(?:[^"\\]|\\.)*"|[^"<>])*)>')


def read_held(path: Path) -> Held:
    """Split what `Maildir.store` wrote back into envelope and message."""
    data = path.read_bytes()
    expected = list(_ENVELOPE)
    first, sep, rest = data.partition(b"\r\n")
    if sep and first.decode("utf-8", "replace") == _FORMAT_LINE:
        data = rest
    else:
        # a file of an older gateway: reason, from and to, nothing recorded about the
        # outbound steps (so it is not released to recipients outside the served domains)
        expected = expected[:3]
    values: dict[str, str] = {}
    for want in expected:
        line, sep, rest = data.partition(b"\r\n")
        name, _, value = line.decode("utf-8", "replace").partition(":")
        if not sep or name.lower() != want:
            break
        values[want] = value.strip()
        data = rest
    rcpts = tuple(_ANGLED.findall(values.get(_ENVELOPE[2], "")))
    return Held(path.name.split(":")[0], values.get(_ENVELOPE[1], "").strip("<>"), rcpts,
                values.get(_ENVELOPE[0], ""), data, parse_onward(values.get(_ENVELOPE[3])))


def held_messages(root: Path) -> list[Held]:
    new = root / "new"
    return [read_held(p) for p in sorted(new.iterdir())] if new.exists() else []


@contextlib.contextmanager
def claimed(root: Path, qid: str) -> Iterator[Held]:
    """The held entry `qid`, locked (flock) for as long as it is being released: a second
    `release` of it at the same time is refused instead of sending it again. The lock
    lives on the file, which `mark_released` moves away; whoever gets the lock after that
    finds the entry gone and is refused too."""
    path = root / "new" / qid
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ReleaseRefused(f"{qid} is no longer held (released meanwhile?)") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ReleaseRefused(f"{qid} is being released by another process") from None
        if not path.exists():
            raise ReleaseRefused(f"{qid} is no longer held (released meanwhile?)")
        yield read_held(path)
    finally:
        os.close(fd)  # releases the lock


def released_already(root: Path, qid: str) -> bool:
    """Whether `qid` is a released entry (mark_released's name for it in cur/)."""
    return "/" not in qid and (root / "cur" / f"{qid}:2,S").is_file()


def mark_released(root: Path, qid: str) -> None:
    """Move a released message to cur/ with the Maildir 'seen' flag (kept, not deleted)."""
    os.rename(root / "new" / qid, root / "cur" / f"{qid}:2,S")
