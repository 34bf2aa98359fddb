"""The Engine.IO layer: python-engineio's server, with sessions whose WebSocket
is written directly.

python-engineio gives every session an ``asyncio.Queue`` drained by a writer
task, reads each WebSocket message through a fresh task under ``wait_for``,
and runs a task per ping cycle; python-socketio then sends a broadcast
through one more task per recipient. Here, once a session is on a WebSocket,
a packet is encoded and written to the connection's transport at once
(``EngineSocket.send``), a broadcast writes one pre-built frame to each
recipient (``EngineSocket.deliver``: a write, nothing more), and the ping is
a timer handle. Why that is safe:

* **Order.** A write goes straight to the transport, which keeps bytes in
  order; packets queued before the WebSocket took over (the OPEN packet, or
  everything sent while a long-polling session upgrades) are flushed first,
  in order, with no await between the flush and the switch to direct writes.
* **Backpressure.** Nothing waits for a client to read. What the transport
  cannot send at once it buffers; past ``max_buffered`` bytes the session is
  a slow consumer and is closed (``on_slow_consumer``), so a client that
  stops reading costs at most that much memory.
* **Long-polling** sessions, and a session mid-upgrade, keep python-engineio's
  queue and its poll/POST handling unchanged.

Also here, for long-polling POSTs (python-engineio's ``disconnect`` waited for
a poll that a broken client never sends): see ``EngineServer``.

Overridden python-engineio internals (``AsyncSocket``'s ``send``, ``close``,
``schedule_ping``, ``_websocket_handler``; ``AsyncServer``'s
``_handle_connect``, ``disconnect``, ``handle_request``, the ``_async`` driver
table) are pinned to the tested range in setup.cfg, and
tests/test_realtime_overrides.py fails loudly when their shape changes.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

import engineio
from aiohttp import WSMsgType, web
from engineio import async_socket, exceptions
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as aiohttp_driver

from gateway.errors import PayloadTooLarge

logger = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 64 * 1024  # an Engine.IO message (WebSocket) or long-polling POST body


# -- WebSocket frames -------------------------------------------------------------

_TEXT, _BINARY, _CLOSE = 0x81, 0x82, 0x88  # FIN + opcode


def frame(payload: str | bytes) -> bytes:
    """One unmasked WebSocket frame (server to client) carrying ``payload``: text
    for ``str``, binary for ``bytes``. The same bytes go to every recipient."""
    if isinstance(payload, str):
        first, data = _TEXT, payload.encode()
    else:
        first, data = _BINARY, bytes(payload)
    size = len(data)
    if size < 126:
        header = struct.pack("!BB", first, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + data


def close_frame(code: int, reason: str = "") -> bytes:
    payload = struct.pack("!H", code) + reason.encode()[:123]
    return struct.pack("!BB", _CLOSE, len(payload)) + payload


def packet_frame(pkt: eio_packet.Packet) -> bytes:
    return frame(pkt.encode())


# -- sessions ---------------------------------------------------------------------


class EngineSocket(async_socket.AsyncSocket):  # type: ignore[misc]
    """One Engine.IO session. On a WebSocket, ``transport`` is set and packets are
    written to it directly; otherwise (long-polling, upgrading) they are queued."""

    # python-engineio's (BaseSocket.__init__), typed here.
    server: EngineServer
    sid: str
    last_ping: float | None
    connected: bool
    upgrading: bool
    upgraded: bool
    closing: bool
    closed: bool

    def __init__(self, server: EngineServer, sid: str, *, websocket: bool) -> None:
        self._queue: asyncio.Queue[Any] | None = None
        super().__init__(server, sid)
        # A session that starts on a WebSocket never polls: what is sent before
        # the WebSocket takes over (its OPEN packet) waits in a list, and it
        # never builds an asyncio.Queue (about 3 KB a session).
        self._early: list[eio_packet.Packet] | None = [] if websocket else None
        self.transport: asyncio.Transport | None = None
        self._ping: asyncio.TimerHandle | None = None
        self._queued_bytes = 0  # what waits in the queue for a long-polling client
        self.slow = False  # closed as a slow consumer

    @property
    def queue(self) -> asyncio.Queue[Any]:
        """python-engineio's queue of a long-polling session, built at first use."""
        if self._queue is None:
            self._queue = asyncio.Queue()
        return self._queue

    @queue.setter
    def queue(self, value: asyncio.Queue[Any] | None) -> None:
        self._queue = value  # BaseSocket.__init__ sets it from create_queue(): None

    # -- sending ------------------------------------------------------------

    async def send(self, pkt: eio_packet.Packet) -> None:
        if self.transport is not None:
            self.write(packet_frame(pkt))
            return
        if self.closed:
            return
        self._enqueue(pkt)

    def deliver(self, wire: bytes, pkt: eio_packet.Packet) -> None:
        """A broadcast's packet, already encoded (``wire`` is its frame): a write
        on a WebSocket, a queued packet for a long-polling client."""
        if self.transport is not None:
            self.write(wire)
        elif not self.closed and not self.slow:
            self._enqueue(pkt)

    def write(self, wire: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(wire)
        if transport.get_write_buffer_size() > self.server.max_buffered:
            self._slow_consumer()

    def _enqueue(self, pkt: eio_packet.Packet) -> None:
        if self._early is not None:
            self._early.append(pkt)
            return
        self.queue.put_nowait(pkt)
        if pkt.packet_type == eio_packet.MESSAGE:
            self._queued_bytes += len(pkt.data) if pkt.data is not None else 0
            if self._queued_bytes > self.server.max_buffered:
                self._slow_consumer()

    async def poll(self) -> list[eio_packet.Packet]:
        packets: list[eio_packet.Packet] = await super().poll()
        self._queued_bytes = 0
        return packets

    def _slow_consumer(self) -> None:
        if self.slow:
            return
        self.slow = True
        callback = self.server.on_slow_consumer
        if callback is not None:
            callback(self)

    # -- pings: one timer handle per session, no task ------------------------

    def schedule_ping(self) -> None:
        if self.last_ping:  # the previous cycle ended with a PONG (or this is the first)
            self.last_ping = None
            self._rearm(self.server.ping_interval, self._send_ping_now)

    def _rearm(self, delay: float, callback: Callable[[], None]) -> None:
        if self._ping is not None:
            self._ping.cancel()
        self._ping = asyncio.get_running_loop().call_later(delay, callback)

    def _send_ping_now(self) -> None:
        if self.closing or self.closed:
            return
        self.last_ping = time.time()
        ping = eio_packet.Packet(eio_packet.PING)
        if self.transport is not None:
            self.write(packet_frame(ping))
        else:
            self._enqueue(ping)
        self._rearm(self.server.ping_timeout, self._pong_overdue)

    def _pong_overdue(self) -> None:
        if self.last_ping and not (self.closing or self.closed):
            self.server.start_background_task(self.close, wait=False, reason=self.server.reason.PING_TIMEOUT)

    # -- closing ------------------------------------------------------------------

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        if self._ping is not None:
            self._ping.cancel()
            self._ping = None
        await super().close(wait=wait and self.transport is None, abort=abort, reason=reason)
        self.end_websocket(1000)

    def end_slow(self, last_words: bytes, code: int, reason: str, *, grace: float) -> None:
        """Let go of a slow consumer: nothing more is written or queued for it. On a
        WebSocket, ``last_words`` (a frame) and a close frame are written behind
        what it has not read, and the connection is cut after ``grace`` if they
        never drain; a long-polling session's queue is dropped and it is closed."""
        transport, self.transport = self.transport, None
        if transport is not None:
            if not transport.is_closing():
                transport.write(last_words + close_frame(code, reason))
                transport.close()
            asyncio.get_running_loop().call_later(grace, transport.abort)
            return
        self._early = None
        while self._queue is not None and not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
        self._queued_bytes = 0
        self.server.start_background_task(self.close, wait=False, abort=True)

    def end_websocket(self, code: int, reason: str = "", *, last_words: bytes = b"") -> None:
        """Write ``last_words`` (frames), a close frame, and close the connection
        (after what is buffered), in one write: the client sees its transport
        close at once, whatever it does."""
        transport, self.transport = self.transport, None
        if transport is not None and not transport.is_closing():
            transport.write(last_words + close_frame(code, reason))
            transport.close()

    # -- the WebSocket ------------------------------------------------------------

    async def _websocket_handler(self, ws: WebSocketDriver) -> None:
        """Run a session on its WebSocket: the upgrade handshake (for a session
        that began with long-polling), then read until the connection ends."""
        response = ws.response
        if self.connected:  # an upgrade from long-polling
            self.upgrading = True  # sends are queued until the switch
            if not await self._upgrade(response):
                self.upgrading = False
                return
            self.upgraded, self.upgrading = True, False
        else:
            self.connected = self.upgraded = True
        await self.run(response, ws.request.transport)

    async def run(self, response: web.WebSocketResponse, transport: asyncio.Transport | None) -> None:
        """The session on its WebSocket, until the connection ends: written directly, read here."""
        self._take_over(transport)
        try:
            await self._read(response)
        finally:
            self.transport = None
            await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)

    async def _upgrade(self, response: web.WebSocketResponse) -> bool:
        probe = await _next_packet(response)
        if probe is None or probe.packet_type != eio_packet.PING or probe.data != "probe":
            return False
        await response.send_str(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
        self.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # ends the pending poll
        upgrade = await _next_packet(response)
        return upgrade is not None and upgrade.packet_type == eio_packet.UPGRADE

    def _take_over(self, transport: asyncio.Transport | None) -> None:
        """From now on, write to the WebSocket: what is queued first, in order."""
        if transport is None:
            return
        early, self._early = self._early or [], None
        for pkt in early:
            transport.write(packet_frame(pkt))
        queue, self._queue = self._queue, None  # an upgraded session's, drained and dropped
        while queue is not None and not queue.empty():
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is not None:
                transport.write(packet_frame(pkt))
        self._queued_bytes = 0
        self.transport = transport

    async def _read(self, response: web.WebSocketResponse) -> None:
        while True:
            pkt = await _next_packet(response)
            if pkt is None:
                return
            try:
                await self.receive(pkt)
            except exceptions.UnknownPacketError:
                pass  # a no-op or a ping from a client: nothing to do
            except exceptions.SocketIsClosedError:
                return
            except Exception:
                logger.exception("error handling a packet of session %s", self.sid)
            # An idle socket would keep its last packet (its CONNECT: the credentials) alive.
            pkt = None


async def _next_packet(response: web.WebSocketResponse) -> eio_packet.Packet | None:
    """The next Engine.IO packet of a WebSocket; None once it ended (or sent garbage)."""
    message = await response.receive()
    if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
        return None
    try:
        return eio_packet.Packet(encoded_packet=message.data)
    except Exception:
        return None


class WebSocketDriver(aiohttp_driver.WebSocket):  # type: ignore[misc]
    """python-engineio's aiohttp WebSocket, without permessage-deflate, and without
    a reader of its own: the session reads (``EngineSocket._websocket_handler``).

    aiohttp offers compression to every client that asks (socket.io-client in
    node does): a zlib stream per socket, kept for its life, and a deflate of
    every frame. Node's socket.io server has it off by default, and so do we:
    Socket.IO messages are small, and a broadcast's frame is then the same
    bytes for every recipient.
    """

    response: web.WebSocketResponse
    request: web.Request

    async def __call__(self, environ: Mapping[str, Any]) -> web.WebSocketResponse:
        self.request = environ["aiohttp.request"]
        self.response = self._sock = web.WebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size, compress=False
        )
        await self.response.prepare(self.request)
        await self.handler(self)
        return self.response


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


class EngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio's server, with EngineSocket sessions, and long-polling POSTs made to end.

    * Sessions are EngineSockets (``_handle_connect``), which ping with a timer
      handle each, so python-engineio's service task (a sweep of every session
      for ping timeouts) is not started.
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
    * The WebSocket driver is WebSocketDriver and ``translate_request`` reads a
      POST's body whole (_translate_request).
    """

    def __init__(self, *args: Any, max_buffered: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_buffered = max_buffered
        self.on_slow_consumer: Callable[[EngineSocket], None] | None = None
        self.start_service_task = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._async: dict[str, Any] = {
            **self._async,
            "websocket": WebSocketDriver,
            "translate_request": _translate_request,
        }

    def start_background_task(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Task[Any]:
        """python-engineio's, keeping a reference until the task ends (asyncio keeps only a weak one)."""
        task: asyncio.Task[Any] = asyncio.ensure_future(target(*args, **kwargs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def create_queue(self, *args: Any, **kwargs: Any) -> None:
        """None: an EngineSocket builds its queue at first use (see EngineSocket.queue)."""
        return None

    async def _handle_connect(self, environ: Mapping[str, Any], transport: str, jsonp_index: int | None = None) -> Any:
        """A new session: python-engineio's steps, with an EngineSocket."""
        sid = self.generate_id()
        socket = EngineSocket(self, sid, websocket=transport == "websocket")
        self.sockets[sid] = socket
        await socket.send(eio_packet.Packet(eio_packet.OPEN, self._opening(sid, transport)))
        accepted = await self._trigger_event("connect", sid, environ, run_async=False)
        if accepted is not None and accepted is not True:
            del self.sockets[sid]
            return self._unauthorized(accepted or None)
        socket.schedule_ping()
        if transport == "websocket":
            response = await socket.handle_get_request(environ)
            if socket.closed:
                self.sockets.pop(sid, None)
            return response
        socket.connected = True
        try:
            return self._ok(await socket.poll(), jsonp_index=jsonp_index)
        except exceptions.QueueEmpty:
            return self._bad_request()

    async def disconnect(self, sid: str | None = None) -> None:
        for one in [sid] if sid is not None else list(self.sockets):
            socket = self.sockets.get(one)
            if socket is not None:
                await socket.close(wait=False, reason=self.reason.SERVER_DISCONNECT)
                self.sockets.pop(one, None)

    async def handle_request(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and "sid" not in request.query and request.query.get("transport") == "websocket":
            return await self._websocket_session(request)
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

    async def _websocket_session(self, request: web.Request) -> web.StreamResponse:
        """A session that starts on a WebSocket (socket.io-client with
        ``transports: ["websocket"]``, the common case behind a balancer), from
        its handshake to its end in this one coroutine.

        python-engineio's way through the same steps (``handle_request``,
        ``_handle_connect``, ``handle_get_request``, ``_upgrade_websocket``, the
        driver, ``_websocket_handler``) kept six more coroutine frames, each
        holding the handshake's environ, alive for the socket's whole life:
        memory per idle socket is measured against Node socket.io. The checks are
        python-engineio's (EIO version, Upgrade header), its answers too; the
        Origin was judged by the doors' middleware already. A session that
        starts with long-polling (and upgrades later) takes python-engineio's path.
        """
        if request.query.get("EIO") != "4":
            return await self._answer(self._bad_request("unsupported Engine.IO version"))
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return await self._answer(self._bad_request("Invalid websocket upgrade"))
        # The environ a Socket.IO connect handler reads (python-socketio keeps it per session).
        environ = {"QUERY_STRING": request.query_string, "aiohttp.request": request}
        sid = self.generate_id()
        socket = EngineSocket(self, sid, websocket=True)
        self.sockets[sid] = socket
        await socket.send(eio_packet.Packet(eio_packet.OPEN, self._opening(sid, "websocket")))
        accepted = await self._trigger_event("connect", sid, environ, run_async=False)
        del environ
        if accepted is not None and accepted is not True:
            del self.sockets[sid]
            return await self._answer(self._unauthorized(accepted or None))
        socket.schedule_ping()
        response = web.WebSocketResponse(max_msg_size=self.max_http_buffer_size, compress=False)
        try:
            await response.prepare(request)
            socket.connected = socket.upgraded = True
            await socket.run(response, request.transport)
        finally:
            self.sockets.pop(sid, None)
        return response

    async def _answer(self, answer: Mapping[str, Any]) -> web.StreamResponse:
        """One of python-engineio's answers (``_bad_request()``, ...) as a response."""
        response: web.StreamResponse = await self._make_response(answer, {})
        return response

    def _opening(self, sid: str, transport: str) -> dict[str, Any]:
        """The OPEN packet's data (python-engineio's)."""
        return {
            "sid": sid,
            "upgrades": self._upgrades(sid, transport),
            "pingTimeout": int(self.ping_timeout * 1000),
            "pingInterval": int(self.ping_interval + self.ping_interval_grace_period) * 1000,
            "maxPayload": self.max_http_buffer_size,
        }

    async def _refuse_oversized(self, sid: str | None) -> None:
        if sid is not None:
            await self.disconnect(sid)
        raise PayloadTooLarge(f"a long-polling payload may be at most {self.max_http_buffer_size} bytes")
