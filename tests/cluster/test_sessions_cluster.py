"""Device-approval sessions across two real `python -m gateway serve` processes on
one redis-server (PROTOCOL §2 "Auth sessions", §3 session events and closing,
§4 raw endpoint, §5 "one connection per auth session" cluster-wide): the phone
talks to one node while the browser waits on the other."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import jwt
import pyotp
import pytest

from tests.cluster.conftest import ADMIN_TOKEN
from tests.device import Device, b64url, initiate
from tests.support import GatewayProcess, Nodes, Probe, http_json, raw_frames

pytestmark = pytest.mark.timeout(60)


def wrong(otp: str) -> str:
    return f"{(int(otp) + 500_000) % 1_000_000:06d}"


async def enrolled(node: GatewayProcess, user: str = "alice") -> Device:
    device = Device()
    await device.enroll(node.url, user, admin_token=ADMIN_TOKEN)
    return device


async def session_socket(node: GatewayProcess, probes: Callable[[], Probe], session: dict[str, Any]) -> Probe:
    """A browser's Socket.IO connection to ``session`` on ``node``, once it has its otp_ready."""
    probe = probes()
    assert await probe.connect(node.url, auth={"sessionId": session["sessionId"], "wsToken": session["wsToken"]})
    await probe.wait_for("otp_ready")
    return probe


@asynccontextmanager
async def raw_socket(node: GatewayProcess, session: dict[str, Any]) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """An IDToken-style WebSocket (§4) to ``session`` on ``node``, with its otp_ready frame read."""
    async with aiohttp.ClientSession() as http:
        url = f"{node.url}/ws/session/{session['sessionId']}?token={session['wsToken']}"
        async with http.ws_connect(url) as ws:
            first = await asyncio.wait_for(ws.receive_json(), 5)
            assert first["type"] == "otp_ready"
            yield ws


async def still_open(probe: Probe, *, settle: float = 0.3) -> bool:
    """No ``closing`` and still connected after the cluster had time to deliver one."""
    await asyncio.sleep(settle)
    return not probe.named("closing") and probe.client.connected


async def test_approval_on_one_node_reaches_the_browser_on_the_other(
    two_nodes: Nodes, probes: Callable[[], Probe]
) -> None:
    a, b = two_nodes
    device = await enrolled(a)
    session = await initiate(a.url, "alice")
    near = {pyotp.TOTP(device.totp_secret).at(time.time() + d)[:4] + "**" for d in (-30, 0)}

    browser = await session_socket(b, probes, session)
    assert (await browser.wait_for("authenticated"))["sessionId"] == session["sessionId"]
    assert browser.named("otp_ready")[0]["autoPassword"] in near  # read from Redis by node b

    assert await device.verify(a.url, session["sessionId"]) == (200, {"status": "approved"})
    approved = await browser.wait_for("approved")
    assert approved["type"] == "approved" and approved["random"] == session["random"]
    mac = hmac.new(session["wsToken"].encode(), f"{approved['jwt']}.{session['random']}".encode(), hashlib.sha256)
    assert approved["hash"] == b64url(mac.digest())
    assert "=" not in approved["hash"]
    assert await browser.wait_for("closing") == {"code": 1000, "reason": "resolved"}
    await asyncio.wait_for(browser.disconnected.wait(), 5)
    assert [name for name, _ in browser.events] == [
        "authenticated",
        "otp_ready",
        "approved",
        "closing",
        "__disconnect__",
    ]

    # Issued by node a, the JWT verifies against either node's published keys.
    kid = jwt.get_unverified_header(approved["jwt"])["kid"]
    for node in (a, b):
        status, jwks, _ = await http_json("GET", f"{node.url}/.well-known/jwks.json")
        assert status == 200
        (key,) = [k for k in jwks["keys"] if k["kid"] == kid]
        claims = jwt.decode(approved["jwt"], jwt.PyJWK(key).key, algorithms=["ES256"])
        assert claims["sub"] == "alice" and claims["sid"] == session["sessionId"]
        assert claims["amr"] == ["otp", "hwk"]

    # Resolved cluster-wide: node b refuses a second verify and a new connection.
    status, body = await device.verify(b.url, session["sessionId"])
    assert status == 409 and body["error"]["code"] == "session_resolved"
    late = probes()
    assert not await late.connect(b.url, auth={"sessionId": session["sessionId"], "wsToken": session["wsToken"]})
    assert late.connect_error["data"] == {"code": 4004, "reason": "session_not_found"}


async def test_newer_socket_on_the_other_node_replaces_the_older(two_nodes: Nodes, probes: Callable[[], Probe]) -> None:
    a, b = two_nodes
    device = await enrolled(a)
    session = await initiate(b.url, "alice")
    older = await session_socket(a, probes, session)
    newer = await session_socket(b, probes, session)

    assert await older.wait_for("closing") == {"code": 4009, "reason": "replaced"}
    await asyncio.wait_for(older.disconnected.wait(), 5)
    assert await still_open(newer)

    # The approval goes to the connection that won, not the replaced one.
    assert (await device.verify(a.url, session["sessionId"]))[0] == 200
    assert (await newer.wait_for("approved"))["random"] == session["random"]
    assert older.named("approved") == []


async def test_socketio_on_one_node_replaces_a_raw_socket_on_the_other(
    two_nodes: Nodes, probes: Callable[[], Probe]
) -> None:
    a, b = two_nodes
    session = await initiate(a.url, "alice")
    async with raw_socket(a, session) as raw:
        newer = await session_socket(b, probes, session)
        assert await raw_frames(raw) == ([], 4009)
        assert await still_open(newer)


async def test_raw_socket_on_one_node_replaces_socketio_on_the_other(
    two_nodes: Nodes, probes: Callable[[], Probe]
) -> None:
    a, b = two_nodes
    device = await enrolled(b)
    session = await initiate(b.url, "alice")
    older = await session_socket(b, probes, session)
    async with raw_socket(a, session) as raw:
        assert await older.wait_for("closing") == {"code": 4009, "reason": "replaced"}
        await asyncio.wait_for(older.disconnected.wait(), 5)
        # The raw socket is the session's connection now: the approval made on b reaches it on a.
        assert (await device.verify(b.url, session["sessionId"]))[0] == 200
        frames, code = await raw_frames(raw)
        assert [f["type"] for f in frames] == ["approved"] and code == 1000
        assert frames[0]["random"] == session["random"]
    assert older.named("approved") == []


async def test_rejections_on_one_node_reach_a_raw_socket_on_the_other(two_nodes: Nodes) -> None:
    a, b = two_nodes
    device = await enrolled(a)
    session = await initiate(a.url, "alice")
    async with raw_socket(b, session) as raw:
        statuses = []
        for _ in range(3):
            status, body = await device.verify(a.url, session["sessionId"], otp=wrong(device.otp()))
            statuses.append((status, body["error"]["code"], body["error"]["attemptsLeft"]))
        assert statuses == [(401, "invalid_otp", 2), (401, "invalid_otp", 1), (429, "too_many_attempts", 0)]
        frames, code = await raw_frames(raw)
        assert frames == [
            {"type": "rejected", "reason": "Invalid OTP", "attemptsLeft": 2, "final": False},
            {"type": "rejected", "reason": "Invalid OTP", "attemptsLeft": 1, "final": False},
            {"type": "rejected", "reason": "Too many attempts", "attemptsLeft": 0, "final": True},
        ]
        assert code == 1000
    # Finally rejected everywhere: even a right verify on the other node finds it resolved.
    status, body = await device.verify(b.url, session["sessionId"])
    assert status == 409 and body["error"]["code"] == "session_resolved"


async def test_concurrent_verifies_on_both_nodes_approve_exactly_once(
    two_nodes: Nodes, probes: Callable[[], Probe]
) -> None:
    device = await enrolled(two_nodes[0])
    session = await initiate(two_nodes[0].url, "alice")
    browser = await session_socket(two_nodes[1], probes, session)
    otp = device.otp()
    signature = device.sign(session["sessionId"], otp)  # one signature, replayed on both nodes
    results = await asyncio.gather(
        *(device.verify(two_nodes[i % 2].url, session["sessionId"], otp=otp, signature=signature) for i in range(10))
    )
    assert sorted(status for status, _ in results) == [200] + [409] * 9
    await browser.wait_for("closing")
    assert len(browser.named("approved")) == 1


# Concurrent connects of one session on two nodes: only the newest survives.
# An older one is either closed after connecting (`closing` 4009 once) or, if
# the close order reached it inside its connect handler, refused with 4009.
async def test_concurrent_connects_on_both_nodes_leave_exactly_one(
    two_nodes: Nodes, probes: Callable[[], Probe]
) -> None:
    session = await initiate(two_nodes[0].url, "alice")
    auth = {"sessionId": session["sessionId"], "wsToken": session["wsToken"]}
    clients = [probes() for _ in range(8)]
    results = await asyncio.gather(
        *(client.connect(two_nodes[i % 2].url, auth=auth) for i, client in enumerate(clients))
    )
    refused = [client for client, ok in zip(clients, results, strict=True) if not ok]
    assert all(client.connect_error["data"] == {"code": 4009, "reason": "replaced"} for client in refused)

    def connected() -> list[Probe]:
        return [client for client in clients if client.client.connected]

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            while len(connected()) > 1:
                await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # any late close order has crossed Redis by now
    report = [(client.client.connected, client.named("closing")) for client in clients]
    alive = connected()
    assert len(alive) == 1, report
    survivor = alive[0]
    assert survivor.named("closing") == [], report
    replaced = [{"code": 4009, "reason": "replaced"}]
    closed = [client for client in clients if client is not survivor and client not in refused]
    assert all(client.named("closing") == replaced for client in closed), report
