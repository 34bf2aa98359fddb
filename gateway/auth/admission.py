"""Admission: who a socket is, decided once, in one place.

The doors (handlers/events.py) parse a socket's credentials and call this
service; it decides the kind, verifies, admits in the store (revocation,
parked events, the live registry: one atomic step), registers the socket on
this node and returns the *welcome* to send once the client knows it is
connected. It also owns the sockets still waiting to ``authenticate`` (the
per-address cap, the ``auth_timeout``) and re-authentication of live sockets.
A new credential kind is added here: in ``KINDS`` and in ``_verify``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from gateway import closes
from gateway.auth.refresh import IssuedRefresh, RefreshService
from gateway.auth.sessions import SessionService, session_room
from gateway.auth.tickets import TicketService
from gateway.auth.tokens import Principal, TokenService
from gateway.config import Config
from gateway.errors import (
    AmbiguousCredentials,
    ClosedWhileConnecting,
    GatewayError,
    InvalidRequest,
    InvalidToken,
    MissingCredentials,
    RateLimited,
    Revoked,
    StoreUnavailable,
    TooManyConnections,
)
from gateway.formats import iso_z
from gateway.lifetime import Lifetime
from gateway.metrics import Metrics
from gateway.presence import Presence
from gateway.realtime import Conn, Realtime
from gateway.realtime.recovery import Restored
from gateway.realtime.registry import Held
from gateway.store import Store

logger = logging.getLogger(__name__)

Welcome = Callable[[], Coroutine[Any, Any, None]]

# PROTOCOL §3: each credential kind and the fields that make it up.
KINDS: dict[str, frozenset[str]] = {
    "ticket": frozenset({"ticket"}),
    "token": frozenset({"token"}),
    "session": frozenset({"sessionId", "wsToken"}),
    "refresh": frozenset({"refreshToken"}),
}
# The kinds a seed-style client may send in the query string (never logged).
QUERY_FIELDS = ("ticket", "token", "sessionId", "wsToken")
# The kinds `authenticate` takes.
AUTHENTICATE_KINDS = ("token", "ticket")


def credential_kind(fields: Mapping[str, Any]) -> str:
    """The one kind ``fields`` make up; Missing/Ambiguous/InvalidRequest otherwise."""
    kinds = [kind for kind, names in KINDS.items() if names & fields.keys()]
    if len(kinds) > 1:
        raise AmbiguousCredentials("send exactly one kind of credentials")
    if not kinds:
        raise MissingCredentials("credentials required: ticket, token, or sessionId and wsToken")
    kind = kinds[0]
    missing = KINDS[kind] - fields.keys()
    if missing:
        raise InvalidRequest(f"{kind} credentials also need {', '.join(sorted(missing))}")
    return kind


@dataclass(frozen=True, kw_only=True)
class Verified:
    """A verified credential: who, and what the store handed over when admitting."""

    principal: Principal
    parked: list[str]
    issued: IssuedRefresh | None = None  # the rotated refresh token, for a refresh connect


async def _nothing() -> None:
    return None


@dataclass(kw_only=True)
class _Waiting:
    """An Engine.IO session that has not authenticated yet."""

    addr: str
    timer: asyncio.TimerHandle
    sid: str | None = None  # its Socket.IO socket, once it connected without credentials


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


class Admission:
    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        tokens: TokenService,
        tickets: TicketService,
        sessions: SessionService,
        refresh: RefreshService,
        lifetime: Lifetime,
        realtime: Realtime,
        metrics: Metrics,
        presence: Presence | None = None,
    ) -> None:
        self._config = config
        self._presence = presence
        self._store = store
        self._tokens = tokens
        self._tickets = tickets
        self._sessions = sessions
        self._refresh = refresh
        self._lifetime = lifetime
        self._realtime = realtime
        self._metrics = metrics
        # Engine.IO sessions not yet authenticated, by Engine.IO sid: those that
        # have not sent the Socket.IO CONNECT yet, and pending (deferred) sockets.
        self._waiting: dict[str, _Waiting] = {}
        self._waiting_by_addr: Counter[str] = Counter()
        self._unconnected_by_addr: Counter[str] = Counter()

    # -- connect ---------------------------------------------------------------

    async def connect(self, sid: str, fields: Mapping[str, str]) -> Welcome:
        """Admit a connecting socket; its welcome runs once the client is connected.

        Raises the refusal (a GatewayError) after undoing whatever was done."""
        try:
            if self._realtime.draining:
                raise StoreUnavailable("this node is shutting down; reconnect")
            try:
                kind = credential_kind(fields)
            except MissingCredentials:
                if not self._config.deferred_auth:
                    raise
                return self._admit_pending(sid)
            if kind == "session":
                welcome = await self._admit_session(sid, fields)
            else:
                _, welcome = await self._admit_user(Conn(sid=sid, via=kind, expires_at=0.0), kind, fields)
            conn = self._realtime.get(sid)
            if conn is not None and conn.close_order is not None:
                raise ClosedWhileConnecting(conn.close_order)
            self._authenticated(self._realtime.eio_sid(sid))
            return welcome
        except GatewayError:
            await self.leave(sid)
            raise

    async def connected(self, sid: str, welcome: Welcome) -> None:
        """Runs once python-socketio has the socket connected: from now on it can be
        disconnected, so a close order that came meanwhile is carried out instead."""
        conn = self._realtime.get(sid)
        if conn is None:
            return
        conn.connecting = False
        if conn.close_order is not None:
            await self._realtime.close(sid, conn.close_order)
            return
        await welcome()

    async def _verify(self, sid: str, kind: str, fields: Mapping[str, str]) -> Verified:
        """Verify a user credential and admit ``sid`` in the store (revocation, parked events, registry)."""
        if kind == "ticket":
            principal = self._tickets.principal(await self._store.take(self._tickets.key(fields["ticket"])))
            self._metrics.tickets_consumed.inc()
            return Verified(principal=principal, parked=await self._admit_in_store(sid, principal))
        if kind == "token":
            principal = await self._tokens.verify(fields["token"])
            return Verified(principal=principal, parked=await self._admit_in_store(sid, principal))
        if kind == "refresh":
            rotated = await self._refresh.rotate(fields["refreshToken"])
            now = time.time()
            principal = Principal(
                sub=rotated.sub, exp=now + self._config.access_token_ttl, iat=now, claims=rotated.claims
            )
            parked = await self._admit_in_store(sid, principal)
            return Verified(principal=principal, parked=parked, issued=rotated.issued)
        raise InvalidRequest(f"{kind} credentials cannot authenticate a user")

    async def _admit_in_store(self, sid: str, principal: Principal) -> list[str]:
        admission = await self._store.admit(
            sub=principal.sub,
            iat=principal.iat,
            sid=sid,
            until=self._registry_until(principal.exp),
            ttl=self._config.user_ttl,
        )
        if admission.revoked:
            raise Revoked("this user's tokens were revoked")
        return admission.parked

    def _registry_until(self, exp: float) -> float:
        if self._config.on_expiry == "ignore":
            return time.time() + self._config.refresh_ttl
        return exp + self._config.reauth_grace

    async def _admit_user(self, conn: Conn, kind: str, fields: Mapping[str, str]) -> tuple[Principal, Welcome]:
        """Authenticate ``conn`` (new, or pending) with a ticket, token or refresh
        token and make it the user's. Returns who it is, and the welcome."""
        verified = await self._verify(conn.sid, kind, fields)
        principal = verified.principal
        # A socket that connected without credentials was told no pid: it cannot recover.
        restored = None if conn.pending else await self._recover(conn, fields, sub=principal.sub)
        if conn.pending:
            self._authenticated(self._realtime.eio_sid(conn.sid))
        conn.via = kind
        self._realtime.register(conn)
        self._metrics.connected_sockets.inc()
        logger.debug("connect sid=%s sub=%s via=%s recovered=%s", conn.sid, principal.sub, kind, restored is not None)
        await self._lifetime.bind(conn, principal, parked=verified.parked, restored=restored)

        async def welcome() -> None:
            if not self._realtime.is_current(conn):
                return  # left meanwhile
            payload: dict[str, Any] = {"sub": principal.sub, "expiresAt": iso_z(principal.exp), "via": kind}
            if conn.pid is not None:
                payload["recovered"] = restored is not None
            await self._realtime.emit_local(conn.sid, "authenticated", payload)
            await self._lifetime.begin(conn)  # timers; parked events, then anything held meanwhile
            if verified.issued is not None:
                await self._lifetime.bind_refresh(conn, verified.issued)
            else:
                await self._lifetime.issue_refresh(conn, principal)

        return principal, welcome

    async def _recover(
        self, conn: Conn, fields: Mapping[str, str], *, sub: str | None = None, session_id: str | None = None
    ) -> Restored | None:
        """Give ``conn`` a pid (recovery on): the one its client sent back, if the
        socket it names is recovered (``Recovery.restore``), else a new one."""
        recovery = self._realtime.recovery
        if recovery is None or not recovery.enabled:
            return None
        pid = fields.get("pid")
        restored = None
        if pid:
            offset = fields.get("offset") or ""
            restored = await recovery.restore(
                pid, offset, sid=conn.sid, connected_here=self._connected_here, sub=sub, session_id=session_id
            )
        conn.pid = pid if restored is not None else recovery.new_pid(sub=sub, session_id=session_id)
        return restored

    def _connected_here(self, sid: str) -> bool:
        return self._realtime.get(sid) is not None

    async def _admit_session(self, sid: str, fields: Mapping[str, str]) -> Welcome:
        session_id = fields["sessionId"]
        opened = await self._sessions.open(session_id, fields["wsToken"])
        conn = Conn(sid=sid, via="session", expires_at=opened.expires_at, session_id=session_id, seq=opened.seq)
        restored = await self._recover(conn, fields, session_id=session_id)
        self._realtime.register(conn)
        self._realtime.start_holding(conn)  # what it missed, then what comes meanwhile, after `authenticated`
        await self._lifetime.rejoin(conn, restored)
        await self._realtime.join(sid, session_room(session_id))
        self._metrics.connected_sockets.inc()
        if await self._sessions.superseded(session_id, opened.seq):
            raise ClosedWhileConnecting(closes.REPLACED)
        conn.timer = self._realtime.scheduler.at(opened.expires_at, self._realtime.close, sid, closes.EXPIRED)
        logger.debug("connect sid=%s session via=session", sid)
        expires = iso_z(opened.expires_at)

        async def welcome() -> None:
            if not self._realtime.is_current(conn):
                return
            authenticated: dict[str, Any] = {"sessionId": session_id, "expiresAt": expires, "via": "session"}
            if conn.pid is not None:
                authenticated["recovered"] = restored is not None
            await self._realtime.emit_local(sid, "authenticated", authenticated)
            otp_ready = {"type": "otp_ready", "autoPassword": opened.auto_password, "expiresAt": expires}
            await self._realtime.emit_local(sid, "otp_ready", otp_ready)
            await self._realtime.release(conn)

        return welcome

    # -- sessions waiting to authenticate --------------------------------------------

    def engine_opened(self, eio_sid: str, addr: str) -> bool:
        """A new Engine.IO session from ``addr``: it counts against
        ``max_pending_per_ip`` until it is authenticated, and is closed at
        ``auth_timeout`` if it has not been by then. False (refused) when the
        address already holds that many sessions that never sent the Socket.IO
        CONNECT."""
        if self.unconnected_full(addr):
            logger.info("refused an Engine.IO session: too many unauthenticated ones from one address")
            return False
        timer = self._realtime.scheduler.at(time.time() + self._config.auth_timeout, self._timeout, eio_sid)
        self._waiting[eio_sid] = _Waiting(addr=addr, timer=timer)
        self._waiting_by_addr[addr] += 1
        self._unconnected_by_addr[addr] += 1
        self._metrics.pending_sockets.inc()
        return True

    def unconnected_full(self, addr: str) -> bool:
        """Does ``addr`` hold ``max_pending_per_ip`` sessions that never sent CONNECT?"""
        return self._unconnected_by_addr[addr] >= self._config.max_pending_per_ip

    def engine_closed(self, eio_sid: str) -> None:
        self._authenticated(eio_sid)

    def _authenticated(self, eio_sid: str | None) -> None:
        """The session no longer waits (authenticated, or gone): release its count and timer."""
        waiting = self._waiting.pop(eio_sid, None) if eio_sid is not None else None
        if waiting is None:
            return
        self._realtime.scheduler.cancel(waiting.timer)
        _decrement(self._waiting_by_addr, waiting.addr)
        if waiting.sid is None:
            _decrement(self._unconnected_by_addr, waiting.addr)
        self._metrics.pending_sockets.dec()

    def _admit_pending(self, sid: str) -> Welcome:
        """PROTOCOL §6.6: a socket without credentials waits for ``authenticate``,
        joined to no room, at most ``max_pending_per_ip`` per address (its own
        session counts already)."""
        eio_sid = self._realtime.eio_sid(sid)
        waiting = self._waiting.get(eio_sid) if eio_sid is not None else None
        if waiting is None:
            raise RateLimited("this session can no longer authenticate")  # timed out meanwhile
        if self._waiting_by_addr[waiting.addr] > self._config.max_pending_per_ip:
            raise RateLimited("too many sockets waiting to authenticate from this address")
        waiting.sid = sid
        _decrement(self._unconnected_by_addr, waiting.addr)
        self._realtime.scheduler.cancel(waiting.timer)
        deadline = time.time() + self._config.auth_timeout
        waiting.timer = self._realtime.scheduler.at(deadline, self._timeout, eio_sid)
        self._realtime.register(Conn(sid=sid, via="pending", expires_at=deadline))
        logger.debug("connect sid=%s pending authenticate", sid)
        return _nothing  # a pending socket is told nothing until it authenticates

    async def _timeout(self, eio_sid: str | None) -> None:
        waiting = self._waiting.get(eio_sid) if eio_sid is not None else None
        if waiting is None or eio_sid is None:
            return
        if waiting.sid is not None:
            logger.info("closing sid=%s reason=auth_timeout", waiting.sid)
            await self._realtime.close(waiting.sid, closes.AUTH_TIMEOUT)
        else:
            logger.info("closing an Engine.IO session that never connected within auth_timeout")
            self._authenticated(eio_sid)
            await self._realtime.drop_engine(eio_sid)

    # -- authenticate, refresh, per-message tokens ------------------------------------

    async def authenticate(self, conn: Conn, fields: Mapping[str, str]) -> tuple[Principal, int]:
        """``authenticate``: admit a pending socket, or re-authenticate a live one.
        Returns the principal and how many held events were dropped at the cap
        since the last report."""
        kinds = [kind for kind in AUTHENTICATE_KINDS if kind in fields]
        if len(kinds) != 1:
            raise (AmbiguousCredentials if kinds else MissingCredentials)("send exactly one of token or ticket")
        kind = kinds[0]
        if conn.pending:
            try:
                principal, welcome = await self._admit_user(conn, kind, fields)
            except TooManyConnections:
                # Admitted half-way (no longer pending, not in its user's room): it goes.
                logger.info("closing sid=%s reason=too_many_connections", conn.sid)
                self._realtime.scheduler.soon(self._realtime.close, conn.sid, closes.TOO_MANY_CONNECTIONS)
                raise
            await welcome()
            return principal, 0
        # Re-authentication of a live socket (before or after its expiry). The sub
        # is compared before anything of the other user is touched; a ticket's sub
        # is known only once consumed, so that admission is undone.
        if kind == "ticket":
            verified = await self._verify(conn.sid, kind, fields)
            if verified.principal.sub != conn.sub:
                await self._undo(conn.sid, verified)
                self._refuse_other_sub(conn)
        else:
            principal = await self._tokens.verify(fields["token"])
            if principal.sub != conn.sub:
                self._refuse_other_sub(conn)
            verified = Verified(principal=principal, parked=await self._admit_in_store(conn.sid, principal))
        conn.held[:0] = [Held(event, data) for event, data in map(json.loads, verified.parked)]
        dropped = await self._lifetime.reauthenticate(conn, verified.principal)
        return verified.principal, dropped

    async def _undo(self, sid: str, verified: Verified) -> None:
        """Take back an admission refused after the fact: the user's parked events
        go back (in order; ahead of newer ones is not guaranteed) and the socket
        leaves their registry."""
        sub = verified.principal.sub
        if verified.parked:
            await self._store.park(sub, verified.parked, cap=self._config.max_held_events, ttl=self._config.refresh_ttl)
        await self._store.forget_socket(sub, sid)

    def _refuse_other_sub(self, conn: Conn) -> None:
        """PROTOCOL §6.8: ack invalid_token, then (after the ack) closing 4001."""
        logger.info("closing sid=%s reason=invalid_token (re-authentication as another sub)", conn.sid)
        sid = conn.sid
        self._realtime.scheduler.soon(self._realtime.close, sid, closes.INVALID_TOKEN)
        raise InvalidToken("re-authentication must keep the same sub")

    async def refresh(self, conn: Conn, token: str) -> IssuedRefresh:
        """``refresh``: rotate a token of this socket's user and bind the socket to it."""
        if conn.sub is None:  # an auth-session socket: no user, so no refresh token is its own
            raise InvalidToken("this socket has no user to refresh")
        rotated = await self._refresh.rotate(token, sub=conn.sub)
        await self._lifetime.bind_refresh(conn, rotated.issued)
        return rotated.issued

    async def check_message_token(self, conn: Conn, token: str | None) -> None:
        """Per-message auth: a ``message``'s token must be valid, unrevoked, and the socket's sub."""
        if token is None:
            if self._config.per_message_auth:
                raise MissingCredentials("per-message auth is on: every message needs a token")
            return
        principal = await self._tokens.verify(token)
        if principal.sub != conn.sub:
            raise InvalidToken("the message's token is for another sub")
        if await self._store.is_revoked(principal.sub, principal.iat):
            raise Revoked("this token was revoked")

    # -- leaving -----------------------------------------------------------------

    async def leave(self, sid: str, *, by_client: bool = False) -> bool:
        """Release what this node holds for ``sid`` (left, or refused after it was
        registered). ``by_client``: its client disconnected on purpose."""
        conn = self._realtime.forget(sid)
        if conn is None:
            return False
        if not conn.pending:  # first: what it held is parked for the user's next socket at once
            await self._lifetime.stop(conn)
            self._metrics.connected_sockets.dec()  # once parked: a test (or operator) seeing 0 knows it
        recovery = self._realtime.recovery
        if recovery is not None:
            # Recoverable unless closed on purpose: by the gateway (`closing` sent) or by its client.
            await recovery.ended(conn, lost=not (conn.closed or by_client or conn.connecting))
        if self._presence is not None:
            await self._presence.left(conn)
        return True
