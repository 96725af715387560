"""How long the host waits for a busy directory (keypost.host.busy, no sockets)."""

from __future__ import annotations

import email.utils
import time

import pytest

from keypost.host.busy import BusyRetry, parse_retry_after
from keypost.host.errors import DirectoryBusy


def test_waits_grow_and_are_jittered_when_the_directory_names_none() -> None:
    low, high = BusyRetry(jitter=lambda: 0.0), BusyRetry(jitter=lambda: 0.999)
    assert [low.delay(n, None) for n in (1, 2)] == [0.25, 0.5]
    assert [round(high.delay(n, None), 2) for n in (1, 2)] == [0.5, 1.0]


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    retry = BusyRetry(jitter=lambda: 0.5)
    assert retry.delay(1, 1.0) == pytest.approx(1.1)  # at least what it asked, a bit more
    assert retry.delay(1, 5.0) == retry.cap == 2.0  # Send must not hang on it
    assert retry.delay(1, 0.0) == 0.0


def test_gives_up_after_the_last_attempt_without_waiting() -> None:
    waits: list[float] = []
    retry = BusyRetry(sleep=waits.append, jitter=lambda: 0.0)
    retry.wait_or_give_up(1, None, {})
    retry.wait_or_give_up(2, 1.0, {})
    with pytest.raises(DirectoryBusy, match="busy: try again") as info:
        retry.wait_or_give_up(3, None, {"directory": "ldap://x"})
    assert waits == [0.25, 1.0]
    assert info.value.details == {"directory": "ldap://x"}


def test_retry_after_header_forms() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 1 ") == 1.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-1") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (parse_retry_after(later) or 0) <= 30
    assert parse_retry_after(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0
    # digits only in ASCII (isdigit() takes these, float() refuses or misreads them)
    assert parse_retry_after("\u00b2") is None and parse_retry_after("\u0661") is None
    # an HTTP-date with "-0000" parses without a zone: still UTC, not local time
    minus_zero = email.utils.formatdate(time.time() + 30).rsplit(" ", 1)[0] + " -0000"
    assert 25 < (parse_retry_after(minus_zero) or 0) <= 30
