"""The Socket.IO server, its client manager, and the fan-out helpers.

One fan-out serves both transports. python-socketio's client manager is
subclassed at the one place every local delivery passes through
(``AsyncManager.emit``, which ``AsyncPubSubManager`` calls both for emits
made on this node and for those arriving from Redis): there, session events
are also written to this node's raw WebSockets, and internal control
messages (``_tg:*``) are acted on instead of being delivered. With the redis
engine the manager is python-socketio's ``AsyncRedisManager`` on its default
channel, so any write-only manager (``gateway.emitter``) can publish too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import engineio
import socketio
from aiohttp import web
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as aiohttp_driver
from socketio import packet as sio_packet

from gateway import closes
from gateway.closes import Close
from gateway.config import Config
from gateway.errors import PayloadTooLarge, StoreUnavailable
from gateway.scheduler import Scheduler

logger = logging.getLogger(__name__)

NAMESPACE = "/"
ROOM_PATTERN = re.compile(r"^(user|session|room):[^\s]{1,200}\Z")
# Event names socket.io-client reserves; emitting them would break clients.
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
CONTROL_PREFIX = "_tg:"  # the gateway's own control messages between nodes
# Events a raw (IDToken-style) session WebSocket receives as JSON text frames.
RAW_EVENTS = frozenset({"otp_ready", "approved", "rejected"})
# The gateway's own events about a socket's state: never held back.
UNHELD_EVENTS = frozenset({"closing", "authenticated", "auth_expiring", "reauth_required", "refresh_token"})
CONTROL_CLOSE = CONTROL_PREFIX + "close"
DRAIN_TIMEOUT = 2.0
POLL_FETCH_TIMEOUT = 0.5  # how long a draining node waits for a long-polling client's next poll
MAX_PAYLOAD_BYTES = 64 * 1024  # an Engine.IO message (WebSocket) or long-polling POST body


def is_reserved_event(name: str) -> bool:
    """Names nobody may publish: socket.io-client's own, and the gateway's control messages."""
    return name in RESERVED_EVENTS or name.startswith(CONTROL_PREFIX)


def user_room(sub: str) -> str:
    """Every socket of a user, on any node."""
    return f"user:{sub}"


class RawSocket(Protocol):
    """A plain WebSocket of an auth session, held by handlers/raw_ws.py."""

    id: str
    seq: int

    async def send_event(self, event: str, data: Any) -> None: ...

    async def close(self, close: Close) -> None: ...


class LocalFanout(socketio.AsyncManager):  # type: ignore[misc]
    """The local delivery step of every emit, extended to raw sockets and control messages.

    It also keeps, beside python-socketio's ``rooms`` (room -> members), the
    reverse index (member -> rooms): python-socketio finds a socket's rooms by
    testing every room of the namespace, so each disconnect cost O(all rooms)
    and a node with 1000 sockets (each with its own sid room) spent half a
    second of a drain only finding rooms. ``basic_enter_room``,
    ``basic_leave_room``, ``basic_disconnect`` and ``get_rooms`` are
    python-socketio's own template methods (pinned in setup.cfg; see
    tests/test_realtime_overrides.py).
    """

    realtime: Realtime | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rooms_of: dict[tuple[str, str], set[str | None]] = {}

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
        realtime = self.realtime
        if event == CONTROL_CLOSE and realtime is not None:
            await realtime.apply_close(data)
            return
        target = to or room
        if realtime is not None and realtime.holders and target is not None and event not in UNHELD_EVENTS:
            held = realtime.hold(namespace or NAMESPACE, target, event, data)
            if held:  # those sockets get it later, in order, from their hold buffer
                skip = [skip_sid] if isinstance(skip_sid, str) else list(skip_sid or [])
                skip_sid = skip + held
        await super().emit(
            event, data, namespace=namespace, room=room, skip_sid=skip_sid, callback=callback, to=to, **kwargs
        )
        if event in RAW_EVENTS and realtime is not None and target is not None:
            await realtime.deliver_raw(target, event, data)


# Local deliveries of an emit that is being published, kept back until the
# publish has gone out (a context variable: the Redis listener's task, which
# delivers other nodes' emits, never sees it set).
_held_back: ContextVar[list[Any] | None] = ContextVar("ticketgate_held_back", default=None)
LISTEN_RETRY_MAX = 5.0


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

    stopping = False  # set by Realtime.stop: the listener ends instead of retrying

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


class _UncompressedWebSocket(aiohttp_driver.WebSocket):  # type: ignore[misc]
    """python-engineio's aiohttp WebSocket, without permessage-deflate.

    aiohttp offers compression to every client that asks (socket.io-client in
    node does): a zlib stream per socket, kept for its life, and a deflate of
    every frame. Node's socket.io server has it off by default, and so do we:
    Socket.IO messages are small.
    """

    async def __call__(self, environ: Mapping[str, Any]) -> web.WebSocketResponse:
        request = environ["aiohttp.request"]
        self._sock = web.WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self._sock.prepare(request)
        self.environ = environ
        await self.handler(self)
        return self._sock


class _PolledBody:
    """A long-polling POST's body, read whole, where python-engineio reads ``wsgi.input``."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self, size: int = -1) -> bytes:
        # python-engineio reads once, CONTENT_LENGTH bytes (0 without the
        # header, i.e. a chunked body, which it then ignored): the whole body.
        return self._data


async def _translate_request(request: web.Request) -> dict[str, Any]:
    """python-engineio's aiohttp environ, with a POST's body already read.

    Its own ``wsgi.input`` was the request's stream, of which it read
    ``read(Content-Length)``: whatever had arrived, so a body split over two
    TCP segments lost its second half (the POST answered 200, the packets
    were garbled or lost). ``request.read()`` reads it whole, bounded by the
    app's 64 KB ``client_max_size`` (413) and by ``body_timeout`` (408).
    """
    environ: dict[str, Any] = aiohttp_driver.translate_request(request)
    if request.method == "POST":
        environ["wsgi.input"] = _PolledBody(await request.read())
    return environ


class _EngineIOServer(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio's server, with its long-polling POSTs made to end.

    * ``disconnect(sid)`` closes a session without waiting for its queue to be
      fetched. python-engineio waited (``close(wait=True)``) for a poll that a
      broken client never sends, and it disconnects from inside the POST that
      broke the protocol: a POST announcing more than the 64 KB payload limit,
      or holding a packet a client may not send (``6``, a no-op), was never
      answered, and each one kept its handler, its task and its session for
      good (1000 such POSTs of 70 kB held ~20 MB). A pending poll still gets
      the CLOSE packet at once; a later one gets 400 (session unknown).
    * A POST announcing more than ``max_http_buffer_size`` is answered 413
      before its body is read, its session closed.
    * A POST for a session already closed but not yet forgotten (by its
      client's CLOSE packet, a ping timeout, a drain) is answered 400 like any
      unknown session: python-engineio's POST path let ``_get_socket``'s
      KeyError through as a 500.
    * The WebSocket driver is _UncompressedWebSocket and ``translate_request``
      reads a POST's body whole (_translate_request).

    ``disconnect``, ``handle_request`` and the ``_async`` driver table are
    python-engineio's own (pinned in setup.cfg; see tests/test_realtime_overrides.py).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._async: dict[str, Any] = {
            **self._async,
            "websocket": _UncompressedWebSocket,
            "translate_request": _translate_request,
        }

    async def disconnect(self, sid: str | None = None) -> None:
        for one in [sid] if sid is not None else list(self.sockets):
            socket = self.sockets.get(one)
            if socket is not None:
                await socket.close(wait=False, reason=self.reason.SERVER_DISCONNECT)
                self.sockets.pop(one, None)

    async def handle_request(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            response: web.StreamResponse = await super().handle_request(request)
            return response
        sid = request.query.get("sid")
        if sid is not None and (known := self.sockets.get(sid)) is not None and known.closed:
            del self.sockets[sid]
        if request.content_length is not None and request.content_length > self.max_http_buffer_size:
            await self._refuse_oversized(sid)
        try:
            response = await super().handle_request(request)
        except web.HTTPRequestEntityTooLarge:  # a chunked body past the limit, from request.read()
            await self._refuse_oversized(sid)
        return response

    async def _refuse_oversized(self, sid: str | None) -> None:
        if sid is not None:
            await self.disconnect(sid)
        raise PayloadTooLarge(f"a long-polling payload may be at most {self.max_http_buffer_size} bytes")


EngineOpened = Callable[[str, Mapping[str, Any]], bool]


class Server(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server, on _EngineIOServer, telling the gateway when an
    Engine.IO session opens and ends, before and beside any Socket.IO socket on
    it: a session that never sends the Socket.IO CONNECT is still a client to
    count and to time out. ``_engineio_server_class`` (the class python-socketio
    builds its engine.io server from), ``_handle_eio_connect`` and
    ``_handle_eio_disconnect`` (its handlers of engine.io's events) are
    python-socketio's own (pinned; tests/test_realtime_overrides.py).
    """

    engine_opened: EngineOpened | None = None
    engine_closed: Callable[[str], None] | None = None

    def _engineio_server_class(self) -> type[engineio.AsyncServer]:
        return _EngineIOServer

    async def _handle_eio_connect(self, eio_sid: str, environ: Mapping[str, Any]) -> bool | None:
        await super()._handle_eio_connect(eio_sid, environ)
        if self.engine_opened is not None and not self.engine_opened(eio_sid, environ):
            self.environ.pop(eio_sid, None)
            return False  # engine.io refuses the handshake
        return None

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        await super()._handle_eio_disconnect(eio_sid, reason)
        if self.engine_closed is not None:
            self.engine_closed(eio_sid)


def create_server(config: Config, *, cors: Callable[[str | None, Mapping[str, Any]], bool]) -> Server:
    """The Socket.IO server; ``cors`` judges an Origin for engine.io (its CORS headers)."""
    manager = ClusterManager(config.redis_url, channel=config.redis_channel) if config.redis_url else LocalFanout()
    sio = Server(
        async_mode="aiohttp",
        client_manager=manager,
        # One socket's events run in order (a chat must not reorder messages);
        # other sockets are unaffected, each has its own reader task.
        async_handlers=False,
        cors_allowed_origins=cors,
        # A credential or a message never needs more; smaller frames are a DoS guard.
        max_http_buffer_size=MAX_PAYLOAD_BYTES,
        logger=False,
        engineio_logger=False,
    )
    return sio


@dataclass(kw_only=True)
class Conn:
    """What this node knows of one of its authenticated Socket.IO sockets."""

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
    held: list[tuple[str, Any]] = field(default_factory=list)
    dropped: int = 0  # held events dropped at the cap, not yet reported
    # client_event_rate (gateway/rate_limits.py): its token bucket, and its run of refusals
    event_tat: float = 0.0
    limited_since: float = 0.0
    limited_last: float = 0.0
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    warn_timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    refresh_timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def pending(self) -> bool:
        """Connected without credentials, waiting to ``authenticate``."""
        return self.via == "pending"


class Realtime:
    """This node's sockets, and every emit and close the gateway makes."""

    def __init__(self, *, sio: Server, scheduler: Scheduler, max_held: int, on_drop: Callable[[int], None]) -> None:
        self.sio = sio
        self.scheduler = scheduler
        self.conns: dict[str, Conn] = {}
        self.holders: set[str] = set()  # sids whose events are being held
        self._max_held = max_held
        self._on_drop = on_drop
        self.raw: dict[str, dict[str, RawSocket]] = {}
        self.draining = False
        manager = sio.manager
        if not isinstance(manager, LocalFanout):
            raise TypeError("the Socket.IO client manager must be a LocalFanout")
        manager.realtime = self

    async def start(self) -> None:
        # Start the Redis listener now rather than at the first connect, so a
        # node also serves cluster-wide requests before it has clients.
        if not self.sio.manager_initialized:
            self.sio.manager_initialized = True
            self.sio.manager.initialize()

    async def stop(self) -> None:
        manager = self.sio.manager
        thread = getattr(manager, "thread", None)
        if thread is not None:
            # Wait for the listener to end before its connections close: a cancel
            # that lands inside redis-py's read can surface as a connection error,
            # and a listener that retried then outlived the app.
            manager.stopping = True
            thread.cancel()
            await asyncio.wait([thread], timeout=5)
        await self.scheduler.close()
        await self.sio.shutdown()
        redis = getattr(manager, "redis", None)
        if redis is not None:
            await redis.aclose()

    # -- emits ---------------------------------------------------------------

    async def emit_local(self, sid: str, event: str, data: Any) -> None:
        """Emit to a socket of this node without a round trip through Redis."""
        await self.sio.emit(event, data, to=sid, ignore_queue=True)

    async def publish(self, room: str, event: str, data: Any) -> None:
        """Emit to ``room`` on every node; raise StoreUnavailable if the cluster can't be reached."""
        await self.sio.emit(event, data, room=room)

    async def deliver_raw(self, room: str, event: str, data: Any) -> None:
        for raw in list(self.raw.get(room, {}).values()):
            await raw.send_event(event, data)

    # -- closing -------------------------------------------------------------

    async def close_room(self, room: str, close: Close, *, older_than: int | None = None) -> None:
        """Send ``closing`` to, then close, every socket of ``room`` on every node
        (both transports); with ``older_than``, only connections numbered below it."""
        order = {"room": room, "code": close.code, "reason": close.reason, "olderThan": older_than}
        await self.sio.emit(CONTROL_CLOSE, order)

    async def apply_close(self, order: Mapping[str, Any]) -> None:
        """This node's part of a ``close_room``."""
        room, older_than = order["room"], order.get("olderThan")
        close = Close(order["code"], order["reason"])
        for sid, _ in list(self.sio.manager.get_participants(NAMESPACE, room)):
            conn = self.conns.get(sid)
            if older_than is None or (conn is not None and conn.seq < older_than):
                await self.close(sid, close)
        for raw in list(self.raw.get(room, {}).values()):
            if older_than is None or raw.seq < older_than:
                await raw.close(close)

    async def close(self, sid: str, close: Close) -> None:
        """``closing`` then a Socket.IO disconnect (the client will not reconnect by itself).

        python-socketio ignores a disconnect of a socket still in its connect
        handler; such a socket keeps the order and its connect is refused with it.
        """
        conn = self.conns.get(sid)
        if conn is not None:
            if conn.connecting:
                conn.close_order = conn.close_order or close
                return
            if conn.closed:
                return  # one `closing` per socket, even if several orders reach it
            conn.closed = True
        await self.emit_local(sid, "closing", close.payload())
        await self.sio.disconnect(sid, ignore_queue=True)

    async def going_away(self) -> int:
        """Refuse new connects, send ``closing`` 1001 to every local socket and
        drop its transport, so that clients reconnect (to another node)."""
        self.draining = True
        closing = self._encode("closing", closes.GOING_AWAY.payload())
        sids = list(self.conns)
        for sid in sids:
            eio_sid = self.sio.manager.eio_sid_from_sid(sid, NAMESPACE)
            if eio_sid is not None:
                await self.sio.eio.send_packet(eio_sid, closing)
        raws = [raw for room in self.raw.values() for raw in room.values()]
        # Concurrently: each close waits for its client's half of the handshake.
        await asyncio.gather(*(raw.close(closes.GOING_AWAY) for raw in raws), return_exceptions=True)
        await self._drop_transports()
        return len(sids) + len(raws)

    def _encode(self, event: str, data: Any) -> eio_packet.Packet:
        """An event as one Engine.IO packet, encoded once for any number of sockets."""
        pkt = self.sio.packet_class(sio_packet.EVENT, namespace=NAMESPACE, data=[event, data])
        return eio_packet.Packet(eio_packet.MESSAGE, pkt.encode())

    async def _drop_transports(self) -> None:
        """End every Engine.IO session with its transport, then give WebSocket
        clients up to DRAIN_TIMEOUT to complete the close handshake.

        An Engine.IO CLOSE packet is not enough: python-socketio's client honours
        it, but socket.io-client ignores it on a WebSocket (only its polling
        transport reads it) and stayed connected until the process exited. So
        an upgraded session gets the CLOSE packet and then engine.io's own
        end-of-queue mark (``None``): its writer stops and closes the WebSocket
        with a close frame, every client sees ``transport close`` at once and
        reconnects, and the session ends through its own handler (which runs
        the disconnect handlers there, after the client has been let go). A
        long-polling session is closed here and gets the CLOSE packet in its
        pending poll.

        Not engine.io's ``disconnect()``: it waits for each session's queue to
        drain, and a long-polling client can never fetch the CLOSE packet of a
        session already marked closed (its next poll gets a 400), so every
        polling client held the drain for the whole timeout.
        """
        eio = self.sio.eio
        polling = []
        for eio_socket in list(eio.sockets.values()):
            if eio_socket.upgraded:
                eio_socket.queue.put_nowait(eio_packet.Packet(eio_packet.CLOSE))
                eio_socket.queue.put_nowait(None)
            else:
                polling.append(self._close_polling(eio_socket))
        await asyncio.gather(*polling)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT
        # A WebSocket session leaves eio.sockets once its handler returns,
        # i.e. once the client has closed its end.
        while any(s.upgraded for s in eio.sockets.values()):
            if loop.time() >= deadline:
                logger.warning("some WebSocket clients did not close within %ss", DRAIN_TIMEOUT)
                break
            await asyncio.sleep(0.02)

    @staticmethod
    async def _close_polling(eio_socket: Any) -> None:
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
            await asyncio.wait_for(eio_socket.queue.join(), POLL_FETCH_TIMEOUT)
        eio_socket.queue.put_nowait(eio_packet.Packet(eio_packet.CLOSE))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(eio_socket.queue.join(), POLL_FETCH_TIMEOUT)
        await eio_socket.close(wait=False, abort=True)

    # -- holding ---------------------------------------------------------------

    def hold(self, namespace: str, target: str, event: str, data: Any) -> list[str]:
        """Keep ``event`` for every holding socket the emit targets; return their sids."""
        members = self.sio.manager.rooms.get(namespace, {}).get(target, {})
        held = [sid for sid in self.holders if sid in members]
        for sid in held:
            conn = self.conns[sid]
            conn.held.append((event, data))
            overflow = len(conn.held) - self._max_held
            if overflow > 0:  # the oldest go, and the client is told how many
                del conn.held[:overflow]
                conn.dropped += overflow
                self._on_drop(overflow)
        return held

    def start_holding(self, conn: Conn) -> None:
        conn.holding = True
        self.holders.add(conn.sid)

    async def release(self, conn: Conn) -> None:
        """Deliver a holding socket's events in order, then stop holding (unless it
        awaits re-authentication). Events arriving meanwhile join the queue's
        end, so none overtakes an older one."""
        if conn.awaiting_reauth:
            return
        while conn.held and conn.sid in self.conns:
            event, data = conn.held.pop(0)
            # Straight to the socket: past LocalFanout, which would hold it again.
            await socketio.AsyncManager.emit(self.sio.manager, event, data, NAMESPACE, room=conn.sid)
        conn.holding = False
        self.holders.discard(conn.sid)

    # -- registry ------------------------------------------------------------

    def register(self, conn: Conn) -> None:
        self.conns[conn.sid] = conn

    def get(self, sid: str) -> Conn | None:
        return self.conns.get(sid)

    def is_current(self, conn: Conn) -> bool:
        """Is ``conn`` still this node's socket (not gone, not replaced by a re-registration)?"""
        return self.conns.get(conn.sid) is conn

    def forget(self, sid: str) -> Conn | None:
        self.holders.discard(sid)
        return self.conns.pop(sid, None)

    async def join(self, sid: str, room: str) -> None:
        await self.sio.enter_room(sid, room)

    async def leave(self, sid: str, room: str) -> None:
        await self.sio.leave_room(sid, room)

    def rooms_of(self, sid: str) -> list[str]:
        return list(self.sio.rooms(sid))

    def eio_sid(self, sid: str) -> str | None:
        """The Engine.IO session a Socket.IO socket rides on."""
        eio_sid: str | None = self.sio.manager.eio_sid_from_sid(sid, NAMESPACE)
        return eio_sid

    async def drop_engine(self, eio_sid: str) -> None:
        """Close an Engine.IO session that has no Socket.IO socket (never sent CONNECT)."""
        eio_socket = self.sio.eio.sockets.get(eio_sid)
        if eio_socket is None:
            return
        if eio_socket.upgraded:
            eio_socket.queue.put_nowait(eio_packet.Packet(eio_packet.CLOSE))
            eio_socket.queue.put_nowait(None)  # the writer closes the WebSocket
        else:
            await self._close_polling(eio_socket)
            # engine.io forgets a closed polling session only at its next request,
            # and this client stopped asking.
            self.sio.eio.sockets.pop(eio_sid, None)

    def add_raw(self, room: str, raw: RawSocket) -> None:
        self.raw.setdefault(room, {})[raw.id] = raw

    def remove_raw(self, room: str, raw: RawSocket) -> None:
        members = self.raw.get(room)
        if members is not None:
            members.pop(raw.id, None)
            if not members:
                del self.raw[room]
