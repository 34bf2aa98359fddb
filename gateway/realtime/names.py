"""The names of the delivery path: the namespace, rooms, and events with a meaning of their own."""

from __future__ import annotations

import re

NAMESPACE = "/"
ROOM_PATTERN = re.compile(r"^(user|session|room):[^\s]{1,200}\Z")
# Event names socket.io-client reserves; emitting them would break clients.
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
CONTROL_PREFIX = "_tg:"  # the gateway's own control messages between nodes
CONTROL_CLOSE = CONTROL_PREFIX + "close"
# Events a raw (IDToken-style) session WebSocket receives as JSON text frames.
RAW_EVENTS = frozenset({"otp_ready", "approved", "rejected"})
# The gateway's own events about a socket's state: never held back.
UNHELD_EVENTS = frozenset({"closing", "authenticated", "auth_expiring", "reauth_required", "refresh_token"})


def is_reserved_event(name: str) -> bool:
    """Names nobody may publish: socket.io-client's own, and the gateway's control messages."""
    return name in RESERVED_EVENTS or name.startswith(CONTROL_PREFIX)


FAMILY_ROOM_PREFIX = "family:"


def family_room(family: str) -> str:
    """Every socket bound to a refresh-token family, on any node. Not a Socket.IO
    room: a family's sockets are found by their ``Conn.family`` when it is closed
    (rarely), rather than kept in a room per socket (each starts a family)."""
    return FAMILY_ROOM_PREFIX + family


def user_room(sub: str) -> str:
    """Every socket of a user, on any node."""
    return f"user:{sub}"
