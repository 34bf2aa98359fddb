"""The cluster engine: state in Redis through redis.asyncio (+ hiredis).

Multi-step updates are Lua scripts, which Redis runs atomically: one round
trip each, and no interleaving with another node's update of the same key.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import StoreUnavailable
from gateway.store.base import PREFIX, Admission, Attempt, Rotation, Store, check_ttl

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


# The user's keys are derived from the ticket's sub inside the script, so
# this script needs a single Redis (or Sentinel), not Redis Cluster.
_ADMIT = """
local ticket = false
local sub = ARGV[1]
local iat = tonumber(ARGV[2])
if KEYS[1] ~= '' then
  ticket = redis.call('GETDEL', KEYS[1])
  if not ticket then return false end
  local record = cjson.decode(ticket)
  sub = record['sub']
  iat = tonumber(record['iat'])
end
local p = ARGV[7]
local cutoff = redis.call('GET', p .. 'revoked:' .. sub)
if cutoff and iat < tonumber(cutoff) then return {ticket, 1, {}} end
local parked_key = p .. 'parked:' .. sub
local parked = redis.call('LRANGE', parked_key, 0, -1)
redis.call('DEL', parked_key)
local sockets_key = p .. 'sockets:' .. sub
redis.call('ZREMRANGEBYSCORE', sockets_key, '-inf', '(' .. ARGV[6])
redis.call('ZADD', sockets_key, ARGV[4], ARGV[3])
redis.call('PEXPIRE', sockets_key, ARGV[5])
return {ticket, 0, parked}
"""
_DISCONNECT_USER = """
local n = redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf')
redis.call('DEL', KEYS[1])
if ARGV[2] == '1' then
  local current = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tonumber(ARGV[1]) > current then
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  else
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
  end
end
return n
"""
_PARK = """
for i = 3, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
local length = redis.call('LLEN', KEYS[1])
local dropped = 0
if length > tonumber(ARGV[1]) then
  dropped = length - tonumber(ARGV[1])
  redis.call('LTRIM', KEYS[1], dropped, -1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return dropped
"""
_ROTATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local record = redis.call('HGETALL', KEYS[1])
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then
  if ARGV[2] == '1' then return {'stale', record} end
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HSET', KEYS[3], 'status', 'revoked') end
  return {'reuse', record}
end
if redis.call('HGET', KEYS[3], 'status') ~= 'active' then return {'revoked', record} end
local cutoff = redis.call('GET', KEYS[4])
if cutoff and tonumber(redis.call('HGET', KEYS[1], 'iat')) < tonumber(cutoff) then
  return {'revoked', record}
end
redis.call('HSET', KEYS[1], 'state', 'rotated')
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[1])
return {'rotated', record}
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
        self._admit = self._redis.register_script(_ADMIT)
        self._disconnect_user = self._redis.register_script(_DISCONNECT_USER)
        self._park = self._redis.register_script(_PARK)
        self._rotate = self._redis.register_script(_ROTATE)

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

    async def create_records(self, records: Mapping[str, Mapping[str, str]], *, ttl: float) -> None:
        async def op() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                for key, fields in records.items():
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

    async def admit(
        self, *, sub: str | None, iat: float, sid: str, until: float, ttl: float, ticket_key: str | None = None
    ) -> Admission | None:
        if sub is None and ticket_key is None:
            raise ValueError("admit needs a sub or a ticket")
        keys = [PREFIX + ticket_key if ticket_key is not None else ""]
        args: list[Any] = [sub or "", repr(iat), sid, repr(until), _ms(ttl), repr(time.time()), PREFIX]
        result: Any = await self._call(lambda: self._admit(keys=keys, args=args))
        if result is None:
            return None
        ticket, revoked, parked = result
        return Admission(ticket=_text(ticket), revoked=bool(revoked), parked=[str(_text(p)) for p in parked])

    async def is_revoked(self, sub: str, iat: float) -> bool:
        cutoff = await self.get(f"revoked:{sub}")
        return cutoff is not None and iat < float(cutoff)

    async def forget_socket(self, sub: str, sid: str) -> None:
        await self._call(lambda: self._redis.zrem(f"{PREFIX}sockets:{sub}", sid))

    async def disconnect_user(self, sub: str, *, now: float, revoke: bool, ttl: float) -> int:
        keys = [f"{PREFIX}sockets:{sub}", f"{PREFIX}revoked:{sub}"]
        args = [repr(now), "1" if revoke else "0", _ms(ttl)]
        return int(await self._call(lambda: self._disconnect_user(keys=keys, args=args)))

    async def park(self, sub: str, events: Sequence[str], *, cap: int, ttl: float) -> int:
        args: list[Any] = [cap, _ms(ttl), *events]
        return int(await self._call(lambda: self._park(keys=[f"{PREFIX}parked:{sub}"], args=args)))

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
        keys = [PREFIX + old_key, PREFIX + new_key, PREFIX + family_key, PREFIX + revoked_key]
        args: list[Any] = [_ms(ttl), "1" if renewal else "0"]
        for name, value in fields.items():
            args += [name, value]
        result: Any = await self._call(lambda: self._rotate(keys=keys, args=args))
        outcome = cast(Rotation, _text(result[0]))
        return outcome, _pairs(result[1]) if len(result) > 1 else None

    async def close(self) -> None:
        await self._redis.aclose()
