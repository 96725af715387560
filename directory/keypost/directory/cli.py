"""`keypost directory ...`: set up, administer and serve a key container directory."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

from keypost.core.address import parse_address
from keypost.core.containers import sha256_fingerprint, to_pem
from keypost.directory import admin
from keypost.directory.cleartext import CleartextPolicy
from keypost.directory.config import DataDir, load_settings
from keypost.directory.errors import DirectoryError
from keypost.directory.store import AccountRole, KeyUse
from keypost.directory.store.sqlite import SqliteStore

DATA_ENV = "KEYPOST_DIRECTORY_DATA"
Command = Callable[[argparse.Namespace], int]


def _data(args: argparse.Namespace) -> DataDir:
    return DataDir(Path(args.data))


def _with_store(fn: Callable[[argparse.Namespace, SqliteStore], int]) -> Command:
    def run(args: argparse.Namespace) -> int:
        store = admin.open_store(_data(args))
        try:
            return fn(args, store)
        finally:
            store.close()

    return run


def cmd_init(args: argparse.Namespace) -> int:
    ca = admin.init(_data(args), args.ca_key_type, args.suffix, args.url)
    print(f"initialised {args.data}: CA {args.ca_key_type}, suffix {args.suffix}")
    print(f"trust anchor SHA-256 fingerprint: {sha256_fingerprint(ca.certificate)}")
    return 0


@_with_store
def cmd_domain_add(args: argparse.Namespace, store: SqliteStore) -> int:
    domain = admin.domain_name(args.domain)
    caps = admin.parse_capabilities(args.capabilities)
    keys = admin.gateway_keys(domain, args.encryption_cert, args.signing_cert, caps,
                              bool(args.derived_keys))
    store.add_domain(domain, keys)
    for k in keys:
        print(f"{domain}: {k.use.value} key {k.fingerprint}")
    return 0


@_with_store
def cmd_domain_rekey(args: argparse.Namespace, store: SqliteStore) -> int:
    domain = admin.domain_name(args.domain)
    current = store.domain_keys(domain)
    if args.capabilities is None and current:
        caps = admin.parse_capabilities(",".join(current[0].capabilities))
    else:
        caps = admin.parse_capabilities(args.capabilities)
    derived = args.derived_keys
    if derived is None:  # neither flag: the mode stays what it was
        derived = any(k.derived for k in current if k.use is KeyUse.ENCRYPTION)
    keys = admin.gateway_keys(domain, args.encryption_cert, args.signing_cert, caps, derived)
    retired = store.rekey_domain(domain, keys)
    for k in keys:
        print(f"{domain}: new {k.use.value} key {k.fingerprint}")
    for fp in retired:
        print(f"{domain}: retired {fp} (its cached containers are dropped)")
    return 0


@_with_store
def cmd_domain_list(args: argparse.Namespace, store: SqliteStore) -> int:
    keys = store.domain_keys(history=args.history)
    for domain in store.domains():
        print(domain)
        for k in keys:
            if k.domain == domain:
                state = "current" if k.retired is None else f"retired {k.retired:%Y-%m-%d}"
                mode = " derived-keys" if k.derived else ""
                print(f"  {k.use.value:10} {k.fingerprint} {state} "
                      f"[{','.join(k.capabilities)}]{mode}")
    return 0


@_with_store
def cmd_domain_remove(args: argparse.Namespace, store: SqliteStore) -> int:
    domain = admin.domain_name(args.domain)
    # the gateway accounts that keep other domains are named: an operator removing a
    # domain should see whose scope shrank, not only how many accounts went
    shrunk = [a.name for a in store.accounts() if domain in a.domains and len(a.domains) > 1]
    n = store.remove_domain(domain)
    print(f"removed {domain} ({n} account(s) of it removed too)")
    if shrunk:
        print(f"account(s) {', '.join(shrunk)} keep their other domain(s)")
    return 0


@_with_store
def cmd_genuine_add(args: argparse.Namespace, store: SqliteStore) -> int:
    records, added = admin.genuine_records(args.cert)
    store.add_genuine(records)
    for a in added:
        print(f"genuine certificate {a.fingerprint} for {', '.join(a.addresses)}")
    return 0


@_with_store
def cmd_genuine_list(args: argparse.Namespace, store: SqliteStore) -> int:
    """One line per kept certificate: address, SHA-256 fingerprint, last day (an expired
    one is kept but no longer handed out: said so)."""
    now = dt.datetime.now(dt.UTC)
    for g in store.genuine():
        expired = " expired" if g.not_after <= now else ""
        print(f"{g.address_key}\t{g.fingerprint}\t{g.not_after:%Y-%m-%d}{expired}")
    return 0


@_with_store
def cmd_genuine_remove(args: argparse.Namespace, store: SqliteStore) -> int:
    key = parse_address(args.address).key()
    if store.remove_genuine(key) == 0:
        raise DirectoryError(f"no genuine certificate is kept for {args.address}")
    print(f"removed the genuine certificate(s) of {args.address}")
    return 0


def _has_terminal() -> bool:
    """Whether getpass can prompt without echo (it tries /dev/tty, then stdin)."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return sys.stdin.isatty()
    os.close(fd)
    return True


def _read_password(args: argparse.Namespace) -> bytes:
    if args.password_stdin:
        line = sys.stdin.buffer.readline()
        return line.rstrip(b"\r\n")
    # Without a terminal getpass would warn, echo the prompt and then fail on EOF with a
    # traceback (e.g. from a script or a service unit): refuse in one line instead.
    if not _has_terminal():
        raise DirectoryError("no terminal to ask for the password: pass --password-stdin")
    try:
        first = getpass.getpass("password: ")
        again = getpass.getpass("again: ")
    except EOFError:
        raise DirectoryError("no password given") from None
    if again != first:
        raise DirectoryError("the passwords differ")
    return first.encode("utf-8")


@_with_store
def cmd_account_add(args: argparse.Namespace, store: SqliteStore) -> int:
    # the domains first: a user account given two is refused before the password prompt
    admin.account_domains(AccountRole(args.role), args.domain)
    password = _read_password(args)
    record = admin.account_record(args.name, args.role, args.domain, password)
    store.add_account(record)
    print(f"account {record.name}: {record.role.value} of {', '.join(record.domains)}")
    return 0


@_with_store
def cmd_account_list(args: argparse.Namespace, store: SqliteStore) -> int:
    # tab-separated; a gateway account's domains comma-joined in the third column
    for a in store.accounts():
        print(f"{a.name}\t{a.role.value}\t{','.join(a.domains)}\t{a.created:%Y-%m-%d}")
    return 0


@_with_store
def cmd_account_domains(args: argparse.Namespace, store: SqliteStore) -> int:
    """Add domains to an account and remove others (none given: show them)."""
    account = store.account(args.name)
    if account is None:
        raise DirectoryError(f"no account named {args.name}")
    add = {admin.domain_name(d) for d in args.add}
    remove = {admin.domain_name(d) for d in args.remove}
    if add & remove:
        raise DirectoryError(f"both added and removed: {', '.join(sorted(add & remove))}")
    unknown = remove - set(account.domains)
    if unknown:
        raise DirectoryError(f"account {account.name} does not have {', '.join(sorted(unknown))}")
    remaining = (set(account.domains) | add) - remove
    if not remaining:
        raise DirectoryError(f"account {account.name} would have no domain left "
                             f"(`account remove {account.name}` removes it)")
    domains = admin.account_domains(account.role, remaining)
    if domains != account.domains:
        store.set_account_domains(account.name, domains)
    print(f"account {account.name}: {account.role.value} of {', '.join(domains)}")
    return 0


@_with_store
def cmd_account_remove(args: argparse.Namespace, store: SqliteStore) -> int:
    if not store.remove_account(args.name):
        raise DirectoryError(f"no account named {args.name}")
    print(f"removed account {args.name}")
    return 0


def cmd_ca_export(args: argparse.Namespace) -> int:
    data = _data(args)
    ca = admin.load_ca(data, load_settings(data))
    pem = to_pem(ca.certificate)
    fingerprint = f"SHA-256 fingerprint: {sha256_fingerprint(ca.certificate)}"
    if args.out:
        Path(args.out).write_bytes(pem)
        print(fingerprint)
    else:
        # stdout is the PEM alone, so `ca export > ca.pem` writes the trust anchor and
        # nothing else; the fingerprint, to compare by eye, goes beside it on stderr.
        sys.stdout.write(pem.decode("ascii"))
        sys.stdout.flush()
        print(fingerprint, file=sys.stderr)
    return 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1, not {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 86400:  # NaN and inf too
        raise argparse.ArgumentTypeError(f"a number of seconds from 0 to 86400, not {text!r}")
    return seconds


def cmd_serve(args: argparse.Namespace) -> int:
    from keypost.directory.serve import ServeOptions, parse_hostport, run

    options = ServeOptions(
        data=_data(args),
        ldap=parse_hostport(args.ldap, "--ldap"),
        ldaps=parse_hostport(args.ldaps, "--ldaps") if args.ldaps else None,
        http=parse_hostport(args.http, "--http") if args.http else None,
        https=parse_hostport(args.https, "--https") if args.https else None,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        log_level=args.log_level,
        cleartext_passwords=CleartextPolicy(args.cleartext_passwords),
        max_per_peer=args.max_connections_per_peer,
        shutdown_store_wait=args.shutdown_store_wait,
    )
    return run(options)


def _guard(fn: Command) -> Command:
    """Store and value errors become one-line messages too (OS errors: keypost.core.cli)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except sqlite3.Error as exc:
            raise DirectoryError(f"store error: {exc}") from None
        except ValueError as exc:
            text = str(exc).splitlines()
            raise DirectoryError(text[0] if text else "invalid value") from None

    return run


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `keypost directory ...` to the keypost command."""
    top = subparsers.add_parser("directory", help="the key container directory (LDAP + HTTP)")
    sub = top.add_subparsers(dest="directory_command", metavar="COMMAND", required=True)
    default_data = os.environ.get(DATA_ENV, "keypost-directory")

    def add(parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
            fn: Command, help_text: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text)
        p.add_argument("--data", default=default_data,
                       help=f"data directory (default ${DATA_ENV} or ./keypost-directory)")
        p.set_defaults(func=_guard(fn))
        return p

    p = add(sub, "init", cmd_init, "create the CA, settings and store in --data")
    p.add_argument("--ca-key-type", choices=["ecdsa-p256", "rsa-3072"], default="ecdsa-p256")
    p.add_argument("--suffix", default="dc=keypost", help="LDAP naming context")
    p.add_argument("--url", default="", help="this directory's URL, written into containers")

    domain = sub.add_parser("domain", help="gateway keys of served domains")
    dsub = domain.add_subparsers(dest="domain_command", metavar="COMMAND", required=True)
    for name, fn, text in (("add", cmd_domain_add, "serve a domain with its gateway's keys"),
                           ("rekey", cmd_domain_rekey, "replace a domain's gateway keys now")):
        p = add(dsub, name, fn, text)
        p.add_argument("domain")
        p.add_argument("--encryption-cert", required=True, metavar="FILE",
                       help="gateway encryption certificate or public key (PEM)")
        p.add_argument("--signing-cert", metavar="FILE",
                       help="gateway signing certificate or public key (PEM)")
        p.add_argument("--capabilities", help="e.g. aes256-cbc,aes128-cbc")
        p.add_argument("--derived-keys", action=argparse.BooleanOptionalAction, default=None,
                       help="encryption containers carry a key derived per address "
                            "(EC keys only; the gateway needs derived_keys = true); "
                            "rekey keeps the current mode unless told")
    p = add(dsub, "list", cmd_domain_list, "list served domains and their keys")
    p.add_argument("--history", action="store_true", help="show retired keys too")
    p = add(dsub, "remove", cmd_domain_remove, "stop serving a domain (removes its accounts)")
    p.add_argument("domain")

    genuine = sub.add_parser("genuine", help="recipients' own certificates")
    gsub = genuine.add_subparsers(dest="genuine_command", metavar="COMMAND", required=True)
    p = add(gsub, "add", cmd_genuine_add, "keep a certificate to hand out (role genuine)")
    p.add_argument("cert")
    add(gsub, "list", cmd_genuine_list, "list the kept certificates")
    p = add(gsub, "remove", cmd_genuine_remove, "forget the certificates of an address")
    p.add_argument("address")

    account = sub.add_parser("account", help="user and gateway accounts")
    asub = account.add_subparsers(dest="account_command", metavar="COMMAND", required=True)
    p = add(asub, "add", cmd_account_add, "add an account (password prompted or from stdin)")
    p.add_argument("name")
    p.add_argument("--role", choices=["user", "gateway"], required=True)
    p.add_argument("--domain", required=True, action="append", metavar="DOMAIN",
                   help="the account's domain; a gateway account may have several "
                        "(--domain a.example --domain b.example)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add(asub, "list", cmd_account_list, "list accounts")
    p = add(asub, "domains", cmd_account_domains,
            "change the domains a gateway account stands for (none given: show them)")
    p.add_argument("name")
    p.add_argument("--add", action="append", default=[], metavar="DOMAIN",
                   help="a served domain the account stands for from now on (repeatable)")
    p.add_argument("--remove", action="append", default=[], metavar="DOMAIN",
                   help="a domain it no longer stands for (repeatable)")
    p = add(asub, "remove", cmd_account_remove, "remove an account")
    p.add_argument("name")

    ca = sub.add_parser("ca", help="the directory CA")
    csub = ca.add_subparsers(dest="ca_command", metavar="COMMAND", required=True)
    p = add(csub, "export", cmd_ca_export, "print the trust anchor PEM (its fingerprint on stderr)")
    p.add_argument("--out", help="write the PEM to this file instead of stdout")

    p = add(sub, "serve", cmd_serve, "serve LDAP (and HTTP) from --data")
    p.add_argument("--ldap", default="127.0.0.1:3890", metavar="HOST:PORT")
    p.add_argument("--ldaps", metavar="HOST:PORT")
    p.add_argument("--tls-cert", metavar="FILE", help="server certificate for StartTLS/LDAPS")
    p.add_argument("--tls-key", metavar="FILE")
    p.add_argument("--http", metavar="HOST:PORT")
    p.add_argument("--https", metavar="HOST:PORT", help="the HTTP API over TLS (--tls-cert)")
    p.add_argument(
        "--cleartext-passwords", choices=[c.value for c in CleartextPolicy], default="loopback",
        help="where binds and HTTP Basic may send a password without TLS (default: loopback "
             "peers only; others get confidentialityRequired / 403 tls_required)")
    p.add_argument(
        "--max-connections-per-peer", type=_positive, default=64, metavar="N",
        help="open LDAP connections, and HTTP ones, one client address may hold (default 64; "
             "loopback included); more are refused as busy")
    p.add_argument(
        "--shutdown-store-wait", type=_seconds, default=30.0, metavar="SECONDS",
        help="on SIGTERM, how long to wait for a store another process holds locked before "
             "the last batch goes to a journal file the next start writes (default 30)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
