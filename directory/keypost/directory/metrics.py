"""Counters and a latency histogram, rendered in the Prometheus text exposition format."""

from __future__ import annotations

import bisect
from collections import Counter

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in pairs
    )
    return "{" + inner + "}"


class Metrics:
    """The directory's own metrics (no client library: the format is a few lines of text)."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()  # (protocol, result)
        self.issued: Counter[str] = Counter()  # role
        self.cache_hits = 0
        self.cache_misses = 0
        self._buckets: dict[str, list[int]] = {}  # protocol -> counts per bucket (+Inf last)
        self._sum: dict[str, float] = {}

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
        return "\n".join(out) + "\n"
