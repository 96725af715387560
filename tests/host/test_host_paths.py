"""Where the host keeps configuration and the container cache: the user's own folders per OS."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from host_support import Factory, MemoryKeyring, PolicyDirectory, configure, ok

from keypost.core.containers import DirectoryCA
from keypost.host import paths
from keypost.host.actions import Host
from keypost.host.cache import CACHE_FILE


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No keypost or XDG overrides; HOME is a temporary folder."""
    for var in ("KEYPOST_CONFIG_DIR", "KEYPOST_CACHE_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME",
                "APPDATA", "LOCALAPPDATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path))
    return tmp_path


@pytest.mark.parametrize(("platform", "config", "cache"), [
    ("linux", ".config/keypost", ".cache/keypost"),
    ("darwin", "Library/Application Support/keypost", "Library/Caches/keypost"),
    ("win32", "AppData/Roaming/keypost", "AppData/Local/keypost/Cache"),
])
def test_per_os_defaults(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                         platform: str, config: str, cache: str) -> None:
    monkeypatch.setattr(sys, "platform", platform)
    assert paths.config_dir() == clean_env / config
    assert paths.cache_dir() == clean_env / cache


def test_environment_overrides(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(clean_env / "xc"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(clean_env / "xf"))
    assert paths.cache_dir() == clean_env / "xc/keypost"
    assert paths.config_dir() == clean_env / "xf/keypost"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(clean_env / "L"))
    monkeypatch.setenv("APPDATA", str(clean_env / "R"))
    assert paths.cache_dir() == clean_env / "L/keypost/Cache"
    assert paths.config_dir() == clean_env / "R/keypost"
    monkeypatch.setenv("KEYPOST_CACHE_DIR", str(clean_env / "k"))
    assert paths.cache_dir() == clean_env / "k"


def test_relative_xdg_variables_are_ignored(clean_env: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    """The XDG Base Directory spec: a relative path is invalid and must be ignored. Taken
    as it was, the host (started by Thunderbird in whatever folder) kept its configuration
    and container cache under its current directory."""
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", "xc")
    monkeypatch.setenv("XDG_CONFIG_HOME", "./xf")
    assert paths.cache_dir() == clean_env / ".cache/keypost"
    assert paths.config_dir() == clean_env / ".config/keypost"


def test_a_default_host_caches_containers_in_the_user_cache_dir(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, memory_keyring: MemoryKeyring,
    ca: DirectoryCA, gateway_keys: Any,
) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    factory = Factory(PolicyDirectory(ca, gateway_keys, "example.com"))
    host = Host(client_factory=factory)  # no folders given: the user's own
    assert configure(host, ca)["ok"]
    ok(host, "lookup", recipients=["bob@example.org"])
    host.idle()
    assert (clean_env / ".config/keypost/host.toml").is_file()
    assert (clean_env / ".cache/keypost" / CACHE_FILE).is_file()
    # A new session (Thunderbird may start a host per port) answers from that file.
    again = Host(client_factory=factory)
    calls = len(factory.directory.calls)
    [bob] = ok(again, "lookup", recipients=["bob@example.org"])["recipients"]
    assert bob["source"] == "cache" and len(factory.directory.calls) == calls


def test_concurrent_writers_each_replace_the_file_whole(tmp_path: Path) -> None:
    """Thunderbird may run several hosts at once (one per port, one per sendNativeMessage),
    each saving the container cache: every write lands whole, none fails, and no
    temporary file is left behind."""
    import threading

    target = tmp_path / "cache" / CACHE_FILE
    failures: list[BaseException] = []

    def writer(n: int) -> None:
        data = str(n).encode() * 200_000
        for _ in range(50):
            try:
                paths.write_private(target, data)
            except BaseException as exc:  # collected: the assertion below names them
                failures.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    data = target.read_bytes()
    assert len(data) == 200_000 and len(set(data)) == 1
    assert [p.name for p in target.parent.iterdir()] == [CACHE_FILE]
    assert target.stat().st_mode & 0o777 == 0o600


def test_a_leftover_temporary_file_does_not_widen_the_mode(tmp_path: Path) -> None:
    """A temporary file left by a crashed writer (here readable by all) is not reused."""
    target = tmp_path / "host.toml"
    stale = tmp_path / "host.toml.tmp"
    stale.write_bytes(b"old")
    stale.chmod(0o644)
    paths.write_private(target, b"directory = 'x'\n")
    assert target.stat().st_mode & 0o777 == 0o600
