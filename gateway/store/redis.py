"""The cluster engine: state in Redis through redis.asyncio (+ hiredis).

Multi-step updates are Lua scripts, which Redis runs atomically: one round
trip each, and no interleaving with another node's update of the same key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import StoreUnavailable
from gateway.store.base import PREFIX, Attempt, Store, check_ttl

T = TypeVar("T")

# Short timeouts: a dead Redis must turn into a fast 503/4503, not a hung connect.
_CONNECT_TIMEOUT = 1.0
_COMMAND_TIMEOUT = 2.0

_INCR_FIELD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return redis.call('HGETALL', KEYS[1])
"""
_COUNT_ATTEMPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then
  return {'resolved', redis.call('HGETALL', KEYS[1])}
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if attempts >= tonumber(ARGV[1]) then return {'exhausted', redis.call('HGETALL', KEYS[1])} end
redis.call('HSET', KEYS[1], 'attempts', attempts + 1)
return {'counted', redis.call('HGETALL', KEYS[1])}
"""
_TRANSITION = """
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
return 1
"""
_APPEND = """
if redis.call('LPOS', KEYS[1], ARGV[1]) == false then redis.call('RPUSH', KEYS[1], ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


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
    def __init__(self, *, url: str) -> None:
        self._redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=_CONNECT_TIMEOUT,
            socket_timeout=_COMMAND_TIMEOUT,
            health_check_interval=15,
            retry_on_timeout=False,
        )
        self._incr_field = self._redis.register_script(_INCR_FIELD)
        self._count_attempt = self._redis.register_script(_COUNT_ATTEMPT)
        self._transition = self._redis.register_script(_TRANSITION)
        self._append = self._redis.register_script(_APPEND)

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"redis unreachable: {type(exc).__name__}") from None

    async def ping(self) -> None:
        await self._call(self._redis.ping)

    async def put(self, key: str, value: str, *, ttl: float) -> None:
        await self._call(lambda: self._redis.set(PREFIX + key, value, px=_ms(ttl)))

    async def get(self, key: str) -> str | None:
        return _text(await self._call(lambda: self._redis.get(PREFIX + key)))

    async def take(self, key: str) -> str | None:
        # GETDEL (Redis >= 6.2) is atomic: one of N concurrent takers wins.
        return _text(await self._call(lambda: self._redis.getdel(PREFIX + key)))

    async def create_record(self, key: str, fields: Mapping[str, str], *, ttl: float) -> None:
        async def op() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(PREFIX + key)
                pipe.hset(PREFIX + key, mapping=cast(Any, dict(fields)))
                pipe.pexpire(PREFIX + key, _ms(ttl))
                await pipe.execute()

        await self._call(op)

    async def get_record(self, key: str) -> dict[str, str] | None:
        record = await self._call(lambda: cast(Awaitable[dict[str, str]], self._redis.hgetall(PREFIX + key)))
        return dict(record) or None

    async def incr_field(self, key: str, field: str) -> dict[str, str] | None:
        return _pairs(await self._call(lambda: self._incr_field(keys=[PREFIX + key], args=[field])))

    async def count_attempt(self, key: str, *, limit: int) -> tuple[Attempt, dict[str, str] | None]:
        result = await self._call(lambda: self._count_attempt(keys=[PREFIX + key], args=[limit]))
        outcome = cast(Attempt, _text(result[0]))
        return outcome, _pairs(result[1]) if len(result) > 1 else None

    async def transition(self, key: str, *, from_status: str, to_status: str) -> bool:
        done = await self._call(lambda: self._transition(keys=[PREFIX + key], args=[from_status, to_status]))
        return bool(done)

    async def append(self, key: str, member: str, *, ttl: float) -> None:
        await self._call(lambda: self._append(keys=[PREFIX + key], args=[member, _ms(ttl)]))

    async def members(self, key: str) -> list[str]:
        items = await self._call(lambda: cast(Awaitable[list[str]], self._redis.lrange(PREFIX + key, 0, -1)))
        return [str(_text(item)) for item in items]

    async def append_stream(self, key: str, fields: Mapping[str, str], *, maxlen: int, ttl: float) -> str:
        async def op() -> Any:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xadd(PREFIX + key, cast(Any, dict(fields)), maxlen=maxlen, approximate=True)
                pipe.pexpire(PREFIX + key, _ms(ttl))
                return (await pipe.execute())[0]

        return str(_text(await self._call(op)))

    async def read_stream(self, key: str, *, after: str = "0", count: int = 100) -> list[tuple[str, dict[str, str]]]:
        entries: Any = await self._call(lambda: self._redis.xrange(PREFIX + key, min=f"({after}", count=count))
        return [(str(_text(entry_id)), dict(fields)) for entry_id, fields in entries or []]

    async def close(self) -> None:
        await self._redis.aclose()
