"""The places where gateway/realtime/ overrides python-socketio or python-engineio
internals. setup.cfg pins both libraries to the tested range; these tests fail
loudly when an upgrade changes what is overridden, before anything subtler breaks."""

from __future__ import annotations

import inspect
import json
from importlib.metadata import version

import aiohttp
import engineio
import socketio
from engineio import base_server as eio_base_server
from engineio.async_drivers import aiohttp as aiohttp_driver
from engineio.async_socket import AsyncSocket
from socketio import base_server as sio_base_server
from socketio.base_manager import BaseManager

from gateway.config import load_config
from gateway.realtime import create_server
from gateway.realtime.engine import EngineServer, WebSocketDriver, _translate_request
from gateway.realtime.managers import LocalFanout
from tests.conftest import Gateway


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_the_overridden_manager_methods_keep_their_shape() -> None:
    assert parameters(BaseManager.basic_enter_room) == ["self", "sid", "namespace", "room", "eio_sid"]
    assert parameters(BaseManager.basic_leave_room) == ["self", "sid", "namespace", "room"]
    assert parameters(BaseManager.basic_disconnect) == ["self", "sid", "namespace", "kwargs"]
    assert parameters(BaseManager.get_rooms) == ["self", "sid", "namespace"]
    # basic_disconnect's own bookkeeping, which LocalFanout does without the room scan.
    source = inspect.getsource(BaseManager.basic_disconnect)
    for name in ("self.callbacks", "self.pending_connect", "self.pending_disconnect", "basic_leave_room"):
        assert name in source, name
    manager = BaseManager()
    assert {"rooms", "callbacks", "pending_connect", "pending_disconnect"} <= vars(manager).keys()


def test_the_overridden_server_handlers_keep_their_shape() -> None:
    from socketio import AsyncServer

    assert parameters(AsyncServer._handle_eio_connect) == ["self", "eio_sid", "environ"]
    assert parameters(AsyncServer._handle_eio_disconnect) == ["self", "eio_sid", "reason"]
    # The CONNECT packet of an accepted socket goes through _send_packet as {"sid": ...}.
    assert parameters(AsyncServer._send_packet) == ["self", "eio_sid", "pkt"]
    assert "packet.CONNECT, {'sid': sid}" in inspect.getsource(AsyncServer._handle_connect)
    # python-socketio registers them as engine.io's connect/disconnect handlers,
    # and engine.io refuses a handshake whose connect handler returns False.
    from socketio.base_server import BaseServer

    registration = inspect.getsource(BaseServer.__init__)
    assert "self.eio.on('connect', self._handle_eio_connect)" in registration
    assert "self.eio.on('disconnect', self._handle_eio_disconnect)" in registration
    from engineio import AsyncServer as EngineServer

    assert "ret is not None and ret is not True" in inspect.getsource(EngineServer._handle_connect)


def test_the_room_index_agrees_with_python_socketios_rooms() -> None:
    manager = LocalFanout()
    for eio_sid, sid in (("e1", "s1"), ("e2", "s2")):
        manager.basic_enter_room(sid, "/", None, eio_sid=eio_sid)
        manager.basic_enter_room(sid, "/", sid, eio_sid=eio_sid)
    for sid, room in (("s1", "user:a"), ("s1", "room:x"), ("s2", "room:x")):
        manager.basic_enter_room(sid, "/", room)
    manager.callbacks["s1"] = {0: iter(())}
    manager.pending_disconnect["/"] = ["s1"]

    def scanned(sid: str) -> set[str]:  # python-socketio's own way: test every room
        return {name for name, members in manager.rooms["/"].items() if name is not None and sid in members}

    assert set(manager.get_rooms("s1", "/")) == scanned("s1") == {"s1", "user:a", "room:x"}
    manager.basic_leave_room("s1", "/", "user:a")
    assert set(manager.get_rooms("s1", "/")) == scanned("s1") == {"s1", "room:x"}
    manager.basic_disconnect("s1", "/")
    assert manager.get_rooms("s1", "/") == [] and scanned("s1") == set()
    assert "s1" not in manager.callbacks and "/" not in manager.pending_disconnect
    assert set(manager.get_rooms("s2", "/")) == scanned("s2") == {"s2", "room:x"}
    assert [sid for sid, _ in manager.get_participants("/", "room:x")] == ["s2"]


def test_the_replaced_websocket_driver_keeps_its_shape() -> None:
    assert parameters(aiohttp_driver.WebSocket.__init__) == ["self", "handler", "server"]
    assert parameters(aiohttp_driver.WebSocket.__call__) == ["self", "environ"]
    source = inspect.getsource(aiohttp_driver.WebSocket)
    for name in ("self._sock", "self.environ", "await self.handler(self)"):
        assert name in source, name
    assert "websocket" in aiohttp_driver._async


def test_the_engineio_server_hooks_keep_their_shape() -> None:
    # python-socketio builds its Engine.IO server through this hook.
    assert "self._engineio_server_class()(**engineio_options)" in inspect.getsource(sio_base_server.BaseServer.__init__)
    assert parameters(socketio.AsyncServer._engineio_server_class) == ["self"]
    # disconnect: replaced whole; it closes a socket and forgets it.
    assert parameters(engineio.AsyncServer.disconnect) == ["self", "sid"]
    assert parameters(AsyncSocket.close) == ["self", "wait", "abort", "reason"]
    # handle_request: wrapped; the POST path it runs, and where it disconnects.
    assert parameters(engineio.AsyncServer.handle_request) == ["self", "args", "kwargs"]
    handling = inspect.getsource(engineio.AsyncServer.handle_request)
    for line in (
        "translate_request = self._async['translate_request']",
        "inspect.iscoroutinefunction(translate_request)",
        "socket = self._get_socket(sid)",
        "await socket.handle_post_request(environ)",
        "await self.disconnect(sid)",
    ):
        assert line in handling, line
    # A closed socket still in `sockets` makes _get_socket raise (the POST path's 500).
    assert "if s.closed:" in inspect.getsource(eio_base_server.BaseServer._get_socket)
    # The POST body: one read of CONTENT_LENGTH bytes from wsgi.input, refused past the limit first.
    posting = inspect.getsource(AsyncSocket.handle_post_request)
    for line in ("length > self.server.max_http_buffer_size", "await environ['wsgi.input'].read(length)"):
        assert line in posting, line
    assert "translate_request" in aiohttp_driver._async
    server = engineio.AsyncServer(async_mode="aiohttp")
    assert {"sockets", "max_http_buffer_size", "_async"} <= vars(server).keys()
    assert server.reason.SERVER_DISCONNECT


def test_the_server_is_built_on_the_gateways_engineio_server() -> None:
    sio = create_server(load_config(environ={}), cors=lambda origin, environ: True)
    assert isinstance(sio.eio, EngineServer)
    assert sio.eio._async["websocket"] is WebSocketDriver
    assert sio.eio._async["translate_request"] is _translate_request
    assert sio.eio.max_http_buffer_size == 64 * 1024


async def test_websockets_are_not_compressed(gateway: Gateway) -> None:
    """A client offering permessage-deflate (node's ws does) gets plain frames."""
    url = f"{gateway.url}/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as session, session.ws_connect(url, compress=15) as ws:
        assert "Sec-WebSocket-Extensions" not in ws._response.headers
        assert ws.compress == 0
        opening = await ws.receive_str(timeout=5)
        assert opening.startswith("0{")


def test_the_libraries_are_the_pinned_range() -> None:
    """setup.cfg pins what these tests were written against; an upgrade starts here."""
    assert version("python-socketio").startswith("5.18."), version("python-socketio")
    assert version("python-engineio").startswith("4.15."), version("python-engineio")


def test_the_engine_socket_overrides_keep_their_shape() -> None:
    """gateway/realtime/engine.py: EngineSocket and EngineServer against python-engineio."""
    from engineio.base_socket import BaseSocket

    # BaseSocket.__init__: the attributes EngineSocket relies on, its queue from create_queue().
    init = inspect.getsource(BaseSocket.__init__)
    for name in ("self.queue = self.server.create_queue()", "self.last_ping = time.time()", "self.upgraded = False"):
        assert name in init, name
    for method, params in (
        (AsyncSocket.send, ["self", "pkt"]),
        (AsyncSocket.poll, ["self"]),
        (AsyncSocket.close, ["self", "wait", "abort", "reason"]),
        (AsyncSocket.schedule_ping, ["self"]),
        (AsyncSocket._websocket_handler, ["self", "ws"]),
        (AsyncSocket.receive, ["self", "pkt"]),
    ):
        assert parameters(method) == params, method
    # receive(): a PONG schedules the next ping, a CLOSE closes; the WebSocket driver gets the handler.
    receiving = inspect.getsource(AsyncSocket.receive)
    assert "self.schedule_ping()" in receiving and "await self.close(" in receiving
    assert "self.server._async['websocket'](" in inspect.getsource(AsyncSocket._upgrade_websocket)
    assert "self._websocket_handler, self.server)" in inspect.getsource(AsyncSocket._upgrade_websocket)
    # close(): disconnect handlers, the CLOSE packet through send(), then closed.
    closing = inspect.getsource(AsyncSocket.close)
    for line in ("await self.send(packet.Packet(packet.CLOSE))", "self.closed = True", "await self.queue.join()"):
        assert line in closing, line
    # _handle_connect: replaced whole; the steps it takes, and the helpers it calls.
    assert parameters(engineio.AsyncServer._handle_connect) == ["self", "environ", "transport", "jsonp_index"]
    connecting = inspect.getsource(engineio.AsyncServer._handle_connect)
    for line in (
        "await self._trigger_event('connect', sid, environ,",
        "s.schedule_ping()",
        "self._upgrades(sid, transport)",
        "self.ping_interval_grace_period",
        "return self._unauthorized(ret or None)",
    ):
        assert line in connecting, line
    assert "packet.Packet.json.dumps(message)" in inspect.getsource(eio_base_server.BaseServer._bad_request)
    assert parameters(engineio.AsyncServer._make_response) == ["self", "response_dict", "environ"]
    assert parameters(engineio.AsyncServer.create_queue) == ["self", "args", "kwargs"]
    server = engineio.AsyncServer(async_mode="aiohttp")
    assert {"start_service_task", "ping_interval", "ping_timeout", "ping_interval_grace_period"} <= vars(server).keys()


def test_python_socketio_encodes_an_event_as_the_fast_path_does() -> None:
    """LocalFanout writes EVENT packets itself (managers.encode_event): the same packet."""
    from socketio import packet

    from gateway.realtime.managers import encode_event

    data = ["note", {"n": 1, "text": "héllo"}, [1, 2]]
    for namespace, prefix in (("/", "2"), ("/admin", "2/admin,")):
        theirs = socketio.packet.Packet(packet.EVENT, namespace=namespace, data=data).encode()
        ours = encode_event(namespace, data)
        assert ours is not None and theirs.startswith(prefix) and ours.startswith(prefix)
        assert json.loads(ours[len(prefix) :]) == json.loads(theirs[len(prefix) :]) == data
    assert encode_event("/", ["bin", b"\x00"]) is None  # binary: python-socketio's way
