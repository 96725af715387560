"""Container cache: hits kept for an hour at most, and never past the point where half of a
container's life is left; misses for a minute.

In memory, mirrored to `containers.json` in the user cache dir so a new host process
(Thunderbird may start one per message) starts warm. Containers are public data.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from keypost.host.directory_client import RawContainer
from keypost.host.paths import write_private

CACHE_FILE = "containers.json"
MISS_TTL = 60.0  # seconds an empty answer is trusted (a new account shows up quickly)
EXPIRY_MARGIN = 300.0  # refresh this long before the earliest not-after
# After an emergency `domain rekey` the directory hands out containers of the new key at
# once, but a cached container keeps mail going to the retired key until it is dropped.
# The directory and the gateway renew at half a container's life (12 h of a 24 h
# encryption container): too long for a key that may be compromised. An hour bounds that
# window; its cost is one batched directory search per hour for the people one writes to
# (the add-on looks recipients up while they are typed, before Send).
MAX_HIT_TTL = 3600.0
# 2: hits expire by MAX_HIT_TTL and half-life. Files of format 1 held hits until 5 minutes
# before not-after (up to a day): a new host process must not inherit them.
FORMAT = 2
# A bigger file is not one this host wrote (about 4 KB per address): not read at all.
MAX_FILE_BYTES = 64 << 20


@dataclass(frozen=True)
class CacheEntry:
    containers: tuple[RawContainer, ...]
    expires: float  # epoch seconds


class ContainerCache:
    """Keyed by (directory, requestor, trust anchor, address key): what the directory
    answers depends on who asks (a user of a served domain also gets their own gateway's
    container), and what was fetched under one anchor is no use under another (a
    replaced directory CA signs new containers at once)."""

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        self._entries: dict[str, CacheEntry] = {}
        self._dirty = False
        if path is not None:
            self._load(path)

    @staticmethod
    def key(directory: str, requestor: str | None, anchor: str, address_key: str) -> str:
        """`anchor`: the trust anchor's fingerprint."""
        return f"{directory}|{requestor or ''}|{anchor}|{address_key}"

    def get(self, key: str) -> CacheEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not _fresh(entry, self._clock()):
            del self._entries[key]
            self._dirty = True
            return None
        return entry

    def put(self, key: str, containers: Sequence[RawContainer], not_after: float | None) -> None:
        """`not_after`: the earliest not-after of the containers (None for a miss)."""
        now = self._clock()
        if containers and not_after is not None:
            expires = min(not_after - EXPIRY_MARGIN, now + MAX_HIT_TTL, _half_life(containers))
            if expires <= now:
                return  # about to expire: not worth keeping
        else:
            expires = now + MISS_TTL
        self._entries[key] = CacheEntry(tuple(containers), expires)
        self._dirty = True

    def clear(self) -> None:
        self._entries.clear()
        self._dirty = True
        self.flush()

    def flush(self) -> None:
        """Write the file if anything changed (once per request, not per address)."""
        if self._path is None or not self._dirty:
            return
        now = self._clock()
        data = {
            "format": FORMAT,
            "entries": {
                key: {
                    "expires": e.expires,
                    "containers": [
                        {"der": base64.b64encode(c.der).decode("ascii"), "gateway": c.gateway}
                        for c in e.containers
                    ],
                }
                for key, e in self._entries.items()
                if _fresh(e, now)
            },
        }
        try:
            write_private(self._path, json.dumps(data).encode("utf-8"))
        except OSError:
            return  # a cache that cannot be written is only slower
        self._dirty = False

    def _load(self, path: Path) -> None:
        """Read the file this class writes; anything else (a crash, a full disk, another
        program) means starting cold, never failing the host."""
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                return
            data = json.loads(path.read_text("utf-8"))
            if data.get("format") != FORMAT:
                return
            now = self._clock()
            for key, e in data["entries"].items():
                entry = CacheEntry(tuple(_container(c) for c in e["containers"]),
                                   float(e["expires"]))
                if _fresh(entry, now):
                    self._entries[str(key)] = entry
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            self._entries.clear()  # unreadable cache: start cold rather than fail


def _fresh(entry: CacheEntry, now: float) -> bool:
    """Not expired, and not trusted longer than an entry of its kind may be from now: an
    expiry further ahead (written while the clock was ahead, or NaN) is not believed."""
    longest = MAX_HIT_TTL if entry.containers else MISS_TTL
    return now < entry.expires <= now + longest


def _container(item: dict[str, object]) -> RawContainer:
    """One container as flush() wrote it; TypeError/ValueError for anything else."""
    der, gateway = item["der"], item.get("gateway")
    if not isinstance(der, str) or not (gateway is None or isinstance(gateway, str)):
        raise TypeError("not a cached container")
    return RawContainer(base64.b64decode(der, validate=True), gateway)


def _half_life(containers: Sequence[RawContainer]) -> float:
    """The earliest point at which half of a container's life is left (the rule the
    directory and the gateway renew by); infinity when none can be read (the caller
    bounds it anyway)."""
    points = [float("inf")]
    for c in containers:
        if (validity := c.validity) is not None:
            start, end = validity
            points.append(start + (end - start) / 2)
    return min(points)
