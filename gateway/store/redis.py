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
from gateway.store.base import Admission, Attempt, Rotation, Store, check_one_slot, check_ttl
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

    async def warm(self) -> None:
        await self._call(lambda: learn_slots(self._redis))

    async def close(self) -> None:
        await self._redis.aclose()
