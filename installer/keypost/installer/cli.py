"""`keypost install|uninstall thunderbird` and `keypost setup`: arguments, and the order of
the install steps (checks, writes, the host's configure)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from keypost.core.errors import KeypostError
from keypost.installer import preflight, thunderbird
from keypost.installer.errors import InstallError
from keypost.installer.journal import Journal, UndoFailed
from keypost.installer.manifest_locations import Environment, Scope
from keypost.installer.registry import RegistryWriter, WinRegistry

UNDONE = "nothing was installed or changed"


def _registry(env: Environment) -> RegistryWriter | None:
    return WinRegistry() if env.os == "win32" else None


def _checked_inputs(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """Everything that can be checked before writing: (trust anchor PEM, password)."""
    if (
        args.username or args.trust_anchor or args.password_stdin or args.fingerprint
    ) and not args.directory:
        raise InstallError(
            "--username, --trust-anchor, --fingerprint and --password-stdin need --directory"
        )
    if args.password_stdin and not args.username:
        raise InstallError("--password-stdin needs --username (the account it belongs to)")
    if args.managed and not args.directory:
        raise InstallError("--managed needs --directory (the URL to preset)")
    if args.fingerprint:
        preflight.normalize_fingerprint(args.fingerprint)
    anchor_pem = None
    if args.trust_anchor:
        if not Path(args.trust_anchor).is_file():
            raise InstallError(f"trust anchor file not found: {args.trust_anchor}")
        anchor_pem = preflight.trust_anchor_pem(Path(args.trust_anchor), args.fingerprint)
    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise InstallError("--password-stdin read an empty password")
    if args.python:
        preflight.check_interpreter(args.python)
    if args.directory:
        preflight.check_url(args.directory)  # --offline too: --managed writes it as given
        preflight.check_host(
            preflight.host_status(args.python),
            anchor_given=anchor_pem is not None,
            fingerprint=args.fingerprint,
            username=args.username,
            # `configure` stores a given password, and its connection test reads a stored one
            keyring_needed=bool(args.username) and (password is not None or not args.offline),
        )
        if not args.offline:
            preflight.check_reachable(args.directory)
    return anchor_pem, password


def _install(args: argparse.Namespace) -> int:
    """All or nothing: every check that can run first does, before anything is written;
    a later failure (the host's `configure`) undoes what this run wrote."""
    env = Environment.current()
    scope: Scope = "system" if args.system else "user"
    anchor_pem, password = _checked_inputs(args)
    managed: dict[str, str] = {}
    if args.managed:
        managed["directoryUrl"] = args.directory
        if anchor_pem:
            managed["trustAnchorPem"] = anchor_pem
        if args.fingerprint:
            # the options page refuses a certificate the user picks with another fingerprint
            managed["trustAnchorFingerprint"] = preflight.normalize_fingerprint(args.fingerprint)
    opts = thunderbird.InstallOptions(
        scope=scope,
        python=args.python,
        send_in_background=args.send_in_background,
        auto_enable=args.auto_enable,
        managed=managed,
        profiles=tuple(Path(p) for p in args.profile) if args.profile else None,
    )
    lines: list[str] = []  # shown once the whole run has succeeded
    try:
        with Journal() as journal:
            thunderbird.install(env, opts, _registry(env), log=lines.append, journal=journal)
            if args.directory:
                thunderbird.configure_host(
                    args.directory,
                    args.username,
                    anchor_pem,
                    password=password,
                    fingerprint=args.fingerprint,
                    test=not args.offline,
                    python=args.python,
                    log=lines.append,
                )
    except UndoFailed:
        raise
    except KeypostError as exc:
        raise InstallError(f"{exc}; {UNDONE}") from exc
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise InstallError(f"cannot write{where}: {exc.strerror or exc}; {UNDONE}") from exc
    for line in lines:
        print(line)
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    env = Environment.current()
    thunderbird.uninstall(
        env,
        "system" if args.system else "user",
        _registry(env),
        profiles=tuple(Path(p) for p in args.profile) if args.profile else None,
    )
    if args.purge:
        thunderbird.purge_host_config(args.python)
    return 0


def _interpreter(value: str) -> str:
    """--python as an absolute path: the launcher bakes it in and Thunderbird runs it from
    a folder of its own choosing, where a relative path or a bare command name would not
    be found (symlinks are kept: a virtualenv's python is one)."""
    if os.sep not in value and not (os.altsep and os.altsep in value):
        found = shutil.which(value)
        if found is None:
            raise argparse.ArgumentTypeError(f"{value} is not a command on PATH")
        value = found
    return os.path.abspath(value)


def _python_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--python",
        type=_interpreter,
        metavar="PATH",
        help="interpreter that runs the host (default: this one)",
    )


def _target(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    targets = sub.add_subparsers(dest="target", metavar="TARGET", required=True)
    p: argparse.ArgumentParser = targets.add_parser("thunderbird", help=help_text)
    p.add_argument("--system", action="store_true", help="for all users (needs admin rights)")
    p.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="DIR",
        help="only this Thunderbird profile folder (repeatable; default: all found)",
    )
    _python_option(p)
    return p


def register_install(sub: Any) -> None:
    parser = sub.add_parser("install", help="register the native messaging host and add-on")
    p = _target(parser, "install", "register the host for Thunderbird and install the add-on")
    p.add_argument(
        "--directory", metavar="URL", help="key container directory (ldaps://, ldap://, https://)"
    )
    p.add_argument("--username", metavar="NAME", help="directory account (default: anonymous)")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from one stdin line"
    )
    p.add_argument("--trust-anchor", metavar="FILE", help="directory CA certificate (PEM)")
    p.add_argument(
        "--fingerprint", metavar="SHA256", help="refuse a trust anchor with another fingerprint"
    )
    p.add_argument("--offline", action="store_true", help="do not test the directory connection")
    p.add_argument(
        "--send-in-background",
        action="store_true",
        help="set mailnews.sendInBackground so queued encrypted mail leaves at once",
    )
    p.add_argument(
        "--auto-enable",
        action="store_true",
        help="set extensions.autoDisableScopes=0 so Thunderbird enables the add-on without asking",
    )
    p.add_argument(
        "--managed",
        action="store_true",
        help="also preset --directory (and --trust-anchor, --fingerprint) for the add-on"
        " via managed storage",
    )
    p.set_defaults(func=_install)


def register_uninstall(sub: Any) -> None:
    parser = sub.add_parser("uninstall", help="undo `keypost install`")
    p = _target(parser, "uninstall", "remove the host registration and the add-on")
    p.add_argument(
        "--purge", action="store_true", help="also delete the host's configuration and password"
    )
    p.set_defaults(func=_uninstall)


def register_setup(sub: Any) -> None:
    p = sub.add_parser("setup", help="set directory, account and trust anchor (window or terminal)")
    p.add_argument(
        "--terminal", action="store_true", help="ask in the terminal even when a window could open"
    )
    _python_option(p)
    p.set_defaults(func=_setup)


def _setup(args: argparse.Namespace) -> int:
    from keypost.installer import setup_wizard

    return setup_wizard.run(terminal=args.terminal, python=args.python)
