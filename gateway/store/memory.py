"""The embedded single-process engine: a dict with TTLs.

Expired entries are dropped lazily on access and from a min-heap of expiry
times on every write, so memory stays bounded by the live keys without a
background sweeper task. Every operation runs without an ``await`` between
its read and its write, so each is atomic on the event loop.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from gateway.store import keys
from gateway.store.base import (
    Admission,
    Attempt,
    PresenceChange,
    PresencePage,
    Rotation,
    Store,
    check_one_slot,
    check_ttl,
)
from gateway.store.keys import PREFIX

Value = str | dict[str, str] | list[str] | deque[tuple[str, dict[str, str]]]
_PRUNE_EVERY = 64  # a user's live-socket registry drops its stale entries at this many entries


def _stream_order(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


@dataclass(kw_only=True)
class _Room:
    """A room's presence, as lua/presence.lua keeps it in five Redis keys."""

    owned: dict[tuple[str, str], int] = field(default_factory=dict)  # (node, sub) -> connections
    counts: dict[str, int] = field(default_factory=dict)  # sub -> connections
    members: list[str] = field(default_factory=list)  # the subs, sorted (pages)
    leases: dict[str, float] = field(default_factory=dict)  # node -> lease deadline
    conns: int = 0
    vacating: float | None = None  # deadline of a pending vacate
    expires: float = float("inf")


class _Transitions:
    """One operation on a room: its net transitions, as the script counts them."""

    def __init__(self, room: _Room) -> None:
        self.room = room
        self.conns0 = room.conns
        self.marker0 = room.vacating
        self.entered: dict[str, None] = {}
        self.left: dict[str, None] = {}

    def set(self, node: str, sub: str, n: int) -> None:
        room = self.room
        had = room.owned.get((node, sub), 0)
        n = max(0, n)
        if n == had:
            return
        if n == 0:
            del room.owned[(node, sub)]
        else:
            room.owned[(node, sub)] = n
        delta = n - had
        total = room.counts.get(sub, 0) + delta
        if total <= 0:
            room.counts.pop(sub, None)
            index = bisect.bisect_left(room.members, sub)
            if index < len(room.members) and room.members[index] == sub:
                del room.members[index]
            if sub in self.entered:
                del self.entered[sub]
            else:
                self.left[sub] = None
        else:
            room.counts[sub] = total
            if total == delta:
                bisect.insort(room.members, sub)
                if sub in self.left:
                    del self.left[sub]
                else:
                    self.entered[sub] = None
        room.conns = max(0, room.conns + delta)

    def contribution(self, node: str) -> dict[str, int]:
        return {sub: n for (owner, sub), n in self.room.owned.items() if owner == node}

    def reap(self, now: float) -> None:
        for node, deadline in list(self.room.leases.items()):
            if deadline < now:
                for sub in self.contribution(node):
                    self.set(node, sub, 0)
                del self.room.leases[node]

    def holds(self, node: str) -> bool:
        return any(owner == node for owner, _ in self.room.owned)


class MemoryStore(Store):
    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.monotonic
        self._data: dict[str, tuple[Value, float]] = {}
        self._expiries: list[tuple[float, str]] = []
        self._stream_seq = itertools.count(1)
        self._presence: dict[str, _Room] = {}
        self._due: dict[tuple[str, str, str], float] = {}  # (kind, detail, room) -> when, as on Redis

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

    # -- presence: lua/presence.lua's steps, on the event loop (atomic: no await) ----------

    def _presence_room(self, room: str, now: float) -> _Room:
        found = self._presence.get(room)
        if found is None or found.expires <= now:
            found = self._presence[room] = _Room()
        return found

    def _finish(
        self, name: str, op: _Transitions, now: float, *, ttl: float, grace: float, settle: float | None = None
    ) -> PresenceChange:
        room = op.room
        occupied = vacated = False
        if op.conns0 == 0 and room.conns > 0:
            if op.marker0 is not None:
                room.vacating = None
            else:
                occupied = True
        elif op.conns0 > 0 and room.conns == 0:
            if grace > 0:
                room.vacating = now + grace
                self._due[("v", repr(room.vacating), name)] = room.vacating
            else:
                vacated = True
        elif settle is not None and room.conns == 0 and room.vacating == settle and settle <= now:
            room.vacating = None
            vacated = True
        if room.conns == 0 and room.vacating is None:
            self._presence.pop(name, None)
        else:
            room.expires = now + 2 * ttl + grace
        return PresenceChange(
            room=name,
            entered=tuple(op.entered),
            left=tuple(op.left),
            occupied=occupied,
            vacated=vacated,
            connections=room.conns,
        )

    def _lease(self, name: str, room: _Room, node: str, now: float, ttl: float) -> None:
        room.leases[node] = now + ttl
        self._due[("l", node, name)] = now + ttl

    async def presence_enter(
        self, room: str, sub: str, *, node: str, ttl: float, grace: float, limit: int = 0
    ) -> PresenceChange:
        check_ttl(ttl)
        now = self._clock()
        op = _Transitions(self._presence_room(room, now))
        op.reap(now)
        if limit > 0 and op.room.counts.get(sub, 0) >= limit:
            change = self._finish(room, op, now, ttl=ttl, grace=grace)
            return replace(change, refused=True)
        op.set(node, sub, op.room.owned.get((node, sub), 0) + 1)
        self._lease(room, op.room, node, now, ttl)
        return self._finish(room, op, now, ttl=ttl, grace=grace)

    async def presence_leave(self, room: str, sub: str, *, node: str, ttl: float, grace: float) -> PresenceChange:
        check_ttl(ttl)
        now = self._clock()
        op = _Transitions(self._presence_room(room, now))
        op.reap(now)
        op.set(node, sub, op.room.owned.get((node, sub), 0) - 1)
        if not op.holds(node):
            op.room.leases.pop(node, None)
        return self._finish(room, op, now, ttl=ttl, grace=grace)

    async def presence_beat(self, rooms: Sequence[str], *, node: str, ttl: float, grace: float) -> list[PresenceChange]:
        check_ttl(ttl)
        changes = []
        for name in rooms:
            now = self._clock()
            op = _Transitions(self._presence_room(name, now))
            op.reap(now)
            lost = node not in op.room.leases
            if not lost:
                self._lease(name, op.room, node, now, ttl)
            change = self._finish(name, op, now, ttl=ttl, grace=grace)
            changes.append(replace(change, lost=lost))
        return changes

    async def presence_sync(
        self, room: str, held: Mapping[str, int], *, node: str, ttl: float, grace: float
    ) -> PresenceChange:
        check_ttl(ttl)
        now = self._clock()
        op = _Transitions(self._presence_room(room, now))
        op.reap(now)
        for sub in op.contribution(node):
            if sub not in held:
                op.set(node, sub, 0)
        for sub, n in held.items():
            op.set(node, sub, n)
        if op.holds(node):
            self._lease(room, op.room, node, now, ttl)
        else:
            op.room.leases.pop(node, None)
        return self._finish(room, op, now, ttl=ttl, grace=grace)

    async def presence_read(
        self, room: str, *, after: str | None, limit: int, ttl: float, grace: float
    ) -> tuple[PresencePage, PresenceChange]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        now = self._clock()
        op = _Transitions(self._presence_room(room, now))
        op.reap(now)
        start = 0 if after is None else bisect.bisect_right(op.room.members, after)
        subs = op.room.members[start : start + limit + 1]
        members = [(sub, op.room.counts[sub]) for sub in subs]
        users = len(op.room.members)
        change = self._finish(room, op, now, ttl=ttl, grace=grace)
        page = PresencePage(
            users=users, connections=change.connections, members=members[:limit], more=len(members) > limit
        )
        return page, change

    async def presence_sweep(self, *, ttl: float, grace: float, batch: int = 100) -> list[PresenceChange]:
        now = self._clock()
        due = sorted((when, entry) for entry, when in self._due.items() if when <= now)[:batch]
        changes = []
        for _, entry in due:
            del self._due[entry]
            kind, detail, name = entry
            op = _Transitions(self._presence_room(name, now))
            op.reap(now)
            settle = float(detail) if kind == "v" else None
            changes.append(self._finish(name, op, now, ttl=ttl, grace=grace, settle=settle))
        return changes

    async def close(self) -> None:
        self._presence.clear()
        self._due.clear()
        self._data.clear()
        self._expiries.clear()
