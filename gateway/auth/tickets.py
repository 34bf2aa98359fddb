"""Single-use WebSocket tickets (the ticket protocol of seed 002).

A ticket is 256 random bits, URL-safe. Only its SHA-256 is stored, as the key
of a record binding it to the token's ``sub``, claims and ``exp``. Redeeming
is one atomic take (GETDEL on Redis): one round trip, and of N concurrent
connects presenting the same ticket on any node exactly one wins.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass

from gateway.auth.tokens import Principal
from gateway.errors import InvalidTicket, Revoked, TokenExpired
from gateway.store import Store, keys

_TICKET_BYTES = 32
_TICKET_SHAPE = re.compile(r"^[A-Za-z0-9_-]{43}\Z")


@dataclass(frozen=True, kw_only=True)
class IssuedTicket:
    ticket: str
    expires: int  # unix seconds


def _key(ticket: str) -> str:
    return keys.ticket(hashlib.sha256(ticket.encode()).hexdigest())


class TicketService:
    """Issues and redeems tickets. ``leeway`` is the one the token's verification
    allows on ``exp`` (config ``leeway``): a token good enough to connect with is
    good enough for a ticket, and stays so until the ticket is redeemed."""

    def __init__(self, *, store: Store, ttl: float, leeway: float) -> None:
        self._store = store
        self._ttl = ttl
        self._leeway = leeway

    async def issue(self, principal: Principal) -> IssuedTicket:
        """A ticket for ``principal``, living ``ttl`` seconds (never past the token's exp + leeway)."""
        now = time.time()
        lifetime = min(self._ttl, principal.exp + self._leeway - now)
        if lifetime <= 0:
            raise TokenExpired("token expired")
        if await self._store.is_revoked(principal.sub, principal.iat):
            raise Revoked("this token was revoked")
        ticket = secrets.token_urlsafe(_TICKET_BYTES)
        record = {"sub": principal.sub, "exp": principal.exp, "iat": principal.iat, "claims": dict(principal.claims)}
        await self._store.put(_key(ticket), json.dumps(record), ttl=lifetime)
        return IssuedTicket(ticket=ticket, expires=int(now + lifetime))

    @staticmethod
    def key(ticket: object) -> str:
        """The store key of a well-formed ticket; InvalidTicket (no store round trip) for garbage."""
        if not isinstance(ticket, str) or not _TICKET_SHAPE.match(ticket):
            raise InvalidTicket("malformed ticket")
        return _key(ticket)

    def principal(self, raw: str | None) -> Principal:
        """The principal of a consumed ticket record; InvalidTicket if there was none,
        TokenExpired if its token expired (beyond the leeway) meanwhile."""
        if raw is None:
            raise InvalidTicket("unknown, used or expired ticket")
        record = json.loads(raw)
        if record["exp"] + self._leeway <= time.time():
            raise TokenExpired("the ticket's token has expired")
        return Principal(sub=record["sub"], exp=float(record["exp"]), iat=float(record["iat"]), claims=record["claims"])
