"""This node's sockets: what the gateway knows of each, by Socket.IO sid."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.closes import Close


@dataclass(kw_only=True, slots=True)
class Conn:
    """What this node knows of one of its Socket.IO sockets."""

    sid: str
    via: str
    expires_at: float
    sub: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    session_id: str | None = None
    seq: int = 0  # auth sessions: the connection's number, for "newest wins"
    family: str | None = None  # the refresh-token family this socket is bound to
    refresh_hash: str | None = None  # hash of the bound refresh token
    connecting: bool = True  # still inside the connect handler: cannot be disconnected yet
    close_order: Close | None = None  # a close that arrived while connecting
    closed: bool = False  # `closing` sent; the disconnect follows
    holding: bool = False  # events for it are kept in `held` (awaiting re-auth, or while admitted)
    awaiting_reauth: bool = False  # its auth expired under on_expiry=reauth: holds until it re-authenticates
    held: list[tuple[str, Any]] = field(default_factory=list)
    dropped: int = 0  # held events dropped at the cap, not yet reported
    # client_event_rate (gateway/rate_limits.py): its token bucket, and its run of refusals
    event_tat: float = 0.0
    limited_since: float = 0.0
    limited_last: float = 0.0
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    warn_timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    refresh_timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def pending(self) -> bool:
        """Connected without credentials, waiting to ``authenticate``."""
        return self.via == "pending"


class Registry:
    """This node's sockets, and which of them hold their events."""

    def __init__(self) -> None:
        self._conns: dict[str, Conn] = {}
        self.holders: set[str] = set()  # sids whose events are being held

    def add(self, conn: Conn) -> None:
        self._conns[conn.sid] = conn

    def get(self, sid: str) -> Conn | None:
        return self._conns.get(sid)

    def remove(self, sid: str) -> Conn | None:
        self.holders.discard(sid)
        return self._conns.pop(sid, None)

    def sids(self) -> list[str]:
        return list(self._conns)

    def conns(self) -> list[Conn]:
        return list(self._conns.values())

    def __len__(self) -> int:
        return len(self._conns)
