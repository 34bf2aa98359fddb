"""Every key name of the store, built here and nowhere else.

Services and both engines call these; the engines add the ``tg:`` prefix
(``PREFIX``). Lua scripts never build a key: each one they touch is passed in
``KEYS``.

On a Redis Cluster every key a script touches must live in one hash slot, so
the keys of one user carry the user's hash tag ``{u:<tag>}`` (``user_tag``:
the first 16 hex digits of the SHA-256 of the ``sub``): the revocation
cut-off, parked events, live-socket registry, refresh-token records and
refresh-token families. The ``sub`` itself follows the tag where the key is
the user's, so two users whose tags collide still have keys of their own.
A refresh-token record is found by the token alone, so the token carries its
user's tag (``gateway.auth.refresh``). Every other key is touched alone and
has no tag: it hashes whole, which spreads tickets and sessions over the
shards.
"""

from __future__ import annotations

import hashlib
import re

PREFIX = "tg:"

UPSTREAM = "upstream"  # messages from clients to rooms, for backend consumers (a stream)

_TAG = re.compile(r"[0-9a-f]{16}")
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]+")
_PID_TAG = re.compile(r"u:[0-9a-f]{16}|session:[A-Za-z0-9_-]+")


def user_tag(sub: str) -> str:
    """The user's hash tag (16 hex digits): every key of the user shares its slot."""
    return hashlib.sha256(sub.encode()).hexdigest()[:16]


def _user(tag: str) -> str:
    if _TAG.fullmatch(tag) is None:
        raise ValueError("a user tag is 16 lowercase hex digits")
    return "{u:" + tag + "}"


def slot_tag(key: str) -> str:
    """What Redis Cluster hashes to place ``key``: its hash tag (the text between
    the first ``{`` and the next ``}``, if not empty), else the whole key. Keys
    of one multi-key operation must share it. The ``tg:`` prefix has no braces,
    so a key's tag is the same with or without it."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1 : end] if end > start + 1 else key


def ticket(digest: str) -> str:
    """A ticket record, by the SHA-256 of the ticket (the ticket itself is never stored)."""
    return f"ticket:{digest}"


def refresh(tag: str, digest: str) -> str:
    """A refresh-token record, by its user's tag (carried by the token) and the SHA-256 of the token."""
    return f"refresh:{_user(tag)}:{digest}"


def family(sub: str, family_id: str) -> str:
    """A refresh-token family of ``sub``: its user and whether it is revoked."""
    return f"family:{_user(user_tag(sub))}:{family_id}"


def revoked(sub: str) -> str:
    """The user's revocation cut-off (unix seconds): credentials issued before it are dead."""
    return f"revoked:{_user(user_tag(sub))}:{sub}"


def parked(sub: str) -> str:
    """Held events of the user's closed sockets, oldest first, for their next socket."""
    return f"parked:{_user(user_tag(sub))}:{sub}"


def sockets(sub: str) -> str:
    """The user's live sockets: socket id -> when the entry goes stale."""
    return f"sockets:{_user(user_tag(sub))}:{sub}"


def session(session_id: str) -> str:
    """A device-approval auth session."""
    return f"session:{session_id}"


def device(device_id: str) -> str:
    """An enrolled device: its user, public key and TOTP secret."""
    return f"device:{device_id}"


def user_devices(user_id: str) -> str:
    """The user's enrolled devices, oldest first."""
    return f"user_devices:{user_id}"


def history(room: str) -> str:
    """A room's recent events (a stream), for connection state recovery. The
    room is its hash tag, as in the room's fan-out channel: both share a slot."""
    return f"hist:{{{room}}}"


HISTORY_CLOCK = "hist:clock"  # one Redis: the last event id given, shared by every room


def recovery(pid: str) -> str:
    """A socket's recovery record, by its pid: who it was, its rooms, its state.

    A pid the gateway gives (``recovery_pid``) starts with a hash tag and a dot,
    so that on a Redis Cluster the record lives on a shard the socket's connect
    needs anyway: its user's keys, or its auth session's room. (With a random
    slot, a shard down would refuse a third of all connects, not only those of
    the users whose keys it holds.) Any other pid, a client's invention, hashes
    whole, and finds no record."""
    tag, dot, _ = pid.partition(".")
    if dot and _PID_TAG.fullmatch(tag):
        return f"recovery:{{{tag}}}:{pid}"
    return f"recovery:{pid}"


def recovery_pid(nonce: str, *, sub: str | None = None, session_id: str | None = None) -> str:
    """A new pid for a socket of ``sub`` or of the auth session ``session_id``:
    ``nonce`` (URL-safe, no dot) after the hash tag its record goes by (``recovery``)."""
    if sub is not None:
        return f"u:{user_tag(sub)}.{nonce}"
    if session_id is not None and _SESSION_ID.fullmatch(session_id):
        return f"session:{session_id}.{nonce}"  # the slot of the session room's channel and history
    return nonce


def node(name: str) -> str:
    """A node's heartbeat: when it last said it was alive (unix seconds)."""
    return f"node:{name}"


def presence(room: str) -> list[str]:
    """A room's presence (``user:<sub>`` or a tracked ``room:<name>``), in the
    order lua/presence.lua takes them: its members (sorted by name), their
    connection counts, each node's part of them, the nodes' leases, and the
    room's totals. The room is their hash tag, as in its history's key."""
    base = f"presence:{{{room}}}"
    return [f"{base}:members", f"{base}:counts", f"{base}:owned", f"{base}:leases", f"{base}:meta"]


# Presence work that falls due at a time: a node's lease in a room running out,
# a pending room.vacated / user.offline at the end of offline_grace (ZSET).
PRESENCE_DUE = "presence:due"
