"""Connection state recovery: the server half of socket.io-client's (issue #14,
docs/recovery.md).

While ``recovery_window`` > 0 every admitted socket gets a *pid*, sent in its
Socket.IO CONNECT packet, and a record in the store under it (who it is, its
rooms in join order, its node, its state). Every event of a room carries an
*offset* as its last argument (``Conn.advance``): ``index:id`` for each of the
socket's rooms it was sent an event of, so the one offset socket.io-client
keeps says where the socket stands in every room. A client that lost its
connection sends ``{pid, offset}`` with its (fresh) credentials; once these are
verified as for any connect, ``restore`` hands over the old socket's rooms and
what they published since, if:

* the record is the same user's (or auth session's), and
* the socket was lost (transport closed, ping timeout, a drain), not closed on
  purpose (by the gateway, or by the client) — within ``recovery_window``;
  a socket of a node that died (no disconnect was ever written) counts as lost
  when the node stopped beating, and
* every position of the offset is an event of that room still in the history
  (an unknown, trimmed or forged offset recovers nothing).

Recovery is single use: the new socket takes the record over (compare-and-set
of its state), so two reconnects with one pid cannot both recover.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import GatewayError
from gateway.realtime.history import Entry, History, id_key, parse_id
from gateway.realtime.registry import Conn
from gateway.store import Store, keys
from gateway.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

BEAT = 5.0  # seconds between two heartbeats of a node (at most a quarter of the window)
_OFFSET = re.compile(r"^\d{1,4}:\d{1,15}-\d{1,15}(,\d{1,4}:\d{1,15}-\d{1,15}){0,99}\Z")
_LOST = "lost:"
_CLOSED = "closed"


@dataclass(frozen=True, kw_only=True)
class Restored:
    """What a recovering socket takes over: the old socket's rooms and
    positions, and the events it missed as far as they were read (``gap``
    completes them once the socket is back in its rooms)."""

    rooms: list[tuple[str, str] | None]
    positions: dict[int, str]
    missed: list[Entry]


class Recovery:
    def __init__(self, *, store: Store, history: History | None, window: float, live_ttl: float, node: str) -> None:
        self._store = store
        self._history = history
        self.window = window
        self._live_ttl = live_ttl
        self._node = node
        self._beat_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self.window > 0 and self._history is not None

    @property
    def history(self) -> History:
        assert self._history is not None
        return self._history

    @staticmethod
    def new_pid(*, sub: str | None = None, session_id: str | None = None) -> str:
        """A pid for a socket of ``sub`` or of the auth session ``session_id``
        (its record then lives with their keys: ``keys.recovery``)."""
        return keys.recovery_pid(secrets.token_urlsafe(16), sub=sub, session_id=session_id)

    # -- the node's heartbeat ---------------------------------------------------------

    async def start(self) -> None:
        if self.enabled:
            self._stopping = asyncio.Event()
            self._beat_task = asyncio.create_task(self._beat(self._stopping))

    async def stop(self) -> None:
        # An event, not only a cancel: a cancel that lands inside a Redis command
        # can be swallowed by redis-py's timeout handling, and the loop would go on.
        self._stopping.set()
        await cancel_and_wait(self._beat_task)

    async def _beat(self, stopping: asyncio.Event) -> None:
        """Say this node is alive: the sockets of a node that stops beating count as lost."""
        interval = min(BEAT, self.window / 4)
        while not stopping.is_set():
            try:
                beat = {"beat": repr(time.time())}
                await self._store.create_record(keys.node(self._node), beat, ttl=self.window + interval)
            except GatewayError:
                logger.warning("recovery: cannot write this node's heartbeat (store down)")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)

    # -- a socket's record -----------------------------------------------------------------

    async def track(self, conn: Conn, room: str) -> None:
        """``conn`` joined ``room``: its position there starts at the room's newest event."""
        if conn.pid is not None and conn.index(room) is None:
            conn.track(room, await self.history.head(room))
            await self.save(conn)

    async def untrack(self, conn: Conn, room: str) -> None:
        if conn.pid is not None and conn.index(room) is not None:
            conn.untrack(room)
            await self.save(conn)

    async def save(self, conn: Conn) -> None:
        if conn.pid is None:
            return
        record = {
            "sub": conn.sub or "",
            "session": conn.session_id or "",
            "rooms": json.dumps(conn.rooms),
            "node": self._node,
            "status": conn.sid,
        }
        await self._store.create_record(keys.recovery(conn.pid), record, ttl=self._live_ttl)

    async def ended(self, conn: Conn, *, lost: bool) -> None:
        """``conn`` is gone: ``lost`` (its connection was) it may be recovered for
        ``window`` seconds from now; otherwise (closed on purpose) never."""
        if conn.pid is None:
            return
        status = f"{_LOST}{time.time():.3f}" if lost else _CLOSED
        try:
            await self._store.transition(
                keys.recovery(conn.pid), from_status=conn.sid, to_status=status, ttl=self.window
            )
        except GatewayError as exc:
            logger.warning("recovery: cannot record the end of sid=%s (%s); it stays recoverable", conn.sid, exc)

    # -- recovering ----------------------------------------------------------------------------

    async def restore(
        self,
        pid: str,
        offset: str,
        *,
        sid: str,
        connected_here: Callable[[str], bool],
        sub: str | None = None,
        session_id: str | None = None,
    ) -> Restored | None:
        """Take over the socket ``pid`` for ``sid``, if it may be (see the module's
        docstring); None: a fresh connect. ``connected_here``: is this socket id
        still connected to this node?"""
        if not self.enabled or (offset and not _OFFSET.match(offset)):
            return None
        key = keys.recovery(pid)
        record = await self._store.get_record(key)
        if record is None or record.get("sub", "") != (sub or "") or record.get("session", "") != (session_id or ""):
            return None
        status = record.get("status", "")
        if not await self._within_window(status, record.get("node", ""), connected_here):
            return None
        rooms = [tuple(slot) if slot is not None else None for slot in json.loads(record.get("rooms", "[]"))]
        positions: dict[int, str] = {}
        for part in offset.split(",") if offset else ():
            index_text, event_id = part.split(":")
            index = int(index_text)
            slot = rooms[index] if index < len(rooms) else None
            # A position before the socket joined the room is forged: it would read what came before.
            if slot is None or parse_id(event_id) is None or id_key(event_id) < id_key(slot[1]):
                return None
            positions[index] = event_id
        missed: list[Entry] = []
        for index, slot in enumerate(rooms):
            if slot is None:
                continue
            room, since = slot
            exact = index in positions
            entries = await self.history.since(room, positions[index] if exact else since, exact=exact)
            if entries is None:
                return None
            missed.extend(entries)
        if not await self._store.transition(key, from_status=status, to_status=sid):
            return None  # another reconnect took it first
        return Restored(rooms=[(r[0], r[1]) if r else None for r in rooms], positions=positions, missed=missed)

    async def gap(self, restored: Restored) -> list[Entry]:
        """``restored.missed`` and what its rooms published after it was read (call
        once the socket is back in its rooms: from then on it receives them live).
        A room whose history cannot be read now gives what the first read had."""
        entries = list(restored.missed)
        last: dict[str, str] = {}
        for index, slot in enumerate(restored.rooms):
            if slot is not None:
                last[slot[0]] = restored.positions.get(index, slot[1])
        for entry in restored.missed:
            if id_key(entry.id) > id_key(last[entry.room]):
                last[entry.room] = entry.id
        for room, after in last.items():
            try:
                more = await self.history.since(room, after, exact=False)
            except GatewayError:
                logger.warning("recovery: cannot read room %s again (store down)", room)
                continue
            entries.extend(more or ())
        return entries

    async def _within_window(self, status: str, node: str, connected_here: Callable[[str], bool]) -> bool:
        now = time.time()
        if status == _CLOSED or not status:
            return False
        if status.startswith(_LOST):
            return now - float(status.removeprefix(_LOST)) <= self.window
        # Still live as far as the store knows. On this node: only if that socket
        # is gone (its end not written yet), never from a connected one. On
        # another: its node died (it never wrote the loss) or has not noticed the
        # loss yet; recoverable while that node's last heartbeat is within the
        # window. (The old socket, if its node lives, ends later; its end then
        # finds the record taken and changes nothing.)
        if node == self._node:
            return not connected_here(status)
        beat = await self._store.get_record(keys.node(node)) if node else None
        return beat is not None and now - float(beat.get("beat", "0")) <= self.window
