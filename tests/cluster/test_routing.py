"""Routed fan-out (issue #13): an event published to a room reaches only the
nodes with local members of it, and a node subscribes a room's channel while
it has such members. Three real gateway processes on one redis-server; what
each node received from Redis is read from its /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.cluster.conftest import ADMIN_TOKEN, cli_token
from tests.support import GatewayProcess, Probe, metric, publish, start_together, wait_subscribed

pytestmark = pytest.mark.timeout(90)

RECEIVED = "ticketgate_fanout_messages_received_total"
ROOMS = "ticketgate_fanout_rooms"


async def three_nodes(
    gateway_process: Callable[..., GatewayProcess], settings: dict[str, Any]
) -> tuple[GatewayProcess, ...]:
    nodes = tuple(gateway_process(settings, name=name) for name in "abc")
    start_together(*nodes)
    await wait_subscribed(settings["redis_url"], len(nodes))
    return nodes


async def channels(redis_url: str) -> dict[str, int]:
    """Every room channel subscribed on the Redis, with its number of subscribers."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        names = await client.pubsub_channels("socketio:{*")
        return dict(await client.pubsub_numsub(*names)) if names else {}
    finally:
        await client.aclose()


async def channels_become(redis_url: str, expected: dict[str, int], *, timeout: float = 5.0) -> None:
    """Wait until the room channels are ``expected`` (an unsubscribe is asynchronous)."""
    deadline = time.monotonic() + timeout
    while (found := await channels(redis_url)) != expected:
        assert time.monotonic() < deadline, f"channels {found}, expected {expected}"
        await asyncio.sleep(0.05)


async def test_a_rooms_events_reach_only_the_node_with_its_members(
    cluster_settings: dict[str, Any], gateway_process: Callable[..., GatewayProcess], probes: Callable[[], Probe]
) -> None:
    a, b, c = await three_nodes(gateway_process, cluster_settings)
    alice = probes()
    assert await alice.connect(a.url, auth={"token": await cli_token(a.config_file, "alice")})
    await alice.wait_for("authenticated")

    for n in range(20):
        await publish(b.url, ADMIN_TOKEN, "user:alice", "tick", {"n": n})
    await alice.wait_for("tick", count=20)
    assert [event["n"] for event in alice.named("tick")] == list(range(20))

    # Only a, which holds alice, received them: b published, c has nobody.
    assert await metric(a.url, RECEIVED) == 20
    assert await metric(b.url, RECEIVED) == 0
    assert await metric(c.url, RECEIVED) == 0

    # A room nobody is in costs one publish: no node receives anything.
    for n in range(10):
        await publish(c.url, ADMIN_TOKEN, "user:nobody", "tick", {"n": n})
        await publish(c.url, ADMIN_TOKEN, "room:empty", "tick", {"n": n})
    await publish(c.url, ADMIN_TOKEN, "user:alice", "last", {})  # through the same channel: after the others
    await alice.wait_for("last")
    assert [await metric(node.url, RECEIVED) for node in (a, b, c)] == [21, 0, 0]


async def test_joining_and_leaving_subscribe_and_unsubscribe_the_rooms_channel(
    cluster_settings: dict[str, Any], gateway_process: Callable[..., GatewayProcess], probes: Callable[[], Probe]
) -> None:
    settings = {**cluster_settings, "public_rooms": ["room:open-*"]}
    a, b, c = await three_nodes(gateway_process, settings)
    url = settings["redis_url"]
    assert await channels(url) == {}

    token = await cli_token(a.config_file, "alice")
    first, second = probes(), probes()
    assert await first.connect(a.url, auth={"token": token})
    await first.wait_for("authenticated")
    assert await channels(url) == {"socketio:{user:alice}": 1}
    assert await metric(a.url, ROOMS) == 1

    # A second socket of the same user on the same node: still one subscription.
    assert await second.connect(a.url, auth={"token": token})
    await second.wait_for("authenticated")
    assert await first.call("join", {"room": "room:open-1"}) == {"ok": True, "room": "room:open-1"}
    assert await channels(url) == {"socketio:{user:alice}": 1, "socketio:{room:open-1}": 1}
    assert await metric(a.url, ROOMS) == 2

    # Members on two nodes: each node subscribes once.
    bob = probes()
    assert await bob.connect(c.url, auth={"token": await cli_token(c.config_file, "bob")})
    await bob.wait_for("authenticated")
    assert await bob.call("join", {"room": "room:open-1"}) == {"ok": True, "room": "room:open-1"}
    assert (await channels(url))["socketio:{room:open-1}"] == 2
    await publish(b.url, ADMIN_TOKEN, "room:open-1", "hello", {"from": "b"})
    assert await first.wait_for("hello") == {"from": "b"}
    assert await bob.wait_for("hello") == {"from": "b"}
    assert second.named("hello") == []

    assert await first.call("leave", {"room": "room:open-1"}) == {"ok": True, "room": "room:open-1"}
    expected = {"socketio:{user:alice}": 1, "socketio:{room:open-1}": 1, "socketio:{user:bob}": 1}
    await channels_become(url, expected)
    assert await metric(a.url, ROOMS) == 1

    await first.close()  # alice's other socket keeps her channel
    await asyncio.sleep(0.2)
    assert (await channels(url)).get("socketio:{user:alice}") == 1
    await second.close()
    await channels_become(url, {"socketio:{room:open-1}": 1, "socketio:{user:bob}": 1})
    assert await metric(a.url, ROOMS) == 0
    assert await metric(b.url, ROOMS) == 0  # b never had a member


async def test_an_event_published_right_after_a_connect_reaches_it(
    cluster_settings: dict[str, Any], gateway_process: Callable[..., GatewayProcess], probes: Callable[[], Probe]
) -> None:
    """A connect is acknowledged only once its rooms' channels are subscribed:
    an event published as soon as the client is connected is not lost."""
    a, b, _ = await three_nodes(gateway_process, cluster_settings)
    tokens = await asyncio.gather(*(cli_token(a.config_file, f"user{n}") for n in range(10)))
    clients = [probes() for _ in tokens]
    for n, (client, token) in enumerate(zip(clients, tokens, strict=True)):
        assert await client.connect(a.url, auth={"token": token})
        await publish(b.url, ADMIN_TOKEN, f"user:user{n}", "welcome", {"n": n})
    for n, client in enumerate(clients):
        assert await client.wait_for("welcome") == {"n": n}
