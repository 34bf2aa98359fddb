"""The engines the store contract runs on: memory, and the redis engine on one
Redis, on a three-master Redis Cluster and on the master a Sentinel names,
each a real server started once per session."""

from __future__ import annotations

import pytest

from gateway.redisconn import RedisTarget
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
