"""The engines the store contract runs on: memory, and the redis engine on one
Redis, on a three-master Redis Cluster and on the master a Sentinel names,
each a real server started once per session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.redisconn import Client, RedisTarget
from gateway.store import MemoryStore, Store, create_store
from gateway.store.redis import RedisStore
from tests.support import RedisCluster, RedisSentinel, RedisServer

ENGINES = ["memory", "redis", "cluster", "sentinel"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def target(engine: str, request: pytest.FixtureRequest) -> RedisTarget | None:
    """Where ``engine`` keeps its state, emptied (None: the memory engine)."""
    if engine == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        return RedisTarget(server.url)
    if engine == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        return RedisTarget(cluster.url, cluster=True)
    if engine == "sentinel":
        sentinel: RedisSentinel = request.getfixturevalue("redis_sentinel")
        sentinel.flush()
        return RedisTarget(sentinel.url)
    return None


@pytest.fixture
async def store(target: RedisTarget | None) -> AsyncIterator[Store]:
    made = create_store(target)
    assert isinstance(made, MemoryStore if target is None else RedisStore)
    yield made
    await made.close()


@pytest.fixture
async def observer(target: RedisTarget | None) -> AsyncIterator[Client]:
    """A client of the redis engine's Redis of its own, to look at what the store wrote."""
    if target is None:
        pytest.skip("the memory engine has no Redis to look at")
    client = target.client(decode_responses=True)
    yield client
    await client.aclose()
