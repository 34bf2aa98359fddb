"""Socket.IO event handlers: credentials in, ``authenticated``/refusals/acks out.

Every client event is validated with its marshmallow schema and answered
with an ack ``{"ok": true, ...}`` or ``{"ok": false, "error": {"code",
"reason"}}``; domain errors become ack codes here and nowhere else.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import parse_qs

import socketio
from marshmallow import Schema

from gateway.auth.refresh import RefreshService
from gateway.auth.sessions import SessionService, session_room
from gateway.auth.tokens import Principal, TokenService
from gateway.config import Config
from gateway.errors import (
    AmbiguousCredentials,
    AuthError,
    AuthExpired,
    ClosedWhileConnecting,
    Forbidden,
    GatewayError,
    InvalidRequest,
    InvalidToken,
    MissingCredentials,
    PayloadTooLarge,
    RateLimited,
    Revoked,
    SessionNotFound,
    StoreUnavailable,
)
from gateway.formats import iso_z
from gateway.lifetime import Lifetime
from gateway.messages import MessageService, may_join
from gateway.metrics import Metrics
from gateway.realtime import Conn, Realtime
from handlers import schemas

logger = logging.getLogger(__name__)

Ack = dict[str, Any]
Welcome = Callable[[], Coroutine[Any, Any, None]]

# PROTOCOL §3 connect_error codes; most specific class first.
_CONNECT_CODES: dict[type[GatewayError], int] = {
    SessionNotFound: 4004,
    Revoked: 4011,
    RateLimited: 4029,
    StoreUnavailable: 4503,
    AuthError: 4001,
    InvalidRequest: 4001,
}
# Codes in event acks (docs/protocol.md, "Acks"); most specific class first.
_ACK_CODES: dict[type[GatewayError], int] = {
    PayloadTooLarge: 4013,
    InvalidRequest: 4000,
    Revoked: 4011,
    AuthError: 4001,
    Forbidden: 4003,
    RateLimited: 4029,
    StoreUnavailable: 4503,
}
# Query-string names a seed-style client may use (never logged).
_QUERY_CREDENTIALS = ("ticket", "token", "sessionId", "wsToken")
# Each credential kind and the fields that make it up.
_KINDS: dict[str, frozenset[str]] = {
    "ticket": frozenset({"ticket"}),
    "token": frozenset({"token"}),
    "session": frozenset({"sessionId", "wsToken"}),
    "refresh": frozenset({"refreshToken"}),
}


def _code(table: Mapping[type[GatewayError], int], exc: GatewayError, default: int) -> int:
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return default


def connect_code(exc: GatewayError) -> int:
    if isinstance(exc, ClosedWhileConnecting):
        return exc.close_code
    return _code(_CONNECT_CODES, exc, 4001)


def ack_error(exc: GatewayError) -> Ack:
    return {"ok": False, "error": {"code": _code(_ACK_CODES, exc, 4000), "reason": exc.reason}}


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
    data = schemas.load(schemas.ConnectAuth(), source)
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
        tokens: TokenService,
        sessions: SessionService,
        refresh: RefreshService,
        lifetime: Lifetime,
        messages: MessageService,
        realtime: Realtime,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._tokens = tokens
        self._sessions = sessions
        self._refresh = refresh
        self._lifetime = lifetime
        self._messages = messages
        self._realtime = realtime
        self._metrics = metrics
        self._pending_by_addr: dict[str, int] = {}

    def register(self, sio: socketio.AsyncServer) -> None:
        sio.on("connect", self.connect)
        sio.on("disconnect", self.disconnect)
        sio.on("authenticate", self._handler("authenticate", schemas.AuthenticateEvent(), self._authenticate))
        sio.on("join", self._handler("join", schemas.RoomEvent(), self._join))
        sio.on("leave", self._handler("leave", schemas.RoomEvent(), self._leave))
        sio.on("refresh", self._handler("refresh", schemas.RefreshEvent(), self._refresh_event))
        sio.on("message", self._handler("message", schemas.MessageEvent(), self._message))
        sio.on("*", self.unknown_event)

    # -- connect / disconnect ---------------------------------------------------

    async def connect(self, sid: str, environ: Mapping[str, Any], auth: Any = None) -> None:
        try:
            if self._realtime.draining:
                raise StoreUnavailable("this node is shutting down; reconnect")
            try:
                kind, creds = read_credentials(auth, environ)
            except MissingCredentials:
                if not self._config.deferred_auth:
                    raise
                kind, welcome = "pending", self._admit_pending(sid, client_address(environ))
            else:
                welcome = await self._admit(sid, kind, creds)
            conn = self._realtime.conns[sid]
            if conn.close_order is not None:
                raise ClosedWhileConnecting(*conn.close_order)
        except GatewayError as exc:
            await self._abandon(sid)
            code = connect_code(exc)
            self._metrics.connect_attempts.labels("refused", exc.reason).inc()
            logger.info("connect refused sid=%s code=%d reason=%s", sid, code, exc.reason)
            raise socketio.exceptions.ConnectionRefusedError(str(exc), {"code": code, "reason": exc.reason}) from None
        self._metrics.connect_attempts.labels("accepted", kind).inc()
        # python-socketio sends the CONNECT packet once this handler returns; the
        # welcome (`authenticated`, ...) follows it, as a client expects.
        self._realtime.scheduler.soon(lambda: self._connected(conn, welcome))

    async def _admit(self, sid: str, kind: str, creds: Mapping[str, str]) -> Welcome:
        if kind == "session":
            return await self._admit_session(sid, creds["sessionId"], creds["wsToken"])
        _, welcome = await self._admit_user(Conn(sid=sid, via=kind, expires_at=0.0), creds)
        return welcome

    async def _connected(self, conn: Conn, welcome: Welcome) -> None:
        """Runs once python-socketio has the socket connected: from now on it can be
        disconnected, so a close order that came meanwhile is carried out instead."""
        if self._realtime.conns.get(conn.sid) is not conn:
            return
        conn.connecting = False
        if conn.close_order is not None:
            await self._realtime.close(conn.sid, *conn.close_order)
            return
        await welcome()

    async def _admit_user(self, conn: Conn, creds: Mapping[str, str]) -> tuple[Principal, Welcome]:
        """Authenticate ``conn`` (new, or pending) with a ticket, token or refresh
        token: verify, admit (one store round trip), make it the user's. Returns
        the welcome to run once the client knows it is connected."""
        via = next(kind for kind in ("ticket", "token", "refresh") if _KINDS[kind] <= creds.keys())
        issued = None
        if via == "ticket":
            principal, parked = await self._lifetime.admit_ticket(conn.sid, creds["ticket"])
        elif via == "token":
            principal = await self._tokens.verify(creds["token"])
            parked = await self._lifetime.admit(conn.sid, principal)
        else:
            rotated = await self._refresh.rotate(creds["refreshToken"])
            now = time.time()
            principal = Principal(
                sub=rotated.sub, exp=now + self._config.access_token_ttl, iat=now, claims=rotated.claims
            )
            parked = await self._lifetime.admit(conn.sid, principal)
            issued = rotated.issued
        if conn.pending:
            self._end_pending(conn)
        conn.via = via
        self._realtime.conns[conn.sid] = conn
        self._metrics.connected_sockets.inc()
        logger.info("connect sid=%s sub=%s via=%s", conn.sid, principal.sub, via)
        await self._lifetime.bind(conn, principal, parked=parked)

        async def welcome() -> None:
            if self._realtime.conns.get(conn.sid) is not conn:
                return  # left meanwhile
            payload = {"sub": principal.sub, "expiresAt": iso_z(principal.exp), "via": via}
            await self._realtime.emit_local(conn.sid, "authenticated", payload)
            await self._lifetime.begin(conn)  # timers; parked events, then anything held meanwhile
            if issued is not None:
                await self._lifetime.bind_refresh(conn, issued)
            else:
                await self._lifetime.issue_refresh(conn, principal)

        return principal, welcome

    def _admit_pending(self, sid: str, addr: str) -> Welcome:
        """PROTOCOL §6.6: a socket without credentials waits for ``authenticate``,
        joined to no room, at most ``max_pending_per_ip`` per address."""
        if self._pending_by_addr.get(addr, 0) >= self._config.max_pending_per_ip:
            raise RateLimited("too many sockets waiting to authenticate from this address")
        self._pending_by_addr[addr] = self._pending_by_addr.get(addr, 0) + 1
        deadline = time.time() + self._config.auth_timeout
        conn = Conn(sid=sid, via="pending", expires_at=deadline, addr=addr)
        conn.timer = self._realtime.scheduler.at(deadline, lambda: self._auth_timeout(sid))
        self._realtime.conns[sid] = conn
        self._metrics.pending_sockets.inc()
        logger.info("connect sid=%s pending authenticate", sid)

        async def welcome() -> None:  # a pending socket is told nothing until it authenticates
            return None

        return welcome

    def _end_pending(self, conn: Conn) -> None:
        self._realtime.scheduler.cancel(conn.timer)
        conn.timer = None
        if conn.addr is not None:
            left = self._pending_by_addr.get(conn.addr, 1) - 1
            if left > 0:
                self._pending_by_addr[conn.addr] = left
            else:
                self._pending_by_addr.pop(conn.addr, None)
        self._metrics.pending_sockets.dec()

    async def _auth_timeout(self, sid: str) -> None:
        conn = self._realtime.conns.get(sid)
        if conn is not None and conn.pending:
            logger.info("closing sid=%s reason=auth_timeout", sid)
            await self._realtime.close(sid, 4008, "auth_timeout")

    async def _admit_session(self, sid: str, session_id: str, ws_token: str) -> Welcome:
        opened = await self._sessions.open(session_id, ws_token)
        conn = Conn(sid=sid, via="session", expires_at=opened.expires_at, session_id=session_id, seq=opened.seq)
        await self._realtime.sio.enter_room(sid, session_room(session_id))
        self._realtime.conns[sid] = conn
        self._metrics.connected_sockets.inc()
        if await self._sessions.superseded(session_id, opened.seq):
            raise ClosedWhileConnecting(4009, "replaced")
        conn.timer = self._realtime.scheduler.at(opened.expires_at, lambda: self._realtime.close(sid, 1000, "expired"))
        logger.info("connect sid=%s session via=session", sid)
        expires = iso_z(opened.expires_at)

        async def welcome() -> None:
            if self._realtime.conns.get(sid) is not conn:
                return
            authenticated = {"sessionId": session_id, "expiresAt": expires, "via": "session"}
            await self._realtime.emit_local(sid, "authenticated", authenticated)
            otp_ready = {"type": "otp_ready", "autoPassword": opened.auto_password, "expiresAt": expires}
            await self._realtime.emit_local(sid, "otp_ready", otp_ready)

        return welcome

    async def disconnect(self, sid: str, reason: Any = None) -> None:
        if await self._abandon(sid):
            logger.info("disconnect sid=%s", sid)

    async def _abandon(self, sid: str) -> bool:
        """Release what this node holds for ``sid`` (left, or refused after it was registered)."""
        conn = self._realtime.forget(sid)
        if conn is None:
            return False
        if conn.pending:
            self._end_pending(conn)
        else:
            self._metrics.connected_sockets.dec()
            await self._lifetime.stop(conn)
        return True

    # -- client events ------------------------------------------------------------

    def _handler(
        self, event: str, schema: Schema, action: Callable[[Conn, dict[str, Any]], Awaitable[Ack]]
    ) -> Callable[[str, Any], Awaitable[Ack | None]]:
        """Wrap ``action`` with the rules every event shares: pending sockets may
        only authenticate; the payload is validated; errors become acks."""

        async def handle(sid: str, data: Any = None) -> Ack | None:
            conn = self._realtime.conns.get(sid)
            if conn is None:
                return None  # a socket being closed
            if conn.pending and event != "authenticate":
                await self._unauthenticated(sid, event)
                return None
            try:
                if conn.awaiting_reauth and event in ("join", "message"):
                    raise AuthExpired("re-authenticate first: this socket's authentication expired")
                return await action(conn, schemas.load(schema, data))
            except GatewayError as exc:
                logger.info("event %s from sid=%s refused: %s", event, sid, exc.reason)
                return ack_error(exc)

        return handle

    async def _unauthenticated(self, sid: str, event: str) -> None:
        logger.info("closing sid=%s reason=unauthenticated (sent %s before authenticate)", sid, event)
        await self._realtime.close(sid, 4001, "unauthenticated")

    async def unknown_event(self, event: str, sid: str, data: Any = None) -> Ack | None:
        conn = self._realtime.conns.get(sid)
        if conn is not None and conn.pending:
            await self._unauthenticated(sid, event)
            return None
        return ack_error(InvalidRequest("unknown event"))

    async def _authenticate(self, conn: Conn, payload: dict[str, Any]) -> Ack:
        kinds = [kind for kind in ("token", "ticket") if kind in payload]
        if len(kinds) != 1:
            raise (AmbiguousCredentials if kinds else MissingCredentials)("send exactly one of token or ticket")
        if conn.pending:
            principal, welcome = await self._admit_user(conn, payload)
            await welcome()
            return {"ok": True, "sub": principal.sub, "expiresAt": iso_z(principal.exp)}
        # Re-authentication of a live socket (before or after its expiry). The sub
        # is compared before anything of the other user is touched; a ticket's sub
        # is known only once consumed, so that admission is undone.
        if kinds[0] == "ticket":
            principal, parked = await self._lifetime.admit_ticket(conn.sid, payload["ticket"])
            if principal.sub != conn.sub:
                await self._lifetime.undo_admit(conn.sid, principal.sub, parked)
                self._refuse_other_sub(conn)
        else:
            principal = await self._tokens.verify(payload["token"])
            if principal.sub != conn.sub:
                self._refuse_other_sub(conn)
            parked = await self._lifetime.admit(conn.sid, principal)
        conn.held[:0] = [(event, data) for event, data in map(json.loads, parked)]
        dropped = await self._lifetime.reauthenticate(conn, principal)
        ack: Ack = {"ok": True, "sub": principal.sub, "expiresAt": iso_z(principal.exp)}
        if dropped:
            ack["dropped"] = dropped
        return ack

    def _refuse_other_sub(self, conn: Conn) -> None:
        """PROTOCOL §6.8: ack invalid_token, then (after the ack) closing 4001."""
        logger.info("closing sid=%s reason=invalid_token (re-authentication as another sub)", conn.sid)
        sid = conn.sid
        self._realtime.scheduler.soon(lambda: self._realtime.close(sid, 4001, "invalid_token"))
        raise InvalidToken("re-authentication must keep the same sub")

    async def _refresh_event(self, conn: Conn, payload: dict[str, Any]) -> Ack:
        if conn.sub is None:  # an auth-session socket: no user, so no refresh token is its own
            raise InvalidToken("this socket has no user to refresh")
        rotated = await self._refresh.rotate(payload["refreshToken"], sub=conn.sub)
        await self._lifetime.bind_refresh(conn, rotated.issued)
        return {"ok": True, "refreshToken": rotated.issued.token, "expiresAt": iso_z(rotated.issued.expires_at)}

    async def _join(self, conn: Conn, payload: dict[str, Any]) -> Ack:
        room = payload["room"]
        if not may_join(conn.claims, room, self._config.public_rooms):
            raise Forbidden("the rooms claim does not allow this room")
        await self._realtime.sio.enter_room(conn.sid, room)
        return {"ok": True, "room": room}

    async def _leave(self, conn: Conn, payload: dict[str, Any]) -> Ack:
        await self._realtime.sio.leave_room(conn.sid, payload["room"])
        return {"ok": True, "room": payload["room"]}

    async def _message(self, conn: Conn, payload: dict[str, Any]) -> Ack:
        room, data, token = payload["room"], payload["data"], payload.get("token")
        if token is None and self._config.per_message_auth:
            raise MissingCredentials("per-message auth is on: every message needs a token")
        if token is not None:
            principal = await self._tokens.verify(token)
            if principal.sub != conn.sub:
                raise InvalidToken("the message's token is for another sub")
            await self._lifetime.check_not_revoked(principal)
        if len(json.dumps(data, separators=(",", ":"))) > self._config.max_message_bytes:
            raise PayloadTooLarge(f"data is larger than {self._config.max_message_bytes} bytes")
        if room not in self._realtime.sio.rooms(conn.sid):
            raise Forbidden("join the room first")
        message = await self._messages.post(sub=str(conn.sub), room=room, data=data)
        return {"ok": True, "id": message["id"]}
