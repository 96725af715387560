"""Operator actions on a data directory (init, domains, genuine certificates, accounts, CA).

The CLI parses arguments and prints; these functions do the work and raise DirectoryError
(or a core KeypostError) with one-line messages.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from keypost.core.address import parse_address
from keypost.core.containers import (
    CAKeyType,
    DirectoryCA,
    GatewayKey,
    check_directory_url,
    describe,
    load_certificates,
    sha256_fingerprint,
    to_der,
    to_pem,
)
from keypost.core.errors import AddressError, KeypostError
from keypost.core.types import DEFAULT_CAPABILITIES, Capability, Purpose
from keypost.core.x509_checks import (
    public_key,
    signing_key_problem,
    smime_key_problem,
    usage_problems,
)
from keypost.directory.accounts import MAX_NAME, MAX_PASSWORD, hash_password
from keypost.directory.config import (
    DataDir,
    Settings,
    check_suffix,
    write_private,
    write_settings,
)
from keypost.directory.errors import ConfigError, DirectoryError
from keypost.directory.store import (
    AccountRecord,
    AccountRole,
    GatewayKeyRecord,
    GenuineRecord,
    KeyUse,
)
from keypost.directory.store.sqlite import SqliteStore


def read_file(path: Path | str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DirectoryError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def open_store(data: DataDir) -> SqliteStore:
    data.require()
    return SqliteStore(data.database)


def load_ca(data: DataDir, settings: Settings) -> DirectoryCA:
    return DirectoryCA.load(read_file(data.ca_cert, "CA certificate"),
                            read_file(data.ca_key, "CA key"), directory_url=settings.url)


def init(data: DataDir, key_type: CAKeyType, suffix: str, url: str) -> DirectoryCA:
    for made in (data.settings, data.ca_key, data.ca_cert, data.database):
        if made.exists():  # a store of another CA's containers, too, is no place to start
            raise ConfigError(f"{data.root} is already initialised (it holds {made.name})")
    check_suffix(suffix)  # before anything is made: a refusal leaves no data dir
    if url:
        check_directory_url(url)
    try:
        data.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {data.root}: {exc.strerror or exc}") from None
    ca = DirectoryCA.generate(key_type, directory_url=url)
    write_private(data.ca_key, ca.key_pem())
    data.ca_cert.write_bytes(to_pem(ca.certificate))
    write_settings(data, Settings(suffix=suffix, url=url))
    # Password hashes live in the store: 0600 even in a folder others may list (SQLite
    # gives its -wal and -shm files the database file's mode).
    write_private(data.database, b"")
    SqliteStore(data.database).close()
    return ca


def parse_capabilities(text: str | None) -> tuple[Capability, ...]:
    if text is None:
        return DEFAULT_CAPABILITIES
    try:
        caps = tuple(Capability(c.strip().lower()) for c in text.split(",") if c.strip())
    except ValueError:
        known = ", ".join(c.value for c in Capability)
        raise DirectoryError(f"unknown capability in {text!r} (known: {known})") from None
    if not caps:
        raise DirectoryError("give at least one capability")
    return caps


def _key_record(domain: str, use: KeyUse, path: Path | str,
                caps: Sequence[Capability], derived: bool = False) -> GatewayKeyRecord:
    data = read_file(path, f"{use.value} key")
    _one_public_key(path, data)
    try:
        gateway = GatewayKey.from_pem(data, caps)
    except KeypostError as exc:  # which file: --encryption-cert and --signing-cert alike
        raise DirectoryError(f"{path}: {exc}") from None
    if derived:
        try:  # the same check the controller's GatewayKey makes: refused here, not there
            GatewayKey(gateway.public_key, derived=True)
        except KeypostError as exc:
            raise DirectoryError(f"{path}: {exc}") from None
    if use is KeyUse.ENCRYPTION and not gateway.smime_usable:
        # senders could not encrypt to it: RSA >= 2048 or EC P-256/384/521 only
        problem = smime_key_problem(gateway.public_key, "the encryption key file")
        raise DirectoryError(f"{path}: {problem}")
    if use is KeyUse.SIGNING:
        # the gateway's signatures would verify nowhere (keypost.core's rule, which the
        # gateway applies to its signing key too)
        problem = signing_key_problem(gateway.public_key, "the signing key file")
        if problem is not None:
            raise DirectoryError(f"{path}: {problem}")
    now = dt.datetime.now(dt.UTC)
    if gateway.certificate is not None:
        _refuse_expired(path, gateway.certificate, now)
    # What was parsed, not the file: nothing else in it reaches the store.
    return GatewayKeyRecord(domain, use, _spki_or_cert_pem(gateway), gateway.fingerprint,
                            tuple(c.value for c in caps), now, derived=derived)


def _one_public_key(path: Path | str, data: bytes) -> None:
    """A gateway key file holds one certificate or public key: a private key beside it
    (`cat key.pem cert.pem`) is the gateway's secret, and of a chain only the first
    certificate would count, whichever that is."""
    if b"PRIVATE KEY-----" in data:
        raise DirectoryError(
            f"{path} holds a private key: give the gateway's certificate or public key only")
    blocks = data.count(b"-----BEGIN ")
    if blocks > 1:
        raise DirectoryError(
            f"{path} holds {blocks} PEM blocks: give the gateway's certificate or public key only")


def _refuse_expired(path: Path | str, cert: x509.Certificate, now: dt.datetime) -> None:
    if cert.not_valid_after_utc <= now:
        raise DirectoryError(
            f"{path}: certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")


def _spki_or_cert_pem(gateway: GatewayKey) -> bytes:
    if gateway.certificate is not None:
        return to_pem(gateway.certificate)
    return gateway.public_key.public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)


def gateway_keys(domain: str, encryption: Path | str, signing: Path | str | None,
                 caps: Sequence[Capability], derived: bool = False) -> list[GatewayKeyRecord]:
    """`derived`: the encryption key's containers carry per-address derived keys (an EC
    key only); signing containers always carry the signing key itself."""
    keys = [_key_record(domain, KeyUse.ENCRYPTION, encryption, caps, derived)]
    if signing is not None:
        keys.append(_key_record(domain, KeyUse.SIGNING, signing, caps))
    return keys


def domain_name(text: str) -> str:
    """Normalise a domain via the core's address rules (IDNs to A-labels)."""
    # The core's message would name the address made up here, not what the operator typed.
    invalid = DirectoryError(f"invalid domain {text!r}")
    if "@" in text or text != text.strip():
        raise invalid
    try:
        return parse_address(f"x@{text}").domain
    except AddressError:
        raise invalid from None


CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class GenuineAdded:
    addresses: tuple[str, ...]
    fingerprint: str


def genuine_records(path: Path | str) -> tuple[list[GenuineRecord], list[GenuineAdded]]:
    certs = load_certificates(read_file(path, "certificate"))
    now = dt.datetime.now(dt.UTC)
    records: list[GenuineRecord] = []
    added: list[GenuineAdded] = []
    for cert in certs:
        _refuse_expired(path, cert, now)
        # handed out from now on, beside the proxy container: clients refuse it until then
        # (a few minutes' clock skew between the issuer and us are let through)
        if cert.not_valid_before_utc > now + CLOCK_SKEW:
            raise DirectoryError(f"{path}: certificate not valid before "
                                 f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: add it then")
        _refuse_unusable(path, cert)
        keys = tuple(dict.fromkeys(_cert_addresses(path, cert)))
        if not keys:
            raise DirectoryError(f"{path}: certificate names no e-mail address (SAN "
                                 "rfc822Name or SmtpUTF8Mailbox)")
        fp = sha256_fingerprint(cert)
        der = to_der(cert)
        records += [GenuineRecord(k, der, fp, cert.not_valid_after_utc) for k in keys]
        added.append(GenuineAdded(keys, fp))
    return records, added


def _refuse_unusable(path: Path | str, cert: x509.Certificate) -> None:
    """A genuine certificate is handed to everyone to encrypt to: one the S/MIME engine
    cannot encrypt to (an RSA-1024 or EC P-224 key) or that its key usage, extended key
    usage or CA flag keeps from encrypting mail is refused, by the checks the host applies
    to what the directory sends (it skips such a certificate; other clients failed)."""
    key_problem = smime_key_problem(public_key(cert), "the certificate")
    problems = ([key_problem] if key_problem else []) + usage_problems(
        cert, Purpose.ENCRYPT, required=False)
    if problems:
        raise DirectoryError(f"{path}: not a certificate to encrypt mail to: "
                             + "; ".join(problems))


def _cert_addresses(path: Path | str, cert: x509.Certificate) -> list[str]:
    """The address keys a certificate names, read as the host reads them (describe): SAN
    rfc822Name and SmtpUTF8Mailbox (RFC 9598, a UTF-8 local part, which rfc822Name cannot
    hold; such certificates were refused as naming no address), else the subject's
    emailAddress."""
    try:
        written = describe(cert).addresses
    except KeypostError as exc:
        raise DirectoryError(f"{path}: {exc}") from None
    out = []
    for text in written:
        try:
            out.append(parse_address(text).key())
        except KeypostError:
            continue
    return out


_NAME_SPECIALS = ',=+<>#;\\":'


def _name_problem(name: str) -> str | None:
    """What makes `name` unusable as an account name, in words; None when it is fine.
    DN specials would need escaping in a bind DN; ':' ends the user-id of HTTP Basic
    credentials (RFC 7617); control characters cannot be typed into a client."""
    if not name:
        return "empty"
    if len(name) > MAX_NAME:
        return f"longer than {MAX_NAME} characters"
    if not name.isprintable():
        return "a control or other non-printing character"
    if name != name.strip():
        return "spaces around it"
    special = next((c for c in name if c in _NAME_SPECIALS), None)
    if special is not None:
        return f"{special!r} is not allowed (none of {' '.join(_NAME_SPECIALS)})"
    return None


def account_domains(role: AccountRole, domains: Iterable[str]) -> tuple[str, ...]:
    """The normalised, sorted domains of an account of `role`: a gateway account stands
    for one or more (one gateway serving several domains), a user account for exactly one
    (its add-on's mail leaves through that domain's gateway: policy)."""
    if isinstance(domains, str):  # a str is an Iterable[str] too: its letters
        raise TypeError("account_domains takes a collection of domains")
    found = tuple(sorted({domain_name(d) for d in domains}))
    if not found:
        raise DirectoryError(f"a {role.value} account needs a domain")
    if role is AccountRole.USER and len(found) > 1:
        raise DirectoryError(f"a user account has exactly one domain, not {len(found)} "
                             f"({', '.join(found)}); only gateway accounts may have several")
    return found


def account_record(name: str, role: str, domains: Iterable[str],
                   password: bytes) -> AccountRecord:
    problem = _name_problem(name)
    if problem is not None:
        raise DirectoryError(f"invalid account name {name!r}: {problem}")
    kind = AccountRole(role)
    names = account_domains(kind, domains)  # before the password: a mistake costs no hash
    if not password:
        raise DirectoryError("empty password")
    if len(password) > MAX_PASSWORD:  # no login could ever send it (check_password)
        raise DirectoryError(f"password longer than {MAX_PASSWORD} bytes")
    return AccountRecord(name, kind, names, hash_password(password), dt.datetime.now(dt.UTC))


def ensure_private(path: Path) -> None:
    """The CA key must stay 0600; refuse to serve with a key others can read."""
    try:
        mode = os.stat(path).st_mode & 0o077
    except OSError as exc:
        raise ConfigError(f"cannot read CA key {path}: {exc.strerror or exc}") from None
    if mode:
        raise ConfigError(f"{path} is readable by others (chmod 600 it)")

