"""The cluster engine: state in Redis through redis.asyncio (+ hiredis).

Multi-step updates are Lua scripts (``lua/<name>.lua``, loaded once at start),
which Redis runs atomically: one round trip each, and no interleaving with
another node's update of the same key. A script touches only the keys passed
in ``KEYS``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import StoreUnavailable
from gateway.store import keys
from gateway.store.base import Admission, Attempt, Rotation, Store, check_one_slot, check_ttl
from gateway.store.keys import PREFIX

T = TypeVar("T")

# Short timeouts: a dead Redis must turn into a fast 503/4503, not a hung connect.
_CONNECT_TIMEOUT = 1.0
_COMMAND_TIMEOUT = 2.0


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
    def __init__(self, *, url: str) -> None:
        self.url = url
        self._redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=_CONNECT_TIMEOUT,
            socket_timeout=_COMMAND_TIMEOUT,
            health_check_interval=15,
            retry_on_timeout=False,
        )
        register = self._redis.register_script
        self._create_records = register(_script("create_records"))
        self._incr_field = register(_script("incr_field"))
        self._count_attempt = register(_script("count_attempt"))
        self._transition = register(_script("transition"))
        self._append = register(_script("append"))
        self._admit = register(_script("admit"))
        self._disconnect_user = register(_script("disconnect_user"))
        self._park = register(_script("park"))
        self._rotate = register(_script("rotate"))

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"redis unreachable: {type(exc).__name__}") from None

    async def ping(self) -> None:
        await self._call(self._redis.ping)

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

    async def close(self) -> None:
        await self._redis.aclose()
