"""The native messaging manifest JSON and the launcher script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keypost.installer.errors import InstallError
from keypost.installer.native_manifest import (
    dumps,
    host_manifest,
    launcher_bytes,
    launcher_script,
)


def test_manifest_content(tmp_path: Path) -> None:
    m = json.loads(dumps(host_manifest(tmp_path / "keypost-host")))
    assert m == {
        "name": "org.keypost.host",
        "description": m["description"],
        "path": str(tmp_path / "keypost-host"),
        "type": "stdio",
        "allowed_extensions": ["keypost@keypost.example"],
    }


def test_manifest_refuses_relative_launcher() -> None:
    with pytest.raises(ValueError):
        host_manifest(Path("relative/keypost-host"))


def test_windows_launcher_quotes_the_interpreter() -> None:
    text = launcher_script("win32", r"C:\Program Files\Python 3\python.exe")
    assert text == '@echo off\r\n"C:\\Program Files\\Python 3\\python.exe" -m keypost.host %*\r\n'


def test_windows_launcher_keeps_a_percent_sign_in_the_path() -> None:
    """cmd expands %...% in a batch line even inside quotes (a folder named 100% next
    to one named x% lost both signs and the text between); a literal % is written %%."""
    text = launcher_script("win32", r"C:\Tools\100%\x%y\python.exe")
    assert '"C:\\Tools\\100%%\\x%%y\\python.exe" -m keypost.host %*' in text


JURGEN = "C:\\Users\\J\u00fcrgen\\keypost\\Scripts\\python.exe"


@pytest.mark.parametrize(("codepage", "expected"), [
    (850, b"J\x81rgen"),  # German/Western European Windows: cmd reads cp850 (OEM)
    (437, b"J\x81rgen"),
    (1252, b"J\xfcrgen"),
    (65001, b"J\xc3\xbcrgen"),  # "Use Unicode UTF-8 for worldwide language support"
])
def test_windows_launcher_is_written_in_the_code_page_cmd_reads_it_in(
    codepage: int, expected: bytes
) -> None:
    """cmd reads a batch file in the console (OEM) code page, not UTF-8: C:\\Users\\J\u00fcrgen
    written as UTF-8 reads as "J\u251c\u255drgen" under cp850, a folder that does not exist."""
    data = launcher_bytes("win32", JURGEN, codepage=codepage)
    assert expected + b"\\keypost\\Scripts\\python.exe\" -m keypost.host %*\r\n" in data
    assert data.decode(f"cp{codepage}") == launcher_script("win32", JURGEN)


def test_windows_launcher_refuses_a_path_its_code_page_cannot_hold() -> None:
    with pytest.raises(InstallError, match="code page 850") as caught:
        launcher_bytes("win32", "C:\\Users\\\u5f20\u4f1f\\python.exe", codepage=850)
    assert "--python" in str(caught.value)


def test_windows_launcher_refuses_a_code_page_python_cannot_write() -> None:
    with pytest.raises(InstallError, match="code page 708"):
        launcher_bytes("win32", "C:\\Python\\python.exe", codepage=708)


def test_posix_launcher_is_utf8() -> None:
    path = "/home/j\u00fcrgen/.venv/bin/python"
    assert launcher_bytes("linux", path) == launcher_script("linux", path).encode("utf-8")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX sh launcher")
def test_posix_launcher_runs_the_interpreter_with_args(tmp_path: Path) -> None:
    # A stand-in "python" in a folder whose name needs quoting records how it was called.
    weird = tmp_path / "it's a dir"
    weird.mkdir()
    fake_python = weird / "python"
    fake_python.write_text(
        f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n", "utf-8"
    )
    fake_python.chmod(0o755)
    launcher = tmp_path / "keypost-host"
    launcher.write_text(launcher_script("linux", str(fake_python)), "utf-8")
    launcher.chmod(0o755)
    out = subprocess.run(
        [str(launcher), "/path/to/org.keypost.host.json", "keypost@keypost.example"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert json.loads(out.stdout) == [
        "-m",
        "keypost.host",
        "/path/to/org.keypost.host.json",
        "keypost@keypost.example",
    ]
