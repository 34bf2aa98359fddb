"""The redis engine on a real three-master Redis Cluster: a stopped shard fails the
operations on its keys fast, the others keep working, and it comes back by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from gateway.errors import StoreUnavailable
from gateway.realtime.broker import room_channel
from gateway.redisconn import RedisTarget
from gateway.store import PREFIX, Store, create_store, keys
from tests.support import RedisCluster

FAST = 3.0  # seconds: a dead shard must be a quick 503/4503, not a hung request


@pytest.fixture
async def store(redis_cluster: RedisCluster) -> AsyncIterator[Store]:
    redis_cluster.flush()
    made = create_store(RedisTarget(redis_cluster.url, cluster=True))
    yield made
    await made.close()


def user_on(cluster: RedisCluster, node: int) -> str:
    """A sub whose keys live on master ``node``."""
    return next(
        sub for sub in (f"user{n}" for n in range(10_000)) if cluster.node_for_key(PREFIX + keys.sockets(sub)) == node
    )


def key_on(cluster: RedisCluster, node: int) -> str:
    """A ticket key that lives on master ``node``."""
    return next(
        key for key in (keys.ticket(f"{n:064x}") for n in range(10_000)) if cluster.node_for_key(PREFIX + key) == node
    )


async def admit(store: Store, sub: str, sid: str) -> list[str]:
    now = time.time()
    admission = await store.admit(sub=sub, iat=now, sid=sid, until=now + 60, ttl=60)
    assert not admission.revoked
    return admission.parked


async def test_a_users_keys_live_on_one_shard_and_users_spread(redis_cluster: RedisCluster) -> None:
    users = [f"user{n}" for n in range(30)]
    for sub in users:
        nodes = {
            redis_cluster.node_for_key(PREFIX + key)
            for key in (keys.sockets(sub), keys.parked(sub), keys.revoked(sub), keys.family(sub, "f"))
        }
        assert len(nodes) == 1
    assert {redis_cluster.node_for_key(PREFIX + keys.sockets(sub)) for sub in users} == {0, 1, 2}


def test_a_sockets_recovery_record_lives_with_what_its_connect_needs(redis_cluster: RedisCluster) -> None:
    """Regression: a recovery record hashed its random pid, so while any shard
    was down a third of all connects (recovery on) were refused 4503."""
    for node in range(3):
        sub = user_on(redis_cluster, node)
        for n in range(10):
            pid = keys.recovery_pid(f"nonce{n}", sub=sub)
            assert redis_cluster.node_for_key(PREFIX + keys.recovery(pid)) == node
    for n in range(10):
        session_id = f"sess{n}"
        pid = keys.recovery_pid("nonce", session_id=session_id)
        channel = room_channel("socketio", f"session:{session_id}")
        assert redis_cluster.node_for_key(PREFIX + keys.recovery(pid)) == redis_cluster.node_for_key(channel)
    # A pid the gateway did not give keeps the plain key: it names no record.
    assert keys.recovery("x{evil}.y") == "recovery:x{evil}.y"
    assert keys.recovery("u:zz.nonce") == "recovery:u:zz.nonce"


async def test_a_stopped_shard_fails_its_keys_fast_and_recovers_without_a_new_store(
    store: Store, redis_cluster: RedisCluster
) -> None:
    down, up = user_on(redis_cluster, 1), [user_on(redis_cluster, 0), user_on(redis_cluster, 2)]
    down_key, up_keys = key_on(redis_cluster, 1), [key_on(redis_cluster, 0), key_on(redis_cluster, 2)]
    assert await store.park(down, ["e1"], cap=10, ttl=60) == 0
    await store.put(down_key, "v", ttl=60)
    await store.ping()

    redis_cluster.stop_node(1)
    try:
        # A script (EVALSHA), a plain command and a read on the stopped shard:
        for op in (
            lambda: admit(store, down, "s1"),
            lambda: store.take(down_key),
            lambda: store.is_revoked(down, time.time()),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await op()
            assert time.monotonic() - started < FAST
        # ...while the other shards serve their keys, scripts too.
        for sub, key in zip(up, up_keys, strict=True):
            assert await admit(store, sub, "s1") == []
            await store.put(key, "v", ttl=60)
            assert await store.take(key) == "v"
        await store.ping()  # ready: a shard down is not the whole store down (see docs/configuration.md)
    finally:
        await asyncio.to_thread(redis_cluster.start_node, 1)

    # The same store, once the shard is back: empty (no persistence) and
    # without the scripts it had loaded, which EVAL loads again.
    assert await admit(store, down, "s2") == []
    await store.put(down_key, "w", ttl=60)
    assert await store.take(down_key) == "w"
    assert await store.disconnect_user(down, now=time.time(), revoke=False, ttl=60) == 1


async def test_ping_fails_when_no_master_answers(redis_cluster: RedisCluster) -> None:
    redis_cluster.flush()
    store = create_store(RedisTarget(redis_cluster.url, cluster=True))
    try:
        await store.ping()
        for node in range(3):
            redis_cluster.stop_node(node)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.take(keys.ticket("0" * 64))
        assert time.monotonic() - started < 2 * FAST
    finally:
        await store.close()
        for node in range(3):
            if not redis_cluster.nodes[node].running:
                redis_cluster.nodes[node].start()
        await asyncio.to_thread(redis_cluster.wait_healthy)
