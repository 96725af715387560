"""From addresses to verified containers: cache, one directory round trip, verification.

Every container is verified against the pinned directory trust anchor before use
(role proxy-encryption); genuine certificates against the directory CA plus the extra
roots. The reports say per recipient what would be used and why something is refused.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from keypost.core.address import parse_address
from keypost.core.containers import describe, sha256_fingerprint, verify_container
from keypost.core.errors import KeypostError
from keypost.core.types import Purpose, Role
from keypost.host.cache import ContainerCache
from keypost.host.config import HostConfig
from keypost.host.directory_client import DirectoryClient, RawContainer
from keypost.host.errors import HostError

STATUS_OK = "ok"
STATUS_NO_CONTAINER = "no_container"
STATUS_INVALID = "invalid"
STATUS_INVALID_ADDRESS = "invalid_address"
STATUS_ERROR = "error"


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ContainerReport:
    """One container of one recipient, with its verification outcome."""

    certificate: x509.Certificate | None  # None when the directory sent garbage
    role: Role  # GENUINE for certificates without a keypost role
    gateway: str | None
    gateway_fingerprint: str | None
    valid: bool
    reasons: tuple[str, ...]
    used: bool = False

    def to_wire(self) -> dict[str, Any]:
        cert = self.certificate
        return {
            "role": self.role.value,
            "gateway": self.gateway,
            "gateway_fingerprint": self.gateway_fingerprint,
            "not_after": _iso(cert.not_valid_after_utc) if cert else None,
            "fingerprint": sha256_fingerprint(cert) if cert else None,
            "subject": cert.subject.rfc4514_string() if cert else None,
            "valid": self.valid,
            "reasons": list(self.reasons),
            "used": self.used,
        }


@dataclass(frozen=True)
class RecipientReport:
    address: str  # normalised, or as given when it is not an address
    status: str
    summary: str
    reason: str | None = None
    containers: tuple[ContainerReport, ...] = ()
    source: str | None = None
    party: str = "recipient"  # or "sender"

    @property
    def usable(self) -> tuple[x509.Certificate, ...]:
        return tuple(c.certificate for c in self.containers if c.used and c.certificate)

    def to_wire(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "party": self.party,
            "status": self.status,
            "summary": self.summary,
            "reason": self.reason,
            "containers": [c.to_wire() for c in self.containers],
            "source": self.source,
        }


@dataclass(frozen=True)
class Resolution:
    """The reports of one lookup. `failure` is the directory error behind "error" reports."""

    recipients: tuple[RecipientReport, ...]
    sender: RecipientReport | None
    failure: HostError | None = None


@dataclass
class Resolver:
    """Looks addresses up for one configuration; holds the session's client and cache."""

    config: HostConfig
    client: DirectoryClient
    cache: ContainerCache
    fetched_addresses: list[int] = field(default_factory=list)  # batch sizes, for tests

    def resolve(
        self,
        addresses: Sequence[str],
        sender: str | None = None,
        now: dt.datetime | None = None,
    ) -> Resolution:
        """Reports for each address (in order) and for the sender (None when not given).

        Directory failures become status "error" reports; callers that must fail closed
        check the statuses. Raises only for programming errors."""
        at = now or dt.datetime.now(dt.UTC)
        parsed: list[tuple[str, str | None, str | None]] = []  # (shown, key, error)
        for text in [*addresses, *([sender] if sender else [])]:
            try:
                addr = parse_address(text)
                parsed.append((str(addr), addr.key(), None))
            except KeypostError as exc:
                parsed.append((text, None, str(exc)))
        raw, sources, failure = self._containers([(a, k) for a, k, _ in parsed if k])
        sender_domain = parsed[-1][1].rpartition("@")[2] if sender and parsed[-1][1] else None
        own_fps: set[str] = set()
        if sender and parsed[-1][1]:
            for c in raw.get(parsed[-1][1], []):
                fp = _gateway_fp(c)
                if fp:
                    own_fps.add(fp)
        reports: list[RecipientReport] = []
        for shown, key, error in parsed:
            if key is None:
                reports.append(RecipientReport(shown, STATUS_INVALID_ADDRESS,
                                               "invalid address", error or "invalid address"))
            elif key not in raw and failure is not None:
                reports.append(RecipientReport(shown, STATUS_ERROR, "lookup failed", str(failure)))
            else:
                reports.append(self._verify(shown, raw.get(key, []), at, sources.get(key),
                                            own_fps, sender_domain))
        sender_report = _as_sender(reports.pop()) if sender else None
        return Resolution(tuple(reports), sender_report, failure)

    def _containers(
        self, wanted: Sequence[tuple[str, str]]
    ) -> tuple[dict[str, list[RawContainer]], dict[str, str], HostError | None]:
        """Cached or fetched raw containers per address key; one fetch for all misses.
        `wanted`: (normalised address, its key) pairs."""
        url, user = self.config.directory.url, self.config.username
        out: dict[str, list[RawContainer]] = {}
        sources: dict[str, str] = {}
        missing: dict[str, str] = {}  # key -> address as asked
        for address, key in wanted:
            if key in out or key in missing:
                continue
            entry = self.cache.get(ContainerCache.key(url, user, key))
            if entry is None:
                missing[key] = address
            else:
                out[key] = list(entry.containers)
                sources[key] = "cache"
        if not missing:
            return out, sources, None
        try:
            fetched = self.client.fetch(list(missing.values()))
        except HostError as exc:
            return out, sources, exc
        self.fetched_addresses.append(len(missing))
        for key in missing:
            containers = fetched.get(key, [])
            out[key] = containers
            sources[key] = "directory"
            self.cache.put(ContainerCache.key(url, user, key), containers,
                           _earliest_not_after(containers))
        self.cache.flush()
        return out, sources, None

    def _verify(
        self,
        address: str,
        raw: Sequence[RawContainer],
        at: dt.datetime,
        source: str | None,
        own_fps: set[str],
        sender_domain: str | None,
    ) -> RecipientReport:
        if not raw:
            return RecipientReport(address, STATUS_NO_CONTAINER, "no container",
                                   f"the directory has no key container for {address}",
                                   (), source)
        anchor = self.config.anchor.certificate
        roots = (anchor, *self.config.extra_roots)
        reports: list[ContainerReport] = []
        seen: set[bytes] = set()
        for item in raw:
            if item.der in seen:
                continue
            seen.add(item.der)
            reports.append(_check(item, address, anchor, roots, at, own_fps, sender_domain))
        proxies = [r for r in reports if r.role is Role.PROXY_ENCRYPTION]
        valid = [r for r in reports if r.valid]
        # Every gateway on the path must be able to decrypt: one bad proxy container fails
        # the recipient. A bad genuine certificate is skipped when the gateways are fine.
        bad_proxy = [r for r in proxies if not r.valid]
        if bad_proxy or not valid:
            failing = bad_proxy or reports
            why = "; ".join(f"{r.role.value} container: {', '.join(r.reasons)}" for r in failing)
            return RecipientReport(address, STATUS_INVALID, "no valid container", why,
                                   tuple(reports), source)
        used = tuple(
            ContainerReport(r.certificate, r.role, r.gateway, r.gateway_fingerprint, r.valid,
                            r.reasons, used=r.valid)
            for r in reports
        )
        return RecipientReport(address, STATUS_OK, _summary(used), None, used, source)


def _gateway_fp(item: RawContainer) -> str | None:
    try:
        return describe(x509.load_der_x509_certificate(item.der)).gateway_fingerprint
    except (ValueError, KeypostError):
        return None


def _check(
    item: RawContainer,
    address: str,
    anchor: x509.Certificate,
    roots: Sequence[x509.Certificate],
    at: dt.datetime,
    own_fps: set[str],
    sender_domain: str | None,
) -> ContainerReport:
    try:
        cert = x509.load_der_x509_certificate(item.der)
    except ValueError:
        return ContainerReport(None, Role.GENUINE, item.gateway, None, False,
                               ("the directory sent something that is not a certificate",))
    try:
        info = describe(cert)
    except KeypostError as exc:
        return ContainerReport(cert, Role.GENUINE, item.gateway, None, False, (str(exc),))
    role = info.role or Role.GENUINE
    if role is Role.GENUINE:
        result = verify_container(cert, roots, address, Purpose.ENCRYPT, at, (Role.GENUINE,))
    else:
        # Proxy containers must come from the pinned directory CA, nothing else.
        result = verify_container(cert, (anchor,), address, Purpose.ENCRYPT, at,
                                  (Role.PROXY_ENCRYPTION,))
    reasons = list(result.reasons)
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        reasons.append(f"{info.key_description} keys cannot be encrypted to yet (RSA only)")
    gateway = item.gateway
    if gateway is None and role is Role.PROXY_ENCRYPTION:
        # LDAP does not say whose gateway it is: the sender's own gateway is the one that
        # also appears for the sender's address; any other proxy is the recipient's.
        if info.gateway_fingerprint and info.gateway_fingerprint in own_fps and sender_domain:
            gateway = sender_domain
        else:
            gateway = address.rpartition("@")[2]
    return ContainerReport(cert, role, gateway, info.gateway_fingerprint, not reasons,
                           tuple(reasons))


def _summary(containers: Sequence[ContainerReport]) -> str:
    gateways = sorted({c.gateway for c in containers if c.used and c.role is Role.PROXY_ENCRYPTION
                       and c.gateway})
    genuine = any(c.used and c.role is Role.GENUINE for c in containers)
    parts = []
    if gateways:
        noun = "gateway" if len(gateways) == 1 else "gateways"
        parts.append(f"via the {noun} of {', '.join(gateways)}")
    if genuine:
        parts.append("genuine certificate")
    return " + ".join(parts) or "ok"


def _as_sender(report: RecipientReport) -> RecipientReport:
    return RecipientReport(report.address, report.status, report.summary, report.reason,
                           report.containers, report.source, party="sender")


def _earliest_not_after(containers: Sequence[RawContainer]) -> float | None:
    times = []
    for c in containers:
        try:
            times.append(x509.load_der_x509_certificate(c.der).not_valid_after_utc.timestamp())
        except ValueError:
            continue
    return min(times) if times else None
