"""Account passwords: scrypt hashing, equal-time verification and slowing down guessers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from keypost.directory.controller import address_hash
from keypost.directory.store import AccountRecord, PasswordHash, Store

# The directory's request log (one line per request, never a password): see controller.
request_log = logging.getLogger("keypost.directory.requests")

# OWASP's scrypt minimum (N=2^17 would cost 128 MiB per check; 2^14 keeps a bind ~50 ms).
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
DIGEST_LEN = 32
SALT_LEN = 16
MAX_PASSWORD = 1024  # longer inputs are refused without hashing (no cheap DoS)
KNOWN_GOOD_SECONDS = 7 * 86400.0  # a source that logged in to an account is trusted this long
MAX_KNOWN_GOOD = 100_000


def hash_password(password: bytes, n: int = SCRYPT_N, r: int = SCRYPT_R,
                  p: int = SCRYPT_P) -> PasswordHash:
    """A fresh salted scrypt hash (blocking; call in a thread when serving)."""
    salt = os.urandom(SALT_LEN)
    return PasswordHash(salt, n, r, p, _scrypt(password, salt, n, r, p))


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024,
                          dklen=DIGEST_LEN)


def check_password(password: bytes, stored: PasswordHash) -> bool:
    """Constant-time comparison of scrypt(password) with the stored digest (blocking)."""
    candidate = _scrypt(password[:MAX_PASSWORD], stored.salt, stored.n, stored.r, stored.p)
    return hmac.compare_digest(candidate, stored.digest) and len(password) <= MAX_PASSWORD


@dataclass
class _Failures:
    count: int
    last: float


class Throttle:
    """In-memory failure counters per key with exponential, bounded delays.

    A key with `count` recent failures waits base * 2**(count - free) seconds (at most
    `cap`) before its next attempt is even checked. Counters are forgotten `window`
    seconds after the last failure; at most `max_keys` are kept (oldest dropped).
    """

    def __init__(self, base: float = 0.2, cap: float = 5.0, free: int = 2,
                 window: float = 900.0, max_keys: int = 100_000) -> None:
        self.base, self.cap, self.free, self.window = base, cap, free, window
        self.max_keys = max_keys
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def delay(self, key: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        entry = self._failures.get(key)
        if entry is None:
            return 0.0
        if now - entry.last > self.window:
            del self._failures[key]
            return 0.0
        if entry.count < self.free:
            return 0.0
        return float(min(self.cap, self.base * 2 ** (entry.count - self.free)))

    def failed(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        entry = self._failures.pop(key, None)
        if entry is None or now - entry.last > self.window:
            entry = _Failures(0, now)
        entry.count += 1
        entry.last = now
        self._failures[key] = entry
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def reset(self, key: str) -> None:
        self._failures.pop(key, None)


class Authenticator:
    """Checks account credentials without blocking the event loop or leaking existence.

    An unknown account is checked against a dummy hash with the default parameters, so
    it costs the same scrypt run as a known one; right and wrong passwords run the same
    code. Failures slow down later attempts for the account name and the source host.
    """

    def __init__(self, store: Store, workers: int = 2, throttle: Throttle | None = None,
                 source_throttle: Throttle | None = None) -> None:
        self._store = store
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scrypt")
        self._dummy = hash_password(os.urandom(16))
        # Per account: slowed after 3 failures, reset by a success. Per source host: more
        # lenient (many honest users may share a NAT), never reset by a success, so an
        # attacker cannot clear it by logging in to an account of their own.
        self.throttle = throttle or Throttle(free=3)
        self.source_throttle = source_throttle or Throttle(free=10)
        # (account, source host) pairs that logged in lately skip the per-account delay:
        # else anyone who knows an account name (a gateway's) could slow its real logins
        # to the cap by failing on purpose. Their source's own counter still applies.
        self._known_good: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.known_good_for = KNOWN_GOOD_SECONDS

    async def verify(self, name: str, password: bytes, source: str,
                     protocol: str = "ldap") -> AccountRecord | None:
        """The account when `password` is right, else None (after equal work). Logs one
        line either way: an existing account's name hashed, any other name as `unknown`
        (users type passwords into it, and an unsalted SHA-256 of a password is a
        dictionary look-up away from it)."""
        started = time.perf_counter()
        account, known = await self._verify(name, password, source)
        if request_log.isEnabledFor(logging.INFO):
            request_log.info(
                "event=auth protocol=%s account=%s source=%s result=%s ms=%.2f", protocol,
                address_hash(name.casefold()) if known else "unknown", source,
                "ok" if account else "invalid", (time.perf_counter() - started) * 1000)
        return account

    async def _verify(self, name: str, password: bytes, source: str
                      ) -> tuple[AccountRecord | None, bool]:
        """(the account when the password is right, whether the name is an account): the
        store is read once, for the check and the log line alike."""
        account_key = name.casefold()
        now = time.monotonic()
        pair = (account_key, source)
        seen = self._known_good.get(pair)
        trusted = seen is not None and now - seen < self.known_good_for
        account_wait = 0.0 if trusted else self.throttle.delay(account_key, now)
        wait = max(account_wait, self.source_throttle.delay(source, now))
        if wait > 0:
            await asyncio.sleep(wait)
        account = self._store.account(name) if len(name) <= 256 else None
        stored = account.password if account is not None else self._dummy
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._executor, check_password, password, stored)
        if ok and account is not None:
            self.throttle.reset(account_key)
            self._known_good.pop(pair, None)
            self._known_good[pair] = time.monotonic()
            while len(self._known_good) > MAX_KNOWN_GOOD:
                self._known_good.popitem(last=False)
            return account, True
        self.throttle.failed(account_key)
        self.source_throttle.failed(source)
        return None, account is not None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
