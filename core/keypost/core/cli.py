"""The one `keypost` command: components contribute subcommands through entry points."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import NoReturn

from keypost.core.errors import KeypostError

# A registrar adds its subcommand(s) to the subparsers object. Each subcommand
# sets `func` (args -> exit code) via parser.set_defaults(func=...).
Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of `keypost` (argparse would print
    the whole usage block first); subcommand parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"keypost: error: {self.prog}: {message} (see: {self.prog} --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, load just that subcommand's component.

    Loading every component costs ~0.9 s of imports (aiohttp, ldap3, aiosmtpd...), which
    every `keypost` run would pay; the subcommand named on the command line is enough.
    """
    parser: argparse.ArgumentParser = OneLineParser(
        prog="keypost", description="Secure e-mail through gateways with a key container directory."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    eps = sorted(entry_points(group="keypost.commands"), key=lambda e: e.name)
    if only is not None and any(ep.name == only for ep in eps):
        eps = [ep for ep in eps if ep.name == only]
    for ep in eps:
        try:
            register: Registrar = ep.load()
        except ImportError:
            # A component whose optional parts are not installed must not break the others.
            continue
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(first)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        code: int = func(args)
    except KeypostError as exc:
        print(f"keypost: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # Every subcommand reads or writes files (keys, data dirs, manifests): a missing
        # file or a refused permission is the user's to fix, so one line, never a traceback.
        where = f" {exc.filename}" if exc.filename else ""
        print(f"keypost: error: cannot access{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
