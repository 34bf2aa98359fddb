"""The cluster engine: state in Redis through redis.asyncio (+ hiredis), on
one Redis, the master a Sentinel names, or a Redis Cluster.

Multi-step updates are Lua scripts (``lua/<name>.lua``, loaded once at start),
which Redis runs atomically: one round trip each, and no interleaving with
another node's update of the same key. A script touches only the keys passed
in ``KEYS``, all of one hash slot (``gateway.store.keys``), so that a cluster
runs it on the shard that holds them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterError, RedisClusterException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import StoreUnavailable
from gateway.redisconn import RedisTarget, Script, learn_slots
from gateway.store import keys
from gateway.store.base import (
    Admission,
    Attempt,
    PresenceChange,
    PresencePage,
    Rotation,
    Store,
    check_one_slot,
    check_ttl,
)
from gateway.store.keys import PREFIX

T = TypeVar("T")

CLIENT_NAME = "ticketgate-store"  # its Redis connections, as CLIENT LIST shows them
# What a store operation meets when its keys' Redis cannot serve it. On a
# cluster also ClusterDownError (a shard's slots are not served) and
# RedisClusterException (no node answers to load the slot map, a slot without
# a node): misuse that would raise the latter, keys of several slots in one
# script, is refused before anything is sent (ValueError).
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError, ClusterError, RedisClusterException)


def _script(name: str) -> str:
    return resources.files("gateway.store").joinpath("lua", f"{name}.lua").read_text()


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _pairs(flat: list[Any] | None) -> dict[str, str] | None:
    if not flat:
        return None
    return {str(_text(flat[i])): str(_text(flat[i + 1])) for i in range(0, len(flat), 2)}


def _ms(ttl: float) -> int:
    check_ttl(ttl)
    return max(1, int(ttl * 1000))


class RedisStore(Store):
    def __init__(self, *, target: RedisTarget) -> None:
        self.target = target
        self._redis = target.client(decode_responses=True, name=CLIENT_NAME)

        def script(name: str) -> Script:
            return Script(self._redis, _script(name))

        self._create_records = script("create_records")
        self._incr_field = script("incr_field")
        self._count_attempt = script("count_attempt")
        self._transition = script("transition")
        self._append = script("append")
        self._append_stream = script("append_stream")
        self._admit = script("admit")
        self._disconnect_user = script("disconnect_user")
        self._park = script("park")
        self._rotate = script("rotate")
        self._presence = script("presence")
        self._presence_due = script("presence_due")

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis unreachable: {type(exc).__name__}") from None

    async def ping(self) -> None:
        if not isinstance(self._redis, RedisCluster):
            await self._call(self._redis.ping)
            return
        # A cluster is ready while any of its primaries answers: a shard that is
        # down fails the operations on its own keys (StoreUnavailable), the same
        # on every node, so taking the nodes out of a balancer would only turn
        # part of an outage into all of it.
        client = self._redis
        await self._call(client.initialize)
        answers = await asyncio.gather(
            *(client.execute_command("PING", target_nodes=node) for node in client.get_primaries()),
            return_exceptions=True,
        )
        if not any(answer is True for answer in answers):
            raise StoreUnavailable("redis unreachable: no primary of the cluster answers")

    async def put(self, key: str, value: str, *, ttl: float) -> None:
        await self._call(lambda: self._redis.set(PREFIX + key, value, px=_ms(ttl)))

    async def take(self, key: str) -> str | None:
        # GETDEL (Redis >= 6.2) is atomic: one of N concurrent takers wins.
        return _text(await self._call(lambda: self._redis.getdel(PREFIX + key)))

    async def create_records(self, records: Mapping[str, Mapping[str, str]], *, ttl: float) -> None:
        # One script rather than a MULTI pipeline of three commands a record:
        # redis-py's client spends as much CPU per command as the round trip costs.
        check_one_slot(records)
        names = [PREFIX + key for key in records]
        args: list[Any] = [_ms(ttl)]
        for fields in records.values():
            if not fields:
                raise ValueError("a record needs at least one field")
            args.append(len(fields))
            for name, value in fields.items():
                args += [name, value]
        await self._call(lambda: self._create_records(keys=names, args=args))

    async def get_record(self, key: str) -> dict[str, str] | None:
        record = await self._call(lambda: cast(Awaitable[dict[str, str]], self._redis.hgetall(PREFIX + key)))
        return dict(record) or None

    async def incr_field(self, key: str, field: str) -> dict[str, str] | None:
        return _pairs(await self._call(lambda: self._incr_field(keys=[PREFIX + key], args=[field])))

    async def count_attempt(self, key: str, *, limit: int) -> tuple[Attempt, dict[str, str] | None]:
        result = await self._call(lambda: self._count_attempt(keys=[PREFIX + key], args=[limit]))
        outcome = cast(Attempt, _text(result[0]))
        return outcome, _pairs(result[1]) if len(result) > 1 else None

    async def transition(self, key: str, *, from_status: str, to_status: str, ttl: float | None = None) -> bool:
        args: list[Any] = [from_status, to_status, *([] if ttl is None else [_ms(ttl)])]
        done = await self._call(lambda: self._transition(keys=[PREFIX + key], args=args))
        return bool(done)

    async def append(self, key: str, member: str, *, ttl: float) -> None:
        await self._call(lambda: self._append(keys=[PREFIX + key], args=[member, _ms(ttl)]))

    async def members(self, key: str) -> list[str]:
        items = await self._call(lambda: cast(Awaitable[list[str]], self._redis.lrange(PREFIX + key, 0, -1)))
        return [str(_text(item)) for item in items]

    async def append_stream(self, key: str, fields: Mapping[str, str], *, maxlen: int, ttl: float) -> str:
        args: list[Any] = [maxlen, _ms(ttl)]
        for name, value in fields.items():
            args += [name, value]
        return str(_text(await self._call(lambda: self._append_stream(keys=[PREFIX + key], args=args))))

    async def admit(self, *, sub: str, iat: float, sid: str, until: float, ttl: float) -> Admission:
        names = [PREFIX + keys.revoked(sub), PREFIX + keys.parked(sub), PREFIX + keys.sockets(sub)]
        args: list[Any] = [repr(iat), sid, repr(until), _ms(ttl), repr(time.time())]
        revoked, parked = await self._call(lambda: self._admit(keys=names, args=args))
        return Admission(revoked=bool(revoked), parked=[str(_text(p)) for p in parked])

    async def is_revoked(self, sub: str, iat: float) -> bool:
        cutoff = await self._call(lambda: self._redis.get(PREFIX + keys.revoked(sub)))
        return cutoff is not None and iat < float(cutoff)

    async def forget_socket(self, sub: str, sid: str) -> None:
        await self._call(lambda: self._redis.zrem(PREFIX + keys.sockets(sub), sid))

    async def disconnect_user(self, sub: str, *, now: float, revoke: bool, ttl: float) -> int:
        names = [PREFIX + keys.sockets(sub), PREFIX + keys.revoked(sub)]
        args = [repr(now), "1" if revoke else "0", _ms(ttl)]
        return int(await self._call(lambda: self._disconnect_user(keys=names, args=args)))

    async def park(self, sub: str, events: Sequence[str], *, cap: int, ttl: float) -> int:
        args: list[Any] = [cap, _ms(ttl), *events]
        return int(await self._call(lambda: self._park(keys=[PREFIX + keys.parked(sub)], args=args)))

    async def rotate(
        self,
        old_key: str,
        new_key: str,
        *,
        family_key: str,
        fields: Mapping[str, str],
        ttl: float,
        revoked_key: str,
        renewal: bool = False,
    ) -> tuple[Rotation, dict[str, str] | None]:
        check_one_slot([old_key, new_key, family_key, revoked_key])
        names = [PREFIX + old_key, PREFIX + new_key, PREFIX + family_key, PREFIX + revoked_key]
        args: list[Any] = [_ms(ttl), "1" if renewal else "0"]
        for name, value in fields.items():
            args += [name, value]
        result: Any = await self._call(lambda: self._rotate(keys=names, args=args))
        outcome = cast(Rotation, _text(result[0]))
        return outcome, _pairs(result[1]) if len(result) > 1 else None

    # -- presence ------------------------------------------------------------------

    async def _room(
        self, room: str, op: str, *, node: str, ttl: float, grace: float, args: Sequence[Any] = ()
    ) -> tuple[PresenceChange, list[Any], int]:
        """Run lua/presence.lua on ``room``: the change, the page (read) and Redis's time (ms)."""
        names = [PREFIX + key for key in keys.presence(room)]
        check_one_slot(names)
        argv: list[Any] = [op, node, _ms(ttl), _presence_keep(ttl, grace), int(grace * 1000), *args]
        flags, entered, left, page = await self._call(lambda: self._presence(keys=names, args=argv))
        refused, occupied, vacating, vacated, new_lease, lost, conns, _users, now = flags
        change = PresenceChange(
            room=room,
            entered=tuple(str(_text(sub)) for sub in entered),
            left=tuple(str(_text(sub)) for sub in left),
            occupied=bool(occupied),
            vacated=bool(vacated),
            refused=bool(refused),
            lost=bool(lost),
            connections=int(conns),
        )
        due: dict[str, int] = {}
        if new_lease:
            due[_due_entry("l", node, room)] = int(now) + _ms(ttl)
        if vacating:
            due[_due_entry("v", str(_text(vacating)), room)] = int(vacating)
        if due:
            await self._index(due, ttl=ttl, grace=grace)
        return change, [*flags, page], int(now)

    async def _index(self, due: Mapping[str, int], *, ttl: float, grace: float) -> None:
        """Note work that falls due (entry -> unix ms) in the index presence_sweep reads."""
        name = PREFIX + keys.PRESENCE_DUE
        keep = _presence_keep(ttl, grace)

        async def write() -> None:
            # A key of its own slot: not in the room's script (Redis Cluster), one more command.
            await self._redis.zadd(name, dict(due))
            await self._redis.pexpire(name, keep)

        await self._call(write)

    async def presence_enter(
        self, room: str, sub: str, *, node: str, ttl: float, grace: float, limit: int = 0
    ) -> PresenceChange:
        change, _, _ = await self._room(room, "enter", node=node, ttl=ttl, grace=grace, args=[sub, limit])
        return change

    async def presence_leave(self, room: str, sub: str, *, node: str, ttl: float, grace: float) -> PresenceChange:
        change, _, _ = await self._room(room, "leave", node=node, ttl=ttl, grace=grace, args=[sub])
        return change

    async def presence_beat(self, rooms: Sequence[str], *, node: str, ttl: float, grace: float) -> list[PresenceChange]:
        changes: list[PresenceChange] = []
        due: dict[str, int] = {}
        # A bounded number at once: a node with many rooms does not take every pooled connection.
        for start in range(0, len(rooms), BEAT_CONCURRENCY):
            chunk = rooms[start : start + BEAT_CONCURRENCY]
            results = await asyncio.gather(
                *(self._room(room, "beat", node=node, ttl=ttl, grace=grace) for room in chunk)
            )
            for room, (change, _, now) in zip(chunk, results, strict=True):
                changes.append(change)
                if not change.lost:
                    due[_due_entry("l", node, room)] = now + _ms(ttl)
        if due:
            await self._index(due, ttl=ttl, grace=grace)
        return changes

    async def presence_sync(
        self, room: str, held: Mapping[str, int], *, node: str, ttl: float, grace: float
    ) -> PresenceChange:
        args: list[Any] = []
        for sub, count in held.items():
            args += [sub, count]
        change, _, _ = await self._room(room, "sync", node=node, ttl=ttl, grace=grace, args=args)
        return change

    async def presence_read(
        self, room: str, *, after: str | None, limit: int, ttl: float, grace: float
    ) -> tuple[PresencePage, PresenceChange]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        change, flags, _ = await self._room(room, "read", node="", ttl=ttl, grace=grace, args=[after or "", limit])
        flat = flags[-1]
        members = [(str(_text(flat[i])), int(flat[i + 1])) for i in range(0, len(flat), 2)]
        page = PresencePage(
            users=int(flags[7]), connections=change.connections, members=members[:limit], more=len(members) > limit
        )
        return page, change

    async def presence_sweep(self, *, ttl: float, grace: float, batch: int = 100) -> list[PresenceChange]:
        name = PREFIX + keys.PRESENCE_DUE
        args = [batch, _ms(ttl), _presence_keep(ttl, grace)]
        claimed = await self._call(lambda: self._presence_due(keys=[name], args=args))
        changes: list[PresenceChange] = []
        done: list[str] = []
        for raw in claimed:
            entry = str(_text(raw))
            kind, detail, room = json.loads(entry)
            marker = detail if kind == "v" else ""
            change, _, _ = await self._room(room, "settle", node="", ttl=ttl, grace=grace, args=[marker])
            changes.append(change)
            done.append(entry)
        if done:
            await self._call(lambda: self._redis.zrem(name, *done))
        return changes

    async def warm(self) -> None:
        await self._call(lambda: learn_slots(self._redis))

    async def close(self) -> None:
        await self._redis.aclose()


BEAT_CONCURRENCY = 64  # presence_beat's scripts in flight at once


def _presence_keep(ttl: float, grace: float) -> int:
    """How long (ms) a room's presence keys outlive their last write: past every
    lease (``ttl``) and a pending vacate (``grace``), with a margin."""
    return _ms(2 * ttl + grace)


def _due_entry(kind: str, detail: str, room: str) -> str:
    """An entry of the due index: ``l`` (a node's lease, ``detail`` the node) or
    ``v`` (a vacate, ``detail`` its deadline), in a room. JSON: rooms and
    node names may hold any separator."""
    return json.dumps([kind, detail, room], separators=(",", ":"))
