"""Refresh tokens over the socket (seed 003): rotation with a cluster-wide
blacklist and reuse detection.

A refresh token is 256 random bits and its user's hash tag (the 8 bytes of
``gateway.store.keys.user_tag``), base64url as one string, stored only as
its SHA-256, in a family. The tag puts the token's record in its user's slot
(on a Redis Cluster every key one rotation touches must share a shard) and
is how the store finds it: a token that carries none is unknown.
Presenting one rotates it in one atomic store step: the old token is marked
rotated (the blacklist entry, kept until it would have expired) and a new one
issued. Presenting a rotated token again is reuse: the family is revoked and
every socket bound to it (room ``family:<id>``, on any node) is closed with
4011 ``refresh_reuse``. Two concurrent rotations of one token: one rotates,
the other is reuse. Any store failure fails closed.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway import closes
from gateway.auth.tokens import Principal
from gateway.errors import InvalidToken, RefreshReuse, Revoked
from gateway.formats import b64url, b64url_decode, is_canonical_b64url
from gateway.realtime import Fanout, family_room, user_room
from gateway.store import Store, keys

_TOKEN_BYTES = 32
_TAG_BYTES = 8  # a user tag's 16 hex digits


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token(sub: str) -> str:
    # One base64url string (PROTOCOL §6.2), not "<random>.<tag>": a client sees an opaque token.
    return b64url(secrets.token_bytes(_TOKEN_BYTES) + bytes.fromhex(keys.user_tag(sub)))


def _record_key(token: str) -> str | None:
    """The store key of a presented token's record, or None if it carries no user tag."""
    if not is_canonical_b64url(token):
        return None
    raw = b64url_decode(token)
    if len(raw) != _TOKEN_BYTES + _TAG_BYTES:
        return None
    return keys.refresh(raw[_TOKEN_BYTES:].hex(), token_hash(token))


@dataclass(frozen=True, kw_only=True)
class IssuedRefresh:
    token: str
    hash: str
    family: str
    expires_at: float


@dataclass(frozen=True, kw_only=True)
class Rotated:
    """A successful rotation: who the old token spoke for, and its successor."""

    sub: str
    claims: Mapping[str, Any]
    issued: IssuedRefresh


class RefreshService:
    def __init__(self, *, store: Store, fanout: Fanout, ttl: float) -> None:
        self._store = store
        self._fanout = fanout
        self.ttl = ttl

    def _record(self, *, sub: str, family: str, claims: Mapping[str, Any], now: float) -> dict[str, str]:
        return {
            "sub": sub,
            "family": family,
            "iat": repr(now),
            "exp": repr(now + self.ttl),
            "state": "active",
            "claims": json.dumps(dict(claims)),
        }

    async def start_family(self, principal: Principal) -> IssuedRefresh:
        """A new family and its first token, for a socket's first authentication."""
        now = time.time()
        sub = principal.sub
        family = secrets.token_urlsafe(12)
        token = _new_token(sub)
        record = self._record(sub=sub, family=family, claims=principal.claims, now=now)
        family_record = {"sub": sub, "status": "active"}
        # One user's keys: one slot, as create_records needs.
        await self._store.create_records(
            {keys.family(sub, family): family_record, keys.refresh(keys.user_tag(sub), token_hash(token)): record},
            ttl=self.ttl,
        )
        return IssuedRefresh(token=token, hash=token_hash(token), family=family, expires_at=now + self.ttl)

    async def rotate(self, token: object, *, sub: str | None = None) -> Rotated:
        """Rotate a presented token; raise InvalidToken, Revoked or RefreshReuse.

        With ``sub`` (the `refresh` event of an authenticated socket) a live
        token of another user is refused and left unused; an already rotated
        one still counts as reuse, wherever it is presented."""
        if not isinstance(token, str) or not 16 <= len(token) <= 128:
            raise InvalidToken("malformed refresh token")
        key = _record_key(token)
        if key is None:  # no user tag: no record can be its
            raise InvalidToken("unknown or expired refresh token")
        rotated = await self._rotate(key, sub=sub)
        if rotated is None:  # only a renewal can be stale
            raise InvalidToken("unknown or expired refresh token")
        return rotated

    async def renew(self, sub: str, old_hash: str) -> Rotated | None:
        """The gateway pushing a successor of the token (by hash) it bound to a
        socket of ``sub``, before expiry. A token a client already rotated is
        left alone: None."""
        return await self._rotate(keys.refresh(keys.user_tag(sub), old_hash), renewal=True)

    async def _rotate(self, old_key: str, *, renewal: bool = False, sub: str | None = None) -> Rotated | None:
        now = time.time()
        old = await self._store.get_record(old_key)
        if old is None:
            raise InvalidToken("unknown or expired refresh token")
        # A record's sub never changes, so this read needs no lock.
        if sub is not None and old["sub"] != sub and old["state"] == "active":
            raise InvalidToken("this refresh token belongs to another user")
        family, sub = old["family"], old["sub"]
        token = _new_token(sub)
        new_hash = token_hash(token)
        claims = json.loads(old["claims"])
        fields = self._record(sub=sub, family=family, claims=claims, now=now)
        outcome, _ = await self._store.rotate(
            old_key,
            keys.refresh(keys.user_tag(sub), new_hash),
            family_key=keys.family(sub, family),
            fields=fields,
            ttl=self.ttl,
            revoked_key=keys.revoked(sub),
            renewal=renewal,
        )
        if outcome == "stale":
            return None
        if outcome == "missing":
            raise InvalidToken("unknown or expired refresh token")
        if outcome == "reuse":
            await self._fanout.close_room(family_room(family), closes.REFRESH_REUSE, via=user_room(sub))
            raise RefreshReuse("this refresh token was already used: its family is revoked")
        if outcome == "revoked":
            raise Revoked("this refresh token is revoked")
        issued = IssuedRefresh(token=token, hash=new_hash, family=family, expires_at=now + self.ttl)
        return Rotated(sub=sub, claims=claims, issued=issued)
