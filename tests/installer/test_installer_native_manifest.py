"""The native messaging manifest JSON and the launcher script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keypost.installer.native_manifest import dumps, host_manifest, launcher_script


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
