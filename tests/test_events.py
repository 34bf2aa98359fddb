"""PROTOCOL §3 client events: deferred `authenticate`, join/leave by the rooms claim,
`message` to rooms and the upstream stream, per-message auth, malformed payloads."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from gateway import keys
from tests.conftest import Gateway, MakeGateway
from tests.support import Probe, http_json, metric


async def connected(gateway: Gateway, probes: Callable[[], Probe], sub: str = "alice", **mint: Any) -> Probe:
    probe = probes()
    assert await probe.connect(gateway.url, auth={"token": gateway.mint(sub, **mint)})
    await probe.wait_for("authenticated")
    return probe


# -- deferred authentication -----------------------------------------------------


async def test_deferred_authenticate_with_token(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    probe = probes()
    assert await probe.connect(gateway.url, auth={})
    ack = await probe.call("authenticate", {"token": gateway.mint("alice", ttl=600)})
    assert ack["ok"] is True and ack["sub"] == "alice" and ack["expiresAt"].endswith("Z")
    assert (await probe.wait_for("authenticated"))["via"] == "token"
    await gateway_publish(gateway, "user:alice", "hello", {"n": 1})
    assert await probe.wait_for("hello") == {"n": 1}


async def test_deferred_authenticate_with_ticket(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    probe = probes()
    assert await probe.connect(gateway.url)
    ack = await probe.call("authenticate", {"ticket": await gateway.ticket("bob")})
    assert ack["ok"] is True and ack["sub"] == "bob"


async def test_pending_socket_receives_nothing(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    probe = probes()
    assert await probe.connect(gateway.url)
    await gateway_publish(gateway, "user:alice", "secret", {"n": 1})
    await asyncio.sleep(0.3)
    assert probe.events == []
    assert gateway.app[keys.realtime].sio.rooms(probe.client.get_sid()) == [probe.client.get_sid()]


async def test_failed_authenticate_keeps_the_socket_pending(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    probe = probes()
    assert await probe.connect(gateway.url)
    ack = await probe.call("authenticate", {"token": "garbage"})
    assert ack == {"ok": False, "error": {"code": 4001, "reason": "invalid_token"}}
    ack = await probe.call("authenticate", {"token": gateway.mint("alice")})
    assert ack["ok"] is True


@pytest.mark.parametrize("event", ["join", "message", "leave", "whatever"])
async def test_any_other_event_before_authenticate_closes_4001(
    gateway: Gateway, probes: Callable[[], Probe], event: str
) -> None:
    probe = probes()
    assert await probe.connect(gateway.url)
    await probe.client.emit(event, {"room": "room:a", "data": 1})
    assert await probe.wait_for("closing") == {"code": 4001, "reason": "unauthenticated"}
    await asyncio.wait_for(probe.disconnected.wait(), 5)


async def test_auth_timeout_closes_4008(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(auth_timeout=0.5)
    probe = probes()
    assert await probe.connect(gateway.url)
    assert await probe.wait_for("closing", timeout=3) == {"code": 4008, "reason": "auth_timeout"}
    await asyncio.wait_for(probe.disconnected.wait(), 5)


async def test_authenticated_socket_is_not_timed_out(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(auth_timeout=0.5)
    probe = probes()
    assert await probe.connect(gateway.url)
    assert (await probe.call("authenticate", {"token": gateway.mint()}))["ok"]
    await asyncio.sleep(1.0)
    assert probe.client.connected and not probe.named("closing")


async def test_pending_cap_per_address_and_timeout(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    """200 pending sockets from one address: the cap holds, all are closed at the
    timeout, and every per-socket structure is released."""
    gateway = await make_gateway(auth_timeout=2, max_pending_per_ip=100)
    clients = [probes() for _ in range(200)]
    results = []
    for batch in range(0, 200, 50):
        results += await asyncio.gather(*(c.connect(gateway.url) for c in clients[batch : batch + 50]))
    assert results.count(True) == 100
    refused = [c for c, ok in zip(clients, results, strict=True) if not ok]
    assert all(c.connect_error["data"] == {"code": 4029, "reason": "rate_limited"} for c in refused)
    realtime = gateway.app[keys.realtime]
    # A refused client hangs up its Engine.IO session, which waited (and counted,
    # with a timer of its own) until then.
    async with asyncio.timeout(5):
        while realtime.scheduler.pending > 100:
            await asyncio.sleep(0.02)
    assert len(realtime.registry) == 100 and realtime.scheduler.pending == 100
    accepted = [c for c, ok in zip(clients, results, strict=True) if ok]
    await asyncio.wait_for(asyncio.gather(*(c.disconnected.wait() for c in accepted)), 10)
    assert all(c.named("closing") == [{"code": 4008, "reason": "auth_timeout"}] for c in accepted)
    assert len(realtime.registry) == 0 and realtime.scheduler.pending == 0
    # The address may hold pending sockets again.
    again = probes()
    assert await again.connect(gateway.url)


async def test_authenticating_frees_a_pending_place(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(max_pending_per_ip=1)
    first = probes()
    assert await first.connect(gateway.url)
    second = probes()
    assert not await second.connect(gateway.url)
    assert (await first.call("authenticate", {"token": gateway.mint()}))["ok"]
    third = probes()
    assert await third.connect(gateway.url)


async def test_reauthenticate_with_another_sub_closes_4001(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    probe = await connected(gateway, probes, "alice")
    ack = await probe.call("authenticate", {"token": gateway.mint("mallory")})
    assert ack == {"ok": False, "error": {"code": 4001, "reason": "invalid_token"}}
    assert await probe.wait_for("closing") == {"code": 4001, "reason": "invalid_token"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, "invalid_request"),
        ("token", "invalid_request"),
        ({}, "missing_credentials"),
        ({"token": "a", "ticket": "b"}, "ambiguous_credentials"),
        ({"token": "a", "extra": 1}, "invalid_request"),
        ({"token": 5}, "invalid_request"),
    ],
)
async def test_malformed_authenticate(gateway: Gateway, probes: Callable[[], Probe], payload: Any, reason: str) -> None:
    probe = probes()
    assert await probe.connect(gateway.url)
    ack = await probe.call("authenticate", payload)
    assert ack["ok"] is False and ack["error"]["reason"] == reason
    assert probe.client.connected


# -- rooms and messages ------------------------------------------------------------


async def gateway_publish(gateway: Gateway, room: str, event: str, data: Any) -> None:
    await gateway.app[keys.realtime].publish(room, event, data)


async def test_join_is_governed_by_the_rooms_claim(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    probe = await connected(gateway, probes, claims={"rooms": ["room:team-*", "room:lobby"]})
    assert await probe.call("join", {"room": "room:team-red"}) == {"ok": True, "room": "room:team-red"}
    assert await probe.call("join", {"room": "room:lobby"}) == {"ok": True, "room": "room:lobby"}
    assert await probe.call("join", {"room": "room:admin"}) == {
        "ok": False,
        "error": {"code": 4003, "reason": "forbidden"},
    }
    assert (await probe.call("join", {"room": "user:bob"}))["error"]["code"] == 4000
    nobody = await connected(gateway, probes, "carol")  # no rooms claim at all
    assert (await nobody.call("join", {"room": "room:lobby"}))["error"] == {"code": 4003, "reason": "forbidden"}
    assert await probe.call("leave", {"room": "room:lobby"}) == {"ok": True, "room": "room:lobby"}
    assert "room:lobby" not in gateway.app[keys.realtime].sio.rooms(probe.client.get_sid())


async def test_message_reaches_members_and_upstream_once(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    rooms = {"rooms": ["room:chat"]}
    alice = await connected(gateway, probes, "alice", claims=rooms)
    bob = await connected(gateway, probes, "bob", claims=rooms)
    outsider = await connected(gateway, probes, "eve", claims=rooms)
    for probe in (alice, bob):
        assert (await probe.call("join", {"room": "room:chat"}))["ok"]
    ack = await alice.call("message", {"room": "room:chat", "data": {"text": "hi", "n": [1, 2]}})
    assert ack["ok"] is True and ack["id"]
    for probe in (alice, bob):  # the sender receives it too (§6.9)
        message = await probe.wait_for("message")
        assert set(message) == {"id", "ts", "sub", "room", "data"}
        assert message["id"] == ack["id"] and message["sub"] == "alice" and message["room"] == "room:chat"
        assert message["data"] == {"text": "hi", "n": [1, 2]} and message["ts"].endswith("Z")
    await asyncio.sleep(0.2)
    assert not outsider.named("message")
    entries = await gateway.upstream()
    assert len(entries) == 1
    _, fields = entries[0]
    assert set(fields) == {"id", "ts", "sub", "room", "data"}
    assert (
        fields["id"] == ack["id"]
        and fields["sub"] == "alice"
        and json.loads(fields["data"]) == {"text": "hi", "n": [1, 2]}
    )


async def test_message_to_a_room_not_joined(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    probe = await connected(gateway, probes, claims={"rooms": ["room:*"]})
    ack = await probe.call("message", {"room": "room:chat", "data": 1})
    assert ack == {"ok": False, "error": {"code": 4003, "reason": "forbidden"}}
    assert await gateway.upstream() == []


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        (None, 4000, "invalid_request"),
        ([1, 2], 4000, "invalid_request"),
        ({"room": "room:chat"}, 4000, "invalid_request"),
        ({"data": 1}, 4000, "invalid_request"),
        ({"room": 7, "data": 1}, 4000, "invalid_request"),
        ({"room": "room:chat", "data": 1, "colour": "red"}, 4000, "invalid_request"),
        ({"room": "room:chat", "data": "x" * 20_000}, 4013, "payload_too_large"),
    ],
)
async def test_malformed_messages(
    gateway: Gateway, probes: Callable[[], Probe], payload: Any, code: int, reason: str
) -> None:
    probe = await connected(gateway, probes, claims={"rooms": ["room:chat"]})
    assert (await probe.call("join", {"room": "room:chat"}))["ok"]
    ack = await probe.call("message", payload)
    assert ack == {"ok": False, "error": {"code": code, "reason": reason}}
    assert probe.client.connected
    assert await gateway.upstream() == []
    assert (await probe.call("message", {"room": "room:chat", "data": "still works"}))["ok"]


async def test_unknown_event_gets_an_error_ack(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    probe = await connected(gateway, probes)
    assert await probe.call("dance", {"x": 1}) == {"ok": False, "error": {"code": 4000, "reason": "invalid_request"}}
    assert probe.client.connected


async def test_per_message_auth(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(per_message_auth=True)
    probe = await connected(gateway, probes, "alice", claims={"rooms": ["room:q"]})
    assert (await probe.call("join", {"room": "room:q"}))["ok"]
    ok = await probe.call("message", {"room": "room:q", "data": 1, "token": gateway.mint("alice")})
    assert ok["ok"] is True
    refusals = [
        ({"room": "room:q", "data": 2}, "missing_credentials"),
        ({"room": "room:q", "data": 3, "token": gateway.mint("mallory")}, "invalid_token"),
        ({"room": "room:q", "data": 4, "token": "garbage"}, "invalid_token"),
        ({"room": "room:q", "data": 5, "token": gateway.mint("alice", ttl=1, now=time.time() - 60)}, "token_expired"),
    ]
    for payload, reason in refusals:
        assert await probe.call("message", payload) == {"ok": False, "error": {"code": 4001, "reason": reason}}
    entries = await gateway.upstream()
    assert [json.loads(f["data"]) for _, f in entries] == [1]  # refused messages are neither queued...
    await asyncio.sleep(0.2)
    assert [m["data"] for m in probe.named("message")] == [1]  # ...nor delivered


async def test_messages_keep_their_order(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    sender = await connected(gateway, probes, "alice", claims={"rooms": ["room:o"]})
    receiver = await connected(gateway, probes, "bob", claims={"rooms": ["room:o"]})
    for probe in (sender, receiver):
        assert (await probe.call("join", {"room": "room:o"}))["ok"]
    for n in range(30):
        await sender.client.emit("message", {"room": "room:o", "data": n})
    await receiver.wait_for("message", count=30)
    assert [m["data"] for m in receiver.named("message")] == list(range(30))
    entries = await gateway.upstream()
    assert [json.loads(f["data"]) for _, f in entries] == list(range(30))


async def test_public_rooms(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(public_rooms=["room:open-*"])
    probe = await connected(gateway, probes)  # no rooms claim
    assert (await probe.call("join", {"room": "room:open-1"}))["ok"] is True
    assert (await probe.call("join", {"room": "room:closed"}))["error"]["code"] == 4003
    demo = await make_gateway(demo=True)
    assert demo.config.public_rooms == ("room:demo-*",)


async def test_engine_sessions_that_never_connect_count_and_time_out(make_gateway: MakeGateway) -> None:
    """Engine.IO sessions that never send the Socket.IO CONNECT are clients too
    (issue #11): they count against max_pending_per_ip, the surplus handshakes
    are refused with 429, and auth_timeout closes them like any pending socket."""
    gateway = await make_gateway(auth_timeout=1, max_pending_per_ip=20)
    handshake = f"{gateway.url}/socket.io/?EIO=4&transport=polling"
    answers = [await http_json("GET", handshake) for _ in range(30)]
    opened = [body for status, body, _ in answers if status == 200]
    refused = [(body, headers) for status, body, headers in answers if status == 429]
    assert len(opened) == 20 and len(refused) == 10
    assert all(
        body["error"]["code"] == "rate_limited" and int(headers["Retry-After"]) >= 1 for body, headers in refused
    )
    assert await metric(gateway.url, "ticketgate_pending_sockets") == 20

    # auth_timeout: each session is closed (a poll now finds it gone), and the count is back to 0.
    sid = json.loads(opened[0][1:])["sid"]
    await asyncio.sleep(1.6)
    assert await metric(gateway.url, "ticketgate_pending_sockets") == 0
    status, body, _ = await http_json("GET", f"{handshake}&sid={sid}")
    assert status == 400 or body == "1", (status, body)  # unknown session, or its CLOSE packet
    assert gateway.app[keys.realtime].sio.eio.sockets == {}
    assert (await http_json("GET", handshake))[0] == 200  # the address may open sessions again


async def test_a_websocket_that_never_connects_is_closed_at_auth_timeout(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(auth_timeout=1)
    url = f"{gateway.url}/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        assert (await ws.receive_str(timeout=5)).startswith("0{")
        assert await metric(gateway.url, "ticketgate_pending_sockets") == 1
        started = time.monotonic()
        frames = []
        while (message := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
            frames.append(message.data)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert 0.5 < time.monotonic() - started < 2.5
    assert frames == ["1"]  # engine.io's CLOSE, then the WebSocket's own close
    assert await metric(gateway.url, "ticketgate_pending_sockets") == 0
