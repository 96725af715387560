"""The directory client's cache and verification, with a recorded fetcher and a fake clock."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from gw_support import Pki, Rolling, pub_pem

from keypost.core.address import parse_address
from keypost.core.containers import ContainerRequest, DirectoryCA, GatewayKey
from keypost.core.types import Purpose
from keypost.gateway.directory import (
    ENCRYPTION_CACHE_LIMIT,
    MAX_SIGNING_CONTAINERS,
    CachingDirectory,
)


class Recorded:
    def __init__(self, certs: list[x509.Certificate]) -> None:
        self.certs, self.calls = certs, 0

    def fetch(self, address: object, purpose: Purpose) -> list[x509.Certificate]:
        self.calls += 1
        return self.certs


def test_signing_container_is_cached_until_half_its_life(pki: Pki) -> None:
    now = dt.datetime.now(dt.UTC)
    cert = pki.ca.issue(
        ContainerRequest(parse_address("alice@example.com"), Purpose.SIGN,
                         GatewayKey.from_pem(pub_pem(pki.signing)), dt.timedelta(days=30)),
        now=now,
    )
    half = cert.not_valid_before_utc + (cert.not_valid_after_utc - cert.not_valid_before_utc) / 2
    clock = [now]
    fetcher = Recorded([cert])
    d = CachingDirectory(fetcher, [pki.ca.certificate], clock=lambda: clock[0])
    alice = parse_address("alice@example.com")
    assert d.signing_containers(alice) == (cert,)
    clock[0] = half - dt.timedelta(minutes=1)
    assert d.signing_containers(alice) == (cert,)
    assert fetcher.calls == 1
    clock[0] = half + dt.timedelta(minutes=1)
    d.signing_containers(alice)
    assert fetcher.calls == 2


def test_certificates_not_from_the_trust_anchor_are_dropped(pki: Pki) -> None:
    rogue = DirectoryCA.generate(common_name="keypost directory CA")  # same name, other key
    cert = rogue.issue(ContainerRequest(parse_address("bob@partner.org"), Purpose.ENCRYPT,
                                        GatewayKey.from_pem(pub_pem(pki.stranger))))
    good = pki.container(pki.stranger, "bob@partner.org")
    wrong_address = pki.container(pki.stranger, "eve@partner.org")
    d = CachingDirectory(Recorded([cert, good, wrong_address]), [pki.ca.certificate])
    found = d.encryption_certificates(parse_address("bob@partner.org"))
    assert found.gateways == (good,) and found.genuine == ()


def test_empty_answers_are_remembered_briefly(pki: Pki) -> None:
    clock = [dt.datetime.now(dt.UTC)]
    fetcher = Recorded([])
    d = CachingDirectory(fetcher, [pki.ca.certificate], negative_cache=60,
                         clock=lambda: clock[0])
    nobody = parse_address("nobody@nowhere.test")
    d.encryption_certificates(nobody)
    d.encryption_certificates(nobody)
    assert fetcher.calls == 1
    clock[0] += dt.timedelta(seconds=61)
    d.encryption_certificates(nobody)
    assert fetcher.calls == 2


def test_certificates_to_encrypt_to_are_cached_for_an_hour_at_most(pki: Pki) -> None:
    """After a recipient domain's emergency rekey its directory answers with the new key at
    once: the gateway must not keep encrypting to the retired one for half a day."""
    now = dt.datetime.now(dt.UTC)
    cert = pki.ca.issue(
        ContainerRequest(parse_address("bob@partner.org"), Purpose.ENCRYPT,
                         GatewayKey.from_pem(pub_pem(pki.stranger))),  # 24 h: half is 12 h
        now=now,
    )
    clock = [now]
    fetcher = Recorded([cert])
    d = CachingDirectory(fetcher, [pki.ca.certificate], clock=lambda: clock[0])
    bob = parse_address("bob@partner.org")
    assert d.encryption_certificates(bob).gateways == (cert,)
    clock[0] = now + ENCRYPTION_CACHE_LIMIT - dt.timedelta(seconds=1)
    d.encryption_certificates(bob)
    assert fetcher.calls == 1
    clock[0] = now + ENCRYPTION_CACHE_LIMIT + dt.timedelta(seconds=1)
    assert d.encryption_certificates(bob).gateways == (cert,)
    assert fetcher.calls == 2  # the old rule kept it until now + 12 h


def test_the_previous_signing_container_is_kept_while_it_is_valid(pki: Pki) -> None:
    """Mail written before the container changed (queued, or a slow client clock) carries a
    Date only the previous container covers: the gateway keeps it, newest first."""
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = [t0]
    fetcher = Rolling(lambda: [pki.signing_container(clock[0])])
    d = CachingDirectory(fetcher, [pki.ca.certificate], clock=lambda: clock[0])
    alice = parse_address("alice@example.com")
    [first] = d.signing_containers(alice)
    clock[0] = t0 + dt.timedelta(days=15, minutes=1)  # past half-life: a new one is fetched
    second, previous = d.signing_containers(alice)
    assert previous == first and second != first
    assert second.not_valid_before_utc > first.not_valid_before_utc
    assert fetcher.calls == 2
    # freshness follows the newest container alone: no fetch on every message
    clock[0] += dt.timedelta(days=1)
    assert d.signing_containers(alice) == (second, first)
    assert fetcher.calls == 2
    # the previous one is dropped once it has expired (by then a third has come)
    clock[0] = first.not_valid_after_utc + dt.timedelta(seconds=1)
    _third, kept = d.signing_containers(alice)
    assert kept == second and fetcher.calls == 3


def test_kept_signing_containers_are_bounded(pki: Pki) -> None:
    """A directory that hands out a new container on every fetch cannot grow the cache."""
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = [t0]
    # issued 14 days back: half-life comes a day later, validity lasts 16 more days
    fetcher = Rolling(lambda: [pki.signing_container(clock[0] - dt.timedelta(days=14))])
    d = CachingDirectory(fetcher, [pki.ca.certificate], clock=lambda: clock[0])
    alice = parse_address("alice@example.com")
    for _ in range(2 * MAX_SIGNING_CONTAINERS):
        found = d.signing_containers(alice)
        clock[0] += dt.timedelta(days=1, minutes=1)
    assert fetcher.calls == 2 * MAX_SIGNING_CONTAINERS
    assert len(found) == MAX_SIGNING_CONTAINERS
    starts = [c.not_valid_before_utc for c in found]
    assert starts == sorted(starts, reverse=True)  # the newest are the ones kept


def test_no_container_from_the_directory_drops_the_previous_ones(pki: Pki) -> None:
    """Previous containers are kept beside a new one, not instead of one: when the
    directory stops handing out a signing container, the gateway stops signing."""
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = [t0]
    answers = [[pki.signing_container(t0)], []]
    fetcher = Rolling(lambda: answers.pop(0))
    d = CachingDirectory(fetcher, [pki.ca.certificate], clock=lambda: clock[0])
    alice = parse_address("alice@example.com")
    assert len(d.signing_containers(alice)) == 1
    clock[0] = t0 + dt.timedelta(days=15, minutes=1)
    assert d.signing_containers(alice) == ()
