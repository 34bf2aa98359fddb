"""gateway.emitter.Emitter: a backend publishes into the cluster through Redis
(PROTOCOL §3 "published ... by a backend through the Redis manager", §6.11)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import socketio

from gateway.auth.tokens import TokenService
from gateway.config import load_config
from gateway.emitter import Emitter
from gateway.errors import StoreUnavailable
from tests.conftest import Gateway, MakeGateway
from tests.support import GatewayProcess, Probe, RedisServer, free_port, wait_subscribed

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def engine() -> str:
    """Every gateway of this module runs the redis engine (the emitter needs it)."""
    return "redis"


@pytest.fixture
async def emitter(redis_server: RedisServer) -> AsyncIterator[Emitter]:
    made = Emitter(redis_server.url)
    yield made
    await made.close()


async def test_emitter_reaches_a_socket_on_an_in_process_gateway(
    gateway: Gateway, emitter: Emitter, redis_server: RedisServer, probes: Callable[[], Probe]
) -> None:
    await wait_subscribed(redis_server.url, 1)
    alice, bob = probes(), probes()
    assert await alice.connect(gateway.url, auth={"ticket": await gateway.ticket("alice")})
    assert await bob.connect(gateway.url, auth={"token": gateway.mint("bob")})
    await alice.wait_for("authenticated")
    await bob.wait_for("authenticated")

    await emitter.publish("user:alice", "invoice_paid", {"id": 42})
    await emitter.publish("user:bob", "note", [1, "two"])

    assert await alice.wait_for("invoice_paid") == {"id": 42}
    assert await bob.wait_for("note") == [1, "two"]
    # Same channel, same order: bob's event arrived, so alice's was handled and not sent to him.
    assert bob.named("invoice_paid") == []


async def test_emitter_reaches_a_socket_on_a_gateway_process(
    settings: dict[str, Any],
    gateway_process: Callable[..., GatewayProcess],
    emitter: Emitter,
    redis_server: RedisServer,
    probes: Callable[[], Probe],
) -> None:
    node = gateway_process(settings)
    node.start()
    await wait_subscribed(redis_server.url, 1)
    token, _ = TokenService(config=load_config(environ={}, flags=settings)).mint("carol")
    probe = probes()
    assert await probe.connect(node.url, auth={"token": token})
    await probe.wait_for("authenticated")

    await emitter.publish("user:carol", "report_ready", None)
    # No data: the event's one argument is its offset (recorded in the room's
    # history by the emitter, as the gateways' own events are; docs/recovery.md).
    assert re.fullmatch(r"0:\d+-\d+", await probe.wait_for("report_ready"))


async def test_emitter_uses_the_configured_channel(
    make_gateway: MakeGateway, redis_server: RedisServer, probes: Callable[[], Probe]
) -> None:
    gateway = await make_gateway(redis_channel="tenant-a")
    await wait_subscribed(redis_server.url, 1, channel="tenant-a")
    probe = probes()
    assert await probe.connect(gateway.url, auth={"token": gateway.mint("dave")})
    await probe.wait_for("authenticated")

    default, tenant = Emitter(redis_server.url), Emitter(redis_server.url, channel="tenant-a")
    try:
        await default.publish("user:dave", "wrong_channel", 1)
        await tenant.publish("user:dave", "right_channel", 2)
    finally:
        await default.close()
        await tenant.close()
    assert await probe.wait_for("right_channel") == 2
    assert probe.named("wrong_channel") == []


@pytest.mark.parametrize("room", ["alice", "user:", "users:alice", "user:al ice", "room:" + "x" * 201, ""])
async def test_bad_room_is_a_value_error(emitter: Emitter, room: str) -> None:
    with pytest.raises(ValueError, match="room"):
        await emitter.publish(room, "note", {})


@pytest.mark.parametrize("event", ["", "connect", "connect_error", "disconnect", "disconnecting", "newListener"])
async def test_empty_or_reserved_event_is_a_value_error(emitter: Emitter, event: str) -> None:
    with pytest.raises(ValueError, match="event"):
        await emitter.publish("user:alice", event, {})


async def test_unreachable_redis_is_store_unavailable() -> None:
    emitter = Emitter(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StoreUnavailable):
            await emitter.publish("user:alice", "note", {})
    finally:
        await emitter.close()


async def test_a_stock_write_only_redis_manager_can_publish(
    gateway: Gateway, redis_server: RedisServer, probes: Callable[[], Probe]
) -> None:
    """§6.11: python-socketio's own AsyncRedisManager, not gateway code, on the default channel."""
    await wait_subscribed(redis_server.url, 1)
    dave, erin = probes(), probes()
    assert await dave.connect(gateway.url, auth={"token": gateway.mint("dave")})
    assert await erin.connect(gateway.url, auth={"token": gateway.mint("erin")})
    await dave.wait_for("authenticated")
    await erin.wait_for("authenticated")

    manager = socketio.AsyncRedisManager(redis_server.url, channel="socketio", write_only=True)
    try:
        await manager.emit("x", {"from": "stock manager"}, room="user:dave")
        await manager.emit("y", [1], room="user:erin")
    finally:
        if manager.pubsub is not None:
            await manager.pubsub.aclose()
        if manager.redis is not None:
            await manager.redis.aclose()

    assert await dave.wait_for("x") == {"from": "stock manager"}
    assert await erin.wait_for("y") == [1]
    assert erin.named("x") == [] and dave.named("y") == []  # each to its room only
