"""The directory client's cache and verification, with a recorded fetcher and a fake clock."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from gw_support import Pki, pub_pem

from keypost.core.address import parse_address
from keypost.core.containers import ContainerRequest, DirectoryCA, GatewayKey
from keypost.core.types import Purpose
from keypost.gateway.directory import ENCRYPTION_CACHE_LIMIT, CachingDirectory


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
    assert d.signing_container(alice) == cert
    clock[0] = half - dt.timedelta(minutes=1)
    assert d.signing_container(alice) == cert
    assert fetcher.calls == 1
    clock[0] = half + dt.timedelta(minutes=1)
    d.signing_container(alice)
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
