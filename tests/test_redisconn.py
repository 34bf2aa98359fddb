"""gateway/redisconn.py on a real three-master Redis Cluster: a gateway's cluster
clients know the slot map before it listens, so the first burst of commands
(every client reconnecting to a node that just started) is served."""

from __future__ import annotations

import asyncio

import pytest

from gateway import keys
from gateway.store import keys as store_keys
from tests.conftest import MakeGateway
from tests.support import RedisCluster

pytestmark = pytest.mark.timeout(60)

BURST = 50


@pytest.mark.parametrize("engine", ["redis"])
async def test_a_gateway_just_started_on_a_cluster_serves_a_burst(
    make_gateway: MakeGateway, redis_cluster: RedisCluster
) -> None:
    """Regression: redis-py's cluster client read the slot map on its first
    command, and the commands sent with that one failed (ConnectionError:
    4503; AttributeError, which no handler caught: a connect never answered)."""
    redis_cluster.flush()
    gateway = await make_gateway(redis_url=redis_cluster.url, redis_cluster=True)
    store, limits = gateway.app[keys.store], gateway.app[keys.rate_limits]
    results = await asyncio.gather(
        *(store.take(store_keys.ticket(f"{n:064x}")) for n in range(BURST)),
        *(limits.connect(f"10.0.{n}.1") for n in range(BURST)),
        return_exceptions=True,
    )
    assert [result for result in results if result is not None] == []
