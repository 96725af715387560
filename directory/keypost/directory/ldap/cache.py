"""A bounded FIFO mapping for the server's memo caches (requests, plans, encoded entries).

FIFO rather than LRU: a hit costs one dict lookup and nothing else, and an evicted
popular item comes back on its next use. OrderedDict, not dict: deleting a plain dict's
oldest key over and over makes finding the next oldest O(n) (deleted slots pile up at
the front), which turned a stream of distinct searches into a crawl.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class FifoCache(Generic[K, V]):
    """At most `size` items; adding one more forgets the oldest."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("cache size must be positive")
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        items = self._items
        items[key] = value
        if len(items) > self.size:
            items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
