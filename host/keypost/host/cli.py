"""`keypost host`: the native messaging host Thunderbird starts for the add-on."""

from __future__ import annotations

import argparse

from keypost.host.server import main


def _run(args: argparse.Namespace) -> int:
    return main(list(args.browser_args))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "host",
        help="run the native messaging host (started by Thunderbird, speaks on stdin/stdout)",
        description="Native messaging host for the keypost Thunderbird add-on (PROTOCOL.md).",
    )
    # Thunderbird passes the manifest path and the add-on id: accepted, not needed.
    parser.add_argument("browser_args", nargs="*", help=argparse.SUPPRESS)
    parser.set_defaults(func=_run)
