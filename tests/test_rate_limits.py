"""gateway/rate_limits.py (issue #16): client events per socket, HTTP requests
and connects per client address, on both engines; what they cost in Redis;
and what they do while Redis is unreachable. The cluster-wide half is in
tests/cluster/test_rate_limits_cluster.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway import keys
from gateway.auth.tokens import TokenService
from gateway.config import load_config
from gateway.errors import ConfigError, RateLimited
from gateway.rate_limits import CLIENT_NAME
from tests.conftest import Gateway, MakeGateway
from tests.support import (
    GatewayProcess,
    JsClient,
    NodeScripts,
    Probe,
    RedisCluster,
    RedisServer,
    http_json,
    raw_frames,
    redis_command,
)

pytestmark = pytest.mark.timeout(60)

ROOM = "room:flood"
RATE, BURST, ABUSE = 20, 40, 0.5
LIMITED = {"ok": False, "error": {"code": 4029, "reason": "rate_limited"}}
CLOSING = {"code": 4029, "reason": "rate_limited"}
EVENT_LIMITS = {
    "client_event_rate": RATE,
    "client_event_burst": BURST,
    "client_abuse_seconds": ABUSE,
    "public_rooms": ["room:*"],
}


async def rate_limited_total(url: str, limit: str) -> float:
    status, text, _ = await http_json("GET", f"{url}/metrics")
    assert status == 200
    sample = f'ticketgate_rate_limited_total{{limit="{limit}"}}'
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == sample:
            return float(value)
    raise KeyError(sample)


async def member(gateway: Gateway, probes: Callable[[], Probe], sub: str) -> Probe:
    probe = probes()
    assert await probe.connect(gateway.url, auth={"token": gateway.mint(sub)})
    await probe.wait_for("authenticated")
    assert (await probe.call("join", {"room": ROOM}))["ok"] is True
    return probe


# -- per socket: client events ----------------------------------------------------


async def test_a_flooding_socket_is_refused_then_closed_and_no_other_socket_is_touched(
    make_gateway: MakeGateway, probes: Callable[[], Probe]
) -> None:
    gateway = await make_gateway(**EVENT_LIMITS)
    flooder = await member(gateway, probes, "alice")
    sibling = await member(gateway, probes, "alice")  # the same user's other socket
    bob = await member(gateway, probes, "bob")

    acks: list[tuple[float, Any]] = []
    closings: list[tuple[float, Any]] = []  # (when, data): this handler takes `closing` from the Probe's
    flooder.client.on("closing", lambda data: closings.append((time.monotonic(), data)))

    def ack_of(*args: Any) -> None:
        acks.append((time.monotonic(), args[0] if args else None))

    async def flood() -> float:
        """1000 messages in one second, 50 every 50 ms; the time of the first."""
        started = time.monotonic()
        for batch in range(20):
            for n in range(batch * 50, batch * 50 + 50):
                if not flooder.client.connected:
                    return started
                await flooder.client.emit("message", {"room": ROOM, "data": {"flood": n}}, callback=ack_of)
            await asyncio.sleep(0.05)
        return started

    async def chat() -> list[Any]:
        """The sibling socket sends a message every 100 ms throughout."""
        replies = []
        for n in range(15):
            replies.append(await sibling.call("message", {"room": ROOM, "data": {"chat": n}}))
            await asyncio.sleep(0.1)
        return replies

    started, replies = await asyncio.gather(flood(), chat())
    await asyncio.wait_for(flooder.disconnected.wait(), 5)
    assert [data for _, data in closings] == [CLOSING]
    closed_at = closings[0][0]

    accepted = [ack for _, ack in acks if ack.get("ok") is True]
    refused = [(at, ack) for at, ack in acks if ack.get("ok") is not True]
    assert refused and all(ack == LIMITED for _, ack in refused), refused[:3]
    # Every event was answered until the close (those written after it got none).
    assert len(accepted) + len(refused) <= 1000
    # The others received exactly the accepted ones, and at most burst + rate x seconds of them.
    await asyncio.sleep(0.3)
    flooded = [m for m in bob.named("message") if "flood" in m["data"]]
    assert len(flooded) == len(accepted)
    elapsed = closed_at - started
    assert len(accepted) <= BURST + RATE * elapsed + 1, (len(accepted), elapsed)
    assert len(accepted) >= BURST  # the burst itself passes
    # Closed once it had been over the limit for client_abuse_seconds, not before.
    over_for = closed_at - refused[0][0]
    assert ABUSE - 0.15 <= over_for <= ABUSE + 1.0, over_for
    # The same user's other socket was never limited and is still connected.
    assert all(reply["ok"] is True for reply in replies), replies
    assert sibling.client.connected and not sibling.disconnected.is_set()
    assert [m["data"]["chat"] for m in bob.named("message") if "chat" in m["data"]] == list(range(15))
    assert (await sibling.call("message", {"room": ROOM, "data": {"after": 1}}))["ok"] is True
    assert await rate_limited_total(gateway.url, "client_event") >= len(refused)


async def test_every_client_event_spends_the_sockets_rate(
    make_gateway: MakeGateway, probes: Callable[[], Probe]
) -> None:
    """join, leave, refresh, authenticate and events the gateway does not know
    (a future `presence`) all count; a bucket that had time to refill passes again."""
    gateway = await make_gateway(client_event_rate=2, client_event_burst=5, client_abuse_seconds=30)
    probe = probes()
    assert await probe.connect(gateway.url, auth={"token": gateway.mint("alice")})
    await probe.wait_for("authenticated")
    calls = [
        ("join", {"room": "room:x"}),
        ("leave", {"room": "room:x"}),
        ("refresh", {"refreshToken": "x" * 43}),
        ("authenticate", {"token": gateway.mint("alice")}),
        ("presence", {"status": "here"}),
    ]
    before = [await probe.call(event, data) for event, data in calls]
    assert LIMITED not in before, before
    after = [await probe.call(event, data) for event, data in calls]
    assert after == [LIMITED] * len(calls)
    await asyncio.sleep(0.6)  # one token back (2 a second)
    assert (await probe.call("presence", {}))["error"]["reason"] == "invalid_request"
    assert await probe.call("presence", {}) == LIMITED
    assert probe.client.connected  # refused, not closed: it never stayed over for 30 s


@pytest.mark.parametrize("engine", ["memory"])
async def test_a_pending_socket_is_limited_too(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(client_event_rate=1, client_event_burst=2)
    probe = probes()
    assert await probe.connect(gateway.url, auth={})
    answers = [await probe.call("authenticate", {"token": "garbage"}) for _ in range(3)]
    assert answers[-1] == LIMITED and LIMITED not in answers[:2], answers


@pytest.mark.parametrize("engine", ["memory"])
async def test_the_official_js_client_sees_the_refusal_and_the_close(
    make_gateway: MakeGateway, node_scripts: NodeScripts
) -> None:
    gateway = await make_gateway(**EVENT_LIMITS)
    flood = await node_scripts(JsClient.launch("flood.mjs", gateway.url, gateway.mint("alice"), ROOM, "1000"))
    lines = await flood.finish(timeout=20)
    acks = [line["ack"] for line in lines if line["event"] == "ack" and line["name"] == "message"]
    assert {"ok", "id"} <= set(acks[0])
    assert LIMITED in acks
    assert sum(ack.get("ok") is True for ack in acks) <= BURST + RATE * 1.5
    assert flood.received("closing") == [CLOSING]
    assert flood.index(lambda line: line.get("name") == "closing") < flood.index(
        lambda line: line["event"] == "disconnect"
    )
    assert flood.seen("disconnect")[-1]["reason"] == "io server disconnect"


# -- per address: HTTP and connects ------------------------------------------------


async def test_http_routes_share_one_budget_per_address(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(http_rate_per_ip=4)
    token = gateway.mint("alice")
    admin = gateway.config.admin_token
    answers = [
        await http_json("POST", f"{gateway.url}/auth/initiate", json={"userId": "alice"}),
        await http_json("POST", f"{gateway.url}/auth/verify", json={}),
        await http_json("POST", f"{gateway.url}/auth/devices", token=admin, json={}),
        await http_json("POST", f"{gateway.url}/ws/ticket", token=token),
    ]
    assert [status for status, _, _ in answers] == [201, 400, 400, 201]
    for path in ("/auth/initiate", "/auth/verify", "/auth/devices", "/ws/ticket"):
        status, body, headers = await http_json("POST", gateway.url + path, token=token, json={"userId": "alice"})
        assert status == 429, (path, status, body)
        assert set(body) == {"error"} and body["error"]["code"] == "rate_limited" and body["error"]["message"]
        assert 1 <= int(headers["Retry-After"]) <= 60
    # Routes outside the limit still answer.
    assert (await http_json("GET", f"{gateway.url}/healthz"))[0] == 200
    publish = {"room": "room:x", "event": "e", "data": 1}
    assert (await http_json("POST", f"{gateway.url}/api/publish", token=admin, json=publish))[0] == 202
    assert await rate_limited_total(gateway.url, "http") == 4


async def test_connects_per_address_socketio_and_raw(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(connect_rate_per_ip=3, trusted_proxies=["127.0.0.1"])
    token = gateway.mint("alice")
    ok = [probes() for _ in range(2)]
    assert all([await probe.connect(gateway.url, auth={"token": token}) for probe in ok])
    bad = probes()  # a refused connect counts too: it is the third
    assert not await bad.connect(gateway.url, auth={"token": "garbage"})
    assert bad.connect_error["data"] == {"code": 4001, "reason": "invalid_token"}
    over = probes()
    assert not await over.connect(gateway.url, auth={"token": token})
    assert over.connect_error["data"] == {"code": 4029, "reason": "rate_limited"}
    pending = probes()
    assert not await pending.connect(gateway.url, auth={})
    assert pending.connect_error["data"] == {"code": 4029, "reason": "rate_limited"}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{gateway.url}/ws/session/abc?token=def") as ws:
            frames, code = await raw_frames(ws)
        assert (frames, code) == ([], 4029)
    # Another address (through the trusted proxy) is unaffected.
    other = probes()
    assert await other.connect(gateway.url, auth={"token": token}, headers={"X-Forwarded-For": "198.51.100.9"})
    assert await rate_limited_total(gateway.url, "connect") == 3


# -- cost in Redis, and Redis unreachable ----------------------------------------------


@pytest.mark.parametrize("engine", ["redis"])
async def test_each_limited_action_costs_one_redis_round_trip(
    make_gateway: MakeGateway, probes: Callable[[], Probe]
) -> None:
    """MONITOR shows what the limiter's own connections (CLIENT SETNAME
    ticketgate-ratelimit) send: one EVALSHA per counted action, one more on
    the first refusal (for Retry-After), then nothing while the address is full;
    its keys keep the tg: prefix and expire; it keeps one small pool."""
    gateway = await make_gateway(http_rate_per_ip=5, connect_rate_per_ip=5)
    url = str(gateway.config.redis_url)
    admin = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        # Warm up (redis-py loads a script on its first NOSCRIPT: the counting
        # one, and the window read a refusal makes), then count.
        assert (await http_json("POST", f"{gateway.url}/auth/initiate", json={"userId": "a"}))[0] == 201
        warm = probes()
        assert await warm.connect(gateway.url, auth={"token": gateway.mint("alice")})
        limits = gateway.app[keys.rate_limits]
        for _ in range(5):
            await limits.http("192.0.2.1")  # another address: its refusal reads the window once
        with pytest.raises(RateLimited):
            await limits.http("192.0.2.1")
        commands: list[str] = []
        async with admin.monitor() as monitor:

            async def record() -> None:
                async for command in monitor.listen():
                    commands.append(f"{command['client_address']}:{command['client_port']} {command['command']}")

            listener = asyncio.create_task(record())
            await asyncio.sleep(0.2)
            statuses = [
                (await http_json("POST", f"{gateway.url}/auth/initiate", json={"userId": "a"}))[0] for _ in range(10)
            ]
            connected = [await probes().connect(gateway.url, auth={"token": gateway.mint("alice")}) for _ in range(6)]
            await asyncio.sleep(0.3)
            listener.cancel()
        clients = await admin.client_list()
        limiter = {client["addr"] for client in clients if client["name"] == CLIENT_NAME}
        assert statuses == [201] * 4 + [429] * 6
        assert connected == [True] * 4 + [False] * 2
        mine = [command.split(" ", 1)[1] for command in commands if command.split(" ", 1)[0] in limiter]
        evalshas = [command for command in mine if command.startswith("EVALSHA")]
        # http: 4 hits + 1 refused hit + 1 window read; connects: 4 + 1 + 1.
        assert len(evalshas) == len(mine) == 12, mine
        assert 1 <= len(limiter) <= 3, clients
        names = await admin.keys("*ratelimit*")
        # limits hash-tags a sliding window's two counters: tg:{ratelimit/...}
        assert names and all(name.startswith(("tg:ratelimit/", "tg:{ratelimit/")) for name in names), names
        ttls = [await admin.ttl(name) for name in names]
        # A sliding window's counter outlives its minute by one more: the next
        # minute weighs it.
        assert all(0 < ttl <= 120 for ttl in ttls), ttls
    finally:
        await admin.aclose()


async def test_with_redis_unreachable_limited_actions_fail_closed_and_recover(
    own_redis: RedisServer,
    cluster_keys: dict[str, str],
    gateway_process: Callable[..., GatewayProcess],
    probes: Callable[[], Probe],
) -> None:
    settings = {**cluster_keys, "redis_url": own_redis.url, "http_rate_per_ip": 3, "connect_rate_per_ip": 3}
    node = gateway_process(settings)
    node.start()
    token = TokenService(config=load_config(environ={}, flags=settings)).mint("alice")[0]
    assert (await http_json("POST", f"{node.url}/auth/initiate", json={"userId": "alice"}))[0] == 201

    own_redis.stop()

    started = time.monotonic()
    for path, body in (("/ws/ticket", None), ("/auth/initiate", {"userId": "alice"})):
        status, answer, _ = await http_json("POST", node.url + path, token=token, json=body)
        assert (status, answer["error"]["code"]) == (503, "unavailable"), (path, status, answer)
    refused = probes()
    assert not await refused.connect(node.url, auth={"token": token})
    assert refused.connect_error["data"] == {"code": 4503, "reason": "unavailable"}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{node.url}/ws/session/abc?token=def") as ws:
            _, code = await raw_frames(ws)
        assert code == 1011
    assert time.monotonic() - started < 10
    assert (await http_json("GET", f"{node.url}/healthz"))[0] == 200
    assert node.proc is not None and node.proc.poll() is None
    assert "Traceback" not in node.log()

    own_redis.start()  # same port, empty: the windows start again

    async def ready() -> bool:
        return (await http_json("GET", f"{node.url}/readyz"))[0] == 200

    deadline = time.monotonic() + 15
    while not await ready():
        assert time.monotonic() < deadline, "never ready again"
        await asyncio.sleep(0.1)
    statuses = [(await http_json("POST", f"{node.url}/auth/initiate", json={"userId": "alice"}))[0] for _ in range(4)]
    assert statuses == [201, 201, 201, 429]


@pytest.mark.parametrize("engine", ["redis"])
async def test_on_a_redis_cluster_each_address_is_counted_on_the_master_of_its_slot(
    make_gateway: MakeGateway, redis_cluster: RedisCluster
) -> None:
    """Regression: the counters went through a plain client on the seed node,
    so every address whose counters hash to another master was refused 4503
    (MOVED), on every connect and every limited HTTP request."""
    redis_cluster.flush()
    gateway = await make_gateway(redis_url=redis_cluster.url, redis_cluster=True, connect_rate_per_ip=2)
    limiter = gateway.app[keys.rate_limits]
    for n in range(30):  # addresses whose counters hash to every master
        address = f"10.{n}.{n * 37 % 256}.{n * 101 % 256}"
        await limiter.connect(address)
        await limiter.connect(address)
        with pytest.raises(RateLimited):
            await limiter.connect(address)
    masters = {i for i, port in enumerate(redis_cluster.ports) if redis_command(port, "KEYS", "tg:*ratelimit*")}
    assert masters == {0, 1, 2}


def test_the_demo_raises_the_per_address_rates() -> None:
    assert (load_config(environ={}).http_rate_per_ip, load_config(environ={}).connect_rate_per_ip) == (120, 300)
    demo = load_config(environ={}, flags={"demo": True})
    assert (demo.http_rate_per_ip, demo.connect_rate_per_ip) == (600, 600)
    configured = load_config(environ={"TICKETGATE_HTTP_RATE_PER_IP": "7"}, flags={"demo": True})
    assert configured.http_rate_per_ip == 7


def test_the_settings_come_from_the_environment_and_are_validated() -> None:
    env = {
        "TICKETGATE_CLIENT_EVENT_RATE": "2.5",
        "TICKETGATE_CLIENT_EVENT_BURST": "3",
        "TICKETGATE_CLIENT_ABUSE_SECONDS": "0.5",
        "TICKETGATE_HTTP_RATE_PER_IP": "11",
        "TICKETGATE_CONNECT_RATE_PER_IP": "12",
    }
    config = load_config(environ=env)
    assert (config.client_event_rate, config.client_event_burst, config.client_abuse_seconds) == (2.5, 3, 0.5)
    assert (config.http_rate_per_ip, config.connect_rate_per_ip) == (11, 12)
    defaults = load_config(environ={})
    assert (defaults.client_event_rate, defaults.client_event_burst, defaults.client_abuse_seconds) == (20, 40, 5)
    for name in env:
        with pytest.raises(ConfigError, match=name.removeprefix("TICKETGATE_").lower()):
            load_config(environ={name: "0"})
