"""The data directory's layout and settings (directory.toml), with every default in one place."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from keypost.core.containers import check_directory_url
from keypost.core.errors import ContainerError
from keypost.core.hints import did_you_mean
from keypost.directory.errors import ConfigError
from keypost.directory.ldap.dn import InvalidDN, parse_dn

SETTINGS_FILE = "directory.toml"
DATABASE_FILE = "directory.db"
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"


@dataclass(frozen=True)
class Settings:
    """Every setting of the directory; `init` writes them to directory.toml, documented."""

    # LDAP naming context: entries are named mail=<address>,<suffix>.
    suffix: str = "dc=keypost"
    # URL of this directory, written into every container it issues (may be empty).
    url: str = ""
    # Lifetime of encryption containers in hours (short: the lifetime replaces revocation).
    encrypt_hours: int = 24
    # Lifetime of signing containers in days (longer: signatures must outlive mail in transit).
    sign_days: int = 30
    # Audit records (who asked, hashed address, roles, serials) are purged after this many days.
    audit_retention_days: int = 90
    # Containers kept in memory (LRU); the store keeps every issued container until it expires.
    cache_size: int = 100_000
    # Most addresses one request (LDAP search or HTTP call) may ask for.
    max_addresses: int = 100
    # Genuine certificates of mailboxes in served domains also go to anonymous requestors.
    genuine_to_anonymous: bool = True


_DOCS = {
    f.name: doc
    for f, doc in zip(
        fields(Settings),
        [
            "LDAP naming context: entries are named mail=<address>,<suffix>",
            "URL of this directory, written into every container it issues (may be empty)",
            "lifetime of encryption containers, hours",
            "lifetime of signing containers, days",
            "audit records are purged after this many days",
            "containers kept in memory (LRU); the store keeps all until they expire",
            "most addresses one LDAP search or HTTP request may ask for",
            "genuine certificates of mailboxes in served domains go to anonymous requestors"
            " too (false: to accounts only; an outsider then cannot tell which mailboxes"
            " have one)",
        ],
        strict=True,
    )
}


@dataclass(frozen=True)
class DataDir:
    """Paths inside a directory data folder."""

    root: Path

    @property
    def settings(self) -> Path:
        return self.root / SETTINGS_FILE

    @property
    def database(self) -> Path:
        return self.root / DATABASE_FILE

    @property
    def ca_cert(self) -> Path:
        return self.root / CA_CERT_FILE

    @property
    def ca_key(self) -> Path:
        return self.root / CA_KEY_FILE

    def require(self) -> None:
        """Fail with one line unless `init` has run here."""
        if not self.settings.is_file() or not self.ca_cert.is_file():
            raise ConfigError(
                f"{self.root} is not an initialised directory: run `keypost directory init"
                f" --data {self.root}` first, or point --data (or $KEYPOST_DIRECTORY_DATA) at"
                " the folder init made"
            )


def load_settings(data: DataDir) -> Settings:
    data.require()
    try:
        raw = tomllib.loads(data.settings.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {data.settings}: {exc}") from exc
    known = {f.name: f.type for f in fields(Settings)}
    values: dict[str, object] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(
                f"{data.settings}: unknown setting {key!r}{did_you_mean(key, known)}")
        default = getattr(Settings(), key)
        if type(value) is not type(default):
            raise ConfigError(f"{data.settings}: {key} must be a {type(default).__name__}")
        values[key] = value
    settings = replace(Settings(), **values)  # type: ignore[arg-type]
    # The core caps container lifetimes (24 h encryption, 30 d signing): check here so a
    # bad value fails at start, not on every request.
    if not 1 <= settings.encrypt_hours <= 24 or not 1 <= settings.sign_days <= 30:
        raise ConfigError(f"{data.settings}: encrypt_hours must be 1..24 and sign_days 1..30")
    if settings.max_addresses < 1 or settings.cache_size < 1 or settings.audit_retention_days < 1:
        raise ConfigError(
            f"{data.settings}: max_addresses, cache_size, audit_retention_days must be positive")
    try:
        check_suffix(settings.suffix)
    except ConfigError as exc:
        raise ConfigError(f"{data.settings}: {exc}") from None
    if settings.url:
        # Written into every container: a bad one fails at start, naming this file.
        try:
            check_directory_url(settings.url)
        except ContainerError as exc:
            raise ConfigError(f"{data.settings}: url: {exc}") from None
    return settings


def check_suffix(suffix: str) -> None:
    """The suffix names every entry (mail=<address>,<suffix>): a DN of at least one RDN,
    without control characters (directory.toml keeps it as a one-line string)."""
    if not suffix.isprintable():
        raise ConfigError(f"suffix: no control characters in a DN, not {suffix!r}")
    try:
        rdns = parse_dn(suffix)
    except InvalidDN as exc:
        raise ConfigError(f"suffix: {exc}") from None
    if not rdns:
        raise ConfigError(f"suffix: a DN such as dc=keypost is needed, not {suffix!r}")


def write_settings(data: DataDir, settings: Settings) -> None:
    lines = ["# keypost directory settings (read by `keypost directory serve`)", ""]
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if isinstance(value, str):
            rendered = f'"{_toml_escape(value)}"'
        elif isinstance(value, bool):
            rendered = "true" if value else "false"  # TOML's spelling, not Python's True
        else:
            rendered = str(value)
        lines += [f"# {_DOCS[f.name]}", f"{f.name} = {rendered}", ""]
    data.settings.write_text("\n".join(lines), encoding="utf-8")


def _toml_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def write_private(path: Path, content: bytes) -> None:
    """Write a secret file that only the owner can read (mode 0600 from creation on)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
    os.chmod(path, 0o600)
