"""Issue #13 on a real three-master Redis Cluster: two real `python -m gateway
serve` processes (nodes a and b, ``redis_cluster = true``, seeded with the
first master) do what tests/cluster/ checks on one redis-server. Tickets,
auth sessions, refresh families, the disconnect API and routed fan-out work
across nodes while their keys and channels spread over the shards; a stopped
shard fails only what lives on it, and the gateways serve it again once it is
back, without a restart.

Users and rooms are picked by the master of their keys or channel
(``user_on``, ``room_on``), so each scenario covers every shard rather than
whichever one a name happened to hash to."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from gateway.auth.tickets import TicketService
from gateway.auth.tokens import TokenService
from gateway.config import load_config
from gateway.emitter import Emitter
from gateway.realtime.broker import room_channel
from gateway.store import PREFIX, keys
from tests.cluster.conftest import ADMIN_TOKEN, race_one_ticket, start_nodes
from tests.device import Device, initiate
from tests.support import (
    GatewayProcess,
    JsClient,
    Nodes,
    NodeScripts,
    Probe,
    RedisCluster,
    http_json,
    issue_ticket,
    metric,
    publish,
    redis_command,
)

pytestmark = pytest.mark.timeout(90)

CHANNEL = "socketio"  # redis_channel's default: the base of every room's channel
RECEIVED = "ticketgate_fanout_messages_received_total"
ROOMS = "ticketgate_fanout_rooms"
REPLACED = {"code": 4009, "reason": "replaced"}
REFRESH_REUSE = {"code": 4011, "reason": "refresh_reuse"}
REVOKED = {"code": 4011, "reason": "revoked"}
DISCONNECTED = {"code": 4011, "reason": "disconnected"}
UNAVAILABLE = {"code": 4503, "reason": "unavailable"}
FAST = 3.0  # seconds: a stopped shard is a quick 4503/503, not a hung request


@pytest.fixture
def rc_settings(redis_cluster: RedisCluster, cluster_keys: dict[str, str]) -> dict[str, Any]:
    """The nodes' settings: the cluster (flushed), seeded with its first master."""
    redis_cluster.flush()
    return {**cluster_keys, "redis_url": redis_cluster.url, "redis_cluster": True, "admin_token": ADMIN_TOKEN}


@pytest.fixture
async def rc_nodes(rc_settings: dict[str, Any], gateway_process: Callable[..., GatewayProcess]) -> Nodes:
    """Nodes a and b on the cluster, listening, and subscribed to the broadcast
    channel (a plain channel, on the seed: ``wait_subscribed`` counts them there)."""
    return await start_nodes(gateway_process, rc_settings)


def minter(settings: dict[str, Any]) -> TokenService:
    """The CLI's TokenService, from the nodes' own key, without a start-up per token."""
    return TokenService(config=load_config(environ={}, flags=settings))


def user_on(cluster: RedisCluster, node: int, prefix: str = "user") -> str:
    """A sub whose keys (one hash tag: keys.user_tag) live on master ``node``."""
    return next(
        sub
        for sub in (f"{prefix}{n}" for n in range(10_000))
        if cluster.node_for_key(PREFIX + keys.sockets(sub)) == node
    )


def room_on(cluster: RedisCluster, node: int, prefix: str) -> str:
    """A room (``prefix`` + n) whose fan-out channel lives on master ``node``."""
    return next(
        room
        for room in (f"{prefix}{n}" for n in range(10_000))
        if cluster.node_for_key(room_channel(CHANNEL, room)) == node
    )


def user_with_channel_on(cluster: RedisCluster, node: int, prefix: str = "user") -> str:
    """A sub whose user room's channel lives on master ``node``."""
    return room_on(cluster, node, f"user:{prefix}").removeprefix("user:")


def masters_holding(cluster: RedisCluster, pattern: str) -> set[int]:
    """The masters with a key matching ``pattern`` (KEYS on each running one)."""
    return {i for i, node in enumerate(cluster.nodes) if node.running and redis_command(node.port, "KEYS", pattern)}


async def shard_subscribers(cluster: RedisCluster, room: str) -> int:
    """How many connections subscribe ``room``'s shard channel (PUBSUB SHARDNUMSUB
    on the master that owns its slot: only that master knows)."""
    channel = room_channel(CHANNEL, room)
    port = cluster.ports[cluster.node_for_key(channel)]
    [(_, count)] = await asyncio.to_thread(redis_command, port, "PUBSUB SHARDNUMSUB", channel)
    return int(count)


async def subscribers_become(cluster: RedisCluster, room: str, count: int, *, timeout: float = 5.0) -> None:
    """Wait for ``count`` subscribers of ``room``'s channel (an unsubscribe is asynchronous)."""
    deadline = time.monotonic() + timeout
    while (found := await shard_subscribers(cluster, room)) != count:
        assert time.monotonic() < deadline, f"{found} subscribers of {room}'s channel, expected {count}"
        await asyncio.sleep(0.05)


async def connected(node: GatewayProcess, probes: Callable[[], Probe], auth: dict[str, Any], **kw: Any) -> Probe:
    probe = probes()
    assert await probe.connect(node.url, auth=auth, **kw), probe.connect_error
    await probe.wait_for("authenticated")
    return probe


async def refused(node: GatewayProcess, probes: Callable[[], Probe], auth: dict[str, Any]) -> Any:
    """The ``connect_error`` data of a connect that must be refused."""
    probe = probes()
    assert not await probe.connect(node.url, auth=auth)
    return probe.connect_error["data"]


async def closed_with(probe: Probe, close: dict[str, Any]) -> None:
    assert await probe.wait_for("closing") == close
    await asyncio.wait_for(probe.disconnected.wait(), 5)


async def still_open(probe: Probe, *, settle: float = 0.3) -> bool:
    """No ``closing`` and still connected after the cluster had time to deliver one."""
    await asyncio.sleep(settle)
    return not probe.named("closing") and probe.client.connected


# -- 1, 2: tickets --------------------------------------------------------------------


async def test_tickets_issued_on_a_are_consumed_on_b_for_users_of_every_shard(
    rc_nodes: Nodes, rc_settings: dict[str, Any], redis_cluster: RedisCluster, probes: Callable[[], Probe]
) -> None:
    a, b = rc_nodes
    tokens = minter(rc_settings)
    for shard in range(3):
        sub = user_on(redis_cluster, shard)
        ticket = await issue_ticket(a.url, tokens.mint(sub)[0])
        probe = await connected(b, probes, {"ticket": ticket})
        authenticated = probe.named("authenticated")[0]
        assert (authenticated["sub"], authenticated["via"]) == (sub, "ticket")
        # Consumed on b means gone for a too.
        assert await refused(a, probes, {"ticket": ticket}) == {"code": 4001, "reason": "invalid_ticket"}
    assert await metric(a.url, "ticketgate_tickets_issued_total") == 3
    assert await metric(b.url, "ticketgate_tickets_consumed_total") == 3


async def test_one_ticket_fifty_concurrent_connects_on_two_nodes_exactly_one_wins(
    rc_nodes: Nodes, rc_settings: dict[str, Any], redis_cluster: RedisCluster, probes: Callable[[], Probe]
) -> None:
    a = rc_nodes[0]
    token = minter(rc_settings).mint("alice")[0]
    # The connects' first write is their address's rate-limit counter: a ticket
    # whose master holds no counter has all 50 takes queued behind the pause.
    warm = await connected(a, probes, {"token": token})
    await warm.close()
    counters = masters_holding(redis_cluster, "tg:*ratelimit*")
    for _ in range(20):
        ticket = await issue_ticket(a.url, token)
        owner = redis_cluster.node_for_key(PREFIX + TicketService.key(ticket))
        if owner not in counters:
            break
    else:
        raise AssertionError(f"no ticket off the masters of the rate-limit counters {counters}")

    await race_one_ticket(rc_nodes, ticket, redis_url=redis_cluster.urls[owner], probes=probes)


# -- 3: newest auth session wins ---------------------------------------------------------


async def test_newest_session_socket_wins_across_nodes(rc_nodes: Nodes, probes: Callable[[], Probe]) -> None:
    a, b = rc_nodes
    device = Device()
    await device.enroll(a.url, "alice", admin_token=ADMIN_TOKEN)
    for older_node, newer_node in ((a, b), (b, a), (a, b)):
        session = await initiate(newer_node.url, "alice")
        auth = {"sessionId": session["sessionId"], "wsToken": session["wsToken"]}
        older = probes()
        assert await older.connect(older_node.url, auth=auth)
        await older.wait_for("otp_ready")
        newer = probes()
        assert await newer.connect(newer_node.url, auth=auth)
        await newer.wait_for("otp_ready")

        await closed_with(older, REPLACED)
        assert await still_open(newer)
        # The approval, made on the older socket's node, reaches the one that won.
        assert (await device.verify(older_node.url, session["sessionId"]))[0] == 200
        assert (await newer.wait_for("approved"))["random"] == session["random"]
        assert await newer.wait_for("closing") == {"code": 1000, "reason": "resolved"}
        assert older.named("approved") == []


# -- 4, 5: refresh-token reuse and the disconnect API ----------------------------------


async def test_refresh_reuse_closes_the_family_on_every_node(
    rc_nodes: Nodes, rc_settings: dict[str, Any], redis_cluster: RedisCluster, probes: Callable[[], Probe]
) -> None:
    a, b = rc_nodes
    tokens = minter(rc_settings)
    for shard in range(3):
        sub = user_on(redis_cluster, shard)
        first = await connected(b, probes, {"token": tokens.mint(sub)[0]})
        stolen = (await first.wait_for("refresh_token"))["refreshToken"]
        # The same family on node a: the token presented once is a rotation.
        second = await connected(a, probes, {"refreshToken": stolen})
        successor = (await second.wait_for("refresh_token"))["refreshToken"]
        bystander = await connected(a, probes, {"token": tokens.mint(sub)[0]})  # a family of its own
        await bystander.wait_for("refresh_token")

        assert await refused(b, probes, {"refreshToken": stolen}) == REFRESH_REUSE
        await closed_with(first, REFRESH_REUSE)
        await closed_with(second, REFRESH_REUSE)
        assert (await refused(a, probes, {"refreshToken": successor}))["code"] == 4011  # the family is dead
        assert await still_open(bystander)


async def test_disconnect_api_closes_and_counts_sockets_on_both_nodes(
    rc_nodes: Nodes, rc_settings: dict[str, Any], redis_cluster: RedisCluster, probes: Callable[[], Probe]
) -> None:
    a, b = rc_nodes
    tokens = minter(rc_settings)
    for shard, revoke in ((0, True), (1, False), (2, True)):
        sub = user_on(redis_cluster, shard)
        token = tokens.mint(sub)[0]
        sockets = [await connected(node, probes, {"token": token}) for node in (a, b, b)]
        other = await connected(a, probes, {"token": tokens.mint(user_on(redis_cluster, shard, "other"))[0]})

        status, body, _ = await http_json(
            "POST", f"{a.url}/api/users/{sub}/disconnect", token=ADMIN_TOKEN, json={"revokeTokens": revoke}
        )
        assert (status, body) == (200, {"disconnected": 3})
        for probe in sockets:
            await closed_with(probe, REVOKED if revoke else DISCONNECTED)
        if revoke:
            assert await refused(b, probes, {"token": token}) == REVOKED
        else:
            assert (await connected(b, probes, {"token": token})).client.connected
        assert await still_open(other)
    assert sum([await metric(node.url, "ticketgate_connected_sockets") for node in rc_nodes]) == 4


# -- 6, 7, 8: fan-out --------------------------------------------------------------------


async def test_publish_on_a_reaches_sockets_on_b_in_user_and_named_rooms_of_every_shard(
    rc_settings: dict[str, Any],
    gateway_process: Callable[..., GatewayProcess],
    redis_cluster: RedisCluster,
    probes: Callable[[], Probe],
    node_scripts: NodeScripts,
) -> None:
    a, b = await start_nodes(gateway_process, rc_settings, public_rooms=["room:open-*"])
    tokens = minter(rc_settings)
    subs = [user_with_channel_on(redis_cluster, shard) for shard in range(3)]
    rooms = [room_on(redis_cluster, shard, "room:open-") for shard in range(3)]
    members = [await connected(b, probes, {"token": tokens.mint(sub)[0]}) for sub in subs]
    for member, room in zip(members, rooms, strict=True):
        assert await member.call("join", {"room": room}) == {"ok": True, "room": room}
    # The official client too, on b, in the first user's room.
    js = await node_scripts(
        JsClient.connect(b.url, auth={"token": tokens.mint(subs[0])[0]}, transports=["websocket"], until=["note"])
    )
    await js.wait_for("authenticated")

    for n, (sub, room) in enumerate(zip(subs, rooms, strict=True)):
        await publish(a.url, ADMIN_TOKEN, f"user:{sub}", "note", {"to": sub})
        await publish(a.url, ADMIN_TOKEN, room, "news", {"n": n})
    for n, (member, sub) in enumerate(zip(members, subs, strict=True)):
        assert await member.wait_for("note") == {"to": sub}
        assert await member.wait_for("news") == {"n": n}
    assert await js.emit_wait("note") == {"to": subs[0]}
    await js.finish()
    for member in members:  # each got its own, nothing of the others'
        assert (len(member.named("note")), len(member.named("news"))) == (1, 1)
    assert await metric(a.url, RECEIVED) == 0  # a has no member: routed, it received none


async def test_the_emitter_publishes_into_the_cluster(
    rc_nodes: Nodes, rc_settings: dict[str, Any], redis_cluster: RedisCluster, probes: Callable[[], Probe]
) -> None:
    tokens = minter(rc_settings)
    subs = [user_with_channel_on(redis_cluster, shard) for shard in range(3)]
    members = [await connected(rc_nodes[i % 2], probes, {"token": tokens.mint(sub)[0]}) for i, sub in enumerate(subs)]
    emitter = Emitter(redis_cluster.url, cluster=True)
    try:
        for sub in subs:
            await emitter.publish(f"user:{sub}", "invoice_paid", {"sub": sub})
    finally:
        await emitter.close()
    for member, sub in zip(members, subs, strict=True):
        assert await member.wait_for("invoice_paid") == {"sub": sub}


async def test_routing_a_node_without_members_receives_nothing_and_joins_subscribe(
    rc_settings: dict[str, Any],
    gateway_process: Callable[..., GatewayProcess],
    redis_cluster: RedisCluster,
    probes: Callable[[], Probe],
) -> None:
    a, b = await start_nodes(gateway_process, rc_settings, public_rooms=["room:open-*"])
    tokens = minter(rc_settings)
    sub = user_with_channel_on(redis_cluster, 1)
    alice = await connected(a, probes, {"token": tokens.mint(sub)[0]})
    assert await shard_subscribers(redis_cluster, f"user:{sub}") == 1
    assert (await metric(a.url, ROOMS), await metric(b.url, ROOMS)) == (1, 0)

    for n in range(20):
        await publish(b.url, ADMIN_TOKEN, f"user:{sub}", "tick", {"n": n})
    await alice.wait_for("tick", count=20)
    assert [event["n"] for event in alice.named("tick")] == list(range(20))
    assert (await metric(a.url, RECEIVED), await metric(b.url, RECEIVED)) == (20, 0)

    # A room on every shard: joined on a, then on b too, then left on b.
    rooms = [room_on(redis_cluster, shard, "room:open-") for shard in range(3)]
    bob = await connected(b, probes, {"token": tokens.mint(user_with_channel_on(redis_cluster, 2, "bob"))[0]})
    for room in rooms:
        assert await alice.call("join", {"room": room}) == {"ok": True, "room": room}
        assert await shard_subscribers(redis_cluster, room) == 1
    assert (await metric(a.url, ROOMS), await metric(b.url, ROOMS)) == (4, 1)
    for room in rooms:  # b has nobody in them: still nothing for b
        await publish(b.url, ADMIN_TOKEN, room, "news", {"room": room})
    await alice.wait_for("news", count=3)
    assert (await metric(a.url, RECEIVED), await metric(b.url, RECEIVED)) == (23, 0)

    for room in rooms:
        assert await bob.call("join", {"room": room}) == {"ok": True, "room": room}
        assert await shard_subscribers(redis_cluster, room) == 2
    assert await metric(b.url, ROOMS) == 4
    for room in rooms:
        await publish(a.url, ADMIN_TOKEN, room, "more", {"room": room})
    await bob.wait_for("more", count=3)
    await alice.wait_for("more", count=3)
    assert (await metric(a.url, RECEIVED), await metric(b.url, RECEIVED)) == (26, 3)

    for room in rooms:
        assert await bob.call("leave", {"room": room}) == {"ok": True, "room": room}
        await subscribers_become(redis_cluster, room, 1)
    assert await metric(b.url, ROOMS) == 1
    for room in rooms:
        await publish(a.url, ADMIN_TOKEN, room, "after", {"room": room})
    await alice.wait_for("after", count=3)
    await publish(a.url, ADMIN_TOKEN, f"user:{bob.named('authenticated')[0]['sub']}", "last", {})
    await bob.wait_for("last")  # one channel per room: had any "after" reached b, it came before
    assert bob.named("after") == []
    assert await metric(b.url, RECEIVED) == 4

    await alice.close()
    for room in rooms:
        await subscribers_become(redis_cluster, room, 0)
    await subscribers_become(redis_cluster, f"user:{sub}", 0)
    assert await metric(a.url, ROOMS) == 0


# -- 9: a shard stopped and started again ------------------------------------------------


async def test_a_stopped_shard_fails_only_its_users_and_serves_again_once_back(
    rc_nodes: Nodes, rc_settings: dict[str, Any], redis_cluster: RedisCluster, probes: Callable[[], Probe]
) -> None:
    a, b = rc_nodes
    tokens = minter(rc_settings)
    # Connects and ticket requests count their address in Redis first: the
    # shard to stop is one without those counters, and not the seed (the
    # broadcast channel's home), so that what fails is the users' keys alone.
    warm = await connected(a, probes, {"token": tokens.mint("warm")[0]})
    await issue_ticket(a.url, tokens.mint("warm")[0])
    await warm.close()
    counters = masters_holding(redis_cluster, "tg:*ratelimit*")
    down = next((i for i in (1, 2) if i not in counters), None)
    assert down is not None, f"every master but the seed holds a rate-limit counter: {counters}"
    up = next(i for i in range(3) if i != down)

    victim = user_on(redis_cluster, down, "victim")
    survivor = next(
        sub
        for sub in (user_on(redis_cluster, up, f"survivor{n}-") for n in range(100))
        if redis_cluster.node_for_key(room_channel(CHANNEL, f"user:{sub}")) != down
    )
    victim_token, survivor_token = tokens.mint(victim)[0], tokens.mint(survivor)[0]
    listening = await connected(b, probes, {"token": survivor_token})

    redis_cluster.stop_node(down)
    try:
        started = time.monotonic()
        assert await refused(a, probes, {"token": victim_token}) == UNAVAILABLE
        assert await refused(b, probes, {"token": victim_token}) == UNAVAILABLE
        status, body, _ = await http_json("POST", f"{a.url}/ws/ticket", token=victim_token)
        assert (status, body["error"]["code"]) == (503, "unavailable"), body
        assert time.monotonic() - started < 3 * FAST

        # The other shards serve: the survivor connects (every time: nothing of
        # its connect, its recovery record included, lives on the stopped
        # shard) and gets its events on both nodes.
        again = [await connected(node, probes, {"token": survivor_token}) for node in (a, b, a, b, a, b)]
        await publish(a.url, ADMIN_TOKEN, f"user:{survivor}", "note", {"n": 1})
        for probe in (listening, *again):
            assert await probe.wait_for("note") == {"n": 1}
        # A ticket hashes whole (keys.py: tickets spread over the shards), so
        # one issued now may fall on the stopped shard: 503, and the next try
        # falls elsewhere. One that was issued redeems on the other node.
        answers = [await http_json("POST", f"{b.url}/ws/ticket", token=survivor_token) for _ in range(10)]
        issued = [body["ticket"] for status, body, _ in answers if status == 201]
        assert all(body["error"]["code"] == "unavailable" for status, body, _ in answers if status != 201)
        assert issued
        await connected(a, probes, {"ticket": issued[0]})
        # A shard down is not the store down: both nodes stay ready.
        for node in rc_nodes:
            assert (await http_json("GET", f"{node.url}/readyz"))[:2] == (200, {"status": "ready"})
    finally:
        await asyncio.to_thread(redis_cluster.start_node, down)  # returns once the cluster is healthy

    # The same gateway processes: the victim connects again (within a few
    # seconds: a node's subscriber of that shard reconnects with a backoff).
    deadline = time.monotonic() + 15
    while True:
        probe = probes()
        if await probe.connect(a.url, auth={"token": victim_token}):
            break
        assert probe.connect_error["data"] == UNAVAILABLE, probe.connect_error
        assert time.monotonic() < deadline, "the victim never connected again"
        await asyncio.sleep(0.2)
    back = probe
    await back.wait_for("authenticated")
    on_b = await connected(b, probes, {"ticket": await issue_ticket(a.url, victim_token)})
    await publish(b.url, ADMIN_TOKEN, f"user:{victim}", "note", {"n": 2})
    assert await back.wait_for("note") == {"n": 2}
    assert await on_b.wait_for("note") == {"n": 2}
    await publish(b.url, ADMIN_TOKEN, f"user:{survivor}", "note", {"n": 3})
    assert await listening.wait_for("note", count=2) == {"n": 3}
