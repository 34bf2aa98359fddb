"""Upstream messages: a member's ``message`` to a room, fanned out to the room
on every node and appended once to ``tg:upstream`` for backend consumers."""

from __future__ import annotations

import fnmatch
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from gateway.formats import iso_z
from gateway.realtime import Fanout
from gateway.store import Store, keys

UPSTREAM_TTL = 7 * 86400  # an idle stream (and its consumer groups) goes after a week


def may_join(claims: Mapping[str, Any], room: str, public: tuple[str, ...] = ()) -> bool:
    """The ``rooms`` claim: glob patterns over ``room:<name>`` (e.g. ``room:team-*``),
    plus the configured ``public_rooms``."""
    patterns = claims.get("rooms")
    allowed = [*public, *(patterns if isinstance(patterns, list) else [])]
    return any(isinstance(p, str) and fnmatch.fnmatchcase(room, p) for p in allowed)


class MessageService:
    def __init__(self, *, store: Store, fanout: Fanout, maxlen: int) -> None:
        self._store = store
        self._fanout = fanout
        self._maxlen = maxlen

    async def post(self, *, sub: str, room: str, data: Any) -> dict[str, Any]:
        """Append to the upstream stream, then deliver to the room (sender included).

        The append comes first: if the store is down nothing is delivered
        either, and the client's ack says so.
        """
        now = time.time()
        message = {
            "id": f"{int(now * 1000)}-{secrets.token_hex(4)}",
            "ts": iso_z(now),
            "sub": sub,
            "room": room,
            "data": data,
        }
        entry = {**message, "data": json.dumps(data, separators=(",", ":"))}
        await self._store.append_stream(keys.UPSTREAM, entry, maxlen=self._maxlen, ttl=UPSTREAM_TTL)
        await self._fanout.publish(room, "message", message)
        return message
