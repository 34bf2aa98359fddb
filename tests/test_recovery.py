"""Connection state recovery (docs/recovery.md), on both engines: the official
socket.io-client comes back after its transport is cut, re-authenticates and
gets every event published meanwhile, in order, exactly once, with
``socket.recovered``; every case the contract excludes is a fresh connect that
receives nothing of the old socket; python-socketio's client, which knows
nothing of recovery, keeps working."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gateway import keys
from gateway.realtime.registry import Conn
from tests.conftest import Gateway, MakeGateway
from tests.support import JsClient, NodeScripts, Probe

pytestmark = pytest.mark.timeout(90)


def ticks(client: JsClient) -> list[int]:
    return [args[0]["n"] for _, args in client.emitted("tick")]


def conn_of(gateway: Gateway, sub: str) -> Conn:
    (conn,) = [conn for conn in gateway.app[keys.realtime].registry.conns() if conn.sub == sub]
    return conn


async def gone(gateway: Gateway, sid: str) -> None:
    """Wait until the gateway has let socket ``sid`` go."""
    async with asyncio.timeout(5):
        while gateway.app[keys.realtime].registry.get(sid) is not None:
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("transports", [None, ["websocket"]], ids=["polling-upgrade", "websocket"])
async def test_official_client_recovers_every_missed_event_in_order_once(
    make_gateway: MakeGateway, node_scripts: NodeScripts, transports: list[str] | None
) -> None:
    """A fresh ticket from the auth callback on each connect; events of the user's
    room and of a joined room, published while the transport was cut, arrive
    after the reconnect in publish order, once each, before anything newer."""
    gateway = await make_gateway(public_rooms=["room:*"])
    ticket = {"url": gateway.url, "token": gateway.mint("alice")}
    client = await node_scripts(JsClient.recover(gateway.url, ticket=ticket, transports=transports))
    assert (await client.wait_for("connect"))["recovered"] is False
    assert (await client.wait_for("authenticated"))["args"][0]["recovered"] is False
    await client.command("join room:lobby")
    assert await client.ack("join") == {"ok": True, "room": "room:lobby"}
    rooms = ["user:alice", "room:lobby"]
    for n in (1, 2):
        await gateway.publish(rooms[n % 2], "tick", {"n": n})
    await client.emit_wait("tick", count=2)
    old_sid = conn_of(gateway, "alice").sid

    await client.command("cut")
    await client.wait_for("disconnect")
    await gone(gateway, old_sid)
    for n in range(3, 9):
        await gateway.publish(rooms[n % 2], "tick", {"n": n})
    reconnect = await client.wait(lambda line: line["event"] == "connect", count=2)
    assert reconnect["recovered"] is True, client.lines
    await client.emit_wait("tick", count=8)
    await gateway.publish("room:lobby", "tick", {"n": 9})
    await client.emit_wait("tick", count=9)

    assert ticks(client) == list(range(1, 10)), client.lines
    for _, args in client.emitted("tick"):
        assert len(args) == 2 and isinstance(args[1], str), args  # the event, then its offset
    authenticated = [args[0] for _, args in client.emitted("authenticated")]
    assert [a["recovered"] for a in authenticated] == [False, True]
    assert conn_of(gateway, "alice").sid != old_sid
    await client.finish()


async def test_recovery_off_sends_no_pid_and_no_offset(make_gateway: MakeGateway, node_scripts: NodeScripts) -> None:
    gateway = await make_gateway(recovery_window=0)
    client = await node_scripts(JsClient.recover(gateway.url, auth={"token": gateway.mint("alice")}))
    await client.wait_for("authenticated")
    await gateway.publish("user:alice", "tick", {"n": 1})
    await client.emit_wait("tick")
    await client.command("cut")
    await client.wait(lambda line: line["event"] == "connect", count=2)
    assert [line.get("recovered", False) for line in client.seen("connect")] == [False, False]
    assert client.emitted("tick") == [("tick", [{"n": 1}])]
    assert "recovered" not in client.emitted("authenticated")[0][1][0]
    await client.finish()


# -- what is not recovered -----------------------------------------------------------------


async def lose(probe: Probe) -> None:
    """Drop ``probe``'s WebSocket as a network would: no Engine.IO or Socket.IO goodbye."""
    await probe.client.eio.ws.close()
    await asyncio.wait_for(probe.disconnected.wait(), 5)


@pytest.mark.parametrize("case", ["lost", "other_sub", "window_passed", "disconnected_4011", "forged_offset", "reused"])
async def test_only_a_lost_socket_of_the_same_user_within_the_window_is_recovered(
    make_gateway: MakeGateway, probes: Callable[[], Probe], case: str
) -> None:
    gateway = await make_gateway(recovery_window=1 if case == "window_passed" else 60, public_rooms=["room:*"])
    first = probes()
    assert await first.connect(gateway.url, auth={"token": gateway.mint("alice")})
    await first.wait_for("authenticated")
    assert (await first.call("join", {"room": "room:lobby"}))["ok"] is True
    await gateway.publish("room:lobby", "tick", {"n": 1})
    await first.wait_for("tick")
    conn = conn_of(gateway, "alice")
    pid, sid, (offset,) = conn.pid, conn.sid, first.offsets
    assert pid

    if case == "disconnected_4011":
        status, _ = await gateway.disconnect_user("alice", revoke=False)
        assert status == 200
        await asyncio.wait_for(first.disconnected.wait(), 5)
    else:
        await lose(first)
    await gone(gateway, sid)
    if case == "window_passed":
        await asyncio.sleep(1.3)
    await gateway.publish("room:lobby", "tick", {"n": 2})  # missed
    await gateway.publish("user:alice", "tick", {"n": 3})  # missed

    sub = "mallory" if case == "other_sub" else "alice"
    if case == "forged_offset":
        offset = "0:99999999999999-0"
    second = probes()
    assert await second.connect(gateway.url, auth={"token": gateway.mint(sub), "pid": pid, "offset": offset})
    authenticated = await second.wait_for("authenticated")
    if case == "reused":  # a second reconnect with the same pid finds it taken
        third = probes()
        assert await third.connect(gateway.url, auth={"token": gateway.mint("alice"), "pid": pid, "offset": offset})
        assert (await third.wait_for("authenticated"))["recovered"] is False
        await asyncio.sleep(0.3)
        assert third.named("tick") == []

    recovered = case in ("lost", "reused")
    assert authenticated["recovered"] is recovered
    await gateway.publish("room:lobby", "tick", {"n": 4})
    await gateway.publish(f"user:{sub}", "tick", {"n": 5})
    await second.wait_for("tick", count=3 if recovered else 1)
    await asyncio.sleep(0.2)
    seen = [data["n"] for data in second.named("tick")]
    # Recovered: what was missed, then the newer events (room:lobby is its room again).
    # Otherwise: a fresh socket: not in room:lobby, nothing of before.
    assert seen == ([2, 3, 4, 5] if recovered else [5]), seen


async def test_a_revoked_user_cannot_recover(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(recovery_window=60)
    first = probes()
    old_token = gateway.mint("alice")
    assert await first.connect(gateway.url, auth={"token": old_token})
    await first.wait_for("authenticated")
    conn = conn_of(gateway, "alice")
    pid, sid = conn.pid, conn.sid
    await lose(first)
    await gone(gateway, sid)
    status, _ = await gateway.disconnect_user("alice", revoke=True)
    assert status == 200
    second = probes()
    assert not await second.connect(gateway.url, auth={"token": old_token, "pid": pid, "offset": ""})
    assert second.connect_error["data"] == {"code": 4011, "reason": "revoked"}


async def test_a_socket_its_client_closed_is_not_recovered(
    make_gateway: MakeGateway, node_scripts: NodeScripts, probes: Callable[[], Probe]
) -> None:
    """The official client's ``socket.close()`` (a Socket.IO DISCONNECT: python-socketio's
    client closes its transport before that packet is out, so it cannot show this)."""
    gateway = await make_gateway(recovery_window=60, public_rooms=["room:*"])
    client = await node_scripts(JsClient.recover(gateway.url, auth={"token": gateway.mint("alice")}))
    await client.wait_for("authenticated")
    await client.command("join room:lobby")
    await client.ack("join")
    await gateway.publish("room:lobby", "tick", {"n": 1})
    await client.emit_wait("tick")
    conn = conn_of(gateway, "alice")
    pid, sid, offset = conn.pid, conn.sid, client.emitted("tick")[0][1][-1]
    await client.finish()
    await gone(gateway, sid)
    await gateway.publish("room:lobby", "tick", {"n": 2})
    again = probes()
    assert await again.connect(gateway.url, auth={"token": gateway.mint("alice"), "pid": pid, "offset": offset})
    assert (await again.wait_for("authenticated"))["recovered"] is False
    await gateway.publish("room:lobby", "tick", {"n": 3})
    await gateway.publish("user:alice", "tick", {"n": 4})
    assert await again.wait_for("tick") == {"n": 4}
    await asyncio.sleep(0.2)
    assert again.named("tick") == [{"n": 4}]


async def test_plain_python_socketio_client_keeps_working(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    """python-socketio's client has no recovery: it ignores the pid, receives each
    room event with its offset as one more argument (as from Node socket.io with
    connection state recovery), and reconnects as a fresh socket."""
    probe = probes()
    assert await probe.connect(gateway.url, auth={"token": gateway.mint("alice")})
    assert (await probe.wait_for("authenticated"))["recovered"] is False
    await gateway.publish("user:alice", "tick", {"n": 1})
    assert await probe.wait_for("tick") == {"n": 1}
    await lose(probe)
    again = probes()
    assert await again.connect(gateway.url, auth={"token": gateway.mint("alice")})
    assert (await again.wait_for("authenticated"))["recovered"] is False
    await gateway.publish("user:alice", "tick", {"n": 2})
    assert await again.wait_for("tick") == {"n": 2}
    assert len(probe.offsets) == 1 and len(again.offsets) == 1


async def test_a_close_order_never_overtakes_the_rooms_events_published_before_it(
    gateway: Gateway, probes: Callable[[], Probe]
) -> None:
    """With recovery on, a room's events reach this node's sockets as they come
    back from Redis (in id order); a close order to the same room must come the
    same way, or it closes the socket before an event published just before it
    (the demo's `approved`, then `closing 1000 resolved`, lost the `approved`)."""
    for n in range(10):
        probe = probes()
        assert await probe.connect(gateway.url, auth={"token": gateway.mint("alice")})
        await probe.wait_for("authenticated")
        await gateway.publish("user:alice", "tick", {"n": n})
        status, _ = await gateway.disconnect_user("alice", revoke=False)
        assert status == 200
        await probe.wait_for("closing")
        names = [event for event, _ in probe.events if event in ("tick", "closing")]
        assert names == ["tick", "closing"], (n, probe.events)
