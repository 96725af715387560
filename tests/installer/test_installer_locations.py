"""Manifest, managed storage, data and profile locations per OS, from the data table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from keypost.installer.manifest_locations import (
    ADDON_ID,
    HOST_NAME,
    NATIVE_HOST_DIRS,
    Environment,
)


def test_host_name_is_a_valid_native_messaging_name() -> None:
    assert re.fullmatch(r"\w+(\.\w+)*", HOST_NAME)
    assert "@" in ADDON_ID


def test_linux_user_and_system(tmp_path: Path) -> None:
    env = Environment("linux", tmp_path, {})
    assert env.native_host_dirs("user") == [tmp_path / ".mozilla/native-messaging-hosts"]
    assert env.native_host_dirs("system")[0] == Path("/usr/lib/mozilla/native-messaging-hosts")
    assert env.managed_storage_dirs("user") == [tmp_path / ".mozilla/managed-storage"]
    assert env.data_dir("user") == tmp_path / ".local/share/keypost"
    assert env.profile_roots() == [tmp_path / ".thunderbird", tmp_path / ".config/thunderbird",
                                   tmp_path / "snap/thunderbird/common/.thunderbird",
                                   tmp_path / ".var/app/org.mozilla.Thunderbird/.thunderbird"]


def test_linux_xdg_variables_are_honoured_and_empty_ones_ignored(tmp_path: Path) -> None:
    env = Environment(
        "linux", tmp_path, {"XDG_DATA_HOME": str(tmp_path / "d"), "XDG_CONFIG_HOME": ""}
    )
    assert env.data_dir("user") == tmp_path / "d/keypost"
    assert env.profile_roots()[1] == tmp_path / ".config/thunderbird"


def test_macos_uses_library_mozilla_not_application_support(tmp_path: Path) -> None:
    env = Environment("darwin", tmp_path, {})
    assert env.native_host_dirs("user") == [tmp_path / "Library/Mozilla/NativeMessagingHosts"]
    assert env.native_host_dirs("system") == [
        Path("/Library/Application Support/Mozilla/NativeMessagingHosts")
    ]
    assert env.profile_roots() == [tmp_path / "Library/Thunderbird"]


def test_windows_files_under_localappdata_and_registry_keys(tmp_path: Path) -> None:
    env = Environment(
        "win32",
        tmp_path,
        {"APPDATA": str(tmp_path / "Roaming"), "LOCALAPPDATA": str(tmp_path / "Local")},
    )
    assert env.native_host_dirs("user") == [tmp_path / "Local/keypost/native-messaging-hosts"]
    assert env.profile_roots() == [tmp_path / "Roaming/Thunderbird"]
    assert env.registry_key("native", "user", HOST_NAME) == (
        "HKEY_CURRENT_USER",
        r"Software\Mozilla\NativeMessagingHosts\org.keypost.host",
    )
    assert env.registry_key("native", "system", HOST_NAME)[0] == "HKEY_LOCAL_MACHINE"
    assert env.registry_key("managed", "user", ADDON_ID)[1].endswith(
        r"ManagedStorage\keypost@keypost.example"
    )


@pytest.mark.parametrize("key", sorted(NATIVE_HOST_DIRS))
def test_every_table_entry_expands_to_an_absolute_path(
    key: tuple[str, str], tmp_path: Path
) -> None:
    os_name, scope = key
    env = Environment(os_name, tmp_path, {"PROGRAMDATA": str(tmp_path / "pd")})  # type: ignore[arg-type]
    for d in env.native_host_dirs(scope):  # type: ignore[arg-type]
        assert d.is_absolute(), d
