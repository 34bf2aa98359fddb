"""The embedded single-process engine: a dict with TTLs.

Expired entries are dropped lazily on access and from a min-heap of expiry
times on every write, so memory stays bounded by the live keys without a
background sweeper task. Every operation runs without an ``await`` between
its read and its write, so each is atomic on the event loop.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from gateway.store import keys
from gateway.store.base import Admission, Attempt, Rotation, Store, check_one_slot, check_ttl
from gateway.store.keys import PREFIX

Value = str | dict[str, str] | list[str] | deque[tuple[str, dict[str, str]]]
_PRUNE_EVERY = 64  # a user's live-socket registry drops its stale entries at this many entries


def _stream_order(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


class MemoryStore(Store):
    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.monotonic
        self._data: dict[str, tuple[Value, float]] = {}
        self._expiries: list[tuple[float, str]] = []
        self._stream_seq = itertools.count(1)

    def __len__(self) -> int:
        return len(self._data)

    def _set(self, key: str, value: Value, ttl: float) -> None:
        check_ttl(ttl)
        now = self._clock()
        self._purge(now)
        deadline = now + ttl
        self._data[PREFIX + key] = (value, deadline)
        heapq.heappush(self._expiries, (deadline, PREFIX + key))

    def _live(self, key: str) -> Value | None:
        entry = self._data.get(PREFIX + key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._data[PREFIX + key]
            return None
        return entry[0]

    def _record(self, key: str) -> dict[str, str] | None:
        value = self._live(key)
        return value if isinstance(value, dict) else None

    def _purge(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            deadline, key = heapq.heappop(self._expiries)
            entry = self._data.get(key)
            if entry is not None and entry[1] == deadline:
                del self._data[key]

    async def ping(self) -> None:
        return None

    async def put(self, key: str, value: str, *, ttl: float) -> None:
        self._set(key, value, ttl)

    async def take(self, key: str) -> str | None:
        value = self._live(key)
        self._data.pop(PREFIX + key, None)
        return value if isinstance(value, str) else None

    async def create_records(self, records: Mapping[str, Mapping[str, str]], *, ttl: float) -> None:
        check_one_slot(records)
        for key, fields in records.items():
            self._set(key, dict(fields), ttl)

    async def get_record(self, key: str) -> dict[str, str] | None:
        record = self._record(key)
        return dict(record) if record is not None else None

    async def incr_field(self, key: str, field: str) -> dict[str, str] | None:
        record = self._record(key)
        if record is None:
            return None
        record[field] = str(int(record.get(field, "0")) + 1)
        return dict(record)

    async def count_attempt(self, key: str, *, limit: int) -> tuple[Attempt, dict[str, str] | None]:
        record = self._record(key)
        if record is None:
            return "missing", None
        if record.get("status") != "pending":
            return "resolved", dict(record)
        attempts = int(record.get("attempts", "0"))
        if attempts >= limit:
            return "exhausted", dict(record)
        record["attempts"] = str(attempts + 1)
        return "counted", dict(record)

    async def transition(self, key: str, *, from_status: str, to_status: str, ttl: float | None = None) -> bool:
        record = self._record(key)
        if record is None or record.get("status") != from_status:
            return False
        record["status"] = to_status
        if ttl is not None:
            self._set(key, record, ttl)
        return True

    async def append(self, key: str, member: str, *, ttl: float) -> None:
        current = self._live(key)
        items = list(current) if isinstance(current, list) else []
        if member not in items:
            items.append(member)
        self._set(key, items, ttl)

    async def members(self, key: str) -> list[str]:
        value = self._live(key)
        return list(value) if isinstance(value, list) else []

    async def append_stream(self, key: str, fields: Mapping[str, str], *, maxlen: int, ttl: float) -> str:
        current = self._live(key)
        stream = current if isinstance(current, deque) else deque(maxlen=maxlen)
        entry_id = f"{int(time.time() * 1000)}-{next(self._stream_seq)}"
        stream.append((entry_id, dict(fields)))
        self._set(key, stream, ttl)
        return entry_id

    def read_stream(self, key: str, *, after: str = "0", count: int = 100) -> list[tuple[str, dict[str, str]]]:
        """Up to ``count`` entries with ids after ``after``, oldest first: how an
        embedding program (or a test) reads the in-process upstream stream."""
        current = self._live(key)
        if not isinstance(current, deque):
            return []
        newer = [entry for entry in current if _stream_order(entry[0]) > _stream_order(after)]
        return [(entry_id, dict(fields)) for entry_id, fields in newer[:count]]

    async def admit(self, *, sub: str, iat: float, sid: str, until: float, ttl: float) -> Admission:
        if await self.is_revoked(sub, iat):
            return Admission(revoked=True)
        parked = self._live(keys.parked(sub))
        self._data.pop(PREFIX + keys.parked(sub), None)
        registry = self._record(keys.sockets(sub)) or {}
        if len(registry) % _PRUNE_EVERY == 0:
            # Stale entries go at every _PRUNE_EVERY-th entry, not at each
            # admission: a scan at every one made N connects of one user O(N²)
            # (Redis does it with ZREMRANGEBYSCORE, in O(log N)).
            now = time.time()
            registry = {k: v for k, v in registry.items() if float(v) >= now}
        registry[sid] = str(until)
        self._set(keys.sockets(sub), registry, ttl)
        return Admission(parked=list(parked) if isinstance(parked, list) else [])

    async def is_revoked(self, sub: str, iat: float) -> bool:
        cutoff = self._live(keys.revoked(sub))
        return isinstance(cutoff, str) and iat < float(cutoff)

    async def forget_socket(self, sub: str, sid: str) -> None:
        registry = self._record(keys.sockets(sub))
        if registry is not None:
            registry.pop(sid, None)

    async def disconnect_user(self, sub: str, *, now: float, revoke: bool, ttl: float) -> int:
        registry = self._record(keys.sockets(sub)) or {}
        live = sum(1 for until in registry.values() if float(until) >= now)
        self._data.pop(PREFIX + keys.sockets(sub), None)
        if revoke:
            current = self._live(keys.revoked(sub))
            cutoff = max(now, float(current) if isinstance(current, str) else 0.0)
            self._set(keys.revoked(sub), str(cutoff), ttl)
        return live

    async def park(self, sub: str, events: Sequence[str], *, cap: int, ttl: float) -> int:
        current = self._live(keys.parked(sub))
        items = (list(current) if isinstance(current, list) else []) + list(events)
        dropped = max(0, len(items) - cap)
        self._set(keys.parked(sub), items[dropped:], ttl)
        return dropped

    async def rotate(
        self,
        old_key: str,
        new_key: str,
        *,
        family_key: str,
        fields: Mapping[str, str],
        ttl: float,
        revoked_key: str,
        renewal: bool = False,
    ) -> tuple[Rotation, dict[str, str] | None]:
        check_one_slot([old_key, new_key, family_key, revoked_key])
        record = self._record(old_key)
        if record is None:
            return "missing", None
        family = self._record(family_key)
        if record.get("state") != "active" and renewal:
            return "stale", dict(record)
        if record.get("state") != "active":
            if family is not None:
                family["status"] = "revoked"
            return "reuse", dict(record)
        cutoff = self._live(revoked_key)
        if family is None or family.get("status") != "active":
            return "revoked", dict(record)
        if isinstance(cutoff, str) and float(record["iat"]) < float(cutoff):
            return "revoked", dict(record)
        record["state"] = "rotated"
        self._set(new_key, dict(fields), ttl)
        self._set(family_key, family, ttl)
        return "rotated", dict(record)

    async def close(self) -> None:
        self._data.clear()
        self._expiries.clear()
