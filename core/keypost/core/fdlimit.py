"""The open files limit: the servers raise it as far as they may and fit their connection
caps to it. A cap above it is no cap: past the limit a client gets no answer at all
(asyncio logs a traceback per refused accept and stops accepting for a second), where
a cap answers it busy."""

from __future__ import annotations

import contextlib
import resource

# Descriptors kept for what is not a client's connection: listeners, the store and its
# journal, log files, worker threads' pipes, outgoing connections, a scanner's pipes.
RESERVE = 64
_MOST = 1 << 20  # what is asked for when the hard limit is unlimited (Linux's nr_open)


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (as Go programs do at start: systemd
    gives services 1024 soft, 524288 hard) and return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _MOST if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):  # not allowed: it stays as it was
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _MOST if soft == resource.RLIM_INFINITY else soft


# A listener accepts up to this many connections in one go (asyncio: its backlog, 100;
# aiohttp's sites: 128) before the first of them can be refused and closed.
ACCEPT_BATCH = 128


def connection_budget(files: int, listeners: int, shares: int = 1) -> int:
    """Client connections each of `shares` servers may hold within `files` descriptors
    when `listeners` listen in all (at least 16: a limit that low is a mistake to
    report, not a reason to serve nobody)."""
    return max(16, (files - RESERVE - ACCEPT_BATCH * listeners) // shares)
