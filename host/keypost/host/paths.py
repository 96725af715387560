"""Where the host keeps its configuration and cache, per OS (platformdirs' rules, by hand)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

APP = "keypost"


def config_dir() -> Path:
    """$KEYPOST_CONFIG_DIR, else the OS's per-user configuration folder + /keypost."""
    override = os.environ.get("KEYPOST_CONFIG_DIR")
    if override:
        return Path(override)
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming") / APP
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / APP
    return _xdg("XDG_CONFIG_HOME", home / ".config") / APP


def cache_dir() -> Path:
    """$KEYPOST_CACHE_DIR, else the OS's per-user cache folder + /keypost."""
    override = os.environ.get("KEYPOST_CACHE_DIR")
    if override:
        return Path(override)
    home = Path.home()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local"
        return Path(local) / APP / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / APP
    return _xdg("XDG_CACHE_HOME", home / ".cache") / APP


def _xdg(variable: str, default: Path) -> Path:
    """An XDG base directory: unset, empty and relative values are ignored, as the XDG Base
    Directory spec says (a relative one would put our files under the current folder)."""
    value = os.environ.get(variable, "")
    return Path(value) if os.path.isabs(value) else default


def write_private(path: Path, data: bytes) -> None:
    """Write a file atomically, readable only by the user (configuration is nobody else's).

    The temporary file has a name of its own (mkstemp: new, mode 0600): several hosts may
    save the cache at once, and a shared name let one rename another's half-written file
    into place and fail on its own rename."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
