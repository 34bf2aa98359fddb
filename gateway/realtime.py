"""The Socket.IO server, its client manager, and the fan-out helpers.

With the redis engine the client manager is python-socketio's
``AsyncRedisManager`` on python-socketio's default channel, so any
write-only manager (``gateway.emitter``) can publish into the cluster.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import socketio

from gateway.config import Config
from gateway.errors import StoreUnavailable

logger = logging.getLogger(__name__)

NAMESPACE = "/"
ROOM_PATTERN = re.compile(r"^(user|session|room):[^\s]{1,200}$")
# Event names socket.io-client reserves; emitting them would break clients.
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)


class ClusterManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    """AsyncRedisManager that reports a failed publish instead of only logging it,
    so that ``POST /api/publish`` can answer 503 rather than 202 for an event
    that never left this node."""

    async def _publish(self, data: Any) -> Any:
        result = await super()._publish(data)
        if result is None:  # the parent gave up after its retry
            raise StoreUnavailable("cannot publish to redis")
        return result


class OriginPolicy:
    """PROTOCOL §6.16: no Origin (non-browser) is allowed; same-origin is allowed;
    otherwise the Origin must be listed in ``allowed_origins`` (``*``: any, demo only)."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self._any = "*" in allowed
        self._allowed = frozenset(o.rstrip("/") for o in allowed if o != "*")

    def allows(self, origin: str | None, *, host: str | None, scheme: str) -> bool:
        if origin is None or self._any:
            return True
        origin = origin.rstrip("/")
        return origin in self._allowed or (host is not None and origin == f"{scheme}://{host}")

    def engineio_check(self, origin: str | None, environ: Mapping[str, Any]) -> bool:
        """The callable form python-engineio accepts for ``cors_allowed_origins``."""
        return self.allows(origin, host=environ.get("HTTP_HOST"), scheme=environ.get("wsgi.url_scheme", "http"))


def create_server(config: Config, *, origins: OriginPolicy) -> socketio.AsyncServer:
    manager = ClusterManager(config.redis_url, channel=config.redis_channel) if config.redis_url else None
    return socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        cors_allowed_origins=origins.engineio_check,
        # A credential or a message never needs more; smaller frames are a DoS guard.
        max_http_buffer_size=64 * 1024,
        logger=False,
        engineio_logger=False,
    )


@dataclass(kw_only=True)
class Conn:
    """What this node knows of one of its authenticated sockets."""

    sid: str
    sub: str
    via: str
    expires_at: float


class Realtime:
    """Local socket registry plus the emits the gateway makes."""

    def __init__(self, *, sio: socketio.AsyncServer) -> None:
        self.sio = sio
        self.conns: dict[str, Conn] = {}
        self.draining = False

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
            thread.cancel()
        await self.sio.shutdown()
        redis = getattr(manager, "redis", None)
        if redis is not None:
            await redis.aclose()

    async def emit_local(self, sid: str, event: str, data: Any) -> None:
        """Emit to a socket of this node without a round trip through Redis."""
        await self.sio.emit(event, data, to=sid, ignore_queue=True)

    async def publish(self, room: str, event: str, data: Any) -> None:
        """Emit to ``room`` on every node; raise StoreUnavailable if the cluster can't be reached."""
        await self.sio.emit(event, data, room=room)

    async def close(self, sid: str, code: int, reason: str) -> None:
        """``closing`` then a Socket.IO disconnect (the client will not reconnect by itself)."""
        await self.emit_local(sid, "closing", {"code": code, "reason": reason})
        await self.sio.disconnect(sid, ignore_queue=True)

    async def going_away(self) -> int:
        """Refuse new connects, send ``closing`` 1001 to every local socket and
        drop its transport, so that clients reconnect (to another node)."""
        self.draining = True
        sids = list(self.conns)
        for sid in sids:
            await self.emit_local(sid, "closing", {"code": 1001, "reason": "going_away"})
        if self.sio.eio.sockets:  # engineio's disconnect() fails on an empty set
            await self.sio.eio.disconnect()
        return len(sids)
