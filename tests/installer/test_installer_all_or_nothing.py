"""`keypost install thunderbird` is all or nothing: what can be checked first is checked
before anything is written, and a later failure (the host's `configure`) undoes this run's
writes, leaving an earlier installation exactly as it was. Run as a user runs it, with a
fake HOME and the real host."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from port_util import refusing_port

from keypost.core.containers import DirectoryCA, sha256_fingerprint, to_pem

HOST_LOG = ".cache/keypost/host.log"  # the host's own log of what it was asked: kept


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".thunderbird" / "abcd.default").mkdir(parents=True)
    (home / ".thunderbird" / "profiles.ini").write_text(
        "[Profile0]\nName=default\nIsRelative=1\nPath=abcd.default\nDefault=1\n", "utf-8")
    return home


@pytest.fixture
def anchor(tmp_path: Path) -> tuple[Path, str]:
    ca = DirectoryCA.generate()
    path = tmp_path / "ca.pem"
    path.write_bytes(to_pem(ca.certificate))
    return path, sha256_fingerprint(ca.certificate)


@pytest.fixture
def closed_port() -> Iterator[int]:
    with refusing_port() as port:  # bound for the whole test: no other server gets it
        yield port


@pytest.fixture
def not_a_directory() -> Iterator[int]:
    """A loopback port that accepts connections and closes them: reachable, but no TLS and
    no LDAP, so only the host's connection test inside `configure` finds out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def _state(home: Path) -> dict[str, tuple[int, bytes | None]]:
    out: dict[str, tuple[int, bytes | None]] = {}
    for p in sorted(home.rglob("*")):
        name = str(p.relative_to(home))
        if name == HOST_LOG or HOST_LOG.startswith(name + "/"):
            continue
        out[name] = (p.stat().st_mode, p.read_bytes() if p.is_file() else None)
    return out


def _keypost(
    home: Path, *args: str, stdin: str = "", keyring: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "KEYPOST_"))}
    env.update({"HOME": str(home),
                "PYTHON_KEYRING_BACKEND": keyring or "keyrings.alt.file.PlaintextKeyring"})
    return subprocess.run([sys.executable, "-m", "keypost.core.cli", *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=120, check=False)


FAILURES = {
    # name: (extra arguments, keyring backend, expected words of the one error line)
    "fingerprint-format": (["--fingerprint", "AA:BB", "--offline"], "",
                           "--fingerprint must be a SHA-256 fingerprint"),
    "fingerprint-mismatch": (["--fingerprint", "AB" * 32, "--offline"], "",
                             "not the one given with --fingerprint"),
    "no-keyring": (["--offline"], "keyring.backends.fail.Keyring",
                   "no usable OS keyring for alice's password"),
    "unreachable": (["--directory", "ldaps://127.0.0.1:{closed}"], "",
                    "cannot be reached: Connection refused"),
    # offline, nothing is connected to, but the URL is read as the host will read it
    # before anything is written (not by the host's `configure` after the files: "error:
    # configure: invalid ...", undone; --managed would have preset it for the add-on)
    "bad-url-offline": (["--directory", "ldaps://dir.example.com:0", "--offline"], "",
                        "error: invalid directory URL: its port is not a number"),
    "configure-fails": (["--directory", "ldaps://127.0.0.1:{listening}"], "",
                        "configure: cannot reach the directory"),
}


@pytest.mark.parametrize("upgrade", [False, True], ids=["first-install", "upgrade"])
@pytest.mark.parametrize("case", sorted(FAILURES))
def test_a_failed_install_leaves_home_as_it_was(
    home: Path, anchor: tuple[Path, str], closed_port: int, not_a_directory: int,
    case: str, upgrade: bool, tmp_path: Path,
) -> None:
    if upgrade:
        earlier = _python_wrapper(tmp_path / "earlier")
        done = _keypost(home, "install", "thunderbird", "--python", earlier)
        assert done.returncode == 0, done.stderr
    before = _state(home)
    extra, keyring, expected = FAILURES[case]
    extra = [a.format(closed=closed_port, listening=not_a_directory) for a in extra]
    done = _keypost(
        home, "install", "thunderbird", "--send-in-background", "--managed",
        "--directory", "ldaps://dir.example.com", "--username", "alice", "--password-stdin",
        "--trust-anchor", str(anchor[0]), *extra, stdin="s3cret\n", keyring=keyring)
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith("keypost: error: ") and expected in line, line
    assert done.stdout == ""
    assert _state(home) == before
    if case == "configure-fails":
        assert line.endswith("; nothing was installed or changed")


def test_the_same_install_succeeds_once_the_fingerprint_is_right(
    home: Path, anchor: tuple[Path, str]
) -> None:
    path, fingerprint = anchor
    done = _keypost(home, "install", "thunderbird", "--directory", "ldaps://dir.example.com",
                    "--username", "alice", "--password-stdin", "--trust-anchor", str(path),
                    "--fingerprint", fingerprint.replace(":", "").lower(), "--offline",
                    "--managed", stdin="s3cret\n")
    assert done.returncode == 0, done.stderr
    assert f"trust anchor fingerprint (SHA-256): {fingerprint}" in done.stdout
    # The add-on's options page compares a certificate the user picks against the preset.
    managed = json.loads(
        (home / ".mozilla/managed-storage/keypost@keypost.example.json").read_text("utf-8"))
    assert managed["data"]["trustAnchorFingerprint"] == fingerprint
    assert (home / ".config/keypost/host.toml").is_file()
    assert (home / ".thunderbird/abcd.default/extensions/keypost@keypost.example.xpi").is_file()
    # Now configured: a fingerprint alone is checked against the anchor the host keeps.
    again = _keypost(home, "install", "thunderbird", "--directory", "ldaps://dir.example.com",
                     "--fingerprint", "CD" * 32, "--offline")
    assert again.returncode == 1
    assert "the configured trust anchor has the fingerprint" in again.stderr


def test_host_that_cannot_run_is_found_before_writing(
    home: Path, anchor: tuple[Path, str]
) -> None:
    before = _state(home)
    done = _keypost(home, "install", "thunderbird", "--python", str(home / "no-python"),
                    "--directory", "ldaps://dir.example.com", "--trust-anchor", str(anchor[0]),
                    "--offline")
    assert done.returncode == 1 and "cannot run the keypost host" in done.stderr
    assert _state(home) == before


def test_an_interpreter_that_cannot_run_the_host_is_refused_without_directory_too(
    home: Path, tmp_path: Path
) -> None:
    """--python alone (no --directory, so no `configure`): the launcher would name an
    interpreter Thunderbird cannot start the host with; found before anything is written."""
    before = _state(home)
    for python in (str(home / "no-python"), shutil.which("sh") or "/bin/sh"):
        done = _keypost(home, "install", "thunderbird", "--python", python)
        assert done.returncode == 1 and done.stdout == ""
        [line] = done.stderr.splitlines()
        expected = f"keypost: error: --python {python} cannot run the keypost host"
        assert line.startswith(expected), line
        assert _state(home) == before
    good = _python_wrapper(tmp_path / "later")
    done = _keypost(home, "install", "thunderbird", "--python", good)
    assert done.returncode == 0, done.stderr
    assert f"exec '{good}' -m keypost.host" in (
        home / ".local/share/keypost/keypost-host").read_text("utf-8")


def _python_wrapper(folder: Path) -> str:
    """An interpreter at another path that runs this environment's Python (an upgrade or a
    moved environment, as the launcher sees it)."""
    path = folder / "bin" / "python"
    path.parent.mkdir(parents=True)
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n', "utf-8")
    path.chmod(0o755)
    return str(path)


def test_a_write_that_fails_half_way_is_one_line_and_undone(home: Path, tmp_path: Path) -> None:
    done = _keypost(home, "install", "thunderbird", "--python", _python_wrapper(tmp_path / "a"))
    assert done.returncode == 0, done.stderr
    before = _state(home)
    blocker = tmp_path / "a-file-not-a-profile"
    blocker.write_bytes(b"")
    done = _keypost(home, "install", "thunderbird", "--python", _python_wrapper(tmp_path / "b"),
                    "--profile", str(home / ".thunderbird" / "abcd.default"),
                    "--profile", str(blocker))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"keypost: error: cannot write {blocker / 'extensions'}: Not a directory;"
        " nothing was installed or changed"]
    assert _state(home) == before


def test_install_repairs_a_damaged_host_configuration_and_purge_removes_one(
    home: Path, anchor: tuple[Path, str]
) -> None:
    args = ["install", "thunderbird", "--directory", "ldaps://dir.example.com",
            "--trust-anchor", str(anchor[0]), "--offline"]
    assert _keypost(home, *args).returncode == 0
    config = home / ".config" / "keypost" / "host.toml"
    config.write_text("directory = [", "utf-8")  # a crash, a full disk, a bad hand edit
    done = _keypost(home, *args)
    assert done.returncode == 0, done.stderr
    assert 'directory = "ldaps://dir.example.com"' in config.read_text("utf-8")
    config.write_text("directory = [", "utf-8")
    done = _keypost(home, "uninstall", "thunderbird", "--purge")
    assert done.returncode == 0, done.stderr
    assert not config.parent.exists()


def test_a_relative_python_is_made_absolute_for_the_launcher(home: Path) -> None:
    """Thunderbird runs the launcher from a folder of its choosing: an interpreter named
    relative to where `keypost install` ran would not be found there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "KEYPOST_"))}
    env["HOME"] = str(home)
    on_path = _python_wrapper(home / "tools")
    env["PATH"] = f"{Path(on_path).parent}{os.pathsep}{env.get('PATH', '')}"
    launcher = home / ".local/share/keypost/keypost-host"
    for given, expected in (("venv/bin/python", _python_wrapper(home / "venv")),
                            ("python", on_path)):
        done = subprocess.run([sys.executable, "-m", "keypost.core.cli", "install",
                               "thunderbird", "--python", given], cwd=home, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert f"exec '{expected}' -m keypost.host" in launcher.read_text("utf-8")
