"""Accounts: scrypt hashing, equal work for right/wrong/unknown, throttling of failures."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path

import pytest

from keypost.directory import accounts
from keypost.directory.accounts import Authenticator, Throttle, check_password, hash_password
from keypost.directory.store import AccountRecord, AccountRole, GatewayKeyRecord, KeyUse
from keypost.directory.store.sqlite import SqliteStore


def test_hash_is_salted_scrypt_with_strong_parameters() -> None:
    a, b = hash_password(b"pw"), hash_password(b"pw")
    assert a.salt != b.salt and a.digest != b.digest
    assert (a.n, a.r, a.p) == (2**14, 8, 1) and len(a.salt) >= 16
    assert check_password(b"pw", a) and not check_password(b"pW", a)
    assert not check_password(b"pw" + b"x" * 2000, a)


def test_throttle_grows_exponentially_and_is_bounded() -> None:
    t = Throttle(base=0.1, cap=1.0, free=2, window=60, max_keys=3)
    delays = []
    for i in range(8):
        delays.append(t.delay("k", now=i))
        t.failed("k", now=i)
    assert delays == [0.0, 0.0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert t.delay("k", now=200) == 0.0  # forgotten after the window
    for k in "abcd":
        t.failed(k, now=300)
        t.failed(k, now=300)
    assert t.delay("a", now=300) == 0.0 and t.delay("d", now=300) > 0  # oldest dropped


@pytest.fixture()
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "d.db")
    s.add_domain("example.com", [GatewayKeyRecord("example.com", KeyUse.ENCRYPTION, b"x", "fp",
                                                  (), dt.datetime.now(dt.UTC))])
    s.add_account(AccountRecord("alice", AccountRole.USER, ("example.com",),
                                hash_password(b"right"), dt.datetime.now(dt.UTC)))
    return s


def test_unknown_and_wrong_cost_one_scrypt_like_right(store: SqliteStore,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    auth = Authenticator(store, throttle=Throttle(free=100), source_throttle=Throttle(free=100))
    calls: list[tuple[int, int, int]] = []
    real = accounts._scrypt

    def counting(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
        calls.append((n, r, p))
        return real(password, salt, n, r, p)

    monkeypatch.setattr(accounts, "_scrypt", counting)

    async def attempts() -> list[object]:
        return [await auth.verify("alice", b"right", "h1"),
                await auth.verify("alice", b"wrong", "h2"),
                await auth.verify("mallory", b"right", "h3")]

    right, wrong, unknown = asyncio.run(attempts())
    assert isinstance(right, AccountRecord) and wrong is None and unknown is None
    assert calls == [(2**14, 8, 1)] * 3


def test_failures_slow_down_the_next_attempts(store: SqliteStore) -> None:
    auth = Authenticator(store, throttle=Throttle(base=0.3, cap=0.3, free=1),
                         source_throttle=Throttle(base=0.3, cap=0.3, free=1))

    async def run() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        assert await auth.verify("alice", b"bad", "h") is None
        t0 = loop.time()
        assert await auth.verify("alice", b"bad", "other-host") is None  # account counter
        t1 = loop.time()
        assert await auth.verify("bob", b"bad", "h") is None  # source counter
        t2 = loop.time()
        return t1 - t0, t2 - t1

    by_account, by_source = asyncio.run(run())
    assert by_account >= 0.3 and by_source >= 0.3


def test_known_good_source_is_not_locked_out_by_others_failures(store: SqliteStore) -> None:
    """Failing on purpose against a known account name slows the attacker and new sources,
    not the source that logged in to the account before (the gateway's own host)."""
    auth = Authenticator(store, throttle=Throttle(base=0.3, cap=0.3, free=1),
                         source_throttle=Throttle(base=0.3, cap=0.3, free=5))

    async def run() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        assert await auth.verify("alice", b"right", "gateway-host") is not None
        for n in range(3):
            assert await auth.verify("alice", b"guess", f"attacker-{n}") is None
        t0 = loop.time()
        assert await auth.verify("alice", b"typo", "new-host") is None
        t1 = loop.time()
        assert await auth.verify("alice", b"right", "gateway-host") is not None
        return loop.time() - t1, t1 - t0

    known, new = asyncio.run(run())
    assert new >= 0.3  # the per-account delay holds for anybody else
    assert known < new - 0.2  # ... but not for the source that logged in before


def test_scrypt_runs_off_the_event_loop(store: SqliteStore) -> None:
    auth = Authenticator(store)

    async def run() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.002)
                ticks += 1

        task = asyncio.create_task(ticker())
        for _ in range(3):
            await auth.verify("alice", b"right", "h")
        task.cancel()
        return ticks

    assert asyncio.run(run()) >= 5


def test_auth_log_hashes_only_names_of_existing_accounts(
        store: SqliteStore, caplog: pytest.LogCaptureFixture) -> None:
    # A password typed into the name field must not reach the log as its unsalted hash.
    from keypost.directory.controller import address_hash

    auth = Authenticator(store, throttle=Throttle(free=100), source_throttle=Throttle(free=100))
    typed = "Hunter2-typed-as-name"
    with caplog.at_level(logging.INFO, logger="keypost.directory.requests"):
        assert asyncio.run(auth.verify(typed, b"right", "192.0.2.7")) is None
        assert asyncio.run(auth.verify("alice", b"wrong", "192.0.2.7")) is None
    lines = [r.getMessage() for r in caplog.records if "event=auth" in r.getMessage()]
    assert len(lines) == 2
    assert "account=unknown " in lines[0] and address_hash(typed.casefold()) not in lines[0]
    assert f"account={address_hash('alice')} " in lines[1]


def test_names_no_account_can_have_are_counted_under_one_key(store: SqliteStore) -> None:
    """Failures are counted per account name, up to 100,000 names for 15 minutes each: a
    name as long as a bind PDU or a Basic header allows (~1 MB, ~8 KB) was kept whole,
    ~1 MB of memory per failed bind. Names longer than any account's share one counter
    (they guess no account; the source's own counter still applies)."""
    auth = Authenticator(store, throttle=Throttle(free=100), source_throttle=Throttle(free=100))

    async def run() -> None:
        for n in range(5):
            assert await auth.verify(f"{n}" + "x" * 100_000, b"pw", "h") is None
        assert await auth.verify("a" * accounts.MAX_NAME, b"pw", "h") is None
        assert await auth.verify("alice", b"right", "h") is not None

    asyncio.run(run())
    kept = auth.throttle._failures
    assert len(kept) == 2 and max(len(key) for key in kept) <= accounts.MAX_NAME
    assert auth.throttle._failures[next(iter(kept))].count == 5  # the long names' counter
