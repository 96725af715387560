"""The one `keypost` command: errors a user can cause end in one line and exit 1."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keypost.core import cli
from keypost.core.errors import KeypostError


def _parser_raising(exc: BaseException) -> argparse.ArgumentParser:
    def fail(args: argparse.Namespace) -> int:
        raise exc

    parser = argparse.ArgumentParser(prog="keypost")
    parser.set_defaults(func=fail)
    return parser


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (KeypostError("bad address"), "keypost: error: bad address\n"),
        (
            PermissionError(13, "Permission denied", "/etc/keypost.key"),
            "keypost: error: cannot access /etc/keypost.key: Permission denied\n",
        ),
        (
            FileNotFoundError(2, "No such file or directory"),
            "keypost: error: cannot access: No such file or directory\n",
        ),
    ],
)
def test_user_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    exc: BaseException, expected: str,
) -> None:
    monkeypatch.setattr(cli, "build_parser", lambda only=None: _parser_raising(exc))
    assert cli.main([]) == 1
    captured = capsys.readouterr()
    assert captured.err == expected
    assert "Traceback" not in captured.err


def test_programming_errors_are_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "build_parser", lambda only=None: _parser_raising(KeyError("x")))
    with pytest.raises(KeyError):
        cli.main([])


def test_input_ending_at_a_prompt_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """A prompt reading from stdin at its end (`< /dev/null`, Ctrl-D): Python's input()
    raises EOFError; one line and exit 1, never a traceback."""
    def ask(args: argparse.Namespace) -> int:
        input("Directory URL: ")
        return 0

    parser = argparse.ArgumentParser(prog="keypost")
    parser.set_defaults(func=ask)
    monkeypatch.setattr(cli, "build_parser", lambda only=None: parser)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli.main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith("keypost: error: input ended (") and err.count("\n") == 1


def test_interrupt_is_one_line_and_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(cli, "build_parser",
                        lambda only=None: _parser_raising(KeyboardInterrupt()))
    assert cli.main([]) == 130
    assert capsys.readouterr().err == "keypost: error: interrupted\n"


def test_setup_with_stdin_at_its_end_is_one_line(tmp_path: Path) -> None:
    """`keypost setup --terminal < /dev/null`, the real command in a subprocess (it asks
    for the directory URL first, before anything is written)."""
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "APPDATA": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "keypost.core.cli", "setup", "--terminal"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                          env=env, check=False)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "EOFError" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("keypost: error: ")
    assert list(tmp_path.rglob("*")) == []  # nothing configured
