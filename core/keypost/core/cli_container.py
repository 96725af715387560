"""`keypost container ca-new|issue|show|verify`: key containers for operators."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from keypost.core import containers as kc
from keypost.core.address import parse_address
from keypost.core.errors import ContainerError, KeypostError
from keypost.core.types import Purpose, Role
from keypost.core.x509_checks import PARSE_ERRORS, key_description

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_LIFETIME = re.compile(r"^\s*(\d{1,7})\s*([smhd])\s*$")


class CliInputError(KeypostError):
    """A file named on the command line cannot be read or written."""


def parse_lifetime(text: str) -> dt.timedelta:
    """`90m`, `24h`, `30d`, `300s` -> timedelta."""
    m = _LIFETIME.match(text)
    if not m:
        raise ContainerError(f"invalid lifetime {text!r} (use e.g. 30m, 24h, 30d)")
    return dt.timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def _read(path: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliInputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _write_new(path: str, data: bytes, mode: int, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # an existing file keeps its old mode otherwise
            fh.write(data)
    except FileExistsError as exc:
        raise CliInputError(f"{path} exists (use --force to overwrite)") from exc
    except OSError as exc:
        raise CliInputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def describe_text(cert: x509.Certificate, now: dt.datetime) -> str:
    """A container in words, for `show`."""
    info = kc.describe(cert)
    role = info.role.value if info.role else "none (not a keypost container)"
    if now > info.not_after:
        left = f"expired {kc.format_duration(now - info.not_after)} ago"
    elif now < info.not_before:
        left = f"not valid for another {kc.format_duration(info.not_before - now)}"
    else:
        left = f"{kc.format_duration(info.not_after - now)} left"
    caps = ", ".join(c.value for c in info.capabilities) or "none advertised"
    rows = [
        ("address", ", ".join(info.addresses) or "(none)"),
        ("role", role),
        ("gateway", f"SHA-256 {info.gateway_fingerprint}" if info.gateway_fingerprint else "-"),
        ("directory", info.directory_url or "-"),
        ("issuer", cert.issuer.rfc4514_string()),
        ("key", info.key_description),
        ("valid", f"{info.not_before:%Y-%m-%d %H:%M} .. {info.not_after:%Y-%m-%d %H:%M} UTC"),
        ("lifetime", left),
        ("capabilities", caps),
        ("serial", f"{info.serial:x}"),
        ("fingerprint", kc.sha256_fingerprint(cert)),
    ]
    return "\n".join(f"  {k + ':':<14}{v}" for k, v in rows)


def _at(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ContainerError(f"invalid time {text!r} (ISO 8601, e.g. 2026-01-31T12:00Z)") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def cmd_ca_new(args: argparse.Namespace) -> int:
    # Checked here, in the unit the user typed: the core's check speaks in durations
    # ("0 s"), and a huge number would overflow timedelta before reaching it.
    most = kc.MAX_CA_VALIDITY.days
    if not 1 <= args.validity_days <= most:
        raise ContainerError(
            f"CA validity of {args.validity_days} days is outside 1 .. {most} days"
        )
    ca = kc.DirectoryCA.generate(
        args.key_type, args.common_name, validity=dt.timedelta(days=args.validity_days)
    )
    _write_new(args.out_key, ca.key_pem(), 0o600, args.force)
    _write_new(args.out_cert, kc.to_pem(ca.certificate), 0o644, args.force)
    print(f"directory CA {args.common_name!r} ({args.key_type}) -> {args.out_cert}, {args.out_key}")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    ca = kc.DirectoryCA.load(
        _read(args.ca_cert), _read(args.ca_key), directory_url=args.directory_url
    )
    gateway = kc.GatewayKey.from_pem(_read(args.gateway_cert))
    purpose = Purpose(args.purpose)
    lifetime = parse_lifetime(args.lifetime) if args.lifetime else None
    request = kc.ContainerRequest(
        parse_address(args.address), purpose, gateway, lifetime, args.compat_issuer_serial
    )
    sys.stdout.buffer.write(kc.to_pem(ca.issue(request)))
    if purpose is Purpose.ENCRYPT and not gateway.smime_usable:
        # Issued as asked (keyAgreement), but the operator must know senders using
        # keypost's engine cannot encrypt to it (a curve without S/MIME key agreement,
        # such as P-224); stdout stays the bare PEM.
        print(
            f"keypost: note: {key_description(gateway.public_key)} gateway key: "
            "keypost's S/MIME engine cannot encrypt to it (RSA >= 2048, or EC P-256, "
            "P-384, P-521)",
            file=sys.stderr,
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    now = dt.datetime.now(dt.UTC)
    certs = kc.load_certificates(_read(args.file))
    for n, cert in enumerate(certs):
        label = args.file if len(certs) == 1 else f"{args.file} [{n + 1}/{len(certs)}]"
        print(f"{label}:\n{describe_text(cert, now)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    anchors = [c for path in args.trust_anchor for c in kc.load_certificates(_read(path))]
    certs = kc.load_certificates(_read(args.file))
    if len(certs) != 1:
        # A PKCS#7 bundle's order is its DER encoding's: "the first" would be arbitrary.
        raise ContainerError(f"{args.file} holds {len(certs)} certificates; verify checks one")
    roles = [Role(r) for r in args.role] if args.role else None
    result = kc.verify_container(
        certs[0], anchors, args.address, Purpose(args.purpose), _at(args.at), roles
    )
    if not result.ok:
        print(f"keypost: container rejected: {'; '.join(result.reasons)}", file=sys.stderr)
        return 1
    role = result.info.role.value if result.info and result.info.role else "genuine"
    print(f"OK: {args.file} holds for {args.address} ({args.purpose}, {role})")
    return 0


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the few non-keypost errors bad input can still cause into one-line errors."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except PARSE_ERRORS as exc:
            raise ContainerError(f"bad input: {exc}") from exc

    return run


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `keypost container ...` to the keypost command."""
    top = subparsers.add_parser("container", help="make, show and check key containers")
    sub = top.add_subparsers(dest="container_command", metavar="ACTION", required=True)
    purposes = [p.value for p in Purpose]

    p = sub.add_parser("ca-new", help="make a directory CA (certificate + 0600 key file)")
    p.add_argument("--out-cert", required=True, metavar="FILE")
    p.add_argument("--out-key", required=True, metavar="FILE")
    p.add_argument("--key-type", choices=["ecdsa-p256", "rsa-3072"], default="ecdsa-p256")
    p.add_argument("--common-name", default="keypost directory CA")
    p.add_argument("--validity-days", type=int, default=3650)
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=_guarded(cmd_ca_new))

    p = sub.add_parser("issue", help="issue a container and print it as PEM")
    p.add_argument("--ca-cert", required=True, metavar="CA.pem")
    p.add_argument("--ca-key", required=True, metavar="CA.key")
    p.add_argument(
        "--gateway-cert", required=True, metavar="GW.pem", help="certificate or public key PEM"
    )
    p.add_argument("--address", required=True)
    p.add_argument("--purpose", choices=purposes, default="encrypt")
    p.add_argument("--lifetime", help="e.g. 30m, 24h (default: 24h encrypt, 30d sign)")
    p.add_argument("--directory-url", default="", help="URL written into the container")
    p.add_argument(
        "--compat-issuer-serial",
        action="store_true",
        help="copy the gateway certificate's issuer and serial (see README)",
    )
    p.set_defaults(func=_guarded(cmd_issue))

    p = sub.add_parser("show", help="describe a container in words")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=_guarded(cmd_show))

    p = sub.add_parser("verify", help="check a container; exit 0 when it holds, 1 if not")
    p.add_argument("--trust-anchor", required=True, action="append", metavar="CA.pem")
    p.add_argument("--address", required=True)
    p.add_argument("--purpose", choices=purposes, required=True)
    p.add_argument(
        "--role",
        action="append",
        choices=[r.value for r in Role],
        help="accepted role(s); default: the proxy role of the purpose",
    )
    p.add_argument("--at", metavar="TIME", help="check validity at this ISO 8601 time (UTC)")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=_guarded(cmd_verify))
