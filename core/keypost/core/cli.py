"""The one `keypost` command: components contribute subcommands through entry points."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import NoReturn

from cryptography.utils import CryptographyDeprecationWarning

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
    # cryptography warns (several lines on stderr, with a source line) about certificates
    # it will refuse one day, e.g. a serial of 0 from `openssl req -set_serial 0`: the
    # commands show or check such certificates and keep their one-line output.
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        first = next((a for a in argv if not a.startswith("-")), None)
        parser = build_parser(first)
        args = parser.parse_args(argv)
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help()
            return 2
        code: int = func(args)
        # Flushed here, not in the interpreter's exit flush, so that a reader who left
        # (`keypost ... | head -1`) shows up below instead of as "Exception ignored".
        sys.stdout.flush()
    except KeypostError as exc:
        return _fail(str(exc))
    except BrokenPipeError as exc:
        if exc.filename is None:
            return _reader_gone()
        return _fail(f"cannot access {exc.filename}: {exc.strerror or exc}")
    except OSError as exc:
        # Every subcommand reads or writes files (keys, data dirs, manifests): a missing
        # file or a refused permission is the user's to fix, so one line, never a traceback.
        where = f" {exc.filename}" if exc.filename else ""
        return _fail(f"cannot access{where}: {exc.strerror or exc}")
    except EOFError:
        # A prompt met the end of its input (`< /dev/null`, a script, Ctrl-D): the answer
        # the command needed is missing, a run-time problem like a KeypostError, so exit 1
        # (2 stays for malformed command lines).
        return _fail("input ended (a question got no answer; run the command on a terminal)")
    except KeyboardInterrupt:
        # Ctrl-C: the user knows why it stopped; one line and the shell's code for SIGINT.
        print("keypost: error: interrupted", file=sys.stderr)
        return 130
    return code


def _fail(message: str) -> int:
    print(f"keypost: error: {message}", file=sys.stderr)
    return 1


def _reader_gone() -> int:
    """Exit quietly after stdout's reader left: no error of the user's.

    As the Python docs advise ("Note on SIGPIPE", signal module): stdout now points at
    devnull, so the interpreter's exit flush of what is still buffered cannot fail again.
    The code is 1, as Python's own for EPIPE; a shell pipeline reports the last command's.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is no file (replaced in-process): nothing left to flush at exit
    finally:
        os.close(devnull)
    return 1


if __name__ == "__main__":
    sys.exit(main())
