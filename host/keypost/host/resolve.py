"""From addresses to verified containers: cache, one directory round trip, verification.

Every container is verified against the pinned directory trust anchor before use
(role proxy-encryption); genuine certificates against the directory CA plus the extra
roots. The reports say per recipient what would be used and why something is refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography import x509

from keypost.core.address import Address, parse_address
from keypost.core.containers import sha256_fingerprint, verify_container
from keypost.core.errors import KeypostError
from keypost.core.types import Purpose, Role
from keypost.core.x509_checks import public_key, smime_key_problem
from keypost.host.cache import ContainerCache
from keypost.host.config import HostConfig
from keypost.host.directory_client import DirectoryClient, RawContainer
from keypost.host.errors import HostError

STATUS_OK = "ok"
STATUS_NO_CONTAINER = "no_container"
STATUS_INVALID = "invalid"
STATUS_INVALID_ADDRESS = "invalid_address"
STATUS_ERROR = "error"

_Parsed = tuple[str, str | None, str | None, Address | None]  # shown, key, error, address


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _Facts:
    """What a report shows of a certificate (~30 us to compute, so kept with a verified
    container rather than recomputed for every lookup of the session)."""

    not_after: str | None
    fingerprint: str | None
    subject: str | None


def _facts(cert: x509.Certificate, der: bytes | None = None) -> _Facts:
    """`der`: the certificate's encoding when at hand; hashing it with hashlib gives
    sha256_fingerprint's result in 1.5 instead of 10 us."""
    fingerprint = (hashlib.sha256(der).digest().hex(":").upper() if der is not None
                   else sha256_fingerprint(cert))
    return _Facts(_iso(cert.not_valid_after_utc), fingerprint, cert.subject.rfc4514_string())


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
    facts: _Facts | None = None  # remembered with the verification, else computed here

    def to_wire(self) -> dict[str, Any]:
        cert = self.certificate
        facts = self.facts or (_facts(cert) if cert else _Facts(None, None, None))
        return {
            "role": self.role.value,
            "gateway": self.gateway,
            "gateway_fingerprint": self.gateway_fingerprint,
            "not_after": facts.not_after,
            "fingerprint": facts.fingerprint,
            "subject": facts.subject,
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
    given: str | None = None  # the address as the caller wrote it

    @property
    def usable(self) -> tuple[x509.Certificate, ...]:
        return tuple(c.certificate for c in self.containers if c.used and c.certificate)

    def to_wire(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "given": self.address if self.given is None else self.given,
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
    verified: dict[tuple[bytes, str], _Verified] = field(default_factory=dict)

    def resolve(
        self,
        addresses: Sequence[str],
        sender: str | None = None,
        now: dt.datetime | None = None,
        while_waiting: Callable[[], object] | None = None,
    ) -> Resolution:
        """Reports for each address (in order) and for the sender (None when not given).

        Directory failures become status "error" reports; callers that must fail closed
        check the statuses. Raises only for programming errors. `while_waiting`: work the
        client may do while its request is in flight (not called when nothing is fetched)."""
        at = now or dt.datetime.now(dt.UTC)
        parsed: list[_Parsed] = []
        for text in [*addresses, *([sender] if sender else [])]:
            try:
                addr = parse_address(text)
                parsed.append((str(addr), addr.key(), None, addr))
            except KeypostError as exc:
                parsed.append((text, None, str(exc), None))
        raw, sources, failure = self._containers([(a, k) for a, k, _, _ in parsed if k],
                                                 while_waiting)

        def report(entry: _Parsed, own: set[str], own_domain: str | None) -> RecipientReport:
            shown, key, error, addr = entry
            if key is None or addr is None:
                return RecipientReport(shown, STATUS_INVALID_ADDRESS, "invalid address",
                                       error or "invalid address")
            if key not in raw and failure is not None:
                return RecipientReport(shown, STATUS_ERROR, "lookup failed", str(failure))
            return self._verify(addr, raw.get(key, []), at, sources.get(key), own, own_domain)

        # The sender first: its gateway fingerprints tell which recipient containers are
        # the sender's own gateway (LDAP does not name the gateway).
        sender_report = None
        own_fps: set[str] = set()
        sender_domain = None
        if sender:
            entry = parsed.pop()
            sender_domain = entry[1].rpartition("@")[2] if entry[1] else None
            sender_report = _as_sender(report(entry, set(), sender_domain))
            own_fps = {c.gateway_fingerprint for c in sender_report.containers
                       if c.valid and c.gateway_fingerprint}
        reports = tuple(replace(report(entry, own_fps, sender_domain), given=text)
                        for entry, text in zip(parsed, addresses, strict=True))
        if sender_report is not None:
            sender_report = replace(sender_report, given=sender)
        return Resolution(reports, sender_report, failure)

    def _containers(
        self, wanted: Sequence[tuple[str, str]], while_waiting: Callable[[], object] | None
    ) -> tuple[dict[str, list[RawContainer]], dict[str, str], HostError | None]:
        """Cached or fetched raw containers per address key; one fetch for all misses.
        `wanted`: (normalised address, its key) pairs."""
        url, user = self.config.directory.url, self.config.username
        anchor = self.config.anchor.fingerprint
        out: dict[str, list[RawContainer]] = {}
        sources: dict[str, str] = {}
        missing: dict[str, str] = {}  # key -> address as asked
        for address, key in wanted:
            if key in out or key in missing:
                continue
            entry = self.cache.get(ContainerCache.key(url, user, anchor, key))
            if entry is None:
                missing[key] = address
            else:
                out[key] = list(entry.containers)
                sources[key] = "cache"
        if not missing:
            return out, sources, None
        try:
            fetched = self.client.fetch(list(missing.values()), while_waiting)
        except HostError as exc:
            return out, sources, exc
        self.fetched_addresses.append(len(missing))
        for key in missing:
            containers = fetched.get(key, [])
            out[key] = containers
            sources[key] = "directory"
            self.cache.put(ContainerCache.key(url, user, anchor, key), containers,
                           _earliest_not_after(containers))
        return out, sources, None  # the cache file is written later (Host.idle)

    def _verify(
        self,
        target: Address,
        raw: Sequence[RawContainer],
        at: dt.datetime,
        source: str | None,
        own_fps: set[str],
        sender_domain: str | None,
    ) -> RecipientReport:
        address = str(target)
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
            reports.append(_check(item, target, anchor, roots, at, own_fps, sender_domain,
                                  self.verified))
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
                            r.reasons, used=r.valid, facts=r.facts)
            for r in reports
        )
        return RecipientReport(address, STATUS_OK, _summary(used), None, used, source)


@dataclass(frozen=True)
class _Verified:
    """A container that passed verification for an address: reused while it is within its
    validity period (the signature, chain, roles and names cannot change)."""

    certificate: x509.Certificate
    role: Role
    gateway_fingerprint: str | None
    facts: _Facts


MAX_VERIFIED = 20_000  # memo entries per session before it starts over


_Outcome = tuple[x509.Certificate | None, Role, str | None, tuple[str, ...], _Facts | None]


def _verify_one(
    item: RawContainer,
    target: Address,
    anchor: x509.Certificate,
    roots: Sequence[x509.Certificate],
    at: dt.datetime,
    memo: dict[tuple[bytes, str], _Verified],
) -> _Outcome:
    """(certificate, role, gateway fingerprint, reasons, facts); no reasons = valid."""
    address = str(target)
    hit = memo.get((item.der, address))
    if hit is not None:
        known = hit.certificate
        if known.not_valid_before_utc <= at < known.not_valid_after_utc:
            return known, hit.role, hit.gateway_fingerprint, (), hit.facts
    cert = item.certificate  # parsed once, also read for the cache's lifetimes
    if cert is None:
        return None, Role.GENUINE, None, ("the directory sent something that is not a "
                                          "certificate",), None
    # One verification accepting both roles against all roots; describe() runs inside.
    # The parsed address: verify_container then does not parse it again per container.
    result = verify_container(cert, roots, target, Purpose.ENCRYPT, at,
                              (Role.PROXY_ENCRYPTION, Role.GENUINE))
    info = result.info
    if info is None:
        return cert, Role.GENUINE, None, result.reasons, None
    role = info.role or Role.GENUINE
    if role is Role.PROXY_ENCRYPTION and len(roots) > 1:
        # Proxy containers must come from the pinned directory CA, not an extra root.
        result = verify_container(cert, (anchor,), target, Purpose.ENCRYPT, at,
                                  (Role.PROXY_ENCRYPTION,))
    reasons = list(result.reasons)
    # verify_container accepts keys (an EC P-224 one, say) the S/MIME engine cannot
    # encrypt to: RSA >= 2048 key transport, EC P-256/384/521 key agreement
    problem = smime_key_problem(public_key(cert), "the certificate")
    if problem is not None:
        reasons.append(problem)
    if reasons:
        return cert, role, info.gateway_fingerprint, tuple(reasons), None
    if len(memo) >= MAX_VERIFIED:
        memo.clear()
    facts = _facts(cert, item.der)
    memo[(item.der, address)] = _Verified(cert, role, info.gateway_fingerprint, facts)
    return cert, role, info.gateway_fingerprint, (), facts


def _check(
    item: RawContainer,
    target: Address,
    anchor: x509.Certificate,
    roots: Sequence[x509.Certificate],
    at: dt.datetime,
    own_fps: set[str],
    sender_domain: str | None,
    memo: dict[tuple[bytes, str], _Verified],
) -> ContainerReport:
    cert, role, gateway_fp, reasons, facts = _verify_one(item, target, anchor, roots, at, memo)
    address = str(target)
    gateway = item.gateway
    if gateway is None and role is Role.PROXY_ENCRYPTION:
        # LDAP does not say whose gateway it is: the sender's own gateway is the one that
        # also appears for the sender's address; any other proxy is the recipient's.
        if gateway_fp and gateway_fp in own_fps and sender_domain:
            gateway = sender_domain
        else:
            gateway = address.rpartition("@")[2]
    return ContainerReport(cert, role, gateway, gateway_fp, not reasons, reasons, facts=facts)


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
    return replace(report, party="sender")


def _earliest_not_after(containers: Sequence[RawContainer]) -> float | None:
    times = [validity[1] for c in containers if (validity := c.validity) is not None]
    return min(times) if times else None
