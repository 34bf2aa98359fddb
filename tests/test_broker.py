"""The fan-out broker (gateway/realtime/broker.py) against a real single Redis,
a real 3-master Redis Cluster (sharded pub/sub) and a real Sentinel: a room's
channel is subscribed while it has local members and only then receives, and
on a cluster a stopped shard fails only its own rooms and recovers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.errors import StoreUnavailable
from gateway.realtime.broker import Broker, room_channel
from gateway.redisconn import RedisTarget
from tests.support import RedisCluster, RedisSentinel, RedisServer, redis_command

pytestmark = pytest.mark.timeout(60)


class Inbox:
    def __init__(self) -> None:
        self.items: list[str] = []
        self._arrived = asyncio.Event()

    async def __call__(self, payload: bytes) -> None:
        self.items.append(payload.decode())
        self._arrived.set()

    async def until(self, count: int, timeout: float = 5.0) -> list[str]:
        async with asyncio.timeout(timeout):
            while len(self.items) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.items


@pytest.fixture(params=["single", "cluster", "sentinel"])
def target(
    request: pytest.FixtureRequest,
) -> RedisTarget:
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        return RedisTarget(cluster.url, cluster=True)
    if request.param == "sentinel":
        sentinel: RedisSentinel = request.getfixturevalue("redis_sentinel")
        return RedisTarget(sentinel.url)
    server: RedisServer = request.getfixturevalue("redis_server")
    return RedisTarget(server.url)


@pytest.fixture
async def brokers() -> AsyncIterator[Callable[..., Any]]:
    made: list[Broker] = []

    async def make(target: RedisTarget, inbox: Inbox | None = None, *, channel: str = "test") -> Broker:
        broker = Broker(target=target, base_channel=channel, on_message=inbox or Inbox())
        await broker.start()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.stop()


async def test_a_room_receives_while_retained_and_only_then(target: RedisTarget, brokers: Any) -> None:
    inbox = Inbox()
    node, publisher = await brokers(target, inbox), await brokers(target)
    rooms = [f"user:u{n}" for n in range(30)]  # on a cluster: rooms on every shard
    for room in rooms:
        node.retain(room)
    await asyncio.gather(*(node.ready(room) for room in rooms))
    assert node.rooms == 30

    for room in rooms:
        await publisher.publish(room, room)
    await publisher.publish("user:nobody", "for nobody")
    await publisher.publish(None, "broadcast")
    assert sorted(await inbox.until(31)) == sorted([*rooms, "broadcast"])

    for room in rooms[:15]:
        node.release(room)
    inbox.items.clear()
    for room in rooms:
        await publisher.publish(room, room)
    await publisher.publish(None, "last")  # every room's publish went out before it
    await inbox.until(16)
    await asyncio.sleep(0.2)  # on a cluster the shard channels are other connections than the broadcast
    assert sorted(inbox.items) == sorted([*rooms[15:], "last"])


async def test_a_room_is_counted_and_unsubscribed_after_its_last_member(target: RedisTarget, brokers: Any) -> None:
    node = await brokers(target)
    node.retain("room:x")
    node.retain("room:x")
    await node.ready("room:x")
    node.release("room:x")
    assert node.subscribed("room:x")
    node.release("room:x")
    assert node.rooms == 0
    deadline = time.monotonic() + 5
    while await _subscribers(target, room_channel("test", "room:x")) != 0:
        assert time.monotonic() < deadline, "the channel was never unsubscribed"
        await asyncio.sleep(0.05)


async def test_a_room_left_and_joined_again_at_once_ends_subscribed(target: RedisTarget, brokers: Any) -> None:
    inbox = Inbox()
    node, publisher = await brokers(target, inbox), await brokers(target)
    node.retain("room:flip")
    await node.ready("room:flip")
    for _ in range(20):  # unsubscribe and subscribe in flight together
        node.release("room:flip")
        node.retain("room:flip")
    await node.ready("room:flip")
    await publisher.publish("room:flip", "still here")
    assert await inbox.until(1) == ["still here"]


async def _subscribers(target: RedisTarget, channel: str) -> int:
    if target.cluster:
        client = aioredis.RedisCluster.from_url(target.url)
        try:
            await client.initialize()
            owner = client.get_node_from_key(channel)
            [(_, count)] = await client.execute_command("PUBSUB SHARDNUMSUB", channel, target_nodes=owner)
            return int(count)
        finally:
            await client.aclose()
    client = target.client()
    try:
        [(_, count)] = await client.pubsub_numsub(channel)  # type: ignore[union-attr]
        return int(count)
    finally:
        await client.aclose()


async def test_a_stopped_shard_fails_only_its_rooms_and_recovers(redis_cluster: RedisCluster, brokers: Any) -> None:
    redis_cluster.flush()
    target = RedisTarget(redis_cluster.url, cluster=True)
    inbox = Inbox()
    node, publisher = await brokers(target, inbox), await brokers(target)
    rooms = [f"user:u{n}" for n in range(30)]
    for room in rooms:
        node.retain(room)
    await asyncio.gather(*(node.ready(room) for room in rooms))
    down = 1
    on_down = {room for room in rooms if redis_cluster.node_for_key(room_channel("test", room)) == down}
    assert 0 < len(on_down) < len(rooms)

    redis_cluster.stop_node(down)
    try:
        failed, started = set(), time.monotonic()
        for room in rooms:
            try:
                await publisher.publish(room, room)
            except StoreUnavailable:
                failed.add(room)
        assert failed == on_down
        assert time.monotonic() - started < 3 * len(on_down)  # each refusal is quick, not a hang
        await inbox.until(len(rooms) - len(on_down))
        assert set(inbox.items) == set(rooms) - on_down
    finally:
        redis_cluster.start_node(down)
        redis_cluster.wait_healthy()

    # Without a restart: the subscriber reconnects and subscribes its rooms again.
    deadline = time.monotonic() + 20
    while True:
        try:
            await asyncio.gather(*(node.ready(room) for room in on_down))
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the shard's rooms were never subscribed again"
    inbox.items.clear()
    for room in sorted(on_down):
        await publisher.publish(room, room)
    assert set(await inbox.until(len(on_down))) == on_down


async def test_a_recorded_publish_to_a_shard_without_the_script_while_another_is_down(
    redis_cluster: RedisCluster, brokers: Any
) -> None:
    """Regression: the publish script was redis-py's register_script, whose
    SCRIPT LOAD goes to every primary: a shard that did not know the script yet
    (never used, or restarted) refused recorded publishes while any other
    shard was down (503 for rooms that had nothing to do with it)."""
    redis_cluster.flush()
    for port in redis_cluster.ports:
        redis_command(port, "SCRIPT FLUSH")
    target = RedisTarget(redis_cluster.url, cluster=True)
    inbox = Inbox()
    node, publisher = await brokers(target, inbox), await brokers(target)
    down, up = 1, 2
    room = next(
        r for r in (f"room:r{n}" for n in range(1000)) if redis_cluster.node_for_key(room_channel("test", r)) == up
    )
    node.retain(room)
    await node.ready(room)

    redis_cluster.stop_node(down)
    try:
        event_id = await publisher.publish_recorded(room, b"<", b">", b'["e"]', keep=60)
        assert await inbox.until(1) == [f"<{event_id}>"]
    finally:
        await asyncio.to_thread(redis_cluster.start_node, down)
