"""Presence: who is in a room, and who is online, counted over the cluster (docs/presence.md).

Every ``user:<sub>`` room is tracked (a user is online while they hold a
connection anywhere), and the rooms ``presence_rooms`` names. The counts live
in the store (``Store.presence_*``): each node owns its part of a room under
a lease that this service's heartbeat renews, one loop per node whatever its
sockets, so the part of a node that dies goes within ``presence_ttl``.

The store decides every transition atomically, for the whole cluster; the node
whose call saw one acts on it, so each happens once:

* a sub's first connection to a tracked room: ``user_joined`` to the room's
  members and the ``user.joined`` webhook; its last: ``user_left``, ``user.left``;
* a room's first connection: ``room.occupied`` (``user.online`` for
  ``user:<sub>``); its last, once ``offline_grace`` has passed without another
  (any node's sweep reports it): ``room.vacated`` (``user.offline``).

This node's own counts (``_local``) are the truth for its part: a write the
store missed (it was down) or a part the store dropped (this node stalled past
its lease) is written again whole at the next beat.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fnmatch
import logging
import time
from collections import Counter
from dataclasses import dataclass

from gateway.config import Config
from gateway.errors import GatewayError, InvalidRequest, TooManyConnections
from gateway.metrics import Metrics
from gateway.realtime import Conn, Fanout, user_room
from gateway.store import Store
from gateway.store.base import PresenceChange
from gateway.tasks import cancel_and_wait
from gateway.webhooks import Webhooks

logger = logging.getLogger(__name__)

PAGE = 100  # members in a page unless asked otherwise (the `presence` event's only page size)
MAX_PAGE = 1000
USER_PREFIX = "user:"


@dataclass(frozen=True, kw_only=True)
class Page:
    room: str
    users: int
    connections: int
    members: list[tuple[str, int]]
    cursor: str | None  # opaque: where the next page starts; None on the last one

    def body(self) -> dict[str, object]:
        return {
            "room": self.room,
            "users": self.users,
            "connections": self.connections,
            "members": [{"sub": sub, "connections": n} for sub, n in self.members],
            "cursor": self.cursor,
        }


def encode_cursor(sub: str) -> str:
    return base64.urlsafe_b64encode(sub.encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> str:
    """The sub ``cursor`` names; InvalidRequest for anything ``encode_cursor`` would not give."""
    try:
        sub = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError):
        sub = ""
    if not sub or encode_cursor(sub) != cursor:  # urlsafe_b64decode skips what is not base64
        raise InvalidRequest("cursor: not a cursor this gateway gave")
    return sub


class Presence:
    def __init__(self, *, config: Config, store: Store, fanout: Fanout, webhooks: Webhooks, metrics: Metrics) -> None:
        self._patterns = config.presence_rooms
        self._ttl = config.presence_ttl
        self._grace = config.offline_grace
        self._limit = config.max_connections_per_user
        self._node = config.node_name
        self._store = store
        self._fanout = fanout
        self._webhooks = webhooks
        self._metrics = metrics
        self._local: dict[str, Counter[str]] = {}  # room -> sub -> this node's connections
        self._dirty: set[str] = set()  # rooms whose part in the store may differ from _local
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def beat_interval(self) -> float:
        """A lease is renewed three times in its life: two beats may fail (or be late) in a row."""
        return self._ttl / 3

    @property
    def sweep_interval(self) -> float:
        """How often this node does the work that fell due (a dead node's rooms, a vacate's grace)."""
        return min(1.0, self._ttl / 6, *([self._grace / 2] if self._grace > 0 else []))

    def tracks(self, room: str) -> bool:
        return room.startswith(USER_PREFIX) or any(fnmatch.fnmatchcase(room, p) for p in self._patterns)

    # -- joins and leaves ------------------------------------------------------------

    async def enter(self, conn: Conn, room: str) -> None:
        """Count ``conn`` in ``room`` (if tracked). Its own user room is where
        ``max_connections_per_user`` is checked: TooManyConnections, uncounted."""
        sub = conn.sub
        if sub is None or room in conn.presence or not self.tracks(room):
            return
        limit = self._limit if room == user_room(sub) else 0
        change = await self._store.presence_enter(
            room, sub, node=self._node, ttl=self._ttl, grace=self._grace, limit=limit
        )
        if change.refused:
            self._metrics.rate_limited.labels("connections_per_user").inc()
            raise TooManyConnections(f"this user holds {limit} connections already")
        conn.presence.append(room)
        self._local.setdefault(room, Counter())[sub] += 1
        await self._apply(change)

    async def leave(self, conn: Conn, room: str) -> None:
        sub = conn.sub
        if sub is None or room not in conn.presence:
            return
        conn.presence.remove(room)
        local = self._local.get(room)
        if local is not None:
            local[sub] -= 1
            if local[sub] <= 0:
                del local[sub]
            if not local:
                del self._local[room]
        try:
            change = await self._store.presence_leave(room, sub, node=self._node, ttl=self._ttl, grace=self._grace)
        except GatewayError as exc:
            logger.warning("presence: cannot count sid=%s out of %s (%s); the next beat will", conn.sid, room, exc)
            self._dirty.add(room)
            return
        await self._apply(change)

    async def left(self, conn: Conn) -> None:
        """``conn`` is gone: out of every room, its user room last (user_left before offline)."""
        for room in reversed(list(conn.presence)):
            await self.leave(conn, room)

    # -- reads -----------------------------------------------------------------------

    async def page(self, room: str, *, cursor: str | None = None, limit: int = PAGE) -> Page:
        """Members of ``room`` after ``cursor``: exactly ``limit`` unless it is the last page."""
        if not self.tracks(room):
            raise InvalidRequest(f"presence is not tracked in {room} (presence_rooms)")
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit: must be 1 to {MAX_PAGE}")
        after = decode_cursor(cursor) if cursor else None
        read, change = await self._store.presence_read(room, after=after, limit=limit, ttl=self._ttl, grace=self._grace)
        await self._apply(change)
        last = encode_cursor(read.members[-1][0]) if read.more and read.members else None
        return Page(room=room, users=read.users, connections=read.connections, members=read.members, cursor=last)

    async def user(self, sub: str) -> int:
        """The user's connections over the cluster."""
        return (await self.page(user_room(sub), limit=1)).connections

    # -- transitions ------------------------------------------------------------------

    async def _apply(self, change: PresenceChange) -> None:
        """Act on what the store decided this node's call changed."""
        if not change.changed:
            return
        room = change.room
        if room.startswith(USER_PREFIX):
            sub = room.removeprefix(USER_PREFIX)
            if change.occupied:
                self._submit("user.online", {"sub": sub})
            if change.vacated:
                self._submit("user.offline", {"sub": sub})
            return
        if change.occupied:
            self._submit("room.occupied", {"room": room})
        for sub in change.entered:
            await self._tell(room, "user_joined", sub)
            self._submit("user.joined", {"room": room, "sub": sub})
        for sub in change.left:
            await self._tell(room, "user_left", sub)
            self._submit("user.left", {"room": room, "sub": sub})
        if change.vacated:
            self._submit("room.vacated", {"room": room})

    async def _tell(self, room: str, event: str, sub: str) -> None:
        try:
            await self._fanout.publish(room, event, {"room": room, "sub": sub})
        except GatewayError as exc:
            logger.warning("presence: %s of %s in %s not delivered (%s)", event, sub, room, exc)

    def _submit(self, type: str, data: dict[str, str]) -> None:
        self._webhooks.submit(type, data, at=time.time())

    # -- the heartbeat ----------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run(self._stopping), name="presence")

    async def stop(self) -> None:
        self._stopping.set()
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self, stopping: asyncio.Event) -> None:
        """Renew this node's leases every beat; do what fell due every sweep."""
        loop = asyncio.get_running_loop()
        next_beat = loop.time()
        while not stopping.is_set():
            try:
                if loop.time() >= next_beat:
                    next_beat = loop.time() + self.beat_interval
                    await self.beat()
                await self.sweep()
            except GatewayError as exc:
                logger.warning("presence: heartbeat failed (%s); retrying", exc)
            except Exception:
                logger.exception("presence: heartbeat failed unexpectedly")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.sweep_interval)

    async def beat(self) -> None:
        """Renew this node's lease in every room it has members of; write its part
        whole where the store lost it or missed a write."""
        rooms = list(self._local)
        changes = await self._store.presence_beat(rooms, node=self._node, ttl=self._ttl, grace=self._grace)
        for change in changes:
            if change.lost:
                self._dirty.add(change.room)
            await self._apply(change)
        for room in list(self._dirty):
            self._dirty.discard(room)
            held = dict(self._local.get(room, {}))
            try:
                change = await self._store.presence_sync(room, held, node=self._node, ttl=self._ttl, grace=self._grace)
            except GatewayError:
                self._dirty.add(room)
                raise
            await self._apply(change)

    async def sweep(self) -> None:
        for change in await self._store.presence_sweep(ttl=self._ttl, grace=self._grace):
            await self._apply(change)
