"""python-socketio's client managers, with the gateway's local delivery.

``LocalFanout`` is the one place every local delivery passes through
(python-socketio's ``AsyncManager.emit``, which ``AsyncPubSubManager`` calls
both for emits made on this node and for those arriving from Redis). There an
event is encoded once and written to each recipient (``EngineSocket.deliver``),
session events also go to this node's raw WebSockets, internal control
messages (``_tg:*``) are acted on instead of being delivered, and events for
sockets that hold their events (re-authentication) are kept for them.
With the redis engine the manager is ``RoutedManager``: python-socketio's
pub/sub manager on the ``Broker`` (gateway/realtime/broker.py), which sends a
room's events only to the nodes with members of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

import orjson
import socketio
from engineio import packet as eio_packet
from socketio.async_pubsub_manager import AsyncPubSubManager

from gateway.errors import StoreUnavailable
from gateway.realtime.broker import Broker
from gateway.realtime.engine import EngineSocket, frame
from gateway.realtime.history import MemoryHistory
from gateway.realtime.names import CONTROL_CLOSE, CONTROL_PREFIX, NAMESPACE, RAW_EVENTS, ROOM_PATTERN, UNHELD_EVENTS
from gateway.realtime.registry import SKIP
from gateway.redisconn import RedisTarget
from gateway.tasks import cancel_and_wait

if TYPE_CHECKING:
    from gateway.realtime.node import Realtime

logger = logging.getLogger(__name__)


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
    history: MemoryHistory | None = None  # the memory engine's, when recovery is on

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

    # What a routed manager needs to know of rooms held outside Socket.IO (raw
    # session WebSockets), and when a join is complete; one node needs neither.

    def retain(self, room: str) -> None:
        """Another local member of ``room`` that is no Socket.IO socket."""

    def release(self, room: str) -> None:
        """One such member less."""

    async def ready(self, room: str) -> None:
        """Return once an emit to ``room`` made from now on reaches this node's members."""

    async def start(self) -> None:
        """Start receiving from other nodes (after ``initialize``)."""

    async def close(self) -> None:
        """Stop receiving from other nodes and release their connections."""

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
        event_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Deliver an emit to this node's sockets. ``event_id``: the event's id in
        its room's history (recovery on); the memory engine gives it here."""
        namespace = namespace or NAMESPACE
        realtime = self.realtime
        if event == CONTROL_CLOSE and realtime is not None:
            await realtime.apply_close(data)
            return
        target = to or room
        if event_id is None and self.history is not None and callback is None and recordable(target, event):
            event_id = self.history.append(cast(str, target), event, arguments(data))
        skip = {skip_sid} if isinstance(skip_sid, str) else set(skip_sid or ())
        if realtime is not None and realtime.holding and target is not None and event not in UNHELD_EVENTS:
            skip.update(realtime.hold(namespace, target, event, data, event_id))  # they get it later, in order
        if callback is not None or target is None:
            # Acks, and emits to a whole namespace: never the gateway's; python-socketio's way.
            await super().emit(event, data, namespace, room=target, skip_sid=list(skip), callback=callback)
        elif not self.deliver(namespace, target, [event, *arguments(data)], skip, event_id=event_id):
            await super().emit(event, data, namespace, room=target, skip_sid=list(skip))
        if event in RAW_EVENTS and realtime is not None and target is not None:
            await realtime.deliver_raw(target, event, data)

    def deliver(
        self, namespace: str, room: str, data: list[Any], skip: Collection[str] = (), *, event_id: str | None = None
    ) -> bool:
        """Write an EVENT (``data``: its name and arguments) to every local member of
        ``room`` at once; False (nothing done) for one that python-socketio must
        send itself (binary attachments).

        With an ``event_id`` (recovery on) each recipient's copy ends with its
        own offset (``Conn.advance``): the packet is encoded once up to that
        last argument, and a socket that has the event already is skipped."""
        members = self.rooms.get(namespace, {}).get(room)
        if not members:
            return True
        encoded = encode_event(namespace, data)
        if encoded is None:
            return False
        pkt = eio_packet.Packet(eio_packet.MESSAGE, encoded)
        wire = frame(pkt.encode())
        sockets = self.server.eio.sockets
        conns = self.realtime.registry if self.realtime is not None and event_id is not None else None
        for sid, eio_sid in list(members.items()):
            if sid in skip:
                continue
            socket = sockets.get(eio_sid)
            if not isinstance(socket, EngineSocket):
                continue
            conn = conns.get(sid) if conns is not None else None
            offset = conn.advance(room, cast(str, event_id)) if conn is not None else None
            if offset is None:
                socket.deliver(wire, pkt)
            elif offset != SKIP:
                own = eio_packet.Packet(eio_packet.MESSAGE, with_offset(encoded, offset))
                socket.deliver(frame(own.encode()), own)
        return True


def recordable(room: str | None, event: str) -> bool:
    """Is this emit one that gets an id and a place in its room's history? An
    event to a gateway room, not a control message."""
    return routable(room) and not event.startswith(CONTROL_PREFIX)


def routable(room: str | None) -> bool:
    """Does ``room`` have a channel (and a history) of its own? The gateway's
    rooms do (``user:``, ``session:``, ``room:``); a socket's own room (its
    sid) and a whole namespace (None) go on the broadcast channel."""
    return room is not None and ROOM_PATTERN.match(room) is not None


def with_offset(encoded: str, offset: str) -> str:
    """An encoded EVENT packet with ``offset`` as its last argument (socket.io-client
    takes a trailing string argument as the offset to recover from)."""
    return f"{encoded[:-1]},{orjson.dumps(offset).decode()}]"


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
# publish has gone out (a context variable: the broker's listener, which
# delivers other nodes' emits, never sees it set).
_held_back: ContextVar[list[Any] | None] = ContextVar("ticketgate_held_back", default=None)
# Set while an emit publishes a message that this node, too, delivers only as it comes back from Redis.
_on_return: ContextVar[bool] = ContextVar("ticketgate_on_return", default=False)

CATCH_UP_ATTEMPTS = 5  # reads of what a room missed while its subscription was lost
RECEIVED_BACKLOG = 10_000  # messages received from Redis and not yet delivered (then the reader waits)


class RoutedManager(AsyncPubSubManager, LocalFanout):  # type: ignore[misc]
    """The redis engine's client manager: python-socketio's pub/sub manager
    whose messages go through the ``Broker`` (routed: a room's emits reach only
    the nodes with members of it), and whose local deliveries go through
    LocalFanout.

    * Joining a room retains its channel, leaving releases it (``basic_enter_room``,
      ``basic_leave_room``: every path in and out of a room passes there);
      ``ready`` waits until a room's subscription is confirmed.
    * An emit is published *before* it is delivered on this node, and a failed
      publish raises StoreUnavailable: the caller (``POST /api/publish``
      answers 503) knows the event reached no socket at all, so a retry
      duplicates nothing.
    * Messages are python-socketio's (JSON, with its ``host_id``), so a stock
      ``AsyncRedisManager(write_only=True)`` publishing on the broadcast
      channel is still understood (unrouted: every node receives it).
    """

    name = "ticketgate-routed"

    def __init__(
        self, target: RedisTarget, *, channel: str = "socketio", write_only: bool = False, keep: float = 0.0
    ) -> None:
        super().__init__(channel=channel, write_only=write_only)
        self.broker = Broker(
            target=target, base_channel=channel, on_message=self._received, on_resubscribed=self._catch_up
        )
        self.keep = keep  # seconds a room's events are kept in its history (recovery on); 0: no history
        # room -> id of the newest event of it this node delivered: after a lost
        # subscription the node reads what it missed from there (_catch_up).
        self.cursors: dict[str, str] = {}
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue(RECEIVED_BACKLOG)
        self.on_received: Callable[[], None] | None = None  # counts what Redis brought (metrics)

    # -- rooms and their channels -------------------------------------------------

    def basic_enter_room(self, sid: str, namespace: str, room: str | None, eio_sid: str | None = None) -> None:
        joined = routable(room) and sid not in self.rooms.get(namespace, {}).get(room, {})
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if joined:
            self.broker.retain(cast(str, room))

    def basic_leave_room(self, sid: str, namespace: str, room: str | None) -> None:
        left = routable(room) and sid in self.rooms.get(namespace, {}).get(room, {})
        super().basic_leave_room(sid, namespace, room)
        if left:
            self.release(cast(str, room))

    def retain(self, room: str) -> None:
        self.broker.retain(room)

    def release(self, room: str) -> None:
        if self.broker.release(room):
            self.cursors.pop(room, None)  # a later member starts from its own join

    async def ready(self, room: str) -> None:
        if routable(room):
            await self.broker.ready(room)

    # -- publishing ------------------------------------------------------------------

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: str | None = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: str | None = None,
        event_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        if event_id is not None:  # an event from the history: this node's delivery only
            await LocalFanout.emit(self, event, data, namespace, room, skip_sid, to=to, event_id=event_id)
            return
        if kwargs.get("ignore_queue"):
            await super().emit(
                event, data, namespace=namespace, room=room, skip_sid=skip_sid, callback=callback, to=to, **kwargs
            )
            return
        target = to or room
        if self.keep and callback is None and routable(target):
            if recordable(target, event):
                if await self._publish_recorded(event, data, namespace or NAMESPACE, cast(str, target), skip_sid):
                    return
            # Not recorded (a control message, binary data) but of the same room:
            # delivered here too only as it comes back, behind the room's recorded
            # events published before it (a close order must not overtake them).
            returning = _on_return.set(True)
            try:
                await super().emit(event, data, namespace=namespace, room=room, skip_sid=skip_sid, to=to, **kwargs)
            finally:
                _on_return.reset(returning)
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

    async def _publish_recorded(self, event: str, data: Any, namespace: str, room: str, skip_sid: Any) -> bool:
        """Publish an event that gets an id and a place in its room's history (one
        script: ``Broker.publish_recorded``). It is delivered on this node too as
        it comes back from Redis, not before: every node then delivers a room's
        events in the order of their ids, which offsets rely on. False (nothing
        done) for binary data, which is published unrecorded."""
        args = arguments(data)
        try:
            entry = orjson.dumps([event, *args], option=orjson.OPT_NON_STR_KEYS)
        except TypeError:
            return False
        message = {
            "method": "emit",
            "event": event,
            "data": args,
            "binary": False,
            "namespace": namespace,
            "room": room,
            "skip_sid": skip_sid,
            "callback": None,
            "host_id": "",  # not this node's: it handles its own recorded events as they come back
        }
        body = orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS)
        await self.broker.publish_recorded(room, body[:-1] + b',"id":"', b'"}', entry, keep=self.keep)
        return True

    async def _handle_emit(self, message: Any) -> None:
        if _on_return.get():
            return  # this node handles it as it comes back (its host_id is cleared in _publish)
        held_back = _held_back.get()
        if held_back is not None:
            held_back.append(message)
            return
        event_id, room = message.get("id"), message.get("room")
        if isinstance(event_id, str) and isinstance(room, str):
            await self._deliver_recorded(room, event_id, message["event"], message["data"], message.get("skip_sid"))
            return
        await super()._handle_emit(message)

    async def _deliver_recorded(self, room: str, event_id: str, event: str, args: list[Any], skip_sid: Any) -> None:
        if self.broker.retained(room):
            self.cursors[room] = event_id
        data = args[0] if len(args) == 1 else tuple(args)  # python-socketio's convention
        await LocalFanout.emit(self, event, data, room=room, skip_sid=skip_sid, event_id=event_id)

    async def _catch_up(self, room: str) -> None:
        """Room ``room``'s subscription came back after it was lost: deliver from
        its history what was published meanwhile (sockets skip what they have)."""
        cursor = self.cursors.get(room)
        if cursor is None or not self.keep:
            return
        for attempt in range(CATCH_UP_ATTEMPTS):
            try:
                entries = await self.broker.since(room, cursor, exact=False)
                break
            except StoreUnavailable:
                await asyncio.sleep(0.5 * (attempt + 1))  # the subscriber is back: Redis is coming back
        else:
            logger.warning("fan-out: could not read what room %s missed; its sockets may lack events", room)
            return
        if entries is None:
            logger.warning("fan-out: room %s missed more events than can be replayed", room)
            return
        for entry in entries:
            await self._deliver_recorded(room, entry.id, entry.event, entry.args, None)

    async def _publish(self, data: Any) -> None:
        if _on_return.get():
            data = {**data, "host_id": ""}  # not this node's: it takes it from Redis like the others
        room = data.get("room") if data.get("method") == "emit" else None
        payload = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
        await self.broker.publish(room if routable(room) else None, payload)

    # -- receiving ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.broker.start()

    async def _received(self, payload: bytes) -> None:
        if self.on_received is not None:
            self.on_received()
        await self._inbox.put(payload)  # a full inbox makes the broker's reader wait

    async def _listen(self) -> Any:
        while True:
            payload = await self._inbox.get()
            try:
                yield orjson.loads(payload)
            except orjson.JSONDecodeError:
                logger.warning("fan-out: dropped a message that is not JSON (%d bytes)", len(payload))

    async def close(self) -> None:
        await cancel_and_wait(getattr(self, "thread", None))
        await self.broker.stop()
