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


async def test_records(store: Store) -> None:
    assert await store.get_record("r") is None
    await store.create_record("r", {"status": "pending", "attempts": "0", "conn": "0"}, ttl=5)
    assert await store.get_record("r") == {"status": "pending", "attempts": "0", "conn": "0"}
    assert (await store.incr_field("r", "conn") or {})["conn"] == "1"
    assert await store.incr_field("missing", "conn") is None
    assert await store.get_record("missing") is None  # incr_field creates nothing


async def test_count_attempt_is_atomic_and_bounded(store: Store) -> None:
    await store.create_record("s", {"status": "pending", "attempts": "0"}, ttl=5)
    results = await asyncio.gather(*(store.count_attempt("s", limit=3) for _ in range(20)))
    outcomes = [outcome for outcome, _ in results]
    assert outcomes.count("counted") == 3 and outcomes.count("exhausted") == 17
    assert sorted(int(r["attempts"]) for o, r in results if o == "counted" and r) == [1, 2, 3]
    assert await store.count_attempt("nope", limit=3) == ("missing", None)
    assert await store.transition("s", from_status="pending", to_status="rejected")
    outcome, record = await store.count_attempt("s", limit=3)
    assert outcome == "resolved" and record is not None and record["status"] == "rejected"


async def test_transition_has_one_winner(store: Store) -> None:
    await store.create_record("t", {"status": "pending"}, ttl=5)
    wins = await asyncio.gather(
        *(store.transition("t", from_status="pending", to_status="approved") for _ in range(10))
    )
    assert wins.count(True) == 1
    assert not await store.transition("missing", from_status="pending", to_status="approved")


async def test_records_expire(store: Store) -> None:
    await store.create_record("e", {"status": "pending"}, ttl=0.2)
    await asyncio.sleep(0.35)
    assert await store.get_record("e") is None
    assert await store.incr_field("e", "conn") is None


async def test_append_keeps_order_without_duplicates(store: Store) -> None:
    assert await store.members("l") == []
    for member in ("b", "a", "b", "c"):
        await store.append("l", member, ttl=5)
    assert await store.members("l") == ["b", "a", "c"]
