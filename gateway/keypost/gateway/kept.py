"""Keeps each sender's signing containers on disk, so that a restart does not forget them.

Mail dated before a sender's current signing container (queued while the gateway was
down, a client clock behind) can only be signed with a previous one, and the directory
hands out only the current one. One PEM file per sender in `state_dir/signing-containers`
holds the containers the gateway last had for that sender, newest first: public
certificates only (the private key is the domain's signing key, in its own file). Files
are written whole (a temporary file, fsync, rename), so a crash leaves the old one or the
new one; what cannot be read is logged and treated as nothing kept. What is loaded is no
more trusted than an answer from the directory: the caller verifies it the same way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from keypost.core.address import Address
from keypost.core.containers import load_certificates, to_pem
from keypost.core.errors import ContainerError
from keypost.gateway.files import fsync_folder, make_private_dirs, write_synced

log = logging.getLogger("keypost.gateway.kept")

FOLDER = "signing-containers"  # below state_dir
SUFFIX = ".pem"
TEMPORARY = ".tmp"
# Senders with a file: the directory issues a signing container for any address of a
# served domain, so whoever may relay through the MTA could otherwise grow the folder
# without bound. Past it new senders are signed for as before, only not written down.
MAX_KEPT_SENDERS = 10_000
# A sender's file holds what the directory client keeps (MAX_SIGNING_CONTAINERS); this
# bounds what reading a file costs whatever it holds.
MAX_FILE_BYTES = 64 * 1024


class KeptContainers:
    """The signing containers of each sender, one file each, in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.lock = threading.Lock()  # one writer at a time counts the files

    @staticmethod
    def name(address: Address) -> str:
        """The sender's file name: a hash of the normalised address, so that no address
        (a `/`, a leading dot, UTF-8) becomes a path, and the name says no address."""
        return hashlib.sha256(address.key().encode()).hexdigest()[:32] + SUFFIX

    def ensure(self) -> None:
        """Create the folder (0700, as missing parents). Raises OSError."""
        make_private_dirs(self.folder)

    def load(self, address: Address, now: dt.datetime) -> list[x509.Certificate]:
        """The sender's kept containers still valid at `now`, newest first; none when there
        is no file or it cannot be read (logged)."""
        certs = self._read(self.folder / self.name(address))
        return [c for c in certs or () if now <= c.not_valid_after_utc]

    def save(self, address: Address, certs: Sequence[x509.Certificate]) -> None:
        """Replace the sender's file with `certs` (none: remove it). A disk that refuses
        costs a warning, never the message: the containers stay in memory."""
        path = self.folder / self.name(address)
        try:
            if not certs:
                path.unlink(missing_ok=True)
                return
            with self.lock:
                self.ensure()  # also for `quarantine release`, which does not run `serve`'s start
                if not path.exists() and self._count() >= MAX_KEPT_SENDERS:
                    log.warning("signing containers of a new sender not kept in %s: it holds "
                                "files of %d senders already (the limit)", self.folder,
                                MAX_KEPT_SENDERS)
                    return
                tmp = self.folder / f".{uuid.uuid4().hex}{TEMPORARY}"
                write_synced(tmp, b"".join(to_pem(c) for c in certs))
                os.replace(tmp, path)
                fsync_folder(self.folder)
        except OSError as exc:
            log.warning("cannot keep signing containers in %s: %s (they are kept in memory "
                        "until the gateway stops)", self.folder, exc.strerror or exc)

    def prune(self, now: dt.datetime) -> None:
        """Remove what is of no more use: files whose containers have all expired, files
        that cannot be read (logged), temporary files a crash left. Run at start."""
        try:
            entries = list(self.folder.iterdir())
        except OSError as exc:
            log.warning("cannot read %s: %s", self.folder, exc.strerror or exc)
            return
        for path in entries:
            if path.name.endswith(TEMPORARY):
                path.unlink(missing_ok=True)
                continue
            if not path.name.endswith(SUFFIX) or not path.is_file():
                continue  # not ours
            certs = self._read(path)
            if not certs or all(now > c.not_valid_after_utc for c in certs):
                path.unlink(missing_ok=True)

    def _count(self) -> int:
        return sum(1 for p in self.folder.iterdir() if p.name.endswith(SUFFIX))

    def _read(self, path: Path) -> list[x509.Certificate] | None:
        """The certificates in one file; None when it is missing or unreadable (logged)."""
        try:
            with path.open("rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("kept signing containers %s unreadable: %s; none kept for that sender",
                        path, exc.strerror or exc)
            return None
        try:
            if len(data) > MAX_FILE_BYTES:
                raise ContainerError(f"more than {MAX_FILE_BYTES} bytes")
            return load_certificates(data)
        except ContainerError as exc:
            log.warning("kept signing containers %s unreadable (%s); none kept for that sender",
                        path, exc)
            return None
