"""This node's sockets: what the gateway knows of each, by Socket.IO sid."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.closes import Close
from gateway.realtime.history import id_key


@dataclass(frozen=True, slots=True)
class Held:
    """An event kept for a socket that holds its events; a room's event keeps
    its room and id, so that it carries its offset when it is delivered."""

    event: str
    data: Any
    room: str | None = None
    id: str | None = None


SKIP = ""  # Conn.advance: the socket has this event already


@dataclass(kw_only=True, slots=True)
class Conn:
    """What this node knows of one of its Socket.IO sockets."""

    sid: str
    via: str
    expires_at: float
    sub: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    session_id: str | None = None
    seq: int = 0  # auth sessions: the connection's number, for "newest wins"
    family: str | None = None  # the refresh-token family this socket is bound to
    refresh_hash: str | None = None  # hash of the bound refresh token
    connecting: bool = True  # still inside the connect handler: cannot be disconnected yet
    close_order: Close | None = None  # a close that arrived while connecting
    closed: bool = False  # `closing` sent; the disconnect follows
    holding: bool = False  # events for it are kept in `held` (awaiting re-auth, or while admitted)
    awaiting_reauth: bool = False  # its auth expired under on_expiry=reauth: holds until it re-authenticates
    held: list[Held] = field(default_factory=list)
    dropped: int = 0  # held events dropped at the cap, not yet reported
    # client_event_rate (gateway/rate_limits.py): its token bucket, and its run of refusals
    event_tat: float = 0.0
    limited_since: float = 0.0
    limited_last: float = 0.0
    # Connection state recovery (gateway/realtime/recovery.py): its pid, its rooms
    # in join order (room, id of the room's newest event when it joined; None:
    # left), and the id of the last event it was sent from each (by that index).
    pid: str | None = None
    rooms: list[tuple[str, str] | None] = field(default_factory=list)
    positions: dict[int, str] = field(default_factory=dict)
    # Rooms this socket is counted in by presence (gateway/presence.py), in the order it entered them.
    presence: list[str] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    warn_timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    refresh_timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def pending(self) -> bool:
        """Connected without credentials, waiting to ``authenticate``."""
        return self.via == "pending"

    def track(self, room: str, since: str) -> None:
        """Count ``room`` among the socket's rooms from event ``since`` on."""
        if self.index(room) is None:
            self.rooms.append((room, since))

    def untrack(self, room: str) -> None:
        index = self.index(room)
        if index is not None:
            self.rooms[index] = None
            self.positions.pop(index, None)

    def index(self, room: str) -> int | None:
        for index, slot in enumerate(self.rooms):
            if slot is not None and slot[0] == room:
                return index
        return None

    def advance(self, room: str, event_id: str) -> str | None:
        """The offset to send with event ``event_id`` of ``room``: where the socket
        stands in each of its rooms once it has this event. SKIP when it has it
        already (a replay and the live stream can both bring an event); None
        when the socket keeps no offsets (recovery off, or not its room)."""
        index = self.index(room)
        if index is None or self.pid is None:
            return None
        slot = self.rooms[index]
        assert slot is not None
        current = self.positions.get(index, slot[1])
        if id_key(event_id) <= id_key(current):
            return SKIP
        self.positions[index] = event_id
        return self.offset()

    def offset(self) -> str:
        """``index:id`` for every room it was sent an event of, comma-separated."""
        return ",".join(f"{index}:{event_id}" for index, event_id in sorted(self.positions.items()))


class Registry:
    """This node's sockets, and which of them hold their events."""

    def __init__(self) -> None:
        self._conns: dict[str, Conn] = {}
        self.holders: set[str] = set()  # sids whose events are being held

    def add(self, conn: Conn) -> None:
        self._conns[conn.sid] = conn

    def get(self, sid: str) -> Conn | None:
        return self._conns.get(sid)

    def remove(self, sid: str) -> Conn | None:
        self.holders.discard(sid)
        return self._conns.pop(sid, None)

    def sids(self) -> list[str]:
        return list(self._conns)

    def conns(self) -> list[Conn]:
        return list(self._conns.values())

    def __len__(self) -> int:
        return len(self._conns)
