"""The embedded single-process engine: a dict with TTLs.

Expired entries are dropped lazily on access and from a min-heap of expiry
times on every write, so memory stays bounded by the live keys without a
background sweeper task.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from gateway.store.base import PREFIX, Store, check_ttl


class MemoryStore(Store):
    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.monotonic
        self._data: dict[str, tuple[str, float]] = {}
        self._expiries: list[tuple[float, str]] = []

    async def ping(self) -> None:
        return None

    async def put(self, key: str, value: str, *, ttl: float) -> None:
        check_ttl(ttl)
        now = self._clock()
        self._purge(now)
        deadline = now + ttl
        self._data[PREFIX + key] = (value, deadline)
        heapq.heappush(self._expiries, (deadline, PREFIX + key))

    async def get(self, key: str) -> str | None:
        entry = self._data.get(PREFIX + key)
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    async def take(self, key: str) -> str | None:
        # No await between read and delete: atomic on the event loop.
        entry = self._data.pop(PREFIX + key, None)
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    async def close(self) -> None:
        self._data.clear()
        self._expiries.clear()

    def __len__(self) -> int:
        return len(self._data)

    def _purge(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            deadline, key = heapq.heappop(self._expiries)
            entry = self._data.get(key)
            if entry is not None and entry[1] == deadline:
                del self._data[key]
