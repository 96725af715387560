"""Loads the gateway's private keys: refuses files others can read, never logs key material."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keypost.core.address import Address
from keypost.core.derived import derived_private_key
from keypost.core.smime import Decryptor, PrivateKey
from keypost.core.x509_checks import signing_key_problem, smime_key_problem
from keypost.gateway.config import DomainConfig, GatewayConfig
from keypost.gateway.errors import ConfigError

# Derived private keys kept per domain (address, key): one EC scalar multiplication each
# to make; past this many the cache starts over, so made-up recipients cannot grow it.
MAX_DERIVED_KEYS = 10_000


@dataclass(frozen=True)
class Opener:
    """A Decryptor for one message's recipients, and whose each of its keys is: (index of
    the configured encryption key, the indices of the recipients whose derived key it is,
    or None for the configured key itself)."""

    decryptor: Decryptor
    owners: tuple[tuple[int, frozenset[int] | None], ...]


@dataclass(frozen=True)
class DomainKeys:
    """One served domain's keys, ready to use. `fingerprints` are SHA-256 of each key's SPKI."""

    name: str
    decryptor: Decryptor
    fingerprints: tuple[str, ...]  # parallel to the configured encryption_keys
    signing_key: PrivateKey | None
    # [[domain]] derived_keys: the keys below, tweaked per recipient (keypost.core.derived)
    derived: bool = False
    accept_plain: bool = False  # derived_keys' accept_plain_keys
    keys: tuple[PrivateKey, ...] = ()  # the configured encryption keys, current first
    _derived_keys: dict[tuple[str, int], PrivateKey] = field(
        default_factory=dict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def describe_key(self, index: int) -> str:
        """What the X-Keypost-Decrypted header says about key `index` (no secrets)."""
        which = "current" if index == 0 else f"retired-{index}"
        return f"key={which} fingerprint={self.fingerprints[index]}"

    def opener(self, recipients: Sequence[Address | None]) -> Opener:
        """The keys to try on a message for `recipients`: the configured ones, or with
        derived keys each recipient's key of each configured key (plus the configured ones
        under accept_plain_keys). One ECDH per key and KeyAgreeRecipientInfo, so one key
        per mailbox: the same one named twice, or in another case, shares it."""
        if not self.derived:
            return Opener(self.decryptor, tuple((i, None) for i in range(len(self.fingerprints))))
        mailboxes: dict[str, tuple[Address, list[int]]] = {}
        for n, rcpt in enumerate(recipients):
            if rcpt is not None:  # None: not a mailbox (an outbound recipient), no key
                mailboxes.setdefault(rcpt.key(), (rcpt, []))[1].append(n)
        keys: list[PrivateKey] = []
        owners: list[tuple[int, frozenset[int] | None]] = []
        for rcpt, positions in mailboxes.values():
            for i in range(len(self.keys)):
                keys.append(self._derived_key(rcpt, i))
                owners.append((i, frozenset(positions)))
        if self.accept_plain or not keys:
            # (no recipients: outbound mail names none of ours; only the plain keys can try)
            keys += self.keys
            owners += [(i, None) for i in range(len(self.keys))]
        return Opener(Decryptor(keys), tuple(owners))

    def _derived_key(self, address: Address, index: int) -> PrivateKey:
        cache_key = (address.key(), index)
        with self._lock:
            found = self._derived_keys.get(cache_key)
        if found is None:
            base = self.keys[index]
            assert isinstance(base, ec.EllipticCurvePrivateKey)  # load_domain_keys checked
            found = derived_private_key(base, address)
            with self._lock:
                if len(self._derived_keys) >= MAX_DERIVED_KEYS:
                    self._derived_keys.clear()
                self._derived_keys[cache_key] = found
        return found


def check_private_file(path: Path) -> bytes:
    """Read a secret file that must be a regular file without group/other permissions."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path} is not a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(
            f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            "run chmod 600 on it"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def read_secret(path: Path | None, env: str | None, what: str) -> bytes | None:
    """A password/passphrase from a 0600 file (first line) or an environment variable."""
    if path is not None:
        data = check_private_file(path).splitlines()
        return data[0] if data else b""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"{what}: environment variable {env} is not set")
        return value.encode()
    return None


def spki_fingerprint(key: PrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def load_private_key(path: Path, passphrase: bytes | None) -> PrivateKey:
    data = check_private_file(path)
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, passphrase)
        else:
            key = serialization.load_der_private_key(data, passphrase)
    except TypeError:
        # cryptography: a passphrase was given for a clear key or is missing for an encrypted one
        raise ConfigError(f"{path}: passphrase missing or not needed") from None
    except ValueError:
        # The message never includes key bytes; cryptography's text may, so it is not used.
        raise ConfigError(f"{path}: not a readable private key (or wrong passphrase)") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ConfigError(f"{path}: RSA keys must have at least 2048 bits")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key
    raise ConfigError(f"{path}: only RSA and EC keys are supported")


def load_domain_keys(domain: DomainConfig) -> DomainKeys:
    passphrase = read_secret(
        domain.key_passphrase_file, domain.key_passphrase_env, f"domain {domain.name}"
    )
    keys = [load_private_key(p, passphrase) for p in domain.encryption_keys]
    for path, key in zip(domain.encryption_keys, keys, strict=True):
        # current or retired alike: RSA key transport or EC P-256/384/521 key agreement
        # (the Decryptor would refuse the rest naming neither file nor domain)
        problem = smime_key_problem(key.public_key(), f"domain {domain.name}'s encryption key")
        if problem is not None:
            raise ConfigError(f"{path}: {problem}")
        if domain.derived_keys and not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{path}: derived_keys needs EC encryption keys (P-256, P-384 "
                              f"or P-521), and this is an RSA key (domain {domain.name})")
    signing = (
        load_private_key(domain.signing_key, passphrase) if domain.signing_key else None
    )
    if signing is not None:
        # as the directory refuses to register it: signatures no mail client verifies
        problem = signing_key_problem(signing.public_key(), f"domain {domain.name}'s signing key")
        if problem is not None:
            raise ConfigError(f"{domain.signing_key}: {problem}")
    return DomainKeys(
        name=domain.name,
        decryptor=Decryptor(keys),
        fingerprints=tuple(spki_fingerprint(k) for k in keys),
        signing_key=signing,
        derived=domain.derived_keys,
        accept_plain=domain.accept_plain_keys,
        keys=tuple(keys),
    )


def load_all_keys(config: GatewayConfig) -> Mapping[str, DomainKeys]:
    return {d.name: load_domain_keys(d) for d in config.domains}
