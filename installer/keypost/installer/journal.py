"""Undo log of one install run: what each file, folder and registry key was before this run
wrote it, so a run that fails half-way puts back exactly that (an upgrade that fails leaves
the previous installation as it was, not an empty one)."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from keypost.installer.errors import InstallError
from keypost.installer.registry import RegistryWriter

Undo = Callable[[], None]


class UndoFailed(InstallError):
    """A run failed and some of what it wrote could not be put back (the message names it)."""


class Journal:
    """Use as `with Journal() as j:`; leaving the block by an exception undoes every step
    recorded, newest first, and re-raises (with the paths it could not put back, if any)."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Undo]] = []
        self._saved: set[Path] = set()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self._undo.clear()
            return
        failed = self.rollback()
        if failed:
            raise UndoFailed(f"{exc}; could not undo: {', '.join(failed)}") from exc

    def rollback(self) -> list[str]:
        """Undo every recorded step, newest first; returns what could not be undone."""
        failed = []
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except OSError:
                failed.append(what)
        self._saved.clear()
        return failed

    def makedirs(self, folder: Path) -> None:
        """Create `folder` and its missing parents; undo removes those it created (if empty)."""
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for created in reversed(missing):
            created.mkdir()
            self._undo.append((str(created), _rmdir_if_empty(created)))

    def saving(self, path: Path) -> None:
        """Record what `path` is now (a file, a symlink, or nothing) before it is written or
        removed; undo restores it. Only the first call per path counts."""
        if path in self._saved:
            return
        self._saved.add(path)
        self._undo.append((str(path), _restorer(path)))

    def write(self, path: Path, data: bytes, mode: int | None = None) -> None:
        """Replace `path` atomically (temporary file + rename), recorded for undo."""
        self.makedirs(path.parent)
        self.saving(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_bytes(data)
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def set_registry(self, registry: RegistryWriter, hive: str, key: str, value: str) -> None:
        """Set a key's default value; undo puts back the old value or deletes the key."""
        old = registry.get_default(hive, key)

        def undo() -> None:
            if old is None:
                registry.delete(hive, key)
            else:
                registry.set_default(hive, key, old)

        self._undo.append((f"{hive}\\{key}", undo))
        registry.set_default(hive, key, value)


def _rmdir_if_empty(folder: Path) -> Undo:
    def undo() -> None:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

    return undo


def _restorer(path: Path) -> Undo:
    if path.is_symlink():
        target = os.readlink(path)

        def relink() -> None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            path.symlink_to(target)

        return relink
    if path.is_file():
        data = path.read_bytes()
        mode = stat.S_IMODE(path.stat().st_mode)

        def rewrite() -> None:
            tmp = path.with_name(path.name + ".undo")
            tmp.write_bytes(data)
            os.chmod(tmp, mode)
            os.replace(tmp, path)

        return rewrite
    if path.exists():
        raise InstallError(f"{path} is in the way (not a file)")

    def remove() -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    return remove
