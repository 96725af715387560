"""Account passwords: scrypt hashing, equal-time verification and slowing down guessers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from keypost.directory.controller import address_hash
from keypost.directory.ldap.backend import BackendBusy
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
MAX_NAME = 256  # longer account names are refused (admin) and never looked up
# The failure counter shared by all names longer than MAX_NAME (none is an account, and
# kept one by one they held ~1 MB per failed bind); no account's name is empty.
_LONG_NAMES = ""
KNOWN_GOOD_SECONDS = 7 * 86400.0  # a source that logged in to an account is trusted this long
MAX_KNOWN_GOOD = 100_000
PER_SOURCE_WAITING = 4  # checks from one source waiting behind its running one


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


class PasswordChecksBusy(BackendBusy):
    """Too many password checks queued or running: answered at once (LDAP busy, HTTP 503)
    instead of queueing, so a flood cannot push honest logins past clients' timeouts."""


@dataclass
class _Line:
    """The checks of one source: one runs, the others wait for it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # the running check and those waiting


class Admission:
    """Bounds the password checks queued or running (each ~50 ms of one scrypt worker).

    At most `limit` checks overall, and one at a time per source address (up to
    PER_SOURCE_WAITING more wait their turn); beyond that a check is refused at once.
    Known-good (account, source) pairs skip the per-source line and may use `reserve`
    further slots: a flood of guesses from anywhere then cannot lock out the clients that
    logged in before (the gateway's account above all). Its worst case: someone at the
    same address as a known client who knows its account name, and even they get at most
    limit + reserve checks queued, i.e. a wait of a few scrypt runs.
    """

    def __init__(self, limit: int, reserve: int) -> None:
        self.limit, self.reserve = limit, reserve
        self.running = 0
        self._lines: dict[str, _Line] = {}

    async def admit(self, source: str, trusted: bool) -> Callable[[], None]:
        """Wait for a slot or raise PasswordChecksBusy; call the result when done."""
        if trusted:
            if self.running >= self.limit + self.reserve:
                raise PasswordChecksBusy("too many password checks: retry shortly")
            self.running += 1
            return self._done
        line = self._lines.setdefault(source, _Line())
        if line.users > PER_SOURCE_WAITING:
            raise PasswordChecksBusy("too many password checks from your address: retry shortly")
        line.users += 1
        try:
            await line.lock.acquire()
        except BaseException:
            self._leave(source, line)
            raise
        if self.running >= self.limit:
            line.lock.release()
            self._leave(source, line)
            raise PasswordChecksBusy("too many password checks: retry shortly")
        self.running += 1

        def done() -> None:
            self._done()
            line.lock.release()
            self._leave(source, line)
        return done

    def _done(self) -> None:
        self.running -= 1

    def _leave(self, source: str, line: _Line) -> None:
        line.users -= 1
        if not line.users:
            del self._lines[source]


class Authenticator:
    """Checks account credentials without blocking the event loop or leaking existence.

    An unknown account is checked against a dummy hash with the default parameters, so
    it costs the same scrypt run as a known one; right and wrong passwords run the same
    code. Failures slow down later attempts for the account name and the source host.
    Checks beyond what `Admission` lets through raise PasswordChecksBusy.
    """

    def __init__(self, store: Store, workers: int = 2, throttle: Throttle | None = None,
                 source_throttle: Throttle | None = None) -> None:
        self._store = store
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scrypt")
        # 2 x workers keeps both busy while the next checks are handed over; a check then
        # waits at most ~3 scrypt runs (150 ms), far below any client's timeout.
        self.admission = Admission(limit=2 * workers, reserve=workers)
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
        try:
            account, known = await self._verify(name, password, source)
        except PasswordChecksBusy:
            request_log.info("event=auth protocol=%s source=%s result=busy", protocol, source)
            raise
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
        account_key = name.casefold() if len(name) <= MAX_NAME else _LONG_NAMES
        now = time.monotonic()
        pair = (account_key, source)
        seen = self._known_good.get(pair)
        trusted = seen is not None and now - seen < self.known_good_for
        account_wait = 0.0 if trusted else self.throttle.delay(account_key, now)
        wait = max(account_wait, self.source_throttle.delay(source, now))
        if wait > 0:
            await asyncio.sleep(wait)
        done = await self.admission.admit(source, trusted)  # before the store: no oracle
        try:
            account = self._store.account(name) if len(name) <= MAX_NAME else None
            stored = account.password if account is not None else self._dummy
            loop = asyncio.get_running_loop()
            check = loop.run_in_executor(self._executor, check_password, password, stored)
        except BaseException:
            done()
            raise
        # The slot is freed when scrypt ends, even if this request is cancelled before.
        check.add_done_callback(lambda _: done())
        ok = await asyncio.shield(check)
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
