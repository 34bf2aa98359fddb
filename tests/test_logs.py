"""No secrets in logs (STYLE "Logging", PROTOCOL §3 "query values are never logged"),
yet every connect and every refusal is logged with its reason.

A real gateway process (both engines) goes through every way a credential
reaches it: tickets and tokens in the ``auth`` object and in the query string,
over WebSocket and long-polling, an ``authenticate`` event, a refresh token,
Bearer headers (the admin token among them), refusals of every kind, oversized
request lines and headers that aiohttp's parser rejects. Then it is stopped and
its whole output (stdout + stderr) is searched: no credential, whole or in part
(a JWT's payload or signature), and no query-string value may appear, while the
expected connect and refusal lines must.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from gateway.auth.tokens import TokenService
from gateway.config import load_config
from tests.support import GatewayProcess, Probe, http_json

pytestmark = pytest.mark.timeout(90)

CONNECT_LINE = re.compile(r"\bconnect sid=\S+ sub=(\S+) via=(\w+)")
REFUSED_LINE = re.compile(r"\bconnect refused sid=\S+ code=(\d+) reason=(\w+)")


class Secrets:
    """Every secret the flows below hand to the gateway, to look for in its log."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def add(self, label: str, value: str) -> str:
        self.values[label] = value
        return value

    def add_jwt(self, label: str, value: str) -> str:
        """A JWT: its payload and its signature alone are secret too."""
        _, payload, signature = value.split(".")
        self.values[f"{label} (payload)"] = payload
        self.values[f"{label} (signature)"] = signature
        return self.add(label, value)

    def leaked(self, text: str) -> list[str]:
        return [label for label, value in self.values.items() if value and value in text]


async def issue_ticket(url: str, token: str) -> str:
    status, body, _ = await http_json("POST", f"{url}/ws/ticket", token=token)
    assert status == 201, body
    return str(body["ticket"])


async def raw_request(port: int, head: str) -> bytes:
    """Send a raw HTTP/1.1 request head; the response's first bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(200), timeout=5)
    finally:
        writer.close()


async def polling_refusal(url: str, query: str) -> Any:
    """A Socket.IO connect over bare Engine.IO long-polling requests, credentials in
    the query string of every one of them (as a seed-style client sends them); the
    refusal's data. (python-socketio's client would take ~30 s to give up on a
    refused polling connect: it waits out the pending long-poll.)"""
    base = f"{url}/socket.io/?EIO=4&transport=polling&{query}"
    status, opening, _ = await http_json("GET", base)
    assert status == 200 and isinstance(opening, str) and opening.startswith("0{"), opening
    sid = json.loads(opening[1:])["sid"]
    status, body, _ = await http_json("POST", f"{base}&sid={sid}", data=b"40")
    assert status == 200, body
    status, body, _ = await http_json("GET", f"{base}&sid={sid}")
    assert status == 200 and isinstance(body, str) and body.startswith("44"), body
    return json.loads(body[2:])["data"]


async def run_flows(
    node: GatewayProcess, settings: dict[str, Any], probes: Callable[[], Probe], http_client: aiohttp.ClientSession
) -> dict[str, Any]:
    """Every credential path against ``node``; what the log must show, and what it must not."""
    url = node.url
    tokens = TokenService(config=load_config(environ={}, flags=settings))
    stranger = TokenService(config=load_config(environ={}, flags={}))  # a key the gateway does not trust
    secrets = Secrets()
    secrets.add("admin token", settings["admin_token"])
    secrets.add("HMAC secret", settings["secret"])
    secrets.add("signing key (d)", json.loads(settings["signing_key"])["d"])

    def mint(label: str, sub: str, **kwargs: Any) -> str:
        return secrets.add_jwt(label, tokens.mint(sub, **kwargs)[0])

    accepted: list[tuple[str, str]] = []  # (sub, via) of every connect that must succeed
    refused: collections.Counter[str] = collections.Counter()  # reason of every refused connect
    sockets: list[Probe] = []
    kept: list[aiohttp.ClientWebSocketResponse] = []

    async def connect(sub: str, via: str, **kwargs: Any) -> Probe:
        probe = probes()
        assert await probe.connect(url, **kwargs), probe.connect_error
        assert (await probe.wait_for("authenticated"))["sub"] == sub
        accepted.append((sub, via))
        sockets.append(probe)
        return probe

    async def refuse(reason: str, **kwargs: Any) -> None:
        probe = probes()
        assert not await probe.connect(url, **kwargs)
        assert probe.connect_error["data"]["reason"] == reason, probe.connect_error
        refused[reason] += 1

    # -- tickets, issued with a Bearer token
    ws_ticket = secrets.add("ticket (auth, websocket)", await issue_ticket(url, mint("token for ticket 1", "t-ws")))
    await connect("t-ws", "ticket", auth={"ticket": ws_ticket})
    poll_ticket = secrets.add("ticket (auth, polling)", await issue_ticket(url, mint("token for ticket 2", "t-poll")))
    await connect("t-poll", "ticket", auth={"ticket": poll_ticket}, transports=("polling",))
    query_ticket = secrets.add("ticket (query)", await issue_ticket(url, mint("token for ticket 3", "t-query")))
    await connect("t-query", "ticket", query=f"ticket={query_ticket}", transports=("polling",))
    query_ws_ticket = secrets.add("ticket (query, ws)", await issue_ticket(url, mint("token for ticket 4", "t-qws")))
    await connect("t-qws", "ticket", query=f"ticket={query_ws_ticket}")

    # -- tokens
    await connect("k-auth", "token", auth={"token": mint("token (auth)", "k-auth")})
    query_token = mint("token (query)", "k-query")
    await connect("k-query", "token", query=f"token={query_token}", transports=("polling",))

    # -- deferred authentication: the credential arrives in an event
    deferred = probes()
    assert await deferred.connect(url)
    ack = await deferred.client.call("authenticate", {"token": mint("token (authenticate)", "k-deferred")}, timeout=5)
    assert ack["ok"] is True, ack
    accepted.append(("k-deferred", "token"))
    bad_ack = await deferred.client.call(
        "authenticate", {"ticket": secrets.add("ticket (authenticate, garbage)", "Zz" * 21 + "Q")}, timeout=5
    )
    assert bad_ack["ok"] is False, bad_ack
    sockets.append(deferred)

    # -- refresh tokens the gateway pushed, one of them presented back
    for index, probe in enumerate(sockets):
        pushed = await probe.wait_for("refresh_token")
        secrets.add(f"refresh token {index}", pushed["refreshToken"])
    rotated_from = (await sockets[0].wait_for("refresh_token"))["refreshToken"]
    refresh_probe = await connect("t-ws", "refresh", auth={"refreshToken": rotated_from})
    secrets.add("refresh token (rotated)", (await refresh_probe.wait_for("refresh_token"))["refreshToken"])

    # -- auth sessions: a wsToken in the auth object, and in the raw WebSocket's query
    live = len(sockets)
    for transport in ("socket.io", "raw"):
        status, session, _ = await http_json("POST", f"{url}/auth/initiate", json={"userId": "s-user"})
        assert status == 201, session
        ws_token = secrets.add(f"wsToken ({transport})", session["wsToken"])
        wrong = secrets.add(f"wrong wsToken ({transport})", "w" * 43)
        if transport == "socket.io":
            probe = probes()
            assert await probe.connect(url, auth={"sessionId": session["sessionId"], "wsToken": ws_token})
            assert (await probe.wait_for("authenticated"))["via"] == "session"
            await refuse("invalid_token", auth={"sessionId": session["sessionId"], "wsToken": wrong})
        else:
            raw = f"{url.replace('http', 'ws', 1)}/ws/session/{session['sessionId']}"
            refused_ws = await http_client.ws_connect(f"{raw}?token={wrong}")
            assert (await refused_ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
            assert refused_ws.close_code == 4001
            open_ws = await http_client.ws_connect(f"{raw}?token={ws_token}")
            assert json.loads((await open_ws.receive(timeout=5)).data)["type"] == "otp_ready"
            kept.append(open_ws)  # open until the node stops
        live += 1

    # -- refusals
    await refuse("invalid_ticket", auth={"ticket": ws_ticket})  # used
    await refuse("invalid_ticket", auth={"ticket": secrets.add("garbage ticket", "garbage-ticket-7f3a9c")})
    await refuse("invalid_ticket", query=f"ticket={secrets.add('garbage ticket (query)', 'q' * 43)}")
    for query in (f"ticket={poll_ticket}", f"ticket={secrets.add('garbage ticket (polling)', 'g' * 43)}"):
        assert await polling_refusal(url, query) == {"code": 4001, "reason": "invalid_ticket"}
        refused["invalid_ticket"] += 1
    refused_token = secrets.add("garbage token (polling)", "garbage-token-9d2c")
    assert await polling_refusal(url, f"token={refused_token}") == {"code": 4001, "reason": "invalid_token"}
    refused["invalid_token"] += 1
    good = mint("token to tamper", "k-bad")
    head, _, signature = good.rpartition(".")
    tampered = secrets.add_jwt("tampered token", f"{head}.{signature[::-1]}")
    await refuse("invalid_token", auth={"token": tampered})
    await refuse("invalid_token", query=f"token={secrets.add('garbage token (query)', 'not.a.jwt-5e1d')}")
    await refuse("invalid_token", auth={"token": secrets.add_jwt("foreign token", stranger.mint("k-bad")[0])})
    await refuse("token_expired", auth={"token": mint("expired token", "k-old", ttl=60, now=time.time() - 3600)})
    oversized = mint("oversized token", "k-big", claims={"pad": "p" * 9000})  # > 8 KB, < the 16 KB header limit
    await refuse("invalid_token", auth={"token": oversized})
    await refuse("ambiguous_credentials", auth={"ticket": "x" * 43, "token": mint("ambiguous token", "k-amb")})

    # -- HTTP: Bearer headers, bad and good, the admin API
    status, _, _ = await http_json("POST", f"{url}/ws/ticket", token=tampered)
    assert status == 401
    status, _, _ = await http_json("POST", f"{url}/ws/ticket", token=oversized)
    assert status == 401
    status, _, _ = await http_json(
        "POST", f"{url}/api/publish", token=secrets.add("wrong admin token", "wrong-admin-token-0000000000000")
    )
    assert status == 401
    status, body, _ = await http_json(
        "POST",
        f"{url}/api/publish",
        token=settings["admin_token"],
        json={"room": "user:k-auth", "event": "note", "data": {"n": 1}},
    )
    assert status == 202, body
    assert await sockets[4].wait_for("note") == {"n": 1}

    # -- what aiohttp's parser refuses: a request line and a header field too long
    canary = secrets.add("query canary", "canary-" + "c" * 9000)
    answer = await raw_request(
        node.port, f"GET /socket.io/?EIO=4&transport=polling&ticket={canary} HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", answer), answer
    huge = mint("huge token", "k-huge", claims={"pad": "h" * 20000})  # > the 16 KB header field limit
    answer = await raw_request(
        node.port, f"POST /ws/ticket HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {huge}\r\nContent-Length: 0\r\n\r\n"
    )
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", answer), answer

    # -- a query string with nothing to do with credentials is not logged either
    plain = secrets.add("plain query value", "plain-value-b41e")
    status, _, _ = await http_json("GET", f"{url}/healthz?note={plain}")
    assert status == 200
    # A refused Origin is logged, without anything of the request.
    status, _, _ = await http_json(
        "GET",
        f"{url}/socket.io/?EIO=4&transport=polling&ticket={query_ws_ticket}",
        headers={"Origin": "http://evil.example"},
    )
    assert status == 403

    # The sockets stay connected: the node's shutdown closes them (`closing` 1001).
    return {"secrets": secrets, "accepted": accepted, "refused": refused, "live": live, "kept": kept}


async def test_logs_hold_every_connect_and_refusal_but_no_secret(
    engine: str,
    settings: dict[str, Any],
    gateway_process: Callable[..., GatewayProcess],
    probes: Callable[[], Probe],
) -> None:
    node = gateway_process(settings, name=f"logs-{engine}")
    node.start()
    async with aiohttp.ClientSession() as http_client:
        try:
            outcome = await run_flows(node, settings, probes, http_client)
        finally:
            # In a thread: this loop must keep running for the clients to answer the node's close.
            status = await asyncio.to_thread(node.terminate)
    assert status == 0
    log = node.log()

    secrets: Secrets = outcome["secrets"]
    assert secrets.leaked(log) == [], [line for line in log.splitlines() if secrets.leaked(line)][:5]
    # Positive checks: the log is the gateway's, complete, and says what happened.
    assert f"ticketgate listening on {node.url} engine={engine} mode=normal" in log
    assert re.search(r"127\.0\.0\.1 POST /ws/ticket 201 ", log)
    assert re.search(r"127\.0\.0\.1 GET /healthz 200 ", log)
    assert "refused handshake: origin_not_allowed" in log
    assert "raw session socket refused reason=invalid_token" in log
    assert re.search(r"raw session socket raw:\S+ connected", log)
    assert re.search(r"connect sid=\S+ session via=session", log)
    assert "event authenticate from sid=" in log and "refused: invalid_ticket" in log
    assert sorted(CONNECT_LINE.findall(log)) == sorted(outcome["accepted"])
    logged_refusals = collections.Counter(reason for _, reason in REFUSED_LINE.findall(log))
    assert logged_refusals == outcome["refused"]
    assert all(code == "4001" for code, _ in REFUSED_LINE.findall(log))
    assert f"drained: sent closing 1001 to {outcome['live']} sockets" in log
