"""How long a socket's authentication lasts, and what happens at its end.

Binding an admitted socket to its user, the expiry warning and the
``on_expiry`` policy (seed 004: ignore, close, or ask for re-authentication
while holding the socket's events), parking held events for the user's next
socket, refresh-token binding (seed 003) and the disconnect API. All timers
are loop handles from the one Scheduler; a socket costs no task.
"""

from __future__ import annotations

import json
import logging
import time

from gateway import closes
from gateway.auth.refresh import IssuedRefresh, RefreshService
from gateway.auth.tokens import Principal
from gateway.config import Config
from gateway.errors import GatewayError
from gateway.formats import iso_z
from gateway.metrics import Metrics
from gateway.realtime import Conn, Realtime, user_room
from gateway.realtime.history import id_key
from gateway.realtime.recovery import Restored
from gateway.realtime.registry import Held
from gateway.store import Store

logger = logging.getLogger(__name__)


class Lifetime:
    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        refresh: RefreshService,
        realtime: Realtime,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._store = store
        self._refresh = refresh
        self._realtime = realtime
        self._metrics = metrics

    async def bind(
        self, conn: Conn, principal: Principal, *, parked: list[str], restored: Restored | None = None
    ) -> None:
        """Make an admitted socket its user's room member. It holds its events
        (parked ones first) until ``begin``, so nothing newer overtakes them and
        nothing reaches it before its ``authenticated``."""
        conn.sub, conn.claims, conn.expires_at = principal.sub, principal.claims, principal.exp
        self._realtime.start_holding(conn)
        conn.held[:0] = [Held(event, data) for event, data in map(json.loads, parked)]
        await self.rejoin(conn, restored)
        await self._realtime.join(conn.sid, user_room(principal.sub))

    async def rejoin(self, conn: Conn, restored: Restored | None) -> None:
        """A recovered socket (docs/recovery.md) takes over the old one's rooms and
        positions, and holds what they published since, oldest first, ahead of
        anything that arrives while it joins them."""
        recovery = self._realtime.recovery
        if restored is None or recovery is None:
            return
        conn.rooms, conn.positions = list(restored.rooms), dict(restored.positions)
        at = len(conn.held)  # after parked events; live ones of the rooms come after this
        for slot in restored.rooms:
            if slot is not None:
                await self._realtime.join(conn.sid, slot[0])
        # What the rooms published between the history read and the subscriptions:
        # read again from where the first read ended, now that live events are held.
        replay = await recovery.gap(restored)
        replay.sort(key=lambda entry: id_key(entry.id))
        conn.held[at:at] = [
            Held(entry.event, entry.args[0] if len(entry.args) == 1 else tuple(entry.args), entry.room, entry.id)
            for entry in replay
        ]  # each is delivered once: a live copy of an event already sent is skipped by its id
        await recovery.save(conn)  # now this node's, in this socket's name

    async def begin(self, conn: Conn) -> None:
        """After ``authenticated``: arm the expiry timers, deliver what was held."""
        self._schedule(conn)
        await self._realtime.release(conn)

    async def stop(self, conn: Conn) -> None:
        """A socket left: cancel its timers, park what it was holding (a page
        reloaded instead of re-authenticating), drop it from the live registry."""
        for handle in (conn.timer, conn.warn_timer, conn.refresh_timer):
            self._realtime.scheduler.cancel(handle)
        await self._park(conn)
        if conn.sub is not None:
            try:
                await self._store.forget_socket(conn.sub, conn.sid)
            except GatewayError as exc:
                logger.warning("could not remove sid=%s from the registry (%s); it ages out", conn.sid, exc)

    # -- expiry ------------------------------------------------------------------

    def _schedule(self, conn: Conn) -> None:
        scheduler = self._realtime.scheduler
        for handle in (conn.timer, conn.warn_timer):
            scheduler.cancel(handle)
        conn.timer = conn.warn_timer = None
        if self._config.on_expiry == "ignore":
            return
        sid = conn.sid
        if self._config.expiry_warning > 0:
            conn.warn_timer = scheduler.at(conn.expires_at - self._config.expiry_warning, self._warn, sid)
        conn.timer = scheduler.at(conn.expires_at, self._expired, sid)

    async def _warn(self, sid: str) -> None:
        conn = self._realtime.get(sid)
        if conn is not None and not conn.awaiting_reauth:
            remaining = max(0, round(conn.expires_at - time.time()))
            payload = {"expiresAt": iso_z(conn.expires_at), "in": remaining}
            await self._realtime.emit_local(sid, "auth_expiring", payload)

    async def _expired(self, sid: str) -> None:
        conn = self._realtime.get(sid)
        if conn is None or conn.expires_at > time.time() + 0.5:
            return  # gone, or re-authenticated meanwhile
        if self._config.on_expiry == "close":
            logger.info("closing sid=%s reason=auth_expired", sid)
            await self._realtime.close(sid, closes.AUTH_EXPIRED)
            return
        deadline = conn.expires_at + self._config.reauth_grace
        conn.awaiting_reauth = True
        self._realtime.start_holding(conn)
        conn.timer = self._realtime.scheduler.at(deadline, self._grace_over, sid)
        logger.info("sid=%s reauth_required; holding its events", sid)
        await self._realtime.emit_local(sid, "reauth_required", {"deadline": iso_z(deadline)})

    async def _grace_over(self, sid: str) -> None:
        conn = self._realtime.get(sid)
        if conn is None or not conn.awaiting_reauth or conn.sub is None:
            return
        await self._park(conn)
        logger.info("closing sid=%s reason=auth_expired (no re-authentication)", sid)
        await self._realtime.close(sid, closes.AUTH_EXPIRED)

    async def _park(self, conn: Conn) -> None:
        """Hand a socket's held events to the user's next socket, on any node, in order."""
        held, conn.held = conn.held, []
        if not held or conn.sub is None:
            return
        items = [json.dumps([item.event, item.data]) for item in held]
        try:
            cap, ttl = self._config.max_held_events, self._config.refresh_ttl
            dropped = await self._store.park(conn.sub, items, cap=cap, ttl=ttl)
        except GatewayError:
            dropped = len(items)
            logger.error("store down: %d held events of sid=%s could not be parked", dropped, conn.sid)
        if dropped:
            self._metrics.held_events_dropped.inc(dropped)

    async def reauthenticate(self, conn: Conn, principal: Principal) -> int:
        """Same-sub re-authentication: new expiry, held events delivered in order.
        Returns how many held events were dropped at the cap since the last report."""
        conn.claims, conn.expires_at = principal.claims, principal.exp
        conn.awaiting_reauth = False
        self._schedule(conn)
        if conn.held and not conn.holding:  # parked events arrived with this admission
            self._realtime.start_holding(conn)
        await self._realtime.release(conn)
        dropped, conn.dropped = conn.dropped, 0
        return dropped

    async def disconnect_user(self, sub: str, *, revoke: bool) -> int:
        """The disconnect API: close every socket of ``sub`` on every node (4011),
        with ``revoke`` also ending every credential issued before now."""
        closed = await self._store.disconnect_user(sub, now=time.time(), revoke=revoke, ttl=self._config.user_ttl)
        close = closes.REVOKED if revoke else closes.DISCONNECTED
        await self._realtime.close_room(user_room(sub), close)
        self._metrics.disconnects.labels(close.reason).inc(closed)
        logger.info("disconnect API: sub=%s closed=%d reason=%s", sub, closed, close.reason)
        return closed

    # -- refresh tokens ------------------------------------------------------------

    async def bind_refresh(self, conn: Conn, issued: IssuedRefresh) -> None:
        """Bind ``conn`` to ``issued``'s family, push the token, and plan its successor."""
        conn.family = issued.family  # its family's close (refresh reuse) finds it by this
        conn.refresh_hash = issued.hash
        scheduler = self._realtime.scheduler
        scheduler.cancel(conn.refresh_timer)
        sid = conn.sid
        # PROTOCOL §6.5: a new token when the bound one has less than a tenth of its life left.
        conn.refresh_timer = scheduler.at(issued.expires_at - self._refresh.ttl / 10, self._renew, sid)
        payload = {"refreshToken": issued.token, "expiresAt": iso_z(issued.expires_at)}
        await self._realtime.emit_local(conn.sid, "refresh_token", payload)

    async def issue_refresh(self, conn: Conn, principal: Principal) -> None:
        """After a socket's first authentication: a new family (PROTOCOL §6.5)."""
        if not self._config.refresh_tokens or conn.family is not None:
            return
        try:
            issued = await self._refresh.start_family(principal)
        except GatewayError:
            logger.warning("no refresh token for sid=%s: store unavailable", conn.sid)
            return
        if self._realtime.is_current(conn):
            await self.bind_refresh(conn, issued)

    async def _renew(self, sid: str) -> None:
        conn = self._realtime.get(sid)
        if conn is None or conn.refresh_hash is None or conn.sub is None:
            return
        try:
            rotated = await self._refresh.renew(conn.sub, conn.refresh_hash)
        except GatewayError as exc:
            logger.info("could not renew the refresh token of sid=%s: %s", sid, exc.reason)
            return
        if rotated is None:
            logger.info("refresh token of sid=%s was rotated by its client: nothing to renew", sid)
            return
        await self.bind_refresh(conn, rotated.issued)
