"""The one `keypost` command: components contribute subcommands through entry points."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from keypost.core.errors import KeypostError

# A registrar adds its subcommand(s) to the subparsers object. Each subcommand
# sets `func` (args -> exit code) via parser.set_defaults(func=...).
Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keypost", description="Secure e-mail through gateways with a key container directory."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group="keypost.commands"), key=lambda e: e.name):
        try:
            register: Registrar = ep.load()
        except ImportError:
            # A component whose optional parts are not installed must not break the others.
            continue
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
