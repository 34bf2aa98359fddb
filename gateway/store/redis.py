"""The cluster engine: state in Redis through redis.asyncio (+ hiredis)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import StoreUnavailable
from gateway.store.base import PREFIX, Store, check_ttl

T = TypeVar("T")

# Short timeouts: a dead Redis must turn into a fast 503/4503, not a hung connect.
_CONNECT_TIMEOUT = 1.0
_COMMAND_TIMEOUT = 2.0


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


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

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"redis unreachable: {type(exc).__name__}") from None

    async def ping(self) -> None:
        await self._call(self._redis.ping)

    async def put(self, key: str, value: str, *, ttl: float) -> None:
        check_ttl(ttl)
        await self._call(lambda: self._redis.set(PREFIX + key, value, px=max(1, int(ttl * 1000))))

    async def get(self, key: str) -> str | None:
        return _text(await self._call(lambda: self._redis.get(PREFIX + key)))

    async def take(self, key: str) -> str | None:
        # GETDEL (Redis >= 6.2) is atomic: one of N concurrent takers wins.
        return _text(await self._call(lambda: self._redis.getdel(PREFIX + key)))

    async def close(self) -> None:
        await self._redis.aclose()
