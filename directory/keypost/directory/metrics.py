"""Counters and a latency histogram, rendered in the Prometheus text exposition format."""

from __future__ import annotations

import bisect
import gc
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in pairs
    )
    return "{" + inner + "}"


class GcWatch:
    """Times every collection of the cyclic garbage collector, per generation.

    A collection stops the whole server (every connection waits for it), so its pauses are
    what an operator must see next to request latency: a large cache or a leak shows up
    here first. The callback costs ~1 us per collection.
    """

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._started: float | None = None

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        # CPython runs one collection at a time (in whichever thread triggers it), so a
        # start is followed by its own stop; one installed mid-collection sees a lone stop.
        if phase == "start":
            self._started = time.perf_counter()
            return
        if self._started is None:
            return
        took = time.perf_counter() - self._started
        self._started = None
        generation = info["generation"]
        self.seconds[generation] += took
        self.longest[generation] = max(self.longest[generation], took)

    def install(self) -> GcWatch:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def render(self) -> list[str]:
        out = [
            "# HELP keypost_gc_pause_seconds_total Time the server stood still for the cyclic "
            "garbage collector, by generation.",
            "# TYPE keypost_gc_pause_seconds_total counter",
        ]
        out += [f'keypost_gc_pause_seconds_total{{generation="{g}"}} {self.seconds[g]:.6f}'
                for g in range(3)]
        out += [
            "# HELP keypost_gc_pause_seconds_max The longest single collection, by generation.",
            "# TYPE keypost_gc_pause_seconds_max gauge",
        ]
        out += [f'keypost_gc_pause_seconds_max{{generation="{g}"}} {self.longest[g]:.6f}'
                for g in range(3)]
        return out


def _gc_lines() -> list[str]:
    """The interpreter's own GC figures, under the names prometheus_client gives them."""
    stats = gc.get_stats()
    out: list[str] = []
    for name, key, text in (
        ("python_gc_collections_total", "collections", "Collections, by generation."),
        ("python_gc_objects_collected_total", "collected", "Objects collected, by generation."),
        ("python_gc_objects_uncollectable_total", "uncollectable",
         "Uncollectable objects found, by generation."),
    ):
        out += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
        out += [f'{name}{{generation="{g}"}} {stat[key]}' for g, stat in enumerate(stats)]
    out += [
        "# HELP python_gc_frozen_objects Objects moved out of the collector's sight at start.",
        "# TYPE python_gc_frozen_objects gauge",
        f"python_gc_frozen_objects {gc.get_freeze_count()}",
    ]
    return out


class Metrics:
    """The directory's own metrics (no client library: the format is a few lines of text)."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()  # (protocol, result)
        self.issued: Counter[str] = Counter()  # role
        self.cache_hits = 0
        self.cache_misses = 0
        self._buckets: dict[str, list[int]] = {}  # protocol -> counts per bucket (+Inf last)
        self._sum: dict[str, float] = {}
        self.gc: GcWatch | None = None  # set by the server: pauses are timed while it runs
        # how many entries each in-memory cache holds now (set by the controller that owns them)
        self.cache_sizes: Callable[[], dict[str, tuple[int, int]]] | None = None

    def request(self, protocol: str, result: str, seconds: float | None = None) -> None:
        """Count a request; `seconds` (answered look-ups only) feeds the histogram."""
        self.requests[(protocol, result)] += 1
        if seconds is None:
            return
        counts = self._buckets.setdefault(protocol, [0] * (len(LATENCY_BUCKETS) + 1))
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._sum[protocol] = self._sum.get(protocol, 0.0) + seconds

    def render(self) -> str:
        out: list[str] = [
            "# HELP keypost_requests_total Requests answered, by protocol and result.",
            "# TYPE keypost_requests_total counter",
        ]
        for (protocol, result), n in sorted(self.requests.items()):
            out.append(
                f"keypost_requests_total{_labels((('protocol', protocol), ('result', result)))} {n}"
            )
        out += [
            "# HELP keypost_containers_issued_total Containers newly issued (signed), by role.",
            "# TYPE keypost_containers_issued_total counter",
        ]
        for role, n in sorted(self.issued.items()):
            out.append(f"keypost_containers_issued_total{_labels((('role', role),))} {n}")
        out += [
            "# HELP keypost_cache_hits_total Containers served from the cache (memory or store).",
            "# TYPE keypost_cache_hits_total counter",
            f"keypost_cache_hits_total {self.cache_hits}",
            "# HELP keypost_cache_misses_total Container look-ups that had to issue.",
            "# TYPE keypost_cache_misses_total counter",
            f"keypost_cache_misses_total {self.cache_misses}",
            "# HELP keypost_request_duration_seconds Time to answer a request.",
            "# TYPE keypost_request_duration_seconds histogram",
        ]
        for protocol, counts in sorted(self._buckets.items()):
            running = 0
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                running += n
                le = "+Inf" if bound == float("inf") else repr(bound)
                labels = _labels((("protocol", protocol), ("le", le)))
                out.append(f"keypost_request_duration_seconds_bucket{labels} {running}")
            p = _labels((("protocol", protocol),))
            out.append(f"keypost_request_duration_seconds_sum{p} {self._sum[protocol]:.6f}")
            out.append(f"keypost_request_duration_seconds_count{p} {running}")
        if self.cache_sizes is not None:
            sizes = self.cache_sizes()
            out += [
                "# HELP keypost_cache_entries Entries in an in-memory cache, by cache.",
                "# TYPE keypost_cache_entries gauge",
                *(f'keypost_cache_entries{{cache="{name}"}} {n}'
                  for name, (n, _) in sorted(sizes.items())),
                "# HELP keypost_cache_capacity The most entries a cache keeps, by cache.",
                "# TYPE keypost_cache_capacity gauge",
                *(f'keypost_cache_capacity{{cache="{name}"}} {cap}'
                  for name, (_, cap) in sorted(sizes.items())),
            ]
        if self.gc is not None:
            out += self.gc.render()
        out += _gc_lines()
        return "\n".join(out) + "\n"
