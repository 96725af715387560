"""The one `keypost` command: errors a user can cause end in one line and exit 1."""

from __future__ import annotations

import argparse

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
