"""Writes that survive a power loss: a file synced before it is renamed into place, and
the folder synced after the rename (shared by the directory's journal and the gateway's
quarantine and state files)."""

from __future__ import annotations

import os
from pathlib import Path


def write_synced(path: Path, data: bytes) -> None:
    """Create `path` (it must not exist), mode 0600, with `data` on the disk (fsync) before
    it returns: the caller renames it into place. Raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_folder(folder: Path) -> None:
    """Make a rename or an unlink in `folder` durable. Raises OSError."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
