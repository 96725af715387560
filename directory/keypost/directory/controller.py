"""The directory's brain: requestor class, policy, CA, cache, audit and the request log.

Purpose rule where the protocol cannot say (LDAP has no purpose parameter): a gateway
account asking for an address of one of its own domains gets the signing container (that
is the only thing a gateway needs for its own senders); everything else is a request for
encryption containers. HTTP callers state the purpose explicitly.

Cache rule: a container is reused for the same (address, role, gateway key, purpose)
while more than half of its life is left, and only for the requestor it was issued to
(all the directory's accounts are one requestor, an anonymous requestor is its address:
requestor_of). Sharing one container with anonymous requestors would make its serial and
notBefore an oracle: anyone carrying an encrypted message could look a guessed address up
and compare the serial with the message's RecipientInfos (Bcc recipients included), and a
notBefore hours in the past would say that somebody looked that mailbox up. "The
directory never reveals which mailboxes exist" outranks the signatures that sharing saved.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain

from cryptography import x509

from keypost.core.address import Address, parse_address
from keypost.core.bindings import Binding
from keypost.core.containers import (
    ContainerRequest,
    DirectoryCA,
    GatewayKey,
    to_der,
)
from keypost.core.errors import KeypostError
from keypost.core.netaddr import ip_address
from keypost.core.policy import DirectoryView, decide
from keypost.core.types import Capability, Purpose, Requestor, RequestorKind, Role
from keypost.directory.metrics import Metrics
from keypost.directory.store import (
    AccountRecord,
    AccountRole,
    AuditRecord,
    CacheKey,
    IssuedRecord,
    KeyUse,
    Store,
)
from keypost.directory.writer import purge_store, write_batch

log = logging.getLogger("keypost.directory.requests")


def address_hash(address_key: str) -> str:
    """What logs and the audit keep instead of an address: truncated SHA-256."""
    return hashlib.sha256(address_key.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class KnownRequestor(Requestor):
    """A requestor class and who exactly asks (`who`: requestor_key()). The cache hands a
    container only to the requestor it was issued to; a plain Requestor, whose identity
    is unknown, gets a container of its own on every request (never a shared one)."""

    who: str = ""


def requestor_key(identity: str) -> str:
    """What the cache and the store keep of a requestor: truncated SHA-256 of
    "accounts" or "peer:<address>", so the store holds no peer
    addresses next to the addresses they looked up (hashes of IPv4 addresses can be
    brute-forced: this keeps them out of plain sight, it is no secret)."""
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]


_ACCOUNTS = requestor_key("accounts")  # every account is one requestor: requestor_of


def peer_identity(host: str) -> str | None:
    """The anonymous requestor's identity: its full address in canonical form (None for a
    text that is no IP address, e.g. the LDAP server's "?" for an unknown peer: such
    requestors must not share one identity).

    IPv4-mapped IPv6 counts as the IPv4 address. IPv6 is keyed by the full address, not
    its /64: a /64 is often one LAN or one hosting provider's hosts, and keying by it
    would hand one person's containers to the neighbours, the very leak this key closes.
    The price is a new container after a temporary (RFC 4941) address rotates; a prober
    who varies his address only gets fresh containers, which he can force anyway by
    varying local parts.
    """
    address = ip_address(host)
    return None if address is None else f"peer:{address}"


@lru_cache(maxsize=4096)
def _anonymous(host: str) -> Requestor:
    # one parse per peer address, not per search (the LDAP hot path)
    identity = peer_identity(host)
    if identity is None:
        return Requestor.anonymous()
    return KnownRequestor(RequestorKind.ANONYMOUS, frozenset(), requestor_key(identity))


def requestor_of(account: AccountRecord | None, peer: str | None = None) -> Requestor:
    """Anonymous -> external; a user of D -> internal to D; a gateway account of D1, D2...
    -> the gateway of each of them.

    The result names who asks: every account (user or gateway, of any domain, from any
    address) is one requestor, "the directory's accounts"; an anonymous requestor is its
    peer's address (`peer`: the host, without port). Anonymous without a peer's IP address:
    a plain Requestor, which the cache never serves a container twice.

    Why the accounts share: a gateway must recognise, by issuer and serial, the
    recipient's-gateway container its users' add-ons encrypted to, so that a whole-path
    message goes on untouched (the seed's "the gateways need not re-encrypt"), and one
    gateway account may serve several domains; keyed by account or by domain, a gateway
    would not know its users' containers. The accounts are the organisation(s) that run
    this directory. Nobody else (an anonymous prober, another organisation's clients) gets
    their containers, which is what keeps recipients, Bcc ones included, from being
    confirmed by serial and notBefore from telling who was looked up.
    """
    if account is None:
        return Requestor.anonymous() if peer is None else _anonymous(peer)
    return _account_requestor(account.role, account.domains)


@lru_cache(maxsize=4096)
def _account_requestor(role: AccountRole, domains: tuple[str, ...]) -> Requestor:
    # one frozenset per account's domains, not per search (the LDAP hot path)
    kind = RequestorKind.GATEWAY if role is AccountRole.GATEWAY else RequestorKind.USER
    return KnownRequestor(kind, frozenset(domains), _ACCOUNTS)


def requestor_label(requestor: Requestor) -> str:
    """"anonymous", "user:example.com", "gateway:example.com,example.de" (logs, audit)."""
    if not requestor.domains:
        return requestor.kind.value
    return f"{requestor.kind.value}:{requestor.named_domains}"


def ldap_purpose(requestor: Requestor, address: Address) -> Purpose:
    """The LDAP purpose rule (module docstring)."""
    if requestor.kind is RequestorKind.GATEWAY and address.domain in requestor.domains:
        return Purpose.SIGN
    return Purpose.ENCRYPT


@dataclass(frozen=True)
class Container:
    """One container in an answer."""

    role: Role
    der: bytes
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    gateway: str | None  # the gateway's domain for proxy roles


# A container as plain values: role value, DER, serial, notBefore, notAfter, gateway.
_Packed = tuple[str, bytes, int, dt.datetime, dt.datetime, "str | None"]
_ROLES = {role.value: role for role in Role}


def _pack(c: Container) -> _Packed:
    return (c.role.value, c.der, c.serial, c.not_before, c.not_after, c.gateway)


def _unpack(packed: _Packed) -> Container:
    role, der, serial, not_before, not_after, gateway = packed
    return Container(_ROLES[role], der, serial, not_before, not_after, gateway)


class ContainerLru:
    """The in-memory container cache: at most `size` containers, least recently used out.

    Keys and values are kept as exact tuples of plain values (str, bytes, int, datetime,
    None), which the cyclic garbage collector stops tracking. The cache holds up to
    `cache_size` entries for hours; kept as dataclass instances (or NamedTuples: tuple
    subclasses stay tracked), every entry was walked by every full collection, ~200 ms at
    100,000 entries: a stall of every connection, several times a minute under load.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, ...], _Packed] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[CacheKey]:
        return (CacheKey(*key) for key in list(self._entries))

    def clear(self) -> None:
        self._entries.clear()

    def get(self, key: CacheKey) -> Container | None:
        packed = self._entries.get(key)  # a CacheKey hashes and compares as its tuple
        if packed is None:
            return None
        self._entries.move_to_end(key)
        return _unpack(packed)

    def put(self, key: CacheKey, c: Container) -> None:
        self._entries[tuple(key)] = _pack(c)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop_other_gateways(self, current: set[str]) -> None:
        """Drop every container of a gateway key not in `current` (fingerprints)."""
        for key in [k for k in self if k.gateway_fingerprint not in current]:
            del self._entries[key]

    def entries(self) -> list[tuple[tuple[str, ...], _Packed]]:
        return list(self._entries.items())


class Answer:
    """Everything handed out for one address; never changed once made (shared by the
    answer cache, read by every request it answers).

    The answer cache keeps a quarter as many answers as there are cached containers, for
    hours: so that the cyclic GC tracks one object per answer and nothing more (see
    ContainerLru), the containers are held as exact tuples of plain values, the class has
    slots instead of a __dict__, and what every hit reads (the DERs, until when the
    answer is fresh) is computed once here.
    """

    __slots__ = (
        "_address",
        "_address_key",
        "_ders",
        "_fresh_until",
        "_hash",
        "_packed",
        "_refused",
    )

    def __init__(self, address: str, address_key: str, containers: Sequence[Container] = (),
                 refused: str | None = None) -> None:
        self._address = address
        self._address_key = address_key
        self._refused = refused
        # the inner tuples first, then the outer one: the collector examines tuples in the
        # order they were made, so one collection usually stops tracking them all
        self._packed = tuple([_pack(c) for c in containers])
        self._ders = tuple(c.der for c in containers)
        times = [_half_life(c) if c.role is not Role.GENUINE else c.not_after
                 for c in containers]
        self._fresh_until = min(times) if times else None
        self._hash: str | None = None

    @property
    def address(self) -> str:
        return self._address

    @property
    def address_key(self) -> str:
        return self._address_key

    @property
    def refused(self) -> str | None:
        return self._refused

    @property
    def containers(self) -> tuple[Container, ...]:
        return tuple(_unpack(p) for p in self._packed)

    @property
    def count(self) -> int:
        """How many containers (without building them)."""
        return len(self._packed)

    @property
    def roles(self) -> tuple[str, ...]:
        """The containers' role values, in order (without building them)."""
        return tuple(p[0] for p in self._packed)

    @property
    def ders(self) -> tuple[bytes, ...]:
        return self._ders

    @property
    def fresh_until(self) -> dt.datetime | None:
        """Until when the whole answer may be reused (None: no expiry of its own)."""
        return self._fresh_until

    @property
    def hash(self) -> str:
        """The address as the logs and the audit keep it (computed once, when logged)."""
        if self._hash is None:
            self._hash = address_hash(self._address_key)
        return self._hash

    def __repr__(self) -> str:
        return f"Answer({self._address!r}, roles={self.roles!r}, refused={self._refused!r})"


@dataclass(frozen=True)
class _Snapshot:
    """The store's configuration as parsed values; rebuilt when the store changes."""

    change: int
    view: DirectoryView
    keys: dict[tuple[str, KeyUse], tuple[GatewayKey, str]]  # -> (key, fingerprint)
    genuine: dict[str, tuple[Container, ...]]


@dataclass(frozen=True)
class Lifetimes:
    encrypt: dt.timedelta = dt.timedelta(hours=24)
    sign: dt.timedelta = dt.timedelta(days=30)


class Controller:
    """Answers "which containers does this requestor get for these addresses"."""

    def __init__(
        self,
        store: Store,
        ca: DirectoryCA,
        lifetimes: Lifetimes | None = None,
        cache_size: int = 100_000,
        metrics: Metrics | None = None,
        recheck_seconds: float = 0.05,
        genuine_to_anonymous: bool = True,
    ) -> None:
        self.store = store
        self.genuine_to_anonymous = genuine_to_anonymous
        self.ca = ca
        self.lifetimes = lifetimes or Lifetimes()
        # An answer holds all containers of one address for one requestor: fewer of them.
        self._answers_size = max(1, cache_size // 4)
        self.metrics = metrics or Metrics()
        self.metrics.cache_sizes = self._cache_sizes
        self._cache = ContainerLru(cache_size)
        # Whole answers by (requestor with `who`, address as asked, purpose): a repeated
        # search costs two dict look-ups, no parsing, no policy, no certificate building.
        self._answers: OrderedDict[tuple[str, str, str], Answer] = OrderedDict()
        self._pending_issued: list[IssuedRecord] = []
        self._pending_audit: list[AuditRecord] = []
        # Taken by the writer (take_pending) and not yet reported written (written): in
        # neither the lists above nor the store, but a bindings question must see them.
        self._writing_issued: list[IssuedRecord] = []
        self._writing_audit: list[AuditRecord] = []
        # Of those, the ones a rekey retired meanwhile (_drop_stale): the writer writes them
        # after the rekey deleted the key's other containers, and must delete them again,
        # or a restart serves them from the store (take_retracted); until then, and in
        # case it cannot, a miss here does not take them from the store (by serial).
        self._retracted: list[IssuedRecord] = []
        self._retracted_serials: set[int] = set()
        # (address key, requestor) pairs the store may hold a container for (loaded on the
        # first miss, grown on every issue, reloaded after a purge): a miss for a new
        # address then skips the store query, which cost as much as a fifth of signing the
        # container. Per requestor, not per address: else a prober's miss cost that query
        # for an address someone else had looked up, and not for one nobody had, a timing
        # oracle for "this mailbox is in use" (what per-requestor containers hide).
        self._stored: set[tuple[str, str]] | None = None
        self._snapshot: _Snapshot | None = None
        # How often to ask the store whether the CLI changed keys (a cheap query, but
        # not free at tens of thousands of searches a second; 50 ms is "at once" for
        # an operator whose CLI command takes longer than that to start).
        self.recheck_seconds = recheck_seconds
        self._checked = -1e9
        # GET /v1/bindings: the gateway scope per account's domains, made from the key
        # history once per store change (not read whole on every request)
        self._scopes: dict[frozenset[str], tuple[frozenset[str], frozenset[str]]] = {}

    def _cache_sizes(self) -> dict[str, tuple[int, int]]:
        """(entries, capacity) of the in-memory caches, for /metrics."""
        return {"containers": (len(self._cache), self._cache.size),
                "answers": (len(self._answers), self._answers_size)}

    # configuration -----------------------------------------------------------------
    def snapshot(self) -> _Snapshot:
        snap = self._snapshot
        tick = time.monotonic()
        if snap is not None and tick - self._checked < self.recheck_seconds:
            return snap
        self._checked = tick
        return self._recheck()

    def _recheck(self) -> _Snapshot:
        """The snapshot, reloaded if the store changed (without the requests' interval)."""
        snap = self._snapshot
        change = self.store.change_counter()
        if snap is None or snap.change != change:
            old, snap = snap, self._load(change)
            if old is not None:
                self._drop_stale(old, snap)
            self._answers.clear()
            self._scopes.clear()
            self._snapshot = snap
        return snap

    def _load(self, change: int) -> _Snapshot:
        keys: dict[tuple[str, KeyUse], tuple[GatewayKey, str]] = {}
        for rec in self.store.domain_keys():
            caps = tuple(Capability(c) for c in rec.capabilities)
            keys[(rec.domain, rec.use)] = (GatewayKey.from_pem(rec.pem, caps, rec.derived),
                                           rec.fingerprint)
        now = dt.datetime.now(dt.UTC)
        genuine: dict[str, list[Container]] = {}
        for g in self.store.genuine():
            if g.not_after <= now:
                continue
            cert = x509.load_der_x509_certificate(g.der)
            genuine.setdefault(g.address_key, []).append(
                Container(Role.GENUINE, g.der, cert.serial_number, cert.not_valid_before_utc,
                          cert.not_valid_after_utc, None)
            )
        domains = frozenset(self.store.domains())
        view = DirectoryView(
            served_domains=frozenset(d for d in domains if (d, KeyUse.ENCRYPTION) in keys),
            genuine_addresses=frozenset(genuine),
            signing_domains=frozenset(d for d in domains if (d, KeyUse.SIGNING) in keys),
            genuine_to_anonymous=self.genuine_to_anonymous,
        )
        return _Snapshot(change, view, keys, {k: tuple(v) for k, v in genuine.items()})

    def _drop_stale(self, old: _Snapshot, snap: _Snapshot) -> None:
        """After a rekey or removal, containers of keys no longer current go at once, also
        those not yet written. So do those of a key registered again with other
        capabilities or another mode (derived keys or not): the containers carry them,
        the cache keys only the fingerprint."""
        before = {(fp, gateway.capabilities, gateway.derived) for gateway, fp in old.keys.values()}
        current = {fp for gateway, fp in snap.keys.values()
                   if (fp, gateway.capabilities, gateway.derived) in before}
        self._cache.drop_other_gateways(current)
        self._pending_issued = [r for r in self._pending_issued
                                if r.key.gateway_fingerprint in current]
        retracted = [r for r in self._writing_issued if r.key.gateway_fingerprint not in current]
        self._retracted += retracted
        self._retracted_serials.update(r.serial for r in retracted)
        self._writing_issued = [r for r in self._writing_issued
                                if r.key.gateway_fingerprint in current]

    # answering ---------------------------------------------------------------------
    def answer(
        self,
        requestor: Requestor,
        addresses: Sequence[str],
        purpose: Purpose | None,
        protocol: str,
        now: dt.datetime | None = None,
    ) -> list[Answer]:
        """Answers for the well-formed addresses (malformed ones are left out; callers
        that must reject them parse first). `purpose` None applies the LDAP rule."""
        started = time.perf_counter()
        now = now or dt.datetime.now(dt.UTC)
        snap = self.snapshot()
        # an empty `who` names nobody: such requestors must not share one identity
        who = requestor.who or None if isinstance(requestor, KnownRequestor) else None
        # The answer cache's key: strings only (an exact tuple the GC stops tracking, see
        # ContainerLru) naming everything the answer depends on: the requestor's class,
        # domains and identity, the address as asked and the purpose.
        asker = f"{requestor.kind.value}\0{requestor.named_domains}\0{who}"
        wanted = purpose.value if purpose is not None else ""
        answers: list[Answer] = []
        for text in addresses:
            key = (asker, text, wanted)
            hit = self._answers.get(key) if who is not None else None
            if hit is not None and (hit.fresh_until is None or now < hit.fresh_until):
                self._answers.move_to_end(key)
                self.metrics.cache_hits += hit.count
                answers.append(hit)
                continue
            try:
                address = parse_address(text)
            except KeypostError:
                continue
            p = purpose or ldap_purpose(requestor, address)
            fresh = self._answer_one(snap, requestor, who, address, p, now)
            answers.append(fresh)
            if who is None:
                continue  # nobody to reuse it for
            self._answers[key] = fresh
            if len(self._answers) > self._answers_size:
                self._answers.popitem(last=False)
        elapsed = time.perf_counter() - started
        self._log(protocol, requestor, answers, elapsed)
        self.metrics.request(protocol, "ok", elapsed)
        return answers

    def _answer_one(
        self, snap: _Snapshot, requestor: Requestor, who: str | None, address: Address,
        purpose: Purpose, now: dt.datetime,
    ) -> Answer:
        decision = decide(requestor, address, purpose, snap.view)
        if decision.refused:
            return Answer(str(address), address.key(), (), refused=decision.refused)
        out: list[Container] = []
        for spec in decision.specs:
            if spec.role is Role.GENUINE:
                # the snapshot may outlive a certificate: check its expiry per answer
                out.extend(g for g in snap.genuine.get(address.key(), ()) if now < g.not_after)
                continue
            assert spec.domain is not None  # proxy roles always name their gateway
            use = KeyUse.SIGNING if spec.purpose is Purpose.SIGN else KeyUse.ENCRYPTION
            gateway, fingerprint = snap.keys[(spec.domain, use)]
            out.append(self._container(requestor, who, address, spec.role, spec.domain,
                                       purpose, gateway, fingerprint, now))
        return Answer(str(address), address.key(), tuple(out))

    def _container(
        self, requestor: Requestor, who: str | None, address: Address, role: Role,
        domain: str, purpose: Purpose, gateway: GatewayKey, fingerprint: str,
        now: dt.datetime,
    ) -> Container:
        if who is None:  # an unknown requestor: a container of its own, kept nowhere
            return self._issue(requestor, who, address, role, domain, purpose, gateway, now)
        # The four parts the issue names, plus the requestor (module docstring: never
        # one container for two requestors).
        key = CacheKey(address.key(), role.value, fingerprint, purpose.value, who)
        hit = self._cache.get(key)
        if hit is not None and _fresh(hit, now):
            self.metrics.cache_hits += 1
            return hit
        known = self._stored
        if known is None:
            known = self._stored = self.store.issued_holders(now)
        holder = (key.address_key, who)
        stored = self.store.issued(key) if holder in known else None
        if stored is not None and stored.serial not in self._retracted_serials:
            c = Container(role, stored.der, stored.serial, stored.not_before, stored.not_after,
                          domain)
            if _fresh(c, now):
                self._remember(key, c)
                self.metrics.cache_hits += 1
                return c
        c = self._issue(requestor, who, address, role, domain, purpose, gateway, now)
        self._pending_issued.append(IssuedRecord(key, c.der, c.serial, c.not_before, c.not_after))
        known.add(holder)
        self._remember(key, c)
        return c

    def _issue(
        self, requestor: Requestor, who: str | None, address: Address, role: Role,
        domain: str, purpose: Purpose, gateway: GatewayKey, now: dt.datetime,
    ) -> Container:
        """Sign a new container, count it and audit it (a cache miss)."""
        self.metrics.cache_misses += 1
        lifetime = self.lifetimes.sign if purpose is Purpose.SIGN else self.lifetimes.encrypt
        # its constant parts memoised for this requestor only (ContainerRequest.memo_scope),
        # for an unknown one (no `who`) nowhere
        cert = self.ca.issue(ContainerRequest(address, purpose, gateway, lifetime,
                                              memo_scope=who), now=now)
        c = Container(role, to_der(cert), cert.serial_number, cert.not_valid_before_utc,
                      cert.not_valid_after_utc, domain)
        self.metrics.issued[role.value] += 1
        self._pending_audit.append(AuditRecord(
            now, requestor_label(requestor), address_hash(address.key()), (role.value,),
            (c.serial,)))
        return c

    def _remember(self, key: CacheKey, container: Container) -> None:
        self._cache.put(key, container)

    def _log(self, protocol: str, requestor: Requestor, answers: list[Answer],
             elapsed: float) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        hashes = ",".join(a.hash for a in answers) or "-"
        roles = ",".join("+".join(a.roles) or "none"
                         for a in answers) or "-"
        log.info("event=lookup protocol=%s requestor=%s addresses=%s roles=%s ms=%.2f",
                 protocol, requestor_label(requestor), hashes, roles, elapsed * 1000)

    # bindings ----------------------------------------------------------------------
    def bindings(self, account: AccountRecord, serials: Sequence[int],
                 addresses: Sequence[Address]) -> list[list[Binding]]:
        """Was the container with each serial issued for each address? One row per serial,
        one Binding per address (GET /v1/bindings; `account` is a gateway account).

        Only containers of the asking gateway's keys are answered: those of its domain's
        keys, current or retired, and of any domain registered with one of them (one
        gateway serving it). Any other serial is UNKNOWN, as a serial never issued is, so
        the answer tells no other domain's containers apart from made-up serials.

        A container is looked up where it is kept until it expires: not yet written
        (issued within the last second) or in the store; BOUND or NOT_BOUND. Once the
        purge dropped it, the audit (audit_retention_days) keeps its serial with the
        address's hash only: that can confirm a pair for an address of the gateway's
        domain(s) (BOUND), never say whose else the serial was (UNKNOWN). Either way the
        asker learns nothing it did not name: the address and the serial come from it.
        """
        started = time.perf_counter()
        self.store.ensure_serial_indexes()
        # without the requests' interval: a rekey or domain change just made counts at once
        self._recheck()
        fingerprints, domains = self._gateway_scope(frozenset(account.domains))
        keys = [a.key() for a in addresses]
        rows: list[list[Binding]] = []
        for serial in serials:
            issued = {r.key.address_key for r in self._unwritten_issued()
                      if r.serial == serial and r.key.gateway_fingerprint in fingerprints}
            issued |= {key for key, fp in self.store.issued_with_serial(serial)
                       if fp in fingerprints}
            if issued:
                rows.append([Binding.BOUND if k in issued else Binding.NOT_BOUND for k in keys])
                continue
            hashes = {a.address_hash for a in self._unwritten_audit() if serial in a.serials}
            hashes |= self.store.audit_hashes(serial)
            rows.append([
                Binding.BOUND if a.domain in domains and address_hash(k) in hashes
                else Binding.UNKNOWN
                for a, k in zip(addresses, keys, strict=True)])
        elapsed = time.perf_counter() - started
        if log.isEnabledFor(logging.INFO):
            bound = sum(b is Binding.BOUND for row in rows for b in row)
            log.info("event=bindings protocol=http requestor=%s serials=%d "
                     "addresses=%d bound=%d ms=%.2f", requestor_label(requestor_of(account)),
                     len(serials), len(addresses), bound, elapsed * 1000)
        self.metrics.request("http", "ok")  # not a look-up: kept out of its histogram
        return rows

    def _gateway_scope(self, domains: frozenset[str]) -> tuple[frozenset[str], frozenset[str]]:
        """(fingerprints of the keys ever registered for any of `domains`, the domains
        registered with any of them): the containers a gateway account of `domains` may
        ask about. Made once per store change and set of domains (_recheck clears them)."""
        scope = self._scopes.get(domains)
        if scope is None:
            records = self.store.domain_keys(history=True)
            fingerprints = frozenset(r.fingerprint for r in records if r.domain in domains)
            scope = fingerprints, domains | {r.domain for r in records
                                             if r.fingerprint in fingerprints}
            self._scopes[domains] = scope
        return scope

    # persistence -------------------------------------------------------------------
    def take_pending(self) -> tuple[list[IssuedRecord], list[AuditRecord]]:
        """Issued containers and audit records collected since the last call (the server
        writes them in batches off the event loop: keypost.directory.writer)."""
        # A rekey since the last request: what it retired is not written. Not through
        # snapshot(): its interval would then start here, and a request right after a CLI
        # change would be answered from the snapshot of before.
        self._recheck()
        issued, self._pending_issued = self._pending_issued, []
        audit, self._pending_audit = self._pending_audit, []
        self._writing_issued += issued
        self._writing_audit += audit
        return issued, audit

    def take_retracted(self) -> list[IssuedRecord]:
        """Containers the writer had taken when a rekey retired their key (after
        take_pending, which notices the rekey): for the writer to delete once written."""
        retracted, self._retracted = self._retracted, []
        return retracted

    def _unwritten_issued(self) -> Iterator[IssuedRecord]:
        """New containers not in the store yet: pending, or taken by the writer."""
        return chain(self._pending_issued, self._writing_issued)

    def _unwritten_audit(self) -> Iterator[AuditRecord]:
        return chain(self._pending_audit, self._writing_audit)

    def written(self) -> None:
        """Everything taken so far is in the store. The writer writes in order, and what an
        earlier batch failed to write goes first in the next, so one success covers every
        batch taken before it."""
        # A rekey that committed while the batch was written (its write waited for the
        # rekey's lock, say) retires some of it: noticed now, while they are still here.
        self._recheck()
        self._writing_issued = []
        self._writing_audit = []

    def flush(self) -> None:
        """Write the pending records through this controller's own store, at once."""
        write_batch(self.store, *self.take_pending())
        self.store.forget_issued(self.take_retracted())
        self.written()

    def purge(self, retention: dt.timedelta, now: dt.datetime | None = None) -> tuple[int, int]:
        """Drop expired containers and audit records older than `retention` (through this
        controller's store; `serve` has its writer do it and then calls `purged`)."""
        now = now or dt.datetime.now(dt.UTC)
        dropped = purge_store(self.store, now, retention)
        self.purged(now)
        return dropped

    def purged(self, now: dt.datetime) -> None:
        """The stored containers were purged at `now`: the set of stored (address,
        requestor) pairs shrinks with the table (those not yet flushed stay)."""
        self._stored = self.store.issued_holders(now) | {
            (r.key.address_key, r.key.requestor) for r in self._unwritten_issued()}


def _half_life(container: Container) -> dt.datetime:
    return container.not_before + (container.not_after - container.not_before) / 2


def _fresh(container: Container, now: dt.datetime) -> bool:
    """Reuse a container while more than half of its life remains."""
    return now < _half_life(container)
