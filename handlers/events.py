"""Socket.IO event handlers: parse, call the domain, answer.

Credentials go to ``gateway.auth.admission``; every client event is validated
with its marshmallow schema and answered with an ack ``{"ok": true, ...}`` or
``{"ok": false, "error": {"code", "reason"}}``. Domain errors become wire codes
through ``handlers.errors`` and nowhere else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

import socketio
from marshmallow import Schema

from gateway import closes
from gateway.auth.admission import QUERY_FIELDS, Admission
from gateway.config import Config
from gateway.errors import (
    AmbiguousCredentials,
    AuthExpired,
    Forbidden,
    GatewayError,
    InvalidRequest,
    NotAMember,
    PayloadTooLarge,
    RateLimited,
)
from gateway.formats import iso_z
from gateway.messages import MessageService, may_join
from gateway.metrics import Metrics
from gateway.presence import Presence
from gateway.rate_limits import RateLimits
from gateway.realtime import Conn, Realtime, Server
from handlers import schemas
from handlers.errors import ack_error, connect_error_data

logger = logging.getLogger(__name__)

Ack = dict[str, Any]


def read_credentials(auth: Any, environ: Mapping[str, Any]) -> dict[str, str]:
    """PROTOCOL §3 and §6.12: the credential fields, from ``auth`` or else the query string."""
    if auth:
        if not isinstance(auth, dict):
            raise InvalidRequest("auth must be an object")
        source: dict[str, Any] = auth
    else:
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        source = {}
        for name in QUERY_FIELDS:
            values = query.get(name)
            if values:
                if len(values) > 1:
                    raise AmbiguousCredentials(f"{name} given more than once")
                source[name] = values[0]
    return schemas.load(schemas.ConnectAuth, source)


def client_address(environ: Mapping[str, Any]) -> str:
    # python-engineio's aiohttp driver fixes REMOTE_ADDR to 127.0.0.1; the
    # request knows the real peer.
    request = environ.get("aiohttp.request")
    return str(getattr(request, "remote", None) or "unknown")


class SocketHandlers:
    def __init__(
        self,
        *,
        config: Config,
        admission: Admission,
        messages: MessageService,
        realtime: Realtime,
        metrics: Metrics,
        rate_limits: RateLimits,
        presence: Presence,
    ) -> None:
        self._config = config
        self._presence = presence
        self._admission = admission
        self._messages = messages
        self._realtime = realtime
        self._metrics = metrics
        self._rate_limits = rate_limits

    def register(self, sio: Server) -> None:
        sio.engine_opened = self.engine_opened
        sio.engine_closed = self._admission.engine_closed
        sio.on("connect", self.connect)
        sio.on("disconnect", self.disconnect)
        sio.on("authenticate", self._handler("authenticate", schemas.AuthenticateEvent, self._authenticate))
        sio.on("join", self._handler("join", schemas.RoomEvent, self._join))
        sio.on("leave", self._handler("leave", schemas.RoomEvent, self._leave))
        sio.on("refresh", self._handler("refresh", schemas.RefreshEvent, self._refresh))
        sio.on("message", self._handler("message", schemas.MessageEvent, self._message))
        sio.on("presence", self._handler("presence", schemas.PresenceEvent, self._presence_page))
        sio.on("*", self.unknown_event)

    # -- connect / disconnect ---------------------------------------------------

    def engine_opened(self, eio_sid: str, environ: Mapping[str, Any]) -> bool:
        return self._admission.engine_opened(eio_sid, client_address(environ))

    async def connect(self, sid: str, environ: Mapping[str, Any], auth: Any = None) -> None:
        try:
            # Every Socket.IO CONNECT counts, whatever comes of it (an Engine.IO
            # handshake alone does not: max_pending_per_ip bounds those).
            await self._rate_limits.connect(client_address(environ))
            fields = read_credentials(auth, environ)
            welcome = await self._admission.connect(sid, fields)
        except GatewayError as exc:
            data = connect_error_data(exc)
            self._metrics.connect_attempts.labels("refused", exc.reason).inc()
            logger.info("connect refused sid=%s code=%d reason=%s", sid, data["code"], exc.reason)
            raise socketio.exceptions.ConnectionRefusedError(str(exc), data) from None
        conn = self._realtime.get(sid)
        self._metrics.connect_attempts.labels("accepted", conn.via if conn is not None else "unknown").inc()
        # python-socketio sends the CONNECT packet once this handler returns; the
        # welcome (`authenticated`, ...) follows it, as a client expects.
        self._realtime.scheduler.soon(self._admission.connected, sid, welcome)

    async def disconnect(self, sid: str, reason: Any = None) -> None:
        if await self._admission.leave(sid, by_client=reason == socketio.AsyncServer.reason.CLIENT_DISCONNECT):
            logger.debug("disconnect sid=%s", sid)

    # -- client events ------------------------------------------------------------

    def _handler(
        self, event: str, schema: type[Schema], action: Callable[[Conn, dict[str, Any]], Awaitable[Ack]]
    ) -> Callable[[str, Any], Awaitable[Ack | None]]:
        """Wrap ``action`` with the rules every event shares: pending sockets may
        only authenticate; each event spends the socket's rate; the payload is
        validated; errors become acks."""

        async def handle(sid: str, data: Any = None) -> Ack | None:
            conn = self._realtime.get(sid)
            if conn is None:
                return None  # a socket being closed
            if conn.pending and event != "authenticate":
                await self._unauthenticated(sid, event)
                return None
            refused = self._over_rate(conn)
            if refused is not None:
                return refused
            try:
                if conn.awaiting_reauth and event in ("join", "message"):
                    raise AuthExpired("re-authenticate first: this socket's authentication expired")
                return await action(conn, schemas.load(schema, data))
            except GatewayError as exc:
                logger.info("event %s from sid=%s refused: %s", event, sid, exc.reason)
                return ack_error(exc)

        return handle

    def _over_rate(self, conn: Conn) -> Ack | None:
        """The rate_limited ack when ``conn`` is over its event rate, else None.
        Not logged per event: a flood would flood the log (RateLimits logs a run)."""
        try:
            self._rate_limits.client_event(conn)
        except RateLimited as exc:
            return ack_error(exc)
        return None

    async def _unauthenticated(self, sid: str, event: str) -> None:
        logger.info("closing sid=%s reason=unauthenticated (sent %s before authenticate)", sid, event)
        await self._realtime.close(sid, closes.UNAUTHENTICATED)

    async def unknown_event(self, event: str, sid: str, data: Any = None) -> Ack | None:
        conn = self._realtime.get(sid)
        if conn is not None and conn.pending:
            await self._unauthenticated(sid, event)
            return None
        refused = self._over_rate(conn) if conn is not None else None
        return refused or ack_error(InvalidRequest("unknown event"))

    async def _authenticate(self, conn: Conn, payload: dict[str, Any]) -> Ack:
        principal, dropped = await self._admission.authenticate(conn, payload)
        ack: Ack = {"ok": True, "sub": principal.sub, "expiresAt": iso_z(principal.exp)}
        if dropped:
            ack["dropped"] = dropped
        return ack

    async def _refresh(self, conn: Conn, payload: dict[str, Any]) -> Ack:
        issued = await self._admission.refresh(conn, payload["refreshToken"])
        return {"ok": True, "refreshToken": issued.token, "expiresAt": iso_z(issued.expires_at)}

    async def _join(self, conn: Conn, payload: dict[str, Any]) -> Ack:
        room = payload["room"]
        if not may_join(conn.claims, room, self._config.public_rooms):
            raise Forbidden("the rooms claim does not allow this room")
        await self._realtime.join(conn.sid, room)
        return {"ok": True, "room": room}

    async def _leave(self, conn: Conn, payload: dict[str, Any]) -> Ack:
        await self._realtime.leave(conn.sid, payload["room"])
        return {"ok": True, "room": payload["room"]}

    async def _presence_page(self, conn: Conn, payload: dict[str, Any]) -> Ack:
        room = payload["room"]
        if room not in self._realtime.rooms_of(conn.sid):
            raise NotAMember("join the room first")
        page = await self._presence.page(room, cursor=payload.get("cursor"))
        return {"ok": True, **page.body()}

    async def _message(self, conn: Conn, payload: dict[str, Any]) -> Ack:
        room, data = payload["room"], payload["data"]
        await self._admission.check_message_token(conn, payload.get("token"))
        if len(json.dumps(data, separators=(",", ":"))) > self._config.max_message_bytes:
            raise PayloadTooLarge(f"data is larger than {self._config.max_message_bytes} bytes")
        if room not in self._realtime.rooms_of(conn.sid):
            raise Forbidden("join the room first")
        message = await self._messages.post(sub=str(conn.sub), room=room, data=data)
        return {"ok": True, "id": message["id"]}
