"""The directory's persistent state behind one interface (`Store`); SQLite is the default.

Everything the directory keeps goes through `Store`, so another backend (PostgreSQL)
only has to implement this Protocol. Records are frozen values; certificates and keys
travel as DER/PEM bytes so the store never needs the crypto layer.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class KeyUse(enum.Enum):
    ENCRYPTION = "encryption"
    SIGNING = "signing"


class AccountRole(enum.Enum):
    USER = "user"
    GATEWAY = "gateway"


@dataclass(frozen=True)
class GatewayKeyRecord:
    """One registered gateway key of a domain (current when `retired` is None)."""

    domain: str
    use: KeyUse
    pem: bytes  # certificate or SubjectPublicKeyInfo PEM of the key alone (migration 4)
    fingerprint: str  # GatewayKey.fingerprint (hex SHA-256)
    capabilities: tuple[str, ...]  # Capability values in preference order
    added: dt.datetime
    retired: dt.datetime | None = None
    # encryption containers carry per-address derived keys (keypost.core.derived)
    derived: bool = False


@dataclass(frozen=True)
class PasswordHash:
    """scrypt parameters, salt and derived key of one account."""

    salt: bytes
    n: int
    r: int
    p: int
    digest: bytes


@dataclass(frozen=True)
class AccountRecord:
    name: str
    role: AccountRole
    # sorted A-labels: a user account has exactly one, a gateway account one or more (one
    # gateway serving several domains: keypost.directory.admin.account_domains)
    domains: tuple[str, ...]
    password: PasswordHash
    created: dt.datetime


@dataclass(frozen=True)
class GenuineRecord:
    """A recipient's own certificate, handed out for `address_key` (Address.key())."""

    address_key: str
    der: bytes
    fingerprint: str
    not_after: dt.datetime


class CacheKey(NamedTuple):
    """What makes two issued containers interchangeable: the container's address, role,
    gateway key and purpose, and who it was handed to.

    A NamedTuple, so that it hashes and compares as the plain tuple of its strings, which is
    what the controller's ContainerLru keeps as its key (a plain tuple of strings is one
    the garbage collector stops tracking; a NamedTuple or dataclass instance is not).
    The store binds its fields by name: never bind a key by position (sqlite.py).

    The requestor is part of the key because a container is never served to a second
    requestor: every RecipientInfo names its container by issuer and serial, and a
    container's notBefore tells when it was issued, so a shared container would let anyone
    confirm the recipients (Bcc ones too) of a message they carry, and learn which
    mailboxes someone looked up lately. The mission's "the directory never reveals which
    mailboxes exist" outranks the signatures that sharing would save.
    """

    address_key: str
    role: str  # Role value
    gateway_fingerprint: str
    purpose: str  # Purpose value
    requestor: str  # keypost.directory.controller.requestor_key(): a hash, never a name


@dataclass(frozen=True)
class IssuedRecord:
    key: CacheKey
    der: bytes
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime


@dataclass(frozen=True)
class AuditRecord:
    """One answer that handed out containers. The address is only kept as a hash."""

    time: dt.datetime
    requestor: str  # "anonymous", "user:example.com", "gateway:example.com,example.de"
    address_hash: str
    roles: tuple[str, ...]
    serials: tuple[int, ...]


class Store(Protocol):
    """All persistent state of the directory. Methods raise StoreError on refusal."""

    def schema_version(self) -> int:
        """The migration level of the store."""
        ...

    def set_lock_wait(self, seconds: float | None) -> None:
        """How long a write waits for a lock another process holds before it raises
        StoreBusy (None: the store's default)."""
        ...

    def change_counter(self) -> int:
        """A number that changes whenever domains, keys or genuine certificates change
        (also when another process, e.g. the CLI, changed them); cheap to call."""
        ...

    # gateway keys per domain ---------------------------------------------------------
    def add_domain(self, domain: str, keys: Sequence[GatewayKeyRecord]) -> None: ...

    def rekey_domain(self, domain: str, keys: Sequence[GatewayKeyRecord]) -> list[str]:
        """Make `keys` current (retiring the current key of each use given); drop issued
        containers of the retired keys. Returns the retired fingerprints."""
        ...

    def remove_domain(self, domain: str) -> int:
        """Remove a domain, its key history and issued containers, the accounts that have
        no other domain, and the domain from the gateway accounts that have; returns the
        number of accounts removed."""
        ...

    def domains(self) -> list[str]: ...

    def domain_keys(
        self, domain: str | None = None, history: bool = False
    ) -> list[GatewayKeyRecord]:
        """Current keys (all retired ones too with `history`), of one domain or all."""
        ...

    # accounts -------------------------------------------------------------------------
    def add_account(self, account: AccountRecord) -> None: ...

    def set_account_domains(self, name: str, domains: Sequence[str]) -> None:
        """Make `domains` (registered ones) the account's domains (the caller checks the
        role's rule: admin.account_domains)."""
        ...

    def account(self, name: str) -> AccountRecord | None: ...

    def accounts(self) -> list[AccountRecord]: ...

    def remove_account(self, name: str) -> bool: ...

    # genuine certificates -------------------------------------------------------------
    def add_genuine(self, records: Sequence[GenuineRecord]) -> None: ...

    def remove_genuine(self, address_key: str) -> int: ...

    def genuine(self) -> list[GenuineRecord]: ...

    # issued containers (the cache's persistent tier) ----------------------------------
    def save_issued(self, records: Sequence[IssuedRecord]) -> None: ...

    def issued(self, key: CacheKey) -> IssuedRecord | None:
        """The latest stored container for `key` (all five parts equal), if any."""
        ...

    def issued_holders(self, now: dt.datetime) -> set[tuple[str, str]]:
        """(address key, requestor) of every issued container still valid at `now` (the
        controller asks the store on a miss only for these: per requestor, so that whether
        it asks does not depend on what others looked up)."""
        ...

    def ensure_serial_indexes(self) -> None:
        """Make the lookups by serial fast (issued_with_serial, audit_hashes); called before
        them. Not kept up by default: every new container would pay for it."""
        ...

    def issued_with_serial(self, serial: int) -> list[tuple[str, str]]:
        """(address key, gateway key fingerprint) of each stored container with this
        serial, for every requestor (GET /v1/bindings)."""
        ...

    def purge_issued(self, now: dt.datetime) -> int:
        """Delete expired containers; returns how many."""
        ...

    def forget_issued(self, records: Sequence[IssuedRecord]) -> None:
        """Delete these containers (by serial and key), if stored: a rekey retired their key
        while the writer held them, so they were written after the rekey deleted the rest."""
        ...

    def restore_batch(self, issued: Sequence[IssuedRecord],
                      audit: Sequence[AuditRecord]) -> tuple[int, int]:
        """Write a batch kept outside the store (keypost.directory.journal) in one durable
        transaction, leaving out what is stored already (a restore cut short after its
        commit runs again) and containers of keys no longer current (a rekey dropped
        those); -> (containers, audit records) written."""
        ...

    # audit --------------------------------------------------------------------------
    def append_audit(self, records: Sequence[AuditRecord]) -> None: ...

    def audit(self, since: dt.datetime | None = None) -> list[AuditRecord]: ...

    def audit_hashes(self, serial: int) -> set[str]:
        """The address hashes of the audit records naming this serial. Only records that
        name it alone are searched: the controller writes one record per container."""
        ...

    def purge_audit(self, older_than: dt.datetime) -> int:
        """Delete audit records older than the given time; returns how many."""
        ...

    def close(self) -> None: ...
