"""Asking a busy directory again: a few attempts with short jittered waits, then a clear error.

The directory answers busy (LDAP resultCode 51, HTTP 503) instead of queueing when it is
overloaded: too many password checks, or too many connections from one address. Those
clear within a second or so, so a short retry hides them; the waits stay short and few,
because the compose window's Send waits for the answer.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from keypost.host.errors import DirectoryBusy


class Busy(Exception):
    """The directory answered busy; `retry_after`: the seconds it asked us to wait, if any."""

    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("the directory is busy")
        self.retry_after = retry_after


@dataclass(frozen=True)
class BusyRetry:
    """How often and how long to wait for a busy directory, per fetch.

    `attempts` counts busy answers allowed in one fetch (all its batches together), so a
    fetch waits at most (attempts - 1) * cap seconds in all, whatever the directory says.
    """

    attempts: int = 3
    base: float = 0.25  # first wait 0.25-0.5 s, then 0.5-1 s, when the directory names none
    cap: float = 2.0  # longest single wait: its Retry-After may say 5 s, Send must not hang
    sleep: Callable[[float], Any] = field(default=time.sleep, repr=False)
    jitter: Callable[[], float] = field(default=random.random, repr=False)  # in [0, 1)

    def delay(self, busy_answers: int, retry_after: float | None) -> float:
        """The wait after the `busy_answers`-th busy answer (1-based). Jittered so that
        the clients refused together do not all come back together."""
        if retry_after is None:
            wait = self.base * 2.0 ** (busy_answers - 1) * (1 + self.jitter())
        else:
            wait = retry_after * (1 + 0.2 * self.jitter())
        return min(max(wait, 0.0), self.cap)

    def wait_or_give_up(self, busy_answers: int, retry_after: float | None,
                        where: dict[str, Any]) -> None:
        """Sleep before the next attempt, or raise DirectoryBusy when none is left."""
        if busy_answers >= self.attempts:
            raise DirectoryBusy("the directory is busy: try again in a moment", where)
        self.sleep(self.delay(busy_answers, retry_after))


DEFAULT_RETRY = BusyRetry()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from an HTTP Retry-After header (delta-seconds or an HTTP-date, RFC 9110
    10.2.3); None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        # isdigit() also takes "²" and other scripts' digits, which float() refuses or
        # reads as numbers no server sent: only ASCII digits are delta-seconds
        return float(text) if text.isascii() else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" (no zone information): HTTP-dates are UTC anyway
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - time.time())
