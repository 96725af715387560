"""Asks the key container directory (LDAP or HTTP, as the gateway account) for certificates.

Everything the directory sends is verified against the pinned trust anchor (containers)
or the configured roots (genuine certificates) before use, and cached until half of
its life has passed (the directory itself renews at that point); certificates to encrypt
to, for an hour at most (ENCRYPTION_CACHE_LIMIT). A sender's previous signing containers
are kept beside the new one while they are valid (MAX_SIGNING_CONTAINERS in all), also
on disk (kept.KeptContainers) for after a restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import math
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import ldap3
import requests
from cryptography import x509
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from keypost.core.address import Address
from keypost.core.containers import describe, load_certificates, verify_container
from keypost.core.errors import ContainerError
from keypost.core.types import Purpose, Role
from keypost.gateway.config import DirectoryConfig, directory_url, transport_refusal
from keypost.gateway.errors import ConfigError, DirectoryUnavailable, PermFailure
from keypost.gateway.kept import KeptContainers
from keypost.gateway.keys import read_secret

log = logging.getLogger("keypost.gateway.directory")

Clock = Callable[[], dt.datetime]
# After an emergency `domain rekey` of a recipient's domain its directory hands out
# containers of the new key at once; a cached container would keep our outbound mail going
# to the retired key for half a 24 h container's life (12 h), and a genuine certificate
# alone (years of life) for months. An hour bounds that, as in the host's cache; its cost
# is one directory search per recipient address and hour. Signing containers (our own)
# keep the half-life rule.
ENCRYPTION_CACHE_LIMIT = dt.timedelta(hours=1)
# Signing containers kept per sender, the newest first: the current one and those before
# it that are still valid. Mail dated before the current one's notBefore (queued across the
# change, a client clock behind) needs one that covers its Date, as signingTime = Date.
# With a 30-day life renewed at half-life two are valid at a time; the bound is for a
# directory that hands out new ones more often, and keeps the cache's size bounded.
MAX_SIGNING_CONTAINERS = 3


@dataclass(frozen=True)
class Certificates:
    """Verified certificates for one recipient address."""

    gateways: tuple[x509.Certificate, ...] = ()  # proxy-encryption containers
    genuine: tuple[x509.Certificate, ...] = ()  # the recipient's own certificates
    signing: tuple[x509.Certificate, ...] = ()  # proxy-signing containers (own senders)

    @property
    def encryption(self) -> tuple[x509.Certificate, ...]:
        return self.gateways + self.genuine


class DirectoryClient(Protocol):
    """What the pipeline needs from the directory. Both raise DirectoryUnavailable."""

    def encryption_certificates(self, address: Address) -> Certificates: ...

    def signing_containers(self, address: Address) -> tuple[x509.Certificate, ...]:
        """The sender's verified signing containers, newest first (none: empty)."""
        ...


class NoDirectory:
    """No directory configured: nobody has certificates, nothing can be signed."""

    def encryption_certificates(self, address: Address) -> Certificates:
        return Certificates()

    def signing_containers(self, address: Address) -> tuple[x509.Certificate, ...]:
        # Permanent: retrying cannot help until the operator configures a directory.
        raise PermFailure("signing needs a directory, and none is configured", "5.7.0")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _load_pem_files(paths: Sequence[Path], what: str) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for p in paths:
        try:
            certs.extend(load_certificates(p.read_bytes()))
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read {p}: {exc.strerror}") from None
        except ContainerError as exc:
            raise ConfigError(f"{what}: {p}: {exc}") from None
    return certs


class _Fetcher(Protocol):
    def fetch(self, address: Address, purpose: Purpose) -> list[x509.Certificate]: ...


class LdapFetcher:
    """One bound ldap3 connection, shared under a lock (ldap3's sync strategy is not
    thread-safe), re-opened after any error."""

    def __init__(self, cfg: DirectoryConfig, password: str | None, timeout: float) -> None:
        # ldap://host:port/dc=keypost names the search base in the URL (RFC 4516)
        url = directory_url(cfg.url or "", cfg.base)
        # ldap3 does not check server certificates unless told to.
        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED,
            ca_certs_file=str(cfg.tls_ca) if cfg.tls_ca else None,
        )
        self.server = ldap3.Server(
            url.host,
            port=url.port,
            use_ssl=url.scheme == "ldaps",
            tls=tls,
            connect_timeout=timeout,
            get_info=ldap3.NONE,
        )
        self.cfg, self.password, self.timeout = cfg, password, timeout
        self.base = url.base
        self.lock = threading.Lock()
        self.conn: ldap3.Connection | None = None

    def _connect(self) -> ldap3.Connection:
        # ldap3 skips an address that refused a connection in the last 5 s and says only
        # "invalid server address": every attempt is a real one, with the real reason.
        self.server.reset_availability()
        conn = ldap3.Connection(
            self.server,
            user=self.cfg.username,
            password=self.password,
            receive_timeout=max(1, math.ceil(self.timeout)),  # ldap3 packs it as an int
            read_only=True,
            raise_exceptions=False,
        )
        if self.cfg.starttls and not conn.start_tls():
            conn.unbind()
            raise DirectoryUnavailable("directory StartTLS failed")
        if not conn.bind():
            result = conn.result or {}
            conn.unbind()
            # Wrong credentials defer all mail that needs the directory: say it loudly.
            log.error("directory bind as %s refused: %s", self.cfg.username or "anonymous",
                      result.get("description", "error"))
            raise DirectoryUnavailable(
                f"directory bind refused ({result.get('description', 'error')})"
            )
        return conn

    def fetch(self, address: Address, purpose: Purpose) -> list[x509.Certificate]:
        flt = f"(mail={escape_filter_chars(str(address))})"
        with self.lock:
            for attempt in (1, 2):
                try:
                    if self.conn is None:
                        self.conn = self._connect()
                    ok = self.conn.search(
                        self.base, flt, attributes=["userCertificate;binary"], size_limit=2
                    )
                    result = self.conn.result or {}
                    # 4 sizeLimitExceeded still carries entries. Not 32 noSuchObject: the
                    # directory answers every address under its suffix, so that is a wrong
                    # `base`, and "no certificate" would send clear text per policy.
                    if not ok and result.get("result", 0) not in (0, 4):
                        raise DirectoryUnavailable(
                            f"directory search failed ({result.get('description', 'error')})"
                            + (f"; is base {self.base!r} the directory's suffix?"
                               if result.get("result") == 32 else "")
                        )
                    return self._certificates(self.conn.response or [])
                except (LDAPException, OSError) as exc:
                    self._drop()
                    if attempt == 2:
                        raise DirectoryUnavailable(f"directory unreachable: {exc}") from None
                except DirectoryUnavailable:
                    self._drop()
                    raise
        raise DirectoryUnavailable("directory unreachable")  # pragma: no cover

    def _drop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(LDAPException, OSError):
                self.conn.unbind()
        self.conn = None

    @staticmethod
    def _certificates(response: list[dict[str, object]]) -> list[x509.Certificate]:
        certs: list[x509.Certificate] = []
        for entry in response:
            if entry.get("type") != "searchResEntry":
                continue
            raw = entry.get("raw_attributes")
            if not isinstance(raw, Mapping):  # ldap3 uses its own case-insensitive dict
                continue
            for name, values in raw.items():
                if not str(name).lower().startswith("usercertificate"):
                    continue
                for der in values:
                    try:
                        certs.append(x509.load_der_x509_certificate(bytes(der)))
                    except ValueError:
                        log.warning("directory sent an unreadable certificate; ignored")
        return certs


class HttpDirectory:
    """GET requests to the directory's HTTP API with HTTP Basic credentials of the gateway
    account (one requests.Session per thread), TLS checked against `tls_ca`."""

    def __init__(self, cfg: DirectoryConfig, password: str | None, timeout: float) -> None:
        self.base = directory_url(cfg.url or "").http_base
        self.auth = (cfg.username, password or "") if cfg.username else None
        self.timeout = timeout
        self.verify: str | bool = str(cfg.tls_ca) if cfg.tls_ca else True
        self.local = threading.local()

    def get(self, path: str, params: Sequence[tuple[str, str]]) -> requests.Response:
        """The 200 answer to GET `path`; anything else raises DirectoryUnavailable."""
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
        try:
            resp = session.get(f"{self.base}{path}", params=list(params), auth=self.auth,
                               timeout=self.timeout, verify=self.verify)
        except requests.RequestException as exc:
            raise DirectoryUnavailable(f"directory unreachable: {type(exc).__name__}") from None
        if resp.status_code != 200:
            raise DirectoryUnavailable(f"directory answered HTTP {resp.status_code}")
        return resp


class HttpFetcher(HttpDirectory):
    """GET /v1/containers with HTTP Basic credentials of the gateway account."""

    def fetch(self, address: Address, purpose: Purpose) -> list[x509.Certificate]:
        resp = self.get("/v1/containers",
                        [("address", str(address)), ("purpose", purpose.value)])
        certs: list[x509.Certificate] = []
        try:
            for result in resp.json().get("results", []):
                for c in result.get("containers", []):
                    certs.extend(load_certificates(str(c["pem"]).encode()))
        except (ValueError, KeyError, TypeError, AttributeError, ContainerError):
            raise DirectoryUnavailable("directory sent an unreadable answer") from None
        return certs


@dataclass(frozen=True)
class _Entry:
    certs: Certificates
    fresh_until: dt.datetime


class CachingDirectory:
    """The DirectoryClient the gateway uses: fetch, verify, cache until half-life."""

    def __init__(
        self,
        fetcher: _Fetcher,
        trust_anchors: Sequence[x509.Certificate],
        genuine_roots: Sequence[x509.Certificate] = (),
        negative_cache: float = 60.0,
        clock: Clock = _utcnow,
        kept: KeptContainers | None = None,
    ) -> None:
        self.fetcher = fetcher
        self.kept = kept  # signing containers on disk, for after a restart
        self.anchors = list(trust_anchors)
        self.genuine_roots = list(genuine_roots)
        self.negative = dt.timedelta(seconds=negative_cache)
        self.clock = clock
        self.lock = threading.Lock()
        self.cache: dict[tuple[str, Purpose], _Entry] = {}

    def encryption_certificates(self, address: Address) -> Certificates:
        return self._lookup(address, Purpose.ENCRYPT)

    def signing_containers(self, address: Address) -> tuple[x509.Certificate, ...]:
        now = self.clock()
        found = self._lookup(address, Purpose.SIGN).signing
        return tuple(c for c in found if now <= c.not_valid_after_utc)

    def _lookup(self, address: Address, purpose: Purpose) -> Certificates:
        key = (address.key(), purpose)
        now = self.clock()
        with self.lock:
            entry = self.cache.get(key)
        if entry is not None and now < entry.fresh_until:
            return entry.certs
        certs = self._verify(address, purpose, self.fetcher.fetch(address, purpose), now)
        lives = [
            c.not_valid_before_utc + (c.not_valid_after_utc - c.not_valid_before_utc) / 2
            for c in certs.gateways + certs.genuine + certs.signing
        ]
        limit = [now + ENCRYPTION_CACHE_LIMIT] if lives and purpose is Purpose.ENCRYPT else []
        fresh = min(lives + limit) if lives else now + self.negative
        if purpose is Purpose.SIGN:
            # Freshness comes from the new answer alone (above): a kept container past its
            # half-life must not make every message fetch again.
            certs = Certificates(signing=self._with_kept(address, certs.signing, entry, now))
        with self.lock:
            if len(self.cache) > 10_000:  # bounded: a flood of new addresses cannot grow it
                self.cache.clear()
            self.cache[key] = _Entry(certs, fresh)
        return certs

    def _with_kept(
        self, address: Address, fetched: tuple[x509.Certificate, ...], entry: _Entry | None,
        now: dt.datetime,
    ) -> tuple[x509.Certificate, ...]:
        """The directory's signing containers and the sender's previous ones (from the cache,
        else from the state folder, verified like an answer), written back when they change."""
        previous: tuple[x509.Certificate, ...] = ()
        if entry is not None:
            previous = entry.certs.signing
        elif self.kept is not None and fetched:
            loaded = self.kept.load(address, now)
            previous = self._verify(address, Purpose.SIGN, loaded, now,
                                    "kept in the state folder").signing
        # Only beside a new answer: when the directory stops handing out a signing
        # container, the kept ones go too (also a file from before a restart).
        merged = _with_previous(fetched, previous, now) if fetched else ()
        if self.kept is not None and (merged != previous or (entry is None and not fetched)):
            self.kept.save(address, merged)
        return merged

    def _verify(
        self, address: Address, purpose: Purpose, found: list[x509.Certificate], now: dt.datetime,
        source: str = "from the directory",
    ) -> Certificates:
        gateways: list[x509.Certificate] = []
        genuine: list[x509.Certificate] = []
        signing: list[x509.Certificate] = []
        for cert in found:
            try:
                role = describe(cert).role
            except ContainerError:
                log.warning("directory sent a malformed certificate for %s; ignored", address)
                continue
            if role is Role.PROXY_ENCRYPTION and purpose is Purpose.ENCRYPT:
                res = verify_container(cert, self.anchors, address, Purpose.ENCRYPT, now)
                bucket = gateways
            elif role is Role.PROXY_SIGNING and purpose is Purpose.SIGN:
                res = verify_container(cert, self.anchors, address, Purpose.SIGN, now)
                bucket = signing
            elif role in (None, Role.GENUINE) and purpose is Purpose.ENCRYPT:
                if not self.genuine_roots:
                    log.info("genuine certificate for %s ignored: no genuine_roots set", address)
                    continue
                res = verify_container(
                    cert, self.genuine_roots, address, Purpose.ENCRYPT, now,
                    expected_roles=[Role.GENUINE],
                )
                bucket = genuine
            else:
                continue
            if res.ok:
                bucket.append(cert)
            else:
                log.warning(
                    "certificate for %s %s rejected: %s", address, source, "; ".join(res.reasons),
                )
        return Certificates(tuple(gateways), tuple(genuine), tuple(signing))


def _with_previous(
    fetched: Sequence[x509.Certificate], kept: Sequence[x509.Certificate], now: dt.datetime
) -> tuple[x509.Certificate, ...]:
    """The directory's signing containers and the earlier ones still valid, newest first,
    MAX_SIGNING_CONTAINERS at most. Only beside a new answer: when the directory stops
    handing out a signing container, the kept ones go too."""
    merged = list(fetched) + [c for c in kept if c not in fetched and now <= c.not_valid_after_utc]
    merged.sort(key=lambda c: c.not_valid_before_utc, reverse=True)
    return tuple(merged[:MAX_SIGNING_CONTAINERS])


def load_trust_anchors(cfg: DirectoryConfig) -> list[x509.Certificate]:
    """The directory CA(s) from `trust_anchor` (empty when not configured)."""
    return _load_pem_files([cfg.trust_anchor] if cfg.trust_anchor else [], "trust_anchor")


@dataclass(frozen=True)
class DirectoryFiles:
    """What `[directory]` names outside the configuration file, read once at start: the
    directory CA(s), the genuine roots and the gateway account's password. Every part of
    the gateway that needs one gets it from here, so a file replaced while the gateway
    starts cannot give two parts two views of it, and the password is read once."""

    trust_anchors: tuple[x509.Certificate, ...] = ()
    genuine_roots: tuple[x509.Certificate, ...] = ()
    password: str | None = dataclasses.field(default=None, repr=False)


def load_directory_files(cfg: DirectoryConfig) -> DirectoryFiles:
    """Read them (the password only with a `url`: nothing else would use it). Raises
    ConfigError naming the setting."""
    return DirectoryFiles(
        tuple(load_trust_anchors(cfg)),
        tuple(_load_pem_files(cfg.genuine_roots, "genuine_roots")),
        directory_password(cfg) if cfg.url is not None else None,
    )


def check_tls_ca(path: Path) -> None:
    """Load `tls_ca` as the TLS clients will (ldap3 would raise at start, requests on
    every request), so a bad file stops check-config and serve in one line."""
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError:
        raise ConfigError(f"directory.tls_ca: {path}: no PEM certificate in it") from None
    except OSError as exc:
        raise ConfigError(f"directory.tls_ca: cannot read {path}: {exc.strerror}") from None


def directory_password(cfg: DirectoryConfig) -> str | None:
    """The gateway account's password from `password_file` or `password_env`."""
    password = read_secret(cfg.password_file, cfg.password_env, "directory password")
    try:
        return password.decode() if password is not None else None
    except UnicodeDecodeError:
        raise ConfigError("directory password: not UTF-8 text") from None


def anonymous_fetch(cfg: DirectoryConfig, address: Address,
                    timeout: float) -> list[x509.Certificate]:
    """The encryption containers an outside sender gets for `address` (no account: a
    gateway account is given no encryption container of its own domain), unverified."""
    assert cfg.url is not None
    anonymous = dataclasses.replace(cfg, username=None, password_file=None, password_env=None)
    fetcher: _Fetcher = (HttpFetcher(anonymous, None, timeout)
                         if not directory_url(cfg.url).is_ldap
                         else LdapFetcher(anonymous, None, timeout))
    return fetcher.fetch(address, Purpose.ENCRYPT)


def make_directory(
    cfg: DirectoryConfig, timeout: float, files: DirectoryFiles,
    kept: KeptContainers | None = None,
) -> DirectoryClient:
    """The directory client of `cfg`, with what load_directory_files read for it."""
    if cfg.url is None:
        return NoDirectory()
    refusal = transport_refusal(cfg.url, cfg.starttls)  # also for a config built in code
    if refusal:
        raise ConfigError(refusal)
    if cfg.tls_ca is not None:
        check_tls_ca(cfg.tls_ca)
    fetcher: _Fetcher
    if not directory_url(cfg.url).is_ldap:
        fetcher = HttpFetcher(cfg, files.password, timeout)
    else:
        fetcher = LdapFetcher(cfg, files.password, timeout)
    return CachingDirectory(fetcher, files.trust_anchors, files.genuine_roots,
                            cfg.negative_cache, kept=kept)
