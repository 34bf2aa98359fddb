"""The store contract, held by both engines (memory and a real redis-server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.store import MemoryStore, Store, create_store
from gateway.store.redis import RedisStore
from tests.support import RedisServer


@pytest.fixture
async def store(engine: str, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if engine == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        made = create_store(server.url)
        assert isinstance(made, RedisStore)
    else:
        made = create_store(None)
        assert isinstance(made, MemoryStore)
    yield made
    await made.close()


async def test_put_get_take(store: Store) -> None:
    await store.ping()
    await store.put("k", "v", ttl=5)
    assert await store.get("k") == "v"
    assert await store.take("k") == "v"
    assert await store.take("k") is None
    assert await store.get("k") is None


async def test_ttl(store: Store) -> None:
    await store.put("short", "v", ttl=0.2)
    await asyncio.sleep(0.35)
    assert await store.get("short") is None
    assert await store.take("short") is None


async def test_take_is_atomic(store: Store) -> None:
    await store.put("once", "v", ttl=5)
    results = await asyncio.gather(*(store.take("once") for _ in range(50)))
    assert results.count("v") == 1 and results.count(None) == 49


async def test_ttl_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.put("k", "v", ttl=0)


async def test_redis_keys_are_prefixed_and_expire(redis_server: RedisServer) -> None:
    import redis.asyncio as aioredis

    redis_server.flush()
    store = RedisStore(url=redis_server.url)
    await store.put("k", "v", ttl=30)
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert await client.keys("*") == ["tg:k"]
        assert 0 < await client.ttl("tg:k") <= 30
    finally:
        await client.aclose()
        await store.close()


async def test_memory_store_drops_expired_keys() -> None:
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    for i in range(100):
        await store.put(f"k{i}", "v", ttl=1)
    now[0] = 2.0
    await store.put("fresh", "v", ttl=1)
    assert len(store) == 1  # bounded by live keys, no sweeper task needed
