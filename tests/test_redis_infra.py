"""The real Redis Cluster and Sentinel of tests/support.py, as redis-py sees them.

The gateway's Redis Cluster and Sentinel tests stand on them: each test here
fails if a fixture does not give what it promises.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPubSub
from redis.asyncio.cluster import RedisCluster as ClusterClient
from redis.asyncio.sentinel import Sentinel
from redis.crc import key_slot
from redis.exceptions import MovedError
from socketio.redis_manager import parse_redis_sentinel_url

from tests.support import ROOT, RedisCluster, RedisSentinel, redis_command


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> RedisCluster:
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
async def client(cluster: RedisCluster) -> AsyncIterator[ClusterClient]:
    client = ClusterClient.from_url(cluster.url)
    await client.initialize()  # its pubsub() routes by a slot map it would only fetch on a first command
    yield client
    await client.aclose()


def test_three_masters_cover_every_slot_once(cluster: RedisCluster) -> None:
    for port in cluster.ports:
        info = redis_command(port, "CLUSTER INFO")
        assert info["cluster_state"] == "ok"
        assert info["cluster_known_nodes"] == "3"
        assert info["cluster_slots_ok"] == "16384"
    ranges = sorted(cluster.slot_ports())
    assert {port for _, _, port in ranges} == set(cluster.ports)
    covered = [slot for first, last, _ in ranges for slot in range(first, last + 1)]
    assert covered == list(range(RedisCluster.SLOTS))


def test_key_helpers_agree_with_redis(cluster: RedisCluster) -> None:
    for i, port in enumerate(cluster.ports):
        key = cluster.key_for_node(i, "helper:")
        slot = key_slot(key.encode())
        assert redis_command(port, "CLUSTER KEYSLOT", key) == slot
        assert cluster.node_for_key(key) == cluster.node_for_slot(slot) == i
        assert cluster.port_of_slot(slot) == port
        redis_command(port, "SET", key, "here")  # its own node takes it...
        for other in cluster.ports:
            if other != port:  # ... the others send the client there
                with pytest.raises(MovedError) as moved:
                    redis_command(other, "GET", key)
                assert (moved.value.slot_id, moved.value.port) == (slot, port)
    with pytest.raises(ValueError, match="hash tag"):
        cluster.key_for_node((cluster.node_for_key("{tag}") + 1) % 3, "{tag}:")


async def test_a_cluster_client_reaches_every_shard(cluster: RedisCluster, client: ClusterClient) -> None:
    keys = [cluster.key_for_node(i) for i in range(3)]
    for key in keys:
        assert await client.set(key, f"value of {key}")
    assert [await client.get(key) for key in keys] == [f"value of {key}".encode() for key in keys]
    for port, key in zip(cluster.ports, keys, strict=True):
        assert redis_command(port, "GET", key) == f"value of {key}"  # on the shard it was meant for


async def test_sharded_pubsub_to_a_subscriber_on_the_owning_node(cluster: RedisCluster, client: ClusterClient) -> None:
    for i, url in enumerate(cluster.urls):
        channel = cluster.key_for_node(i, "channel:")
        subscriber = aioredis.Redis.from_url(url)
        pubsub = subscriber.pubsub()
        try:
            await pubsub.ssubscribe(channel)
            confirmed = await pubsub.get_message(timeout=5)
            assert confirmed is not None and confirmed["type"] == "ssubscribe"
            assert await client.spublish(channel, f"to shard {i}") == 1
            message = await pubsub.get_message(timeout=5)
            assert message is not None
            assert (message["type"], message["channel"], message["data"]) == (
                "smessage",
                channel.encode(),
                f"to shard {i}".encode(),
            )
        finally:
            await pubsub.aclose()
            await subscriber.aclose()


async def test_sharded_pubsub_through_the_cluster_client(cluster: RedisCluster, client: ClusterClient) -> None:
    channels = [cluster.key_for_node(i, "channel:") for i in range(3)]
    pubsub = client.pubsub()
    try:
        await pubsub.ssubscribe(*channels)  # one connection to each shard
        assert await sharded_messages(pubsub, len(channels)) == {("ssubscribe", channel, 1) for channel in channels}
        for channel in channels:
            assert await client.spublish(channel, f"on {channel}") == 1
        assert await sharded_messages(pubsub, len(channels)) == {
            ("smessage", channel, f"on {channel}") for channel in channels
        }
    finally:
        await pubsub.aclose()


async def sharded_messages(pubsub: ClusterPubSub, count: int) -> set[tuple[str, str, object]]:
    """The next ``count`` messages of any shard, as (type, channel, data)."""
    received: set[tuple[str, str, object]] = set()
    async with asyncio.timeout(5):
        while len(received) < count:
            message = await pubsub.get_sharded_message(timeout=0.1)
            if message is not None:
                data = message["data"]
                received.add(
                    (message["type"], message["channel"].decode(), data.decode() if isinstance(data, bytes) else data)
                )
    return received


async def test_a_stopped_master_takes_only_its_own_keys_down(cluster: RedisCluster, client: ClusterClient) -> None:
    keys = [cluster.key_for_node(i) for i in range(3)]
    for key in keys:
        await client.set(key, key)
    slot = key_slot(keys[1].encode())
    cluster.stop_node(1)
    try:
        with pytest.raises(redis.ConnectionError):
            await client.get(keys[1])
        with pytest.raises(redis.ConnectionError):
            await client.set(keys[1], "again")
        assert [await client.get(keys[0]), await client.get(keys[2])] == [keys[0].encode(), keys[2].encode()]
        assert await client.set(cluster.key_for_node(2, "other:"), "written meanwhile")
    finally:
        cluster.start_node(1)
    assert cluster.port_of_slot(slot) == cluster.ports[1]  # its slots are its own again...
    assert await client.get(keys[1]) is None  # ... and empty: nothing persisted
    assert await client.set(keys[1], "again")
    assert await client.get(keys[1]) == b"again"
    assert await client.get(keys[0]) == keys[0].encode()


def test_flush_empties_every_master(cluster: RedisCluster) -> None:
    keys = [cluster.key_for_node(i) for i in range(3)]
    for port, key in zip(cluster.ports, keys, strict=True):
        redis_command(port, "SET", key, "x")
    cluster.flush()
    assert [redis_command(port, "DBSIZE") for port in cluster.ports] == [0, 0, 0]


@pytest.fixture
def sentinel(redis_sentinel: RedisSentinel) -> RedisSentinel:
    redis_sentinel.flush()
    return redis_sentinel


async def test_the_sentinel_names_the_master_and_serves_it(sentinel: RedisSentinel) -> None:
    address = redis_command(sentinel.port, "SENTINEL GET-MASTER-ADDR-BY-NAME", "ticketgate")
    assert address == ("127.0.0.1", sentinel.master.port)
    master = Sentinel([("127.0.0.1", sentinel.port)]).master_for("ticketgate")
    try:
        assert await master.set("through-sentinel", "yes")
        assert await master.get("through-sentinel") == b"yes"
    finally:
        await master.aclose()
    assert redis_command(sentinel.master.port, "GET", "through-sentinel") == "yes"


def test_the_sentinel_url_is_python_socketios(sentinel: RedisSentinel) -> None:
    assert parse_redis_sentinel_url(sentinel.url) == ([("127.0.0.1", sentinel.port)], "ticketgate", {"db": 0})


def test_deploy_redis_conf_makes_a_cluster(tmp_path: Path) -> None:
    """Redis has no config check mode (nothing like nginx -t): nodes started from
    deploy/redis-cluster/redis.conf must form a cluster. Port, directory and
    persistence are the fixture's, given after the file."""
    config = ROOT / "deploy" / "redis-cluster" / "redis.conf"
    cluster = RedisCluster(tmp_path, config=config)
    cluster.start()
    try:
        for port in cluster.ports:
            assert redis_command(port, "INFO", "server")["config_file"] == str(config)
            assert redis_command(port, "CLUSTER INFO")["cluster_state"] == "ok"
    finally:
        cluster.stop()
