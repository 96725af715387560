"""How long the host trusts a cached container: an hour at most, never past half of its
life, and a cache file written by the old rule (5 minutes before not-after) is not
inherited, so an emergency `domain rekey` reaches senders within the hour."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from host_support import configure, ok

from keypost.core.address import parse_address
from keypost.core.containers import (
    ContainerRequest,
    DirectoryCA,
    GatewayKey,
    sha256_fingerprint,
)
from keypost.core.types import Purpose
from keypost.host.actions import Host
from keypost.host.cache import MAX_HIT_TTL, ContainerCache
from keypost.host.directory_client import RawContainer

Issue = Callable[[dt.timedelta | None], tuple[RawContainer, float]]  # -> container, not-after
NOW = dt.datetime(2026, 11, 29, 9, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def issue() -> Issue:
    ca = DirectoryCA.generate()
    key = rsa.generate_private_key(65537, 2048).public_key()
    gateway = GatewayKey.from_pem(key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def make(lifetime: dt.timedelta | None) -> tuple[RawContainer, float]:
        cert = ca.issue(ContainerRequest(parse_address("bob@example.org"), Purpose.ENCRYPT,
                                         gateway, lifetime), now=NOW)
        der = cert.public_bytes(serialization.Encoding.DER)
        return RawContainer(der, "example.org"), cert.not_valid_after_utc.timestamp()

    return make


def _cache(path: Path, at: list[float]) -> ContainerCache:
    return ContainerCache(path, clock=lambda: at[0])


def test_a_day_long_container_is_cached_for_an_hour_also_across_processes(
    tmp_path: Path, issue: Issue
) -> None:
    container, not_after = issue(None)  # the directory's default: 24 h to encrypt
    assert not_after - NOW.timestamp() == 24 * 3600
    at = [NOW.timestamp()]
    cache = _cache(tmp_path / "c.json", at)
    cache.put("k", [container], not_after)
    cache.flush()
    at[0] += MAX_HIT_TTL - 1
    assert cache.get("k") is not None
    assert _cache(tmp_path / "c.json", at).get("k") is not None  # a new host process
    at[0] += 2
    assert cache.get("k") is None
    assert _cache(tmp_path / "c.json", at).get("k") is None  # was kept for ~23 h 55 min


def test_a_short_container_is_cached_until_half_of_its_life_is_left(
    tmp_path: Path, issue: Issue
) -> None:
    container, not_after = issue(dt.timedelta(minutes=40))
    at = [NOW.timestamp()]
    cache = _cache(tmp_path / "c.json", at)
    cache.put("k", [container], not_after)
    # notBefore is backdated 5 min (clock skew): life 45 min, half of it left 17.5 min in
    half = not_after - 45 * 60 / 2
    at[0] = half - 1
    assert cache.get("k") is not None
    at[0] = half + 1
    assert cache.get("k") is None  # the old rule kept it until 35 min


def test_the_shortest_lived_container_of_a_set_decides(tmp_path: Path, issue: Issue) -> None:
    long, long_end = issue(None)
    short, short_end = issue(dt.timedelta(minutes=20))
    at = [NOW.timestamp()]
    cache = _cache(tmp_path / "c.json", at)
    cache.put("k", [long, short], min(long_end, short_end))
    at[0] = short_end - 25 * 60 / 2 + 1  # just past the half of the short one's 25 min
    assert cache.get("k") is None


def test_a_cache_file_of_the_old_format_is_not_inherited(tmp_path: Path, issue: Issue) -> None:
    """Format 1 stored hits until 5 minutes before not-after: an upgraded host would keep
    encrypting to a retired key for up to a day from such a file."""
    container, not_after = issue(None)
    at = [NOW.timestamp()]
    cache = _cache(tmp_path / "c.json", at)
    cache.put("k", [container], not_after)
    cache.flush()
    data = json.loads((tmp_path / "c.json").read_text())
    data["format"] = 1
    data["entries"]["k"]["expires"] = not_after - 300
    (tmp_path / "c.json").write_text(json.dumps(data))
    assert _cache(tmp_path / "c.json", at).get("k") is None


def test_a_container_knows_its_validity_from_one_parse(issue: Issue) -> None:
    container, not_after = issue(dt.timedelta(minutes=40))
    assert container.validity == (NOW.timestamp() - 5 * 60, not_after)  # backdated 5 min
    assert container.certificate is container.certificate  # parsed once, then kept
    cert = container.certificate
    assert cert is not None
    from_pem = RawContainer.parsed(cert, "example.org")  # as HTTP reads them
    assert from_pem == container and from_pem.certificate is cert
    assert RawContainer(b"\x30\x03\x02\x01\x01").validity is None


def test_fetched_containers_are_parsed_once_and_cached_to_their_half_life(
    setup: Any, ca: DirectoryCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resolver verifies what it fetched and the cache reads its lifetimes from the
    same parse; the cache entry ends at the container's half-life."""
    host, factory, _ = setup
    assert configure(host, ca)["ok"]
    factory.directory.lifetime = dt.timedelta(minutes=40)
    parsed: list[bytes] = []
    real = x509.load_der_x509_certificate

    def counting(der: bytes) -> x509.Certificate:
        parsed.append(der)
        return real(der)

    monkeypatch.setattr(x509, "load_der_x509_certificate", counting)
    [bob] = host._get_resolver().resolve(["bob@example.org"]).recipients
    certs = [c.certificate for c in bob.containers if c.certificate is not None]
    assert bob.status == "ok" and len(certs) == 2
    assert sorted(parsed) == sorted(c.public_bytes(serialization.Encoding.DER) for c in certs)
    entry = host._cache.get(ContainerCache.key("ldap://127.0.0.1:3890", "alice",
                                               sha256_fingerprint(ca.certificate),
                                               "bob@example.org"))
    assert entry is not None
    ends = [(c.not_valid_before_utc.timestamp(), c.not_valid_after_utc.timestamp())
            for c in certs]
    # 45 minutes of life (5 backdated): half of it is left 22.5 minutes before not-after,
    # earlier than the 5-minute margin and the hour, so half-life alone decides.
    half = min(start + (end - start) / 2 for start, end in ends)
    assert half == pytest.approx(min(end for _, end in ends) - 45 * 60 / 2, abs=2)
    assert entry.expires == half


@pytest.mark.parametrize("content", [
    "[" * 100_000 + "]" * 100_000,  # nested deeper than the JSON reader recurses
    '{"format": 2, "entries": {"k": {"expires": 1e12, "containers": '
    '[{"der": "AAAA", "gateway": 5}]}}}',  # a gateway that is no domain name
    '{"format": 2, "entries": {"k": {"expires": 1e12, "containers": '
    '[{"der": "not base64!", "gateway": null}]}}}',
    '{"format": 2, "entries": {"k": {"expires": 1e12, "containers": {"der": "AAAA"}}}}',
    '{"format": 2, "entries": {"k": {"expires": true, "containers": []}}}',
])
def test_a_damaged_cache_file_starts_the_host_cold(
    setup: Any, ca: DirectoryCA, host_dirs: tuple[Path, Path], content: str
) -> None:
    """The cache file is the host's own, but a crash, a full disk or another program can
    leave anything in it: the host starts without it and answers from the directory."""
    host, factory, _ = setup
    assert configure(host, ca)["ok"]
    host_dirs[1].mkdir(exist_ok=True)
    (host_dirs[1] / "containers.json").write_text(content, "utf-8")
    again = Host(host_dirs[0], host_dirs[1], client_factory=factory)
    assert again._cache._entries == {}
    [bob] = ok(again, "lookup", recipients=["bob@example.org"])["recipients"]
    assert bob["status"] == "ok" and bob["source"] == "directory"


def test_a_cache_file_too_big_to_be_ours_is_not_read(
    tmp_path: Path, issue: Issue, monkeypatch: pytest.MonkeyPatch
) -> None:
    container, not_after = issue(None)
    at = [NOW.timestamp()]
    cache = _cache(tmp_path / "c.json", at)
    cache.put("k", [container], not_after)
    cache.flush()
    size = (tmp_path / "c.json").stat().st_size
    monkeypatch.setattr("keypost.host.cache.MAX_FILE_BYTES", size - 1)
    assert _cache(tmp_path / "c.json", at).get("k") is None
    monkeypatch.setattr("keypost.host.cache.MAX_FILE_BYTES", size)
    assert _cache(tmp_path / "c.json", at).get("k") is not None


@pytest.mark.parametrize("ahead", [
    dt.timedelta(days=3 * 365),  # a machine that booted with its clock years ahead
    dt.timedelta(hours=2),
])
def test_entries_saved_while_the_clock_was_ahead_are_not_trusted_after_it_is_put_right(
    tmp_path: Path, issue: Issue, ahead: dt.timedelta
) -> None:
    """A miss is trusted for a minute and a hit for an hour at most, also when the clock
    they were written by was wrong: else "no container" would stick for years."""
    container, not_after = issue(None)
    at = [NOW.timestamp() + ahead.total_seconds()]
    cache = _cache(tmp_path / "c.json", at)
    cache.put("miss", [], None)
    cache.put("hit", [container], not_after)
    cache.flush()
    at[0] = NOW.timestamp()  # the clock is put right; the same and a new process
    assert cache.get("miss") is None and cache.get("hit") is None
    fresh = _cache(tmp_path / "c.json", at)
    assert fresh.get("miss") is None and fresh.get("hit") is None


@pytest.mark.parametrize("expires", ["NaN", "Infinity", "1e300"])
def test_an_entry_that_never_expires_is_not_read(tmp_path: Path, expires: str) -> None:
    (tmp_path / "c.json").write_text(
        f'{{"format": 2, "entries": {{"k": {{"expires": {expires}, "containers": []}}}}}}')
    assert _cache(tmp_path / "c.json", [NOW.timestamp()]).get("k") is None


def test_containers_cached_under_another_trust_anchor_are_not_used(
    setup: Any, ca: DirectoryCA, gateway_keys: Any, host_dirs: tuple[Path, Path]
) -> None:
    """The directory's CA was replaced and the user configured the new anchor: what was
    cached under the old one (in this process or the file) is fetched again, not reported
    invalid for the rest of the hour with Send refused."""
    from host_support import PolicyDirectory

    host, factory, _ = setup
    assert configure(host, ca)["ok"]
    [bob] = ok(host, "lookup", recipients=["bob@example.org"])["recipients"]
    assert bob["status"] == "ok"
    host.idle()
    new_ca = DirectoryCA.generate()
    factory.directory = PolicyDirectory(new_ca, gateway_keys, "example.com")
    other = Host(host_dirs[0], host_dirs[1], client_factory=factory)  # started before
    assert configure(host, new_ca)["ok"]
    for session in (host, other):
        [bob] = ok(session, "lookup", recipients=["bob@example.org"])["recipients"]
        assert (bob["status"], bob["source"]) == ("ok", "directory")
