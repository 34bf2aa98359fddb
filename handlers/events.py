"""Socket.IO event handlers: credentials in, ``authenticated``/refusals out."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import socketio
from marshmallow import ValidationError

from gateway.auth.sessions import SessionService, session_room
from gateway.auth.tickets import TicketService
from gateway.auth.tokens import TokenService
from gateway.errors import (
    AmbiguousCredentials,
    AuthError,
    GatewayError,
    InvalidRequest,
    MissingCredentials,
    RateLimited,
    Revoked,
    SessionNotFound,
    StoreUnavailable,
)
from gateway.formats import iso_z
from gateway.metrics import Metrics
from gateway.realtime import Conn, Realtime
from handlers import schemas

logger = logging.getLogger(__name__)

# PROTOCOL §3 connect_error codes; most specific class first.
_CONNECT_CODES: dict[type[GatewayError], int] = {
    SessionNotFound: 4004,
    Revoked: 4011,
    RateLimited: 4029,
    StoreUnavailable: 4503,
    AuthError: 4001,
    InvalidRequest: 4001,
}
# Query-string names a seed-style client may use (never logged).
_QUERY_CREDENTIALS = ("ticket", "token", "sessionId", "wsToken")


# Each credential kind and the fields that make it up.
_KINDS: dict[str, frozenset[str]] = {
    "ticket": frozenset({"ticket"}),
    "token": frozenset({"token"}),
    "session": frozenset({"sessionId", "wsToken"}),
}


def connect_code(exc: GatewayError) -> int:
    for cls in type(exc).__mro__:
        if cls in _CONNECT_CODES:
            return _CONNECT_CODES[cls]
    return 4001


def read_credentials(auth: Any, environ: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """PROTOCOL §3 and §6.12: the one credential kind, from ``auth`` or else the query string."""
    if auth:
        if not isinstance(auth, dict):
            raise InvalidRequest("auth must be an object")
        source: dict[str, Any] = auth
    else:
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        source = {}
        for name in _QUERY_CREDENTIALS:
            values = query.get(name)
            if values:
                if len(values) > 1:
                    raise AmbiguousCredentials(f"{name} given more than once")
                source[name] = values[0]
    try:
        data = schemas.ConnectAuth().load(source)
    except ValidationError as exc:
        raise InvalidRequest(schemas.first_error(exc)) from None
    kinds = {kind for kind, fields in _KINDS.items() if fields & data.keys()}
    if len(kinds) > 1:
        raise AmbiguousCredentials("send exactly one kind of credentials")
    if not kinds:
        raise MissingCredentials("credentials required: ticket, token, or sessionId and wsToken")
    kind = kinds.pop()
    missing = _KINDS[kind] - data.keys()
    if missing:
        raise InvalidRequest(f"{kind} credentials also need {', '.join(sorted(missing))}")
    return kind, data


class SocketHandlers:
    def __init__(
        self,
        *,
        tokens: TokenService,
        tickets: TicketService,
        sessions: SessionService,
        realtime: Realtime,
        metrics: Metrics,
    ) -> None:
        self._tokens = tokens
        self._tickets = tickets
        self._sessions = sessions
        self._realtime = realtime
        self._metrics = metrics

    def register(self, sio: socketio.AsyncServer) -> None:
        sio.on("connect", self.connect)
        sio.on("disconnect", self.disconnect)

    async def connect(self, sid: str, environ: Mapping[str, Any], auth: Any = None) -> None:
        try:
            if self._realtime.draining:
                raise StoreUnavailable("this node is shutting down; reconnect")
            kind, creds = read_credentials(auth, environ)
            if kind == "session":
                await self._admit_session(sid, creds["sessionId"], creds["wsToken"])
            else:
                await self._admit_user(sid, kind, creds[kind])
        except GatewayError as exc:
            code = connect_code(exc)
            self._metrics.connect_attempts.labels("refused", exc.reason).inc()
            logger.info("connect refused sid=%s code=%d reason=%s", sid, code, exc.reason)
            raise socketio.exceptions.ConnectionRefusedError(str(exc), {"code": code, "reason": exc.reason}) from None
        self._metrics.connected_sockets.inc()
        self._metrics.connect_attempts.labels("accepted", kind).inc()

    async def _admit_user(self, sid: str, kind: str, credential: str) -> None:
        if kind == "ticket":
            principal = await self._tickets.redeem(credential)
            self._metrics.tickets_consumed.inc()
        else:
            principal = await self._tokens.verify(credential)
        await self._realtime.sio.enter_room(sid, f"user:{principal.sub}")
        self._realtime.conns[sid] = Conn(sid=sid, sub=principal.sub, via=kind, expires_at=principal.exp)
        logger.info("connect sid=%s sub=%s via=%s", sid, principal.sub, kind)
        payload = {"sub": principal.sub, "expiresAt": iso_z(principal.exp), "via": kind}
        await self._realtime.emit_local(sid, "authenticated", payload)

    async def _admit_session(self, sid: str, session_id: str, ws_token: str) -> None:
        opened = await self._sessions.open(session_id, ws_token)
        conn = Conn(sid=sid, via="session", expires_at=opened.expires_at, session_id=session_id, seq=opened.seq)
        await self._realtime.sio.enter_room(sid, session_room(session_id))
        self._realtime.conns[sid] = conn
        conn.timer = self._realtime.scheduler.at(opened.expires_at, lambda: self._realtime.close(sid, 1000, "expired"))
        logger.info("connect sid=%s session via=session", sid)
        expires = iso_z(opened.expires_at)
        await self._realtime.emit_local(
            sid, "authenticated", {"sessionId": session_id, "expiresAt": expires, "via": "session"}
        )
        otp_ready = {"type": "otp_ready", "autoPassword": opened.auto_password, "expiresAt": expires}
        await self._realtime.emit_local(sid, "otp_ready", otp_ready)

    async def disconnect(self, sid: str, reason: Any = None) -> None:
        conn = self._realtime.conns.pop(sid, None)
        if conn is not None:
            self._realtime.scheduler.cancel(conn.timer)
            self._metrics.connected_sockets.dec()
            logger.info("disconnect sid=%s", sid)
