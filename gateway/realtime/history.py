"""The rooms' recent events, for connection state recovery (issue #14, docs/recovery.md).

Every event published to a room (``user:``, ``session:``, ``room:``) gets an
id when it is published and is kept, with it, for ``recovery_window`` plus
``HISTORY_MARGIN`` seconds. Ids are Redis stream ids, ``<ms>-<seq>``, ordered
by (ms, seq): with one Redis (or the memory engine) they are drawn from one
clock for every room, so they order events across rooms as they were
published; on a Redis Cluster each room's stream has its own (per-room order).

* the memory engine keeps its history here (``MemoryHistory``);
* the redis engine keeps one stream per room, appended by the same script that
  publishes the event (gateway/realtime/broker.py, ``lua/publish.lua``).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

HISTORY_MARGIN = 30.0  # seconds kept beyond the window: events in flight when a connection was lost
REPLAY_MAX = 10_000  # events a recovery replays from one room at most (more: a fresh connect)
ORIGIN = "0-0"  # before every event

_ID = re.compile(r"^(\d{1,15})-(\d{1,15})\Z")


def parse_id(text: str) -> tuple[int, int] | None:
    """(ms, seq) of an event id; None for anything else."""
    match = _ID.match(text)
    return (int(match[1]), int(match[2])) if match else None


def id_key(event_id: str) -> tuple[int, int]:
    """The sort key of a well-formed id."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


@dataclass(frozen=True, slots=True)
class Entry:
    """One published event: its id, its room, and what a socket receives."""

    id: str
    room: str
    event: str
    args: list[Any]


class History(Protocol):
    async def head(self, room: str) -> str:
        """The id of ``room``'s newest event (ORIGIN when it has none)."""

    async def since(self, room: str, after: str, *, exact: bool) -> list[Entry] | None:
        """``room``'s events after ``after``, oldest first, at most REPLAY_MAX.

        None when they cannot be told: more than REPLAY_MAX, or, with ``exact``
        (``after`` is what a client says it received), ``after`` is not an event
        of the room (trimmed, or never one)."""


class MemoryHistory:
    """The memory engine's history: a deque per room, ids from one clock."""

    def __init__(self, *, keep: float, clock: Callable[[], float] = time.time) -> None:
        self._keep_ms = int(keep * 1000)
        self._clock = clock
        self._rooms: dict[str, deque[Entry]] = {}
        self._last = (0, 0)
        self._appends = 0

    def append(self, room: str, event: str, args: list[Any]) -> str:
        ms = int(self._clock() * 1000)
        last_ms, last_seq = self._last
        self._last = (last_ms, last_seq + 1) if ms <= last_ms else (ms, 0)
        entry = Entry(id=f"{self._last[0]}-{self._last[1]}", room=room, event=event, args=args)
        entries = self._rooms.setdefault(room, deque())
        entries.append(entry)
        self._trim(entries, ms)
        self._appends += 1
        if self._appends % 1024 == 0:  # rooms nobody publishes to any more
            for name in [name for name, kept in self._rooms.items() if not self._trim(kept, ms)]:
                del self._rooms[name]
        return entry.id

    def _trim(self, entries: deque[Entry], now_ms: int) -> int:
        horizon = now_ms - self._keep_ms
        while entries and id_key(entries[0].id)[0] < horizon:
            entries.popleft()
        return len(entries)

    async def head(self, room: str) -> str:
        entries = self._rooms.get(room)
        return entries[-1].id if entries else ORIGIN

    async def since(self, room: str, after: str, *, exact: bool) -> list[Entry] | None:
        entries = list(self._rooms.get(room, ()))
        if exact and not any(entry.id == after for entry in entries):
            return None
        start = id_key(after)
        found = [entry for entry in entries if id_key(entry.id) > start]
        return found if len(found) <= REPLAY_MAX else None
