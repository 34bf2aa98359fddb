"""python-socketio's client managers, with the gateway's local delivery.

``LocalFanout`` is the one place every local delivery passes through
(python-socketio's ``AsyncManager.emit``, which ``AsyncPubSubManager`` calls
both for emits made on this node and for those arriving from Redis). There an
event is encoded once and written to each recipient (``EngineSocket.deliver``),
session events also go to this node's raw WebSockets, internal control
messages (``_tg:*``) are acted on instead of being delivered, and events for
sockets that hold their events (re-authentication) are kept for them.
With the redis engine the manager is ``ClusterManager``, python-socketio's
``AsyncRedisManager`` on its default channel, so any write-only manager
(``gateway.emitter``) can publish too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import orjson
import socketio
from engineio import packet as eio_packet

from gateway.errors import StoreUnavailable
from gateway.realtime.engine import EngineSocket, frame
from gateway.realtime.names import CONTROL_CLOSE, NAMESPACE, RAW_EVENTS, UNHELD_EVENTS

if TYPE_CHECKING:
    from gateway.realtime.node import Realtime

logger = logging.getLogger(__name__)

LISTEN_RETRY_MAX = 5.0


class LocalFanout(socketio.AsyncManager):  # type: ignore[misc]
    """The local delivery step of every emit.

    **Encode once, write many.** python-socketio encodes a broadcast once but
    then starts one task per recipient (each through engine.io's queue and the
    socket's writer task). Here the packet's WebSocket frame is built once and
    each recipient gets a write (``EngineSocket.deliver``: long-polling
    recipients get the packet queued). Per-socket order holds: deliveries to a
    socket happen in the order of the emits, each written whole.

    It also keeps, beside python-socketio's ``rooms`` (room -> members), the
    reverse index (member -> rooms): python-socketio finds a socket's rooms by
    testing every room of the namespace, so each disconnect cost O(all rooms)
    and a node with 1000 sockets (each with its own sid room) spent half a
    second of a drain only finding rooms.

    ``emit``, ``basic_enter_room``, ``basic_leave_room``, ``basic_disconnect``
    and ``get_rooms`` are python-socketio's own template methods (pinned in
    setup.cfg; see tests/test_realtime_overrides.py).
    """

    realtime: Realtime | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rooms_of: dict[tuple[str, str], set[str | None]] = {}

    # -- rooms ----------------------------------------------------------------

    def basic_enter_room(self, sid: str, namespace: str, room: str | None, eio_sid: str | None = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._rooms_of.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: str | None) -> None:
        super().basic_leave_room(sid, namespace, room)
        rooms = self._rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._rooms_of[(namespace, sid)]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        # python-socketio's own version copies and scans every room of the
        # namespace; the rest of its bookkeeping is the same as here.
        for room in list(self._rooms_of.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            sids = pending.get(namespace)
            if sids is not None and sid in sids:
                sids.remove(sid)
                if not sids:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[str]:
        return [room for room in self._rooms_of.get((namespace, sid), ()) if room is not None]

    # -- delivery -----------------------------------------------------------------

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: str | None = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: str | None = None,
        **kwargs: Any,
    ) -> None:
        namespace = namespace or NAMESPACE
        realtime = self.realtime
        if event == CONTROL_CLOSE and realtime is not None:
            await realtime.apply_close(data)
            return
        target = to or room
        skip = {skip_sid} if isinstance(skip_sid, str) else set(skip_sid or ())
        if realtime is not None and realtime.holding and target is not None and event not in UNHELD_EVENTS:
            skip.update(realtime.hold(namespace, target, event, data))  # they get it later, in order
        if callback is not None or target is None:
            # Acks, and emits to a whole namespace: never the gateway's; python-socketio's way.
            await super().emit(event, data, namespace, room=target, skip_sid=list(skip), callback=callback)
        elif not self.deliver(namespace, target, [event, *arguments(data)], skip):
            await super().emit(event, data, namespace, room=target, skip_sid=list(skip))
        if event in RAW_EVENTS and realtime is not None and target is not None:
            await realtime.deliver_raw(target, event, data)

    def deliver(self, namespace: str, room: str, data: list[Any], skip: Collection[str] = ()) -> bool:
        """Write an EVENT (``data``: its name and arguments) to every local member of
        ``room`` at once; False (nothing done) for one that python-socketio must
        send itself (binary attachments)."""
        members = self.rooms.get(namespace, {}).get(room)
        if not members:
            return True
        encoded = encode_event(namespace, data)
        if encoded is None:
            return False
        pkt = eio_packet.Packet(eio_packet.MESSAGE, encoded)
        wire = frame(pkt.encode())
        sockets = self.server.eio.sockets
        for sid, eio_sid in list(members.items()):
            if sid not in skip:
                socket = sockets.get(eio_sid)
                if isinstance(socket, EngineSocket):
                    socket.deliver(wire, pkt)
        return True


def encode_event(namespace: str, data: list[Any]) -> str | None:
    """A Socket.IO EVENT packet (``2[...]``, or ``2/ns,[...]``) as python-socketio
    writes it, without its Packet object: that one also walks the data for
    binary parts, and took 16 µs where this takes under 1. None for what orjson
    cannot write (bytes: a binary event, which python-socketio sends itself)."""
    try:
        body = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return None
    return f"2{body}" if namespace == NAMESPACE else f"2{namespace},{body}"


def arguments(data: Any) -> list[Any]:
    """python-socketio's convention: a tuple is several arguments, None none, else one."""
    if isinstance(data, tuple):
        return list(data)
    return [] if data is None else [data]


# Local deliveries of an emit that is being published, kept back until the
# publish has gone out (a context variable: the Redis listener's task, which
# delivers other nodes' emits, never sees it set).
_held_back: ContextVar[list[Any] | None] = ContextVar("ticketgate_held_back", default=None)


class ClusterManager(socketio.AsyncRedisManager, LocalFanout):  # type: ignore[misc]
    """AsyncRedisManager whose local deliveries go through LocalFanout, with
    two changes for a cluster that must not lose or duplicate events:

    * an emit is published to Redis *before* it is delivered on this node, and
      a failed publish raises StoreUnavailable: the caller (``POST
      /api/publish`` answers 503) knows the event reached no socket at all, so
      a retry duplicates nothing;
    * the listener retries a lost Redis connection with a wait capped at
      LISTEN_RETRY_MAX (python-socketio's grows to 60 s: a node could stay deaf
      to the cluster for a minute after Redis returned), closing the old
      connection first.
    """

    stopping = False  # set by Realtime.stop: the listener ends instead of retrying

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: str | None = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: str | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("ignore_queue"):
            await super().emit(
                event, data, namespace=namespace, room=room, skip_sid=skip_sid, callback=callback, to=to, **kwargs
            )
            return
        held_back: list[Any] = []
        token = _held_back.set(held_back)
        try:  # the parent delivers locally (kept back below), then publishes
            await super().emit(
                event, data, namespace=namespace, room=room, skip_sid=skip_sid, callback=callback, to=to, **kwargs
            )
        finally:
            _held_back.reset(token)
        for message in held_back:
            await super()._handle_emit(message)

    async def _handle_emit(self, message: Any) -> None:
        held_back = _held_back.get()
        if held_back is not None:
            held_back.append(message)
            return
        await super()._handle_emit(message)

    async def _publish(self, data: Any) -> Any:
        result = await super()._publish(data)
        if result is None:  # the parent gave up after its retry
            raise StoreUnavailable("cannot publish to redis")
        return result

    async def _redis_listen_with_retries(self) -> Any:
        delay = 0.5
        subscribed = False
        while True:
            try:
                if not subscribed:
                    await self._close_connections()
                    self._redis_connect()
                    await self.pubsub.subscribe(self.channel)
                    subscribed = True
                    delay = 0.5
                async for message in self.pubsub.listen():
                    yield message
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.stopping:  # the cancel was lost in redis-py's read: end as cancelled
                    raise asyncio.CancelledError from exc
                logger.warning("fan-out listener lost Redis (%s); retrying in %.1fs", type(exc).__name__, delay)
                subscribed = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, LISTEN_RETRY_MAX)

    async def _close_connections(self) -> None:
        for client in (self.pubsub, self.redis):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
