"""Faults: Redis going away and coming back under a running gateway (PROTOCOL §2
503, §3 4503), and a node shutting down (§3 `closing` 1001 `going_away`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from gateway.auth.tokens import TokenService
from gateway.config import load_config
from gateway.emitter import Emitter
from tests.conftest import MakeGateway
from tests.support import (
    GatewayProcess,
    Probe,
    RawSocketIO,
    RedisServer,
    http_json,
    issue_ticket,
    publish,
    wait_subscribed,
)

pytestmark = pytest.mark.timeout(60)

ADMIN_TOKEN = "admin-token-for-fault-tests-0123456789"
GOING_AWAY = {"code": 1001, "reason": "going_away"}


def mint(settings: dict[str, Any], sub: str) -> str:
    return TokenService(config=load_config(environ={}, flags=settings)).mint(sub)[0]


async def eventually(probe: Callable[[], Any], *, timeout: float = 15.0, interval: float = 0.1) -> Any:
    """Await ``probe()`` until it returns something truthy, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def test_redis_outage_then_recovery_without_restarting_the_gateway(
    own_redis: RedisServer,
    cluster_keys: dict[str, str],
    gateway_process: Callable[..., GatewayProcess],
    probes: Callable[[], Probe],
) -> None:
    settings = {**cluster_keys, "redis_url": own_redis.url, "admin_token": ADMIN_TOKEN}
    node = gateway_process(settings)
    node.start()
    await wait_subscribed(own_redis.url, 1)
    token = mint(settings, "alice")
    before = probes()
    assert await before.connect(node.url, auth={"ticket": await issue_ticket(node.url, token)})
    await before.wait_for("authenticated")
    spare_ticket = await issue_ticket(node.url, token)

    own_redis.stop()

    status, body, _ = await http_json("GET", f"{node.url}/readyz")
    assert (status, body) == (503, {"status": "unavailable"})
    status, body, _ = await http_json("POST", f"{node.url}/ws/ticket", token=token)
    assert status == 503
    assert body["error"]["code"] == "unavailable"
    refused = probes()
    assert not await refused.connect(node.url, auth={"ticket": spare_ticket})
    assert refused.connect_error["data"] == {"code": 4503, "reason": "unavailable"}
    # A publish that cannot reach the other nodes is not acknowledged as delivered.
    status, body, _ = await http_json(
        "POST", f"{node.url}/api/publish", token=ADMIN_TOKEN, json={"room": "user:alice", "event": "lost", "data": 0}
    )
    assert status == 503
    assert body["error"]["code"] == "unavailable"
    status, body, _ = await http_json("GET", f"{node.url}/healthz")
    assert (status, body) == (200, {"status": "ok"})
    # The socket that was already authenticated is left alone.
    assert before.client.connected
    assert not before.disconnected.is_set()
    assert node.proc is not None and node.proc.poll() is None

    own_redis.start()  # same port, empty

    async def ready() -> bool:
        status, _, _ = await http_json("GET", f"{node.url}/readyz")
        return status == 200

    await eventually(ready)
    after = probes()
    assert await after.connect(node.url, auth={"ticket": await issue_ticket(node.url, token)})
    assert (await after.wait_for("authenticated"))["sub"] == "alice"

    await publish(node.url, ADMIN_TOKEN, "user:alice", "back", 1)
    assert await before.wait_for("back") == 1
    # The refused publish reached no socket, not even on its own node: a retry
    # after the 503 cannot duplicate it.
    assert before.named("lost") == []
    # Fan-out from the cluster recovers too: the node resubscribes by itself
    # (python-socketio's listener retries with a backoff), so an event that
    # only comes through Redis reaches the socket from before the outage.
    await wait_subscribed(own_redis.url, 1, timeout=15)
    emitter = Emitter(own_redis.url)
    try:
        await emitter.publish("user:alice", "via_redis", 2)
    finally:
        await emitter.close()
    assert await before.wait_for("via_redis") == 2
    assert await after.wait_for("via_redis") == 2
    assert not before.disconnected.is_set()


@pytest.fixture
async def raw_client() -> AsyncIterator[RawSocketIO]:
    client = RawSocketIO()
    yield client
    await client.close()


async def test_sigterm_drains_every_socket_with_going_away_then_exits_zero(
    cluster_keys: dict[str, str],
    gateway_process: Callable[..., GatewayProcess],
    probes: Callable[[], Probe],
    raw_client: RawSocketIO,
) -> None:
    settings = {**cluster_keys, "admin_token": ADMIN_TOKEN}  # memory engine: one node
    node = gateway_process(settings)
    node.start()
    websocket, polling = probes(), probes()
    assert await websocket.connect(node.url, auth={"ticket": await issue_ticket(node.url, mint(settings, "alice"))})
    assert await polling.connect(node.url, auth={"token": mint(settings, "bob")}, transports=("polling",))
    await websocket.wait_for("authenticated")
    await polling.wait_for("authenticated")
    ok, authenticated = await raw_client.connect(node.url, {"token": mint(settings, "carol")})
    assert ok and authenticated["sub"] == "carol"

    assert node.proc is not None
    started = time.monotonic()
    node.proc.terminate()  # SIGTERM

    # On the wire: `closing` 1001, the Engine.IO close, then the WebSocket's own
    # close frame: the server lets go of every transport itself, so even a client
    # that ignores the Engine.IO close (socket.io-client does) sees a transport
    # close and reconnects, to another node behind the balancer.
    assert await raw_client.until("closing") == GOING_AWAY
    assert await raw_client.frame() == "1"
    assert raw_client.ws is not None
    closed = await raw_client.ws.receive(timeout=1)
    assert closed.type == aiohttp.WSMsgType.CLOSE, closed
    released = time.monotonic()
    # (A connect during the drain is refused with 4503: test_connect_during_drain_is_refused.)

    for probe in (websocket, polling):  # both transports hear it
        assert await probe.wait_for("closing") == GOING_AWAY
        await asyncio.wait_for(probe.disconnected.wait(), timeout=5)
        assert len(probe.named("closing")) == 1
    assert await asyncio.to_thread(node.proc.wait, 10) == 0
    exited = time.monotonic()
    assert exited - released < 3, "the exit waited for something after the last transport closed"
    assert exited - started < 5
    log = node.log()
    assert "drained: sent closing 1001 to 3 sockets" in log
    # Nothing was left to a timeout: each transport, polling included, closed at once.
    assert "WARNING gateway.realtime" not in log, log


async def test_connect_during_drain_is_refused(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    """Once a node drains (`going_away`: from the CLI before it stops listening,
    from aiohttp's on_shutdown otherwise), a connect is refused, not served."""
    gateway = await make_gateway()
    member = probes()
    assert await member.connect(gateway.url, auth={"token": gateway.mint("alice")})
    await member.wait_for("authenticated")

    await gateway.app.shutdown()  # the on_shutdown hooks of a stopping runner

    assert await member.wait_for("closing") == GOING_AWAY
    await asyncio.wait_for(member.disconnected.wait(), timeout=5)
    # Refused at the handshake (HTTP 503), which socket.io-client retries by
    # itself (to another node behind a balancer); a refused CONNECT it never retries.
    for transport in ("polling", "websocket"):
        status, body, _ = await http_json("GET", f"{gateway.url}/socket.io/?EIO=4&transport={transport}")
        assert status == 503 and body["error"]["code"] == "unavailable", (transport, status, body)
    late = probes()
    assert not await late.connect(gateway.url, auth={"token": gateway.mint("bob")})
    assert late.connect_error == "Connection error"  # python-socketio: the handshake failed, no Socket.IO answer
