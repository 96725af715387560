"""install/uninstall round trips in a temporary HOME, Windows via an in-memory registry."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from keypost.installer.manifest_locations import Environment
from keypost.installer.registry import MemoryRegistry
from keypost.installer.thunderbird import InstallOptions, install, uninstall

REPO = Path(__file__).resolve().parents[2]
ADDON = "keypost@keypost.example.xpi"


def _profile_home(home: Path, root: str = ".thunderbird") -> Path:
    profile = home / root / "abcd.default"
    profile.mkdir(parents=True)
    (home / root / "profiles.ini").write_text(
        "[Profile0]\nName=default\nIsRelative=1\nPath=abcd.default\nDefault=1\n", "utf-8"
    )
    return profile


def _quiet(_line: str) -> None:
    pass


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_linux_round_trip(tmp_path: Path) -> None:
    home = tmp_path / "home"
    profile = _profile_home(home)
    (profile / "prefs.js").write_text("// Thunderbird's own\n", "utf-8")
    before = _tree(home)
    env = Environment("linux", home, {})
    result = install(
        env, InstallOptions(python="/opt/py/bin/python3", send_in_background=True), log=_quiet
    )

    manifest_path = home / ".mozilla/native-messaging-hosts/org.keypost.host.json"
    assert result.manifests == (manifest_path,)
    manifest = json.loads(manifest_path.read_text("utf-8"))
    launcher = home / ".local/share/keypost/keypost-host"
    assert manifest["path"] == str(launcher)
    assert manifest["allowed_extensions"] == ["keypost@keypost.example"]
    assert "'/opt/py/bin/python3' -m keypost.host" in launcher.read_text("utf-8")
    assert launcher.stat().st_mode & 0o111
    xpi = profile / "extensions" / ADDON
    assert zipfile.ZipFile(xpi).read("manifest.json")
    assert xpi.read_bytes() == (home / ".local/share/keypost" / ADDON).read_bytes()
    assert 'user_pref("mailnews.sendInBackground", true);' in (profile / "user.js").read_text()

    uninstall(env, log=_quiet)
    assert _tree(home) == before
    assert not (home / ".local/share/keypost").exists()


def test_reinstall_after_moving_rewrites_paths(tmp_path: Path) -> None:
    home = tmp_path / "home"
    profile = _profile_home(home)
    env = Environment("linux", home, {})
    old_src = tmp_path / "old" / "extension"
    shutil.copytree(REPO / "extension", old_src)
    install(env, InstallOptions(python="/old/venv/bin/python", extension_dir=old_src), log=_quiet)
    # The environment moved and the add-on was upgraded meanwhile.
    new_src = tmp_path / "new" / "extension"
    shutil.copytree(REPO / "extension", new_src)
    manifest = json.loads((new_src / "manifest.json").read_text("utf-8"))
    manifest["version"] = "0.2.0"
    (new_src / "manifest.json").write_text(json.dumps(manifest), "utf-8")
    shutil.rmtree(old_src)
    install(env, InstallOptions(python="/new/venv/bin/python", extension_dir=new_src), log=_quiet)

    launcher = (home / ".local/share/keypost/keypost-host").read_text("utf-8")
    assert "/new/venv/bin/python" in launcher and "/old/" not in launcher
    shipped = json.loads(zipfile.ZipFile(profile / "extensions" / ADDON).read("manifest.json"))
    assert shipped["version"] == "0.2.0"
    assert not (profile / "user.js").exists(), "no prefs asked for, no user.js written"


def test_windows_registry_and_paths(tmp_path: Path) -> None:
    home = tmp_path / "User"
    appdata = home / "AppData/Roaming"
    profile = _profile_home(appdata, "Thunderbird")
    env = Environment(
        "win32", home, {"APPDATA": str(appdata), "LOCALAPPDATA": str(home / "AppData/Local")}
    )
    reg = MemoryRegistry()
    result = install(
        env,
        InstallOptions(
            python=r"C:\Python311\python.exe", managed={"directoryUrl": "ldaps://d.example"}
        ),
        registry=reg,
        log=_quiet,
    )
    manifest_file = home / "AppData/Local/keypost/native-messaging-hosts/org.keypost.host.json"
    key = ("HKEY_CURRENT_USER", r"Software\Mozilla\NativeMessagingHosts\org.keypost.host")
    assert reg.values[key] == str(manifest_file)
    assert json.loads(manifest_file.read_text("utf-8"))["path"].endswith("keypost-host.cmd")
    assert result.launcher.read_bytes().startswith(b"@echo off\r\n")
    managed_key = ("HKEY_CURRENT_USER", r"Software\Mozilla\ManagedStorage\keypost@keypost.example")
    managed = json.loads(Path(reg.values[managed_key]).read_text("utf-8"))
    assert managed["type"] == "storage" and managed["data"]["directoryUrl"] == "ldaps://d.example"
    assert (profile / "extensions" / ADDON).is_file()

    uninstall(env, registry=reg, log=_quiet)
    assert reg.values == {}
    assert not manifest_file.exists()
    assert not (profile / "extensions" / ADDON).exists()


def test_macos_locations(tmp_path: Path) -> None:
    home = tmp_path / "home"
    profile = _profile_home(home / "Library", "Thunderbird")
    env = Environment("darwin", home, {})
    result = install(env, InstallOptions(python="/usr/local/bin/python3"), log=_quiet)
    assert result.manifests == (
        home / "Library/Mozilla/NativeMessagingHosts/org.keypost.host.json",
    )
    assert result.launcher == home / "Library/Application Support/keypost/keypost-host"
    assert result.profiles == (profile,)


def test_no_profile_prints_where_the_xpi_is(tmp_path: Path) -> None:
    lines: list[str] = []
    result = install(Environment("linux", tmp_path, {}), InstallOptions(), log=lines.append)
    assert result.profiles == ()
    assert any(str(result.xpi) in line and "Add-ons Manager" in line for line in lines)


def test_cli_errors_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("XDG_DATA_HOME", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "keypost.core.cli",
            "install",
            "thunderbird",
            "--directory",
            "https://d.example",
            "--trust-anchor",
            str(tmp_path / "missing.pem"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"keypost: error: trust anchor file not found: {tmp_path / 'missing.pem'}"
    ]
    assert _tree(tmp_path) == set()


def test_install_with_directory_then_uninstall_purge_leaves_nothing(tmp_path: Path) -> None:
    """The CLI as a user runs it: install configures the real host (config files + keyring),
    `uninstall --purge` removes them again, and nothing else of HOME is touched."""
    import os
    import subprocess
    import sys

    from keypost.core.containers import DirectoryCA, to_pem

    home = tmp_path / "home"
    keep = home / "Documents" / "mine.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("not keypost's", "utf-8")
    anchor = tmp_path / "ca.pem"
    anchor.write_bytes(to_pem(DirectoryCA.generate().certificate))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "KEYPOST_"))}
    env.update({"HOME": str(home), "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring"})
    secret = "purge-me Pa55word"

    def keypost(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run([sys.executable, "-m", "keypost.core.cli", *args], input=stdin,
                              capture_output=True, text=True, env=env, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def stored() -> str:
        """alice's keyring entry, read by a separate process with the same keyring."""
        code = "import keyring; print(keyring.get_password('keypost', 'alice'))"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, timeout=60, check=True)
        return done.stdout.strip()

    keypost("install", "thunderbird", "--directory", "ldaps://dir.example.com", "--username",
            "alice", "--password-stdin", "--trust-anchor", str(anchor), "--offline",
            stdin=secret + "\n")
    assert (home / ".config/keypost/host.toml").is_file()
    assert stored() == secret
    out = keypost("uninstall", "thunderbird", "--purge")
    assert "removed the keyring entry of alice" in out
    assert stored() == "None"
    assert not (home / ".config/keypost").exists() and not (home / ".cache/keypost").exists()
    assert not (home / ".local/share/keypost").exists()
    assert not (home / ".mozilla/native-messaging-hosts/org.keypost.host.json").exists()
    assert keep.read_text("utf-8") == "not keypost's"
    for path in home.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_purge_leaves_a_folder_that_is_not_keypost_own(tmp_path: Path) -> None:
    """KEYPOST_CONFIG_DIR may name any folder (HOME itself): `uninstall --purge` removed
    whatever folder the host reported, with everything in it."""
    import os
    import subprocess
    import sys

    from keypost.core.containers import DirectoryCA, to_pem

    home = tmp_path / "home"
    shared = home / "shared"
    shared.mkdir(parents=True)
    (shared / "mine.txt").write_text("not keypost's", "utf-8")
    anchor = tmp_path / "ca.pem"
    anchor.write_bytes(to_pem(DirectoryCA.generate().certificate))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "KEYPOST_"))}
    env.update({"HOME": str(home), "KEYPOST_CONFIG_DIR": str(shared),
                "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring"})

    def keypost(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "keypost.core.cli", *args],
                              capture_output=True, text=True, env=env, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    keypost("install", "thunderbird", "--directory", "ldaps://dir.example.com",
            "--trust-anchor", str(anchor), "--offline")
    assert (shared / "host.toml").is_file()
    out = keypost("uninstall", "thunderbird", "--purge")
    assert f"left {shared} in place" in out
    assert (shared / "mine.txt").read_text("utf-8") == "not keypost's"
    assert not (home / ".cache/keypost").exists()  # the host's own cache folder still goes


def test_purge_removes_the_hosts_own_folders_under_their_default_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's default folders are keypost's own even where the last part is not
    `keypost`: on Windows the cache is %LOCALAPPDATA%\\keypost\\Cache (host/paths.py)."""
    from keypost.installer import hostconfig, thunderbird

    config = tmp_path / "Roaming" / "keypost"
    cache = tmp_path / "Local" / "keypost" / "Cache"
    other = tmp_path / "Local" / "Cache"  # a Cache folder that is not keypost's
    for folder in (config, cache, other):
        folder.mkdir(parents=True)
        (folder / "file").write_text("x", "utf-8")
    lines: list[str] = []
    for cache_dir in (cache, other):
        monkeypatch.setattr(hostconfig, "status", lambda _c=str(cache_dir), **_: {
            "config_dir": str(config), "cache_dir": _c})
        thunderbird.purge_host_config(log=lines.append)
    assert not config.exists() and not cache.exists()
    assert (other / "file").read_text("utf-8") == "x"
    assert f"removed {cache}" in lines and any(f"left {other} in place" in x for x in lines)


def test_no_profile_says_the_asked_for_prefs_were_not_set(tmp_path: Path) -> None:
    """--send-in-background and --auto-enable go into a profile's user.js: with no profile
    found they were dropped without a word, and encrypted mail then waited in the Outbox."""
    lines: list[str] = []
    install(Environment("linux", tmp_path, {}),
            InstallOptions(send_in_background=True, auto_enable=True), log=lines.append)
    [note] = [line for line in lines if "mailnews.sendInBackground" in line]
    assert "not set" in note and "extensions.autoDisableScopes" in note, note
    lines.clear()
    install(Environment("linux", tmp_path, {}), InstallOptions(), log=lines.append)
    assert not any("not set" in line for line in lines)  # nothing asked, nothing to say


def test_relative_xdg_variables_are_ignored(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """XDG Base Directory spec: a relative XDG_DATA_HOME or XDG_CONFIG_HOME is invalid and
    ignored. Taken as it was, install failed with "launcher path must be absolute" after
    writing nothing useful, and profiles were looked for (and the add-on and user.js
    written) under whatever folder the installer happened to be started in."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    profile = _profile_home(home)
    stray = _profile_home(cwd, "cfg/thunderbird")  # a profiles.ini relative to the cwd
    monkeypatch.chdir(cwd)
    env = Environment("linux", home, {"XDG_DATA_HOME": "data", "XDG_CONFIG_HOME": "cfg"})
    result = install(env, InstallOptions(python="/opt/py/bin/python3"), log=_quiet)
    assert result.launcher == home / ".local/share/keypost/keypost-host"
    assert result.profiles == (profile,)
    assert not (stray / "extensions").exists() and not (cwd / "data").exists()
