"""Every key name of the store, built here and nowhere else.

Services and both engines call these; the engines add the ``tg:`` prefix
(``PREFIX``). Lua scripts never build a key: each one they touch is passed in
``KEYS``.
"""

from __future__ import annotations

PREFIX = "tg:"

UPSTREAM = "upstream"  # messages from clients to rooms, for backend consumers (a stream)


def ticket(digest: str) -> str:
    """A ticket record, by the SHA-256 of the ticket (the ticket itself is never stored)."""
    return f"ticket:{digest}"


def refresh(digest: str) -> str:
    """A refresh-token record, by the SHA-256 of the token."""
    return f"refresh:{digest}"


def family(family_id: str) -> str:
    """A refresh-token family: its user and whether it is revoked."""
    return f"family:{family_id}"


def revoked(sub: str) -> str:
    """The user's revocation cut-off (unix seconds): credentials issued before it are dead."""
    return f"revoked:{sub}"


def parked(sub: str) -> str:
    """Held events of the user's closed sockets, oldest first, for their next socket."""
    return f"parked:{sub}"


def sockets(sub: str) -> str:
    """The user's live sockets: socket id -> when the entry goes stale."""
    return f"sockets:{sub}"


def session(session_id: str) -> str:
    """A device-approval auth session."""
    return f"session:{session_id}"


def device(device_id: str) -> str:
    """An enrolled device: its user, public key and TOTP secret."""
    return f"device:{device_id}"


def user_devices(user_id: str) -> str:
    """The user's enrolled devices, oldest first."""
    return f"user_devices:{user_id}"
