"""Where Thunderbird looks for native messaging manifests, managed storage and profiles, per OS.

Data, not code paths (KeePassXC's NativeMessageInstaller keeps the same kind of table): each
entry is a template expanded against one `Environment`. Thunderbird shares Firefox's native
messaging locations on Linux and Windows but NOT on macOS (~/Library/Mozilla, not
~/Library/Application Support/Mozilla).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

OS = Literal["linux", "darwin", "win32"]
Scope = Literal["user", "system"]

HOST_NAME = "org.keypost.host"  # matches ^\w+(\.\w+)*$ and is the manifest file stem
ADDON_ID = "keypost@keypost.example"

# Native messaging manifest directories. On Windows the JSON lives in our own folder and the
# registry value (REGISTRY_KEYS) points at it.
NATIVE_HOST_DIRS: dict[tuple[OS, Scope], tuple[str, ...]] = {
    ("linux", "user"): ("{HOME}/.mozilla/native-messaging-hosts",),
    ("linux", "system"): (
        "/usr/lib/mozilla/native-messaging-hosts",
        "/usr/lib64/mozilla/native-messaging-hosts",
    ),
    ("darwin", "user"): ("{HOME}/Library/Mozilla/NativeMessagingHosts",),
    ("darwin", "system"): ("/Library/Application Support/Mozilla/NativeMessagingHosts",),
    ("win32", "user"): ("{LOCALAPPDATA}/keypost/native-messaging-hosts",),
    ("win32", "system"): ("{PROGRAMDATA}/keypost/native-messaging-hosts",),
}

# Managed storage manifests (storage.managed: admins preset the directory URL).
MANAGED_STORAGE_DIRS: dict[tuple[OS, Scope], tuple[str, ...]] = {
    ("linux", "user"): ("{HOME}/.mozilla/managed-storage",),
    ("linux", "system"): ("/usr/lib/mozilla/managed-storage",),
    ("darwin", "user"): ("{HOME}/Library/Mozilla/ManagedStorage",),
    ("darwin", "system"): ("/Library/Application Support/Mozilla/ManagedStorage",),
    ("win32", "user"): ("{LOCALAPPDATA}/keypost/managed-storage",),
    ("win32", "system"): ("{PROGRAMDATA}/keypost/managed-storage",),
}

# Windows: (hive, key); the key's default value is the path of the JSON manifest.
REGISTRY_KEYS: dict[tuple[str, Scope], tuple[str, str]] = {
    ("native", "user"): ("HKEY_CURRENT_USER", r"Software\Mozilla\NativeMessagingHosts\{name}"),
    ("native", "system"): ("HKEY_LOCAL_MACHINE", r"Software\Mozilla\NativeMessagingHosts\{name}"),
    ("managed", "user"): ("HKEY_CURRENT_USER", r"Software\Mozilla\ManagedStorage\{name}"),
    ("managed", "system"): ("HKEY_LOCAL_MACHINE", r"Software\Mozilla\ManagedStorage\{name}"),
}

# Where the launcher script and the built .xpi live (rewritten on every install).
DATA_DIRS: dict[tuple[OS, Scope], str] = {
    ("linux", "user"): "{XDG_DATA_HOME}/keypost",
    ("linux", "system"): "/usr/local/lib/keypost",
    ("darwin", "user"): "{HOME}/Library/Application Support/keypost",
    ("darwin", "system"): "/Library/Application Support/keypost",
    ("win32", "user"): "{LOCALAPPDATA}/keypost",
    ("win32", "system"): "{PROGRAMDATA}/keypost",
}

# Folders holding Thunderbird's profiles.ini (every one that exists is used). On Linux
# also the Snap (Ubuntu's Thunderbird since 24.04) and Flathub packages' own homes; both
# read native manifests from the usual place through the WebExtensions portal (the snap
# turned it on in 2025-02; whether a Flatpak Thunderbird does depends on its version).
PROFILE_ROOTS: dict[OS, tuple[str, ...]] = {
    "linux": ("{HOME}/.thunderbird", "{XDG_CONFIG_HOME}/thunderbird",
              "{HOME}/snap/thunderbird/common/.thunderbird",
              "{HOME}/.var/app/org.mozilla.Thunderbird/.thunderbird"),
    "darwin": ("{HOME}/Library/Thunderbird",),
    "win32": ("{APPDATA}/Thunderbird",),
}

# Defaults for variables a template may use when the environment does not set them.
_DEFAULTS: dict[str, str] = {
    "XDG_DATA_HOME": "{HOME}/.local/share",
    "XDG_CONFIG_HOME": "{HOME}/.config",
    "APPDATA": "{HOME}/AppData/Roaming",
    "LOCALAPPDATA": "{HOME}/AppData/Local",
    "PROGRAMDATA": "C:/ProgramData",
}


def current_os() -> OS:
    if sys.platform.startswith("win"):
        return "win32"
    if sys.platform == "darwin":
        return "darwin"
    return "linux"


@dataclass(frozen=True)
class Environment:
    """The OS and the variables the templates expand against (injectable for tests)."""

    os: OS
    home: Path
    environ: Mapping[str, str] = field(default_factory=dict)

    @staticmethod
    def current() -> Environment:
        return Environment(current_os(), Path.home(), dict(os.environ))

    def expand(self, template: str, name: str = HOST_NAME) -> Path:
        """Fill {HOME}, {XDG_*}, {APPDATA}, ... ; empty environment values count as unset,
        and so do relative XDG_* ones (the XDG Base Directory spec: such a path is invalid
        and ignored); taken as they were, they named folders under the current directory."""
        values: dict[str, str] = {"HOME": str(self.home), "name": name}
        for var, default in _DEFAULTS.items():
            value = self.environ.get(var, "")
            if var.startswith("XDG_") and not value.startswith("/"):
                value = ""
            values[var] = value or default.format(HOME=self.home)
        return Path(template.format(**values))

    def native_host_dirs(self, scope: Scope) -> list[Path]:
        return [self.expand(t) for t in NATIVE_HOST_DIRS[(self.os, scope)]]

    def managed_storage_dirs(self, scope: Scope) -> list[Path]:
        return [self.expand(t) for t in MANAGED_STORAGE_DIRS[(self.os, scope)]]

    def data_dir(self, scope: Scope) -> Path:
        return self.expand(DATA_DIRS[(self.os, scope)])

    def profile_roots(self) -> list[Path]:
        return [self.expand(t) for t in PROFILE_ROOTS[self.os]]

    def registry_key(
        self, kind: Literal["native", "managed"], scope: Scope, name: str
    ) -> tuple[str, str]:
        hive, key = REGISTRY_KEYS[(kind, scope)]
        return hive, key.format(name=name)
