"""``Realtime``: this node's sockets, and every emit and close the gateway makes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from engineio import packet as eio_packet

from gateway import closes
from gateway.closes import Close
from gateway.metrics import Metrics
from gateway.realtime.engine import EngineSocket, frame, packet_frame
from gateway.realtime.history import History
from gateway.realtime.managers import LocalFanout, RoutedManager, arguments, encode_event
from gateway.realtime.names import CONTROL_CLOSE, FAMILY_ROOM_PREFIX, NAMESPACE
from gateway.realtime.recovery import Recovery
from gateway.realtime.registry import SKIP, Conn, Held, Registry
from gateway.realtime.server import Server
from gateway.scheduler import Scheduler

logger = logging.getLogger(__name__)

DRAIN_TIMEOUT = 2.0  # how long a draining node waits for its WebSocket sessions to end
POLL_FETCH_TIMEOUT = 0.5  # how long a draining node waits for a long-polling client's next poll
SLOW_CONSUMER_GRACE = 5.0  # a slow consumer's connection is cut this long after its close frame


class RawSocket(Protocol):
    """A plain WebSocket of an auth session, held by handlers/raw_ws.py."""

    id: str
    seq: int

    async def send_event(self, event: str, data: Any) -> None: ...

    async def close(self, close: Close) -> None: ...


class Tracker(Protocol):
    """Counts sockets in rooms (gateway/presence.py): told of every join and leave."""

    async def enter(self, conn: Conn, room: str) -> None:
        """``conn`` joins ``room``; may refuse it (a GatewayError) before it is in."""

    async def leave(self, conn: Conn, room: str) -> None: ...


class Realtime:
    """This node's sockets (``registry``), and every emit and close the gateway makes.

    Domain services see it through the ``Fanout`` protocol (publish, close a
    room); admission and lifetime use the registry and the per-socket emits.
    """

    def __init__(self, *, sio: Server, scheduler: Scheduler, max_held: int, metrics: Metrics) -> None:
        self.sio = sio
        self.scheduler = scheduler
        self.registry = Registry()
        self._max_held = max_held
        self._metrics = metrics
        self.raw: dict[str, dict[str, RawSocket]] = {}
        self.draining = False
        self.recovery: Recovery | None = None  # set by create_app
        self.presence: Tracker | None = None  # set by create_app
        manager = sio.manager
        if not isinstance(manager, LocalFanout):
            raise TypeError("the Socket.IO client manager must be a LocalFanout")
        self._manager = manager
        manager.realtime = self
        sio.connect_data = self._connect_data
        if isinstance(manager, RoutedManager):
            manager.on_received = metrics.fanout_received.inc
            metrics.fanout_rooms.set_function(lambda: manager.broker.rooms)
        sio.eio.on_slow_consumer = self._slow_consumer

    @property
    def history(self) -> History | None:
        """The rooms' history (recovery on): the memory engine's own, or Redis streams."""
        manager = self._manager
        if isinstance(manager, RoutedManager):
            return manager.broker if manager.keep else None
        return manager.history

    def _connect_data(self, sid: str) -> dict[str, Any]:
        conn = self.registry.get(sid)
        return {"pid": conn.pid} if conn is not None and conn.pid is not None else {}

    async def start(self) -> None:
        # Start the Redis listener now rather than at the first connect, so a
        # node also serves cluster-wide requests before it has clients.
        if not self.sio.manager_initialized:
            self.sio.manager_initialized = True
            self._manager.initialize()
            await self._manager.start()
        if self.recovery is not None:
            await self.recovery.start()

    async def stop(self) -> None:
        if self.recovery is not None:
            await self.recovery.stop()
        await self._manager.close()  # nothing more from other nodes
        await self.scheduler.close()
        await self.sio.shutdown()

    # -- the registry: this node's sockets -----------------------------------------

    def register(self, conn: Conn) -> None:
        self.registry.add(conn)

    def get(self, sid: str) -> Conn | None:
        return self.registry.get(sid)

    def is_current(self, conn: Conn) -> bool:
        """Is ``conn`` still this node's socket (not gone, not replaced by a re-registration)?"""
        return self.registry.get(conn.sid) is conn

    def forget(self, sid: str) -> Conn | None:
        return self.registry.remove(sid)

    async def join(self, sid: str, room: str) -> None:
        """Put ``sid`` in ``room``; once this returns, every emit to the room reaches
        it (StoreUnavailable if the cluster did not confirm the room's channel).
        Presence counts it first, and may refuse it (the user's connection limit)."""
        conn = self.registry.get(sid)
        presence = self.presence if conn is not None else None
        if conn is not None and presence is not None:
            await presence.enter(conn, room)
        try:
            await self.sio.enter_room(sid, room)
            await self._manager.ready(room)
        except Exception:
            if conn is not None and presence is not None:
                await presence.leave(conn, room)
            raise
        if conn is not None and self.recovery is not None:
            await self.recovery.track(conn, room)

    async def leave(self, sid: str, room: str) -> None:
        await self.sio.leave_room(sid, room)
        conn = self.registry.get(sid)
        if conn is not None and self.presence is not None:
            await self.presence.leave(conn, room)
        if conn is not None and self.recovery is not None:
            await self.recovery.untrack(conn, room)

    def rooms_of(self, sid: str) -> list[str]:
        return self._manager.get_rooms(sid, NAMESPACE)

    def eio_sid(self, sid: str) -> str | None:
        """The Engine.IO session a Socket.IO socket rides on."""
        eio_sid: str | None = self._manager.eio_sid_from_sid(sid, NAMESPACE)
        return eio_sid

    # -- emits ---------------------------------------------------------------

    async def emit_local(self, sid: str, event: str, data: Any) -> None:
        """Emit to a socket of this node at once: no round trip through Redis, never held."""
        if not self._manager.deliver(NAMESPACE, sid, [event, *arguments(data)]):
            await self.sio.emit(event, data, to=sid, ignore_queue=True)

    async def deliver_held(self, conn: Conn, held: Held) -> None:
        """Deliver an event kept for ``conn``: a room's with its offset (and not
        at all if the socket has it already), any other as it is."""
        if held.room is None or held.id is None:
            await self.emit_local(conn.sid, held.event, held.data)
            return
        offset = conn.advance(held.room, held.id)
        if offset is None:
            await self.emit_local(conn.sid, held.event, held.data)
        elif offset != SKIP:
            await self.emit_local(conn.sid, held.event, (*arguments(held.data), offset))

    async def publish(self, room: str, event: str, data: Any) -> None:
        """Emit to ``room`` on every node; raise StoreUnavailable if the cluster can't be reached."""
        await self.sio.emit(event, data, room=room)

    async def deliver_raw(self, room: str, event: str, data: Any) -> None:
        for raw in list(self.raw.get(room, {}).values()):
            await raw.send_event(event, data)

    # -- closing -------------------------------------------------------------

    async def close_room(
        self, room: str, close: Close, *, older_than: int | None = None, via: str | None = None
    ) -> None:
        """Send ``closing`` to, then close, every socket of ``room`` on every node
        (both transports); with ``older_than``, only connections numbered below it.
        The order travels to the nodes with members of ``via`` (default: ``room``)."""
        order = {"room": room, "code": close.code, "reason": close.reason, "olderThan": older_than}
        await self.sio.emit(CONTROL_CLOSE, order, room=via or room)

    async def apply_close(self, order: Mapping[str, Any]) -> None:
        """This node's part of a ``close_room``."""
        room, older_than = order["room"], order.get("olderThan")
        close = Close(order["code"], order["reason"])
        for sid in self._local_members(room):
            conn = self.registry.get(sid)
            if older_than is None or (conn is not None and conn.seq < older_than):
                await self.close(sid, close)
        for raw in list(self.raw.get(room, {}).values()):
            if older_than is None or raw.seq < older_than:
                await raw.close(close)

    def _local_members(self, room: str) -> list[str]:
        if room.startswith(FAMILY_ROOM_PREFIX):
            family = room.removeprefix(FAMILY_ROOM_PREFIX)
            return [conn.sid for conn in self.registry.conns() if conn.family == family]
        return [sid for sid, _ in self._manager.get_participants(NAMESPACE, room)]

    async def close(self, sid: str, close: Close) -> None:
        """``closing`` then a Socket.IO disconnect (the client will not reconnect by itself).

        python-socketio ignores a disconnect of a socket still in its connect
        handler; such a socket keeps the order and its connect is refused with it.
        """
        conn = self.registry.get(sid)
        if conn is not None:
            if conn.connecting:
                conn.close_order = conn.close_order or close
                return
            if conn.closed:
                return  # one `closing` per socket, even if several orders reach it
            conn.closed = True
        await self.emit_local(sid, "closing", close.payload())
        await self.sio.disconnect(sid, ignore_queue=True)

    @staticmethod
    def _event_frame(event: str, data: Any) -> tuple[bytes, eio_packet.Packet]:
        """An event as one Engine.IO packet and its WebSocket frame, built once."""
        eio_pkt = eio_packet.Packet(eio_packet.MESSAGE, encode_event(NAMESPACE, [event, data]))
        return frame(eio_pkt.encode()), eio_pkt

    def _slow_consumer(self, socket: EngineSocket) -> None:
        """A client that does not read what it is sent: it is told (if it ever
        reads again) and let go, and what it was sent is dropped, not kept."""
        self._metrics.slow_consumers.inc()
        close = closes.SLOW_CONSUMER
        sid = self._manager.sid_from_eio_sid(socket.sid, NAMESPACE)
        conn = self.registry.get(sid) if sid is not None else None
        if conn is not None:
            conn.closed = True
        unread = socket.server.max_buffered
        logger.warning("closing sid=%s reason=%s (more than %d bytes unread)", sid, close.reason, unread)
        wire, _ = self._event_frame("closing", close.payload())
        socket.end_slow(wire, close.code, close.reason, grace=SLOW_CONSUMER_GRACE)

    async def going_away(self) -> int:
        """Refuse new connects, send ``closing`` 1001 to every local socket and
        end its transport, so that clients reconnect (to another node).

        On a WebSocket, ``closing``, engine.io's CLOSE packet and a close frame
        (1001) are written and the connection closed at once: socket.io-client
        ignores the CLOSE packet there (only its polling transport reads it),
        and stayed connected until the process exited; now every client sees
        ``transport close`` within a write. The sessions' disconnect handlers
        then run as their connections end. Long-polling sessions: see
        ``_close_polling``.
        """
        self.draining = True
        wire, pkt = self._event_frame("closing", closes.GOING_AWAY.payload())
        close_packet = packet_frame(eio_packet.Packet(eio_packet.CLOSE))
        told = {self.eio_sid(sid) for sid in self.registry.sids()}  # the Socket.IO sockets' sessions
        polling = []
        for eio_sid, socket in list(self.sio.eio.sockets.items()):
            if not isinstance(socket, EngineSocket):
                continue
            if socket.transport is not None:  # closing, CLOSE and the close frame: one write
                last_words = wire + close_packet if eio_sid in told else close_packet
                socket.end_websocket(closes.GOING_AWAY.code, closes.GOING_AWAY.reason, last_words=last_words)
            else:
                if eio_sid in told:
                    socket.deliver(wire, pkt)
                polling.append(self._close_polling(socket))
        raws = [raw for room in self.raw.values() for raw in room.values()]
        # Concurrently: each raw close waits for its client's half of the handshake.
        await asyncio.gather(*(raw.close(closes.GOING_AWAY) for raw in raws), *polling, return_exceptions=True)
        await self._sessions_ended()
        return len(told - {None}) + len(raws)

    async def _sessions_ended(self) -> None:
        """Give the WebSocket sessions up to DRAIN_TIMEOUT to run their disconnect handlers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT
        while any(s.upgraded for s in self.sio.eio.sockets.values()):
            if loop.time() >= deadline:
                logger.warning("some WebSocket sessions did not end within %ss", DRAIN_TIMEOUT)
                break
            await asyncio.sleep(0.02)

    @staticmethod
    async def _close_polling(socket: EngineSocket) -> None:
        """End a long-polling session in two polls: first what is queued (``closing``
        among it), then the CLOSE packet alone, and only then mark it closed.

        socket.io-client hands a payload's events to the application a tick later,
        so an event in the same response as the CLOSE packet was dropped with the
        socket; and engine.io answers any request of a session marked closed with
        400, so the CLOSE packet of a session closed first was never fetched (the
        client saw a transport error). Each wait is bounded: a client that
        stopped polling does not hold the drain.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(socket.queue.join(), POLL_FETCH_TIMEOUT)
        socket.queue.put_nowait(eio_packet.Packet(eio_packet.CLOSE))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(socket.queue.join(), POLL_FETCH_TIMEOUT)
        await socket.close(wait=False, abort=True)

    async def drop_engine(self, eio_sid: str) -> None:
        """Close an Engine.IO session that has no Socket.IO socket (never sent CONNECT)."""
        socket = self.sio.eio.sockets.get(eio_sid)
        if not isinstance(socket, EngineSocket):
            return
        if socket.transport is not None:
            socket.end_websocket(1000, last_words=packet_frame(eio_packet.Packet(eio_packet.CLOSE)))
        else:
            await self._close_polling(socket)
            # engine.io forgets a closed polling session only at its next request,
            # and this client stopped asking.
            self.sio.eio.sockets.pop(eio_sid, None)

    # -- holding ---------------------------------------------------------------

    @property
    def holding(self) -> bool:
        """Does any socket of this node hold its events?"""
        return bool(self.registry.holders)

    def hold(self, namespace: str, target: str, event: str, data: Any, event_id: str | None = None) -> list[str]:
        """Keep ``event`` for every holding socket the emit targets; return their sids."""
        members = self._manager.rooms.get(namespace, {}).get(target, {})
        held = [sid for sid in self.registry.holders if sid in members]
        for sid in held:
            conn = self.registry.get(sid)
            if conn is None:
                continue
            conn.held.append(Held(event, data, target if event_id is not None else None, event_id))
            overflow = len(conn.held) - self._max_held
            if overflow > 0:  # the oldest go, and the client is told how many
                del conn.held[:overflow]
                conn.dropped += overflow
                self._metrics.held_events_dropped.inc(overflow)
        return held

    def start_holding(self, conn: Conn) -> None:
        conn.holding = True
        self.registry.holders.add(conn.sid)

    async def release(self, conn: Conn) -> None:
        """Deliver a holding socket's events in order, then stop holding (unless it
        awaits re-authentication). Events arriving meanwhile join the queue's
        end, so none overtakes an older one."""
        if conn.awaiting_reauth:
            return
        while conn.held and self.is_current(conn):
            await self.deliver_held(conn, conn.held.pop(0))  # straight to the socket: never held again
        conn.holding = False
        self.registry.holders.discard(conn.sid)

    # -- raw session sockets ---------------------------------------------------------

    async def add_raw(self, room: str, raw: RawSocket) -> None:
        """Count ``raw`` among ``room``'s members (as ``join`` does a Socket.IO socket)."""
        self.raw.setdefault(room, {})[raw.id] = raw
        self._manager.retain(room)
        try:
            await self._manager.ready(room)
        except BaseException:
            self.remove_raw(room, raw)
            raise

    def remove_raw(self, room: str, raw: RawSocket) -> None:
        members = self.raw.get(room)
        if members is not None and members.pop(raw.id, None) is not None:
            self._manager.release(room)
            if not members:
                del self.raw[room]
