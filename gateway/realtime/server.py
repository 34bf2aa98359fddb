"""The Socket.IO server: python-socketio's, on the gateway's Engine.IO server,
with orjson for every packet and a hook for Engine.IO sessions."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import engineio
import orjson
import socketio
from socketio import packet as socketio_packet

from gateway.config import Config
from gateway.realtime.engine import MAX_PAYLOAD_BYTES, EngineServer
from gateway.realtime.history import HISTORY_MARGIN, MemoryHistory
from gateway.realtime.managers import LocalFanout, RoutedManager

EngineOpened = Callable[[str, Mapping[str, Any]], bool]
# What a Socket.IO connect handler reads of the handshake's environ; the rest
# (every header, once more) is not kept for the session's life.
_ENVIRON_KEPT = ("QUERY_STRING", "aiohttp.request")


class Json:
    """orjson behind the face of the ``json`` module, which python-socketio and
    python-engineio call for every packet (``dumps(obj, separators=...)``,
    ``loads(text)``): several times faster, compact by itself. What orjson
    refuses (an int past 64 bits, a lone surrogate) falls back to the json module."""

    @staticmethod
    def dumps(obj: Any, **_: Any) -> str:
        try:
            return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:
            return json.dumps(obj, separators=(",", ":"))

    @staticmethod
    def loads(text: str | bytes, **_: Any) -> Any:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            # What orjson refuses and JSON allows (a lone surrogate, "\ud800"),
            # the json module reads, so the doors can refuse it with the
            # documented error instead of the packet vanishing unanswered.
            return json.loads(text)


class Server(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server, on EngineServer, telling the gateway when an
    Engine.IO session opens and ends, before and beside any Socket.IO socket on
    it: a session that never sends the Socket.IO CONNECT is still a client to
    count and to time out. ``_engineio_server_class`` (the class python-socketio
    builds its engine.io server from), ``_handle_eio_connect`` and
    ``_handle_eio_disconnect`` (its handlers of engine.io's events) and
    ``_send_packet`` (through which its CONNECT packet goes: ``connect_data``
    adds the recovery pid) are python-socketio's own (pinned;
    tests/test_realtime_overrides.py).
    """

    eio: EngineServer
    engine_opened: EngineOpened | None = None
    engine_closed: Callable[[str], None] | None = None
    # What a CONNECT packet tells the client beside its sid (its recovery pid).
    connect_data: Callable[[str], Mapping[str, Any]] | None = None

    def _engineio_server_class(self) -> type[engineio.AsyncServer]:
        return EngineServer

    async def _handle_eio_connect(self, eio_sid: str, environ: Mapping[str, Any]) -> bool | None:
        await super()._handle_eio_connect(eio_sid, environ)
        if self.engine_opened is not None and not self.engine_opened(eio_sid, environ):
            self.environ.pop(eio_sid, None)
            return False  # engine.io refuses the handshake
        self.environ[eio_sid] = {key: environ[key] for key in _ENVIRON_KEPT if key in environ}
        return None

    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        data = pkt.data
        if pkt.packet_type == socketio_packet.CONNECT and isinstance(data, dict) and self.connect_data is not None:
            data.update(self.connect_data(data.get("sid", "")))
        await super()._send_packet(eio_sid, pkt)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        await super()._handle_eio_disconnect(eio_sid, reason)
        if self.engine_closed is not None:
            self.engine_closed(eio_sid)


def create_server(config: Config, *, cors: Callable[[str | None, Mapping[str, Any]], bool]) -> Server:
    """The Socket.IO server; ``cors`` judges an Origin for engine.io (its CORS headers)."""
    redis = config.redis
    keep = config.recovery_window + HISTORY_MARGIN if config.recovery_window > 0 else 0.0
    manager: LocalFanout
    if redis is not None:
        manager = RoutedManager(redis, channel=config.redis_channel, keep=keep)
    else:
        manager = LocalFanout()
        manager.history = MemoryHistory(keep=keep) if keep else None
    return Server(
        async_mode="aiohttp",
        client_manager=manager,
        json=Json,
        # One socket's events run in order (a chat must not reorder messages);
        # other sockets are unaffected, each has its own reader task.
        async_handlers=False,
        cors_allowed_origins=cors,
        # A credential or a message never needs more; smaller frames are a DoS guard.
        max_http_buffer_size=MAX_PAYLOAD_BYTES,
        max_buffered=config.max_buffered_bytes,
        # Loggers of ours, not False: with False each library adds a handler of its
        # own to its default logger, which writes client text (a session id from
        # the query string) unescaped. These go through the CLI's escaping
        # formatter (gateway/logs.py); warnings and errors only.
        logger=_library_logger("gateway.socketio"),
        engineio_logger=_library_logger("gateway.engineio"),
    )


def _library_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(logging.WARNING)
    return logger
