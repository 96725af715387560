"""`keypost install|uninstall thunderbird` and `keypost setup`: argument parsing only."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from keypost.core.errors import KeypostError
from keypost.installer import thunderbird
from keypost.installer.manifest_locations import Environment, Scope
from keypost.installer.registry import RegistryWriter, WinRegistry


def _registry(env: Environment) -> RegistryWriter | None:
    return WinRegistry() if env.os == "win32" else None


def _install(args: argparse.Namespace) -> int:
    env = Environment.current()
    scope: Scope = "system" if args.system else "user"
    if (args.username or args.trust_anchor or args.password_stdin) and not args.directory:
        raise KeypostError("--username, --trust-anchor and --password-stdin need --directory")
    if args.trust_anchor and not Path(args.trust_anchor).is_file():
        # Checked before anything is written, so a typo leaves no half-done installation.
        raise KeypostError(f"trust anchor file not found: {args.trust_anchor}")
    managed: dict[str, str] = {}
    if args.managed:
        if not args.directory:
            raise KeypostError("--managed needs --directory (the URL to preset)")
        managed["directoryUrl"] = args.directory
        if args.trust_anchor:
            managed["trustAnchorPem"] = Path(args.trust_anchor).read_text("utf-8")
    opts = thunderbird.InstallOptions(
        scope=scope,
        python=args.python,
        send_in_background=args.send_in_background,
        auto_enable=args.auto_enable,
        managed=managed,
        profiles=tuple(Path(p) for p in args.profile) if args.profile else None,
    )
    thunderbird.install(env, opts, _registry(env))
    if args.directory:
        password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else None
        thunderbird.configure_host(
            args.directory,
            args.username,
            Path(args.trust_anchor) if args.trust_anchor else None,
            password=password,
            fingerprint=args.fingerprint,
            test=not args.offline,
            python=args.python,
        )
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
    p.add_argument(
        "--python", metavar="PATH", help="interpreter that runs the host (default: this one)"
    )
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
        help="also preset --directory (and --trust-anchor) for the add-on via managed storage",
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
    p.add_argument(
        "--python", metavar="PATH", help="interpreter that runs the host (default: this one)"
    )
    p.set_defaults(func=_setup)


def _setup(args: argparse.Namespace) -> int:
    from keypost.installer import setup_wizard

    return setup_wizard.run(terminal=args.terminal, python=args.python)
