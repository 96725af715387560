"""Windows registry access behind a Protocol, so the installer's path logic is testable anywhere."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, Protocol


class RegistryWriter(Protocol):
    """Sets and deletes a key's default value; `hive` is e.g. "HKEY_CURRENT_USER"."""

    def set_default(self, hive: str, key: str, value: str) -> None: ...

    def delete(self, hive: str, key: str) -> None: ...

    def get_default(self, hive: str, key: str) -> str | None: ...


class WinRegistry:
    """The real registry (Windows only; winreg is imported when this is created)."""

    def __init__(self) -> None:
        # Imported by name: winreg exists only on Windows (and its stubs only type-check there).
        self._winreg: Any = importlib.import_module("winreg")

    def _hive(self, hive: str) -> int:
        value: int = getattr(self._winreg, hive)
        return value

    def set_default(self, hive: str, key: str, value: str) -> None:
        with self._winreg.CreateKeyEx(self._hive(hive), key, 0, self._winreg.KEY_WRITE) as k:
            self._winreg.SetValueEx(k, "", 0, self._winreg.REG_SZ, value)

    def delete(self, hive: str, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._winreg.DeleteKey(self._hive(hive), key)

    def get_default(self, hive: str, key: str) -> str | None:
        try:
            with self._winreg.OpenKey(self._hive(hive), key) as k:
                value, _kind = self._winreg.QueryValueEx(k, "")
        except FileNotFoundError:
            return None
        return str(value)


class MemoryRegistry:
    """An in-memory registry for tests and dry runs."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], str] = {}

    def set_default(self, hive: str, key: str, value: str) -> None:
        self.values[(hive, key)] = value

    def delete(self, hive: str, key: str) -> None:
        self.values.pop((hive, key), None)

    def get_default(self, hive: str, key: str) -> str | None:
        return self.values.get((hive, key))
