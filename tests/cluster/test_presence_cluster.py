"""Presence on two real gateway processes sharing one Redis (docs/presence.md):
the per-user connection limit over the cluster, a node killed with SIGKILL
leaving no ghost past presence_ttl, and each webhook once per transition for
the whole cluster."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from gateway.auth.tokens import TokenService
from gateway.config import load_config
from tests.cluster.conftest import ADMIN_TOKEN, start_nodes
from tests.support import GatewayProcess, Probe, http_json, metric
from tests.test_webhooks import SECRET, Receiver

ROOMS = {"rooms": ["room:team-*"]}
EVERY = ["user.online", "user.offline", "room.occupied", "room.vacated", "user.joined", "user.left"]


def minter(node: GatewayProcess) -> Callable[[str], str]:
    """Access tokens signed with the cluster's key, allowed into room:team-*."""
    tokens = TokenService(config=load_config(file=node.config_file, environ={}))
    return lambda sub: tokens.mint(sub, claims=ROOMS)[0]


async def connections(node: GatewayProcess, sub: str) -> int:
    status, body, _ = await http_json("GET", f"{node.url}/api/users/{sub}", token=ADMIN_TOKEN)
    assert status == 200, body
    return int(body["connections"])


async def room(node: GatewayProcess, name: str) -> dict[str, Any]:
    status, body, _ = await http_json("GET", f"{node.url}/api/rooms/{name}/presence", token=ADMIN_TOKEN)
    assert status == 200, body
    return dict(body)


async def until(condition: Callable[[], Awaitable[bool]], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.05)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    made = Receiver()
    await made.start()
    yield made
    await made.close()


def types(receiver: Receiver) -> list[str]:
    return sorted(r.event["type"] for r in receiver.requests)


async def test_twenty_concurrent_connects_of_one_user_on_two_nodes_limit_five(
    cluster_settings: dict[str, Any], gateway_process: Callable[..., GatewayProcess], probes: Callable[[], Probe]
) -> None:
    a, b = await start_nodes(gateway_process, cluster_settings, max_connections_per_user=5)
    mint = minter(a)
    clients = [probes() for _ in range(20)]
    results = await asyncio.gather(
        *(probe.connect((a, b)[n % 2].url, auth={"token": mint("alice")}) for n, probe in enumerate(clients))
    )
    assert results.count(True) == 5
    refusals = [probe.connect_error["data"] for probe, ok in zip(clients, results, strict=True) if not ok]
    assert refusals == [{"code": 4029, "reason": "too_many_connections"}] * 15
    assert await connections(a, "alice") == 5 and await connections(b, "alice") == 5
    sample = 'ticketgate_rate_limited_total{limit="connections_per_user"}'
    assert await metric(a.url, sample) + await metric(b.url, sample) == 15


async def test_a_killed_node_leaves_no_ghost_past_presence_ttl(
    cluster_settings: dict[str, Any],
    gateway_process: Callable[..., GatewayProcess],
    probes: Callable[[], Probe],
    receiver: Receiver,
) -> None:
    ttl = 3.0
    a, b = await start_nodes(
        gateway_process,
        cluster_settings,
        presence_ttl=ttl,
        offline_grace=0.5,
        max_connections_per_user=2,
        presence_rooms=["room:team-*"],
        webhooks=[{"url": receiver.url, "secret": SECRET, "events": EVERY}],
    )
    mint = minter(a)
    bob = probes()
    assert await bob.connect(a.url, auth={"token": mint("bob")})
    assert (await bob.call("join", {"room": "room:team-a"}))["ok"]
    on_b = [probes(), probes()]
    for probe in on_b:
        assert await probe.connect(b.url, auth={"token": mint("alice")})
        assert (await probe.call("join", {"room": "room:team-a"}))["ok"]
    assert await bob.wait_for("user_joined") == {"room": "room:team-a", "sub": "alice"}
    await asyncio.sleep(ttl / 3 + 0.2)  # at least one heartbeat of b's since
    assert await connections(a, "alice") == 2

    assert b.proc is not None
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(timeout=10)
    killed = time.monotonic()
    # Its counts outlive it (its sockets are gone, nobody said so) ...
    assert await connections(a, "alice") == 2
    assert (await room(a, "room:team-a"))["users"] == 2
    over = probes()
    assert not await over.connect(a.url, auth={"token": mint("alice")})  # still at her limit
    assert over.connect_error["data"]["reason"] == "too_many_connections"

    # ... for presence_ttl at most.
    async def gone() -> bool:
        return await connections(a, "alice") == 0

    await until(gone, timeout=ttl + 2)
    assert time.monotonic() - killed <= ttl + 0.5
    assert (await room(a, "room:team-a"))["members"] == [{"sub": "bob", "connections": 1}]
    assert await bob.wait_for("user_left", timeout=2) == {"room": "room:team-a", "sub": "alice"}

    def alice(kind: str) -> list[Any]:
        return [r.event["data"] for r in receiver.requests if r.event["type"] == kind and "alice" in str(r.event)]

    async def offline() -> bool:
        return bool(alice("user.offline"))

    await until(offline, timeout=3)  # after offline_grace, from the surviving node's sweep
    again = probes()
    assert await again.connect(a.url, auth={"token": mint("alice")})  # the ghosts no longer count

    async def online_again() -> bool:
        return len(alice("user.online")) == 2

    await until(online_again, timeout=3)
    await asyncio.sleep(1.0)  # time for any duplicate to show
    assert alice("user.offline") == [{"sub": "alice"}]
    assert alice("user.left") == [{"room": "room:team-a", "sub": "alice"}]
    assert alice("user.joined") == [{"room": "room:team-a", "sub": "alice"}]
    assert len(alice("user.online")) == 2


async def test_each_webhook_once_per_transition_with_a_user_on_both_nodes(
    cluster_settings: dict[str, Any],
    gateway_process: Callable[..., GatewayProcess],
    probes: Callable[[], Probe],
    receiver: Receiver,
) -> None:
    a, b = await start_nodes(
        gateway_process,
        cluster_settings,
        offline_grace=0.5,
        presence_rooms=["room:team-*"],
        webhooks=[{"url": receiver.url, "secret": SECRET, "events": EVERY}],
    )
    mint = minter(a)
    alice = [probes() for _ in range(4)]
    nodes = [a, b, a, b]
    connects = (p.connect(n.url, auth={"token": mint("alice")}) for p, n in zip(alice, nodes, strict=True))
    assert all(await asyncio.gather(*connects))
    acks = await asyncio.gather(*(p.call("join", {"room": "room:team-a"}) for p in alice))
    assert all(ack["ok"] for ack in acks)
    await receiver.until(3)
    await asyncio.sleep(1.0)  # time for any duplicate to show
    assert types(receiver) == ["room.occupied", "user.joined", "user.online"]

    await asyncio.gather(*(p.close() for p in alice))
    await receiver.until(6, timeout=5)
    await asyncio.sleep(1.0)
    assert types(receiver) == sorted(EVERY)  # each once, whichever node saw it
    assert all(r.verified for r in receiver.requests)
    by_type = {r.event["type"]: r.event["data"] for r in receiver.requests}
    assert by_type["user.offline"] == {"sub": "alice"} and by_type["room.vacated"] == {"room": "room:team-a"}
