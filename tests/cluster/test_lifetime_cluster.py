"""Auth lifetime across a cluster (PROTOCOL §3 reauth_required, refresh, "Refresh
tokens", closing 4010/4011; §2 disconnect API; §6.5, §6.7): two real
`python -m gateway serve` processes on one redis-server (§5).

Held events of a socket that never re-authenticates (its grace runs out, or
it leaves) are parked in Redis and reach the user's next socket on the other
node, in order and before anything newer; refresh-token reuse and the
disconnect API act on sockets of every node; two rotations of one token on
two nodes have one winner, while the gateway's own renewal of a token that a
connect on another node rotated is no reuse."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.auth.tokens import TokenService
from gateway.config import load_config
from gateway.store import PREFIX, keys
from tests.cluster.conftest import ADMIN_TOKEN, cli_token, start_nodes, writes_held
from tests.support import GatewayProcess, Nodes, Probe, http_json, publish

pytestmark = pytest.mark.timeout(60)

REFUSED_REUSE = {"code": 4011, "reason": "refresh_reuse"}
REFUSED_REVOKED = {"code": 4011, "reason": "revoked"}
# `exp` is whole seconds, so a token minted with this TTL has 1 to 2 s left:
# its expiry never falls inside the connect itself.
SHORT_TTL = 2


def minter(settings: dict[str, Any]) -> TokenService:
    """The CLI's TokenService, from the nodes' own key, without a start-up per token."""
    return TokenService(config=load_config(environ={}, flags=settings))


async def connected(node: GatewayProcess, probes: Callable[[], Probe], auth: dict[str, Any]) -> Probe:
    probe = probes()
    assert await probe.connect(node.url, auth=auth), probe.connect_error
    await probe.wait_for("authenticated")
    return probe


async def refused(node: GatewayProcess, probes: Callable[[], Probe], auth: dict[str, Any]) -> Any:
    """The ``connect_error`` data of a connect that must be refused."""
    probe = probes()
    assert not await probe.connect(node.url, auth=auth)
    return probe.connect_error["data"]


def seqs(probe: Probe) -> list[int]:
    return [data["seq"] for data in probe.named("tick")]


async def parked(redis_url: str, sub: str) -> tuple[int, int]:
    """(length, PTTL in ms) of the user's parked-events list, read directly."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        key = PREFIX + keys.parked(sub)
        return await client.llen(key), await client.pttl(key)
    finally:
        await client.aclose()


async def test_held_events_of_an_expired_socket_reach_the_next_socket_on_the_other_node_in_order(
    cluster_settings: dict[str, Any], gateway_process: Callable[..., GatewayProcess], probes: Callable[[], Probe]
) -> None:
    a, b = await start_nodes(
        gateway_process,
        cluster_settings,
        on_expiry="reauth",
        expiry_warning=0,
        reauth_grace=1,
        refresh_tokens=False,
        refresh_ttl=60,
    )
    tokens = minter(cluster_settings)
    first = await connected(a, probes, {"token": tokens.mint("alice", ttl=SHORT_TTL)[0]})
    required = await first.wait_for("reauth_required", timeout=4)
    assert required["deadline"].endswith("Z")
    for seq in range(1, 6):  # published on b, held on a
        await publish(b.url, ADMIN_TOKEN, "user:alice", "tick", {"seq": seq})

    assert await first.wait_for("closing", timeout=4) == {"code": 4010, "reason": "auth_expired"}
    await asyncio.wait_for(first.disconnected.wait(), 5)
    assert seqs(first) == []  # held, never delivered to the unauthenticated socket
    length, pttl = await parked(cluster_settings["redis_url"], "alice")
    assert length == 5 and 0 < pttl <= 60_000  # parked for refresh_ttl

    nxt = await connected(b, probes, {"token": tokens.mint("alice")[0]})
    await publish(a.url, ADMIN_TOKEN, "user:alice", "tick", {"seq": 6})
    await nxt.wait_for("tick", count=6)
    assert seqs(nxt) == [1, 2, 3, 4, 5, 6]
    assert (await parked(cluster_settings["redis_url"], "alice"))[0] == 0  # taken once
    later = await connected(a, probes, {"token": tokens.mint("alice")[0]})
    await asyncio.sleep(0.3)
    assert seqs(later) == []


async def test_refresh_reuse_on_one_node_closes_the_family_on_the_other(
    two_nodes: Nodes, cluster_settings: dict[str, Any], probes: Callable[[], Probe]
) -> None:
    a, b = two_nodes
    tokens = minter(cluster_settings)
    holder = await connected(b, probes, {"token": tokens.mint("alice")[0]})
    rotated = (await holder.wait_for("refresh_token"))["refreshToken"]
    ack = await holder.call("refresh", {"refreshToken": rotated})
    assert ack["ok"] is True and ack["refreshToken"] != rotated
    bystander = await connected(a, probes, {"token": tokens.mint("alice")[0]})  # another family
    await bystander.wait_for("refresh_token")

    assert await refused(a, probes, {"refreshToken": rotated}) == REFUSED_REUSE
    assert await holder.wait_for("closing") == REFUSED_REUSE
    await asyncio.wait_for(holder.disconnected.wait(), 5)
    # The whole family is revoked, on every node: its newest token too.
    assert (await refused(b, probes, {"refreshToken": ack["refreshToken"]}))["code"] == 4011
    await asyncio.sleep(0.2)
    assert bystander.client.connected and not bystander.named("closing")


async def test_disconnect_api_on_one_node_closes_and_revokes_on_both(
    two_nodes: Nodes, cluster_settings: dict[str, Any], probes: Callable[[], Probe]
) -> None:
    a, b = two_nodes
    old = await cli_token(a.config_file, "alice")  # the real `python -m gateway token`
    on_a = await connected(a, probes, {"token": old})
    on_b = await connected(b, probes, {"token": old})
    refresh = (await on_b.wait_for("refresh_token"))["refreshToken"]
    bob = await connected(b, probes, {"token": minter(cluster_settings).mint("bob")[0]})

    status, body, _ = await http_json(
        "POST", f"{a.url}/api/users/alice/disconnect", token=ADMIN_TOKEN, json={"revokeTokens": True}
    )
    assert (status, body) == (200, {"disconnected": 2})
    for probe in (on_a, on_b):
        assert await probe.wait_for("closing") == REFUSED_REVOKED
        await asyncio.wait_for(probe.disconnected.wait(), 5)
    # At once, on the other node: no cache to expire.
    assert await refused(b, probes, {"token": old}) == REFUSED_REVOKED
    assert await refused(b, probes, {"refreshToken": refresh}) == REFUSED_REVOKED
    fresh = minter(cluster_settings).mint("alice")[0]  # iat in ms: after the cut-off
    for node in (a, b):
        assert (await connected(node, probes, {"token": fresh})).client.connected
    assert bob.client.connected and not bob.named("closing")


async def test_concurrent_rotations_of_one_token_on_two_nodes_have_one_winner(
    two_nodes: Nodes, cluster_settings: dict[str, Any], probes: Callable[[], Probe]
) -> None:
    a, b = two_nodes
    tokens = minter(cluster_settings)
    owner = await connected(a, probes, {"token": tokens.mint("alice")[0]})
    token = (await owner.wait_for("refresh_token"))["refreshToken"]
    helpers = [await connected(node, probes, {"token": tokens.mint("alice")[0]}) for node in (a, b)]
    for helper in helpers:  # their own families are written before Redis is paused
        await helper.wait_for("refresh_token")

    # Both rotations read the token as active, then queue their atomic write together.
    async with writes_held(cluster_settings["redis_url"], until_waiting=2):
        calls = [asyncio.create_task(helper.call("refresh", {"refreshToken": token})) for helper in helpers]
    acks = await asyncio.gather(*calls)

    winners = [ack for ack in acks if ack["ok"]]
    assert len(winners) == 1, acks
    assert [ack for ack in acks if not ack["ok"]] == [{"ok": False, "error": REFUSED_REUSE}]
    assert await owner.wait_for("closing") == REFUSED_REUSE  # bound to the family, on node a
    # The reuse revoked the family: the winner's successor is dead too.
    assert (await refused(b, probes, {"refreshToken": winners[0]["refreshToken"]}))["code"] == 4011


async def test_held_events_of_a_socket_that_leaves_during_the_hold_reach_the_next_socket(
    cluster_settings: dict[str, Any], gateway_process: Callable[..., GatewayProcess], probes: Callable[[], Probe]
) -> None:
    a, b = await start_nodes(
        gateway_process, cluster_settings, on_expiry="reauth", expiry_warning=0, reauth_grace=5, refresh_tokens=False
    )
    tokens = minter(cluster_settings)
    first = await connected(a, probes, {"token": tokens.mint("alice", ttl=SHORT_TTL)[0]})
    await first.wait_for("reauth_required", timeout=4)
    for seq in range(1, 4):
        await publish(b.url, ADMIN_TOKEN, "user:alice", "tick", {"seq": seq})
    await asyncio.sleep(0.3)  # held on a
    await first.close()  # the page reloads instead of re-authenticating
    async with asyncio.timeout(5):  # node a parks what the socket held as it goes
        while (await parked(cluster_settings["redis_url"], "alice"))[0] < 3:
            await asyncio.sleep(0.05)
    nxt = await connected(b, probes, {"token": tokens.mint("alice")[0]})
    await publish(a.url, ADMIN_TOKEN, "user:alice", "tick", {"seq": 4})
    await nxt.wait_for("tick", count=4)
    assert seqs(nxt) == [1, 2, 3, 4]


async def test_renewal_of_a_token_rotated_by_a_connect_on_the_other_node_is_not_reuse(
    cluster_settings: dict[str, Any], gateway_process: Callable[..., GatewayProcess], probes: Callable[[], Probe]
) -> None:
    a, b = await start_nodes(gateway_process, cluster_settings, refresh_ttl=3)
    first_tab = await connected(a, probes, {"token": minter(cluster_settings).mint("alice")[0]})
    shared = (await first_tab.wait_for("refresh_token"))["refreshToken"]
    second_tab = await connected(b, probes, {"refreshToken": shared})  # presented once: a rotation
    # Renewal at 9/10 of refresh_ttl: the first tab's (of the already rotated
    # token) is skipped, not taken for reuse; the second tab's rotates.
    renewed = (await second_tab.wait_for("refresh_token", count=2, timeout=4))["refreshToken"]
    await asyncio.sleep(0.3)
    assert not first_tab.named("closing") and not second_tab.named("closing")
    assert len(first_tab.named("refresh_token")) == 1
    ack = await second_tab.call("refresh", {"refreshToken": renewed})  # the family is alive
    assert ack["ok"] is True
