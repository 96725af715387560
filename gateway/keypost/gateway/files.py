"""Private folders and durable writes for what the gateway keeps on disk (quarantine, state)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from keypost.core.durable import fsync_folder, write_synced

__all__ = ["PRIVATE", "folder_problem", "fsync_folder", "make_private_dirs", "write_synced"]

PRIVATE = 0o700  # held and demo-inbox mail is decrypted: for the gateway's user alone


def make_private_dirs(path: Path) -> None:
    """Create `path` and its missing parents, each 0700. mkdir's mode is masked by the
    umask, so every folder created here is chmod-ed; folders that exist are left alone."""
    missing = []
    parent = path
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE)
        except FileExistsError:
            continue  # created meanwhile by someone else: theirs to set
        os.chmod(folder, PRIVATE)
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))


def folder_problem(path: Path) -> str | None:
    """Why make_private_dirs(path) would fail, found without creating anything, or None."""
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a folder"
    if parent != path and not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create folders in {parent}"
    return None
