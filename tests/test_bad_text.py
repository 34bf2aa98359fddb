"""Text that is not text (a lone surrogate, which JSON can carry as "\\ud800"; bytes
that are not UTF-8 in a header or a path) and names nobody may publish: every
door answers its documented error, never a 500 and never silence (issue #11)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import Gateway
from tests.support import JsClient, NodeScripts, Probe, http_json, raw_frames

SURROGATE = "\ud800"


async def raw_post(gateway: Gateway, path: bytes, headers: bytes, body: bytes = b"{}") -> tuple[int, Any]:
    """One HTTP/1.1 request written byte for byte (aiohttp's client would encode the header)."""
    host, port = gateway.server.host, gateway.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + headers
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )
    response = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    head, _, content = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(content)


async def expect(gateway: Gateway, path: str, status: int, code: str, **kwargs: Any) -> None:
    got, body, _ = await http_json("POST", f"{gateway.url}{path}", **kwargs)
    assert (got, body["error"]["code"]) == (status, code), body
    assert (await http_json("GET", f"{gateway.url}/healthz"))[0] == 200


# Raw JSON with the escape, as an attacker writes it (json.dumps would too).
def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


async def test_lone_surrogates_in_bodies_are_bad_requests(gateway: Gateway) -> None:
    json_header = {"Content-Type": "application/json"}
    await expect(gateway, "/auth/initiate", 400, "invalid_request", data=body(userId=SURROGATE), headers=json_header)
    verify = body(sessionId=SURROGATE, deviceId="d", otp="123456", signature="c2ln")
    await expect(gateway, "/auth/verify", 400, "invalid_request", data=verify, headers=json_header)
    admin = gateway.config.admin_token
    for publish in (
        body(room=f"user:{SURROGATE}", event="e", data=1),
        body(room="user:alice", event=SURROGATE, data=1),
        body(room="user:alice", event="e", data={"deep": [SURROGATE]}),
        body(room="user:alice", event="e", data={SURROGATE: 1}),
        b'{"room": "user:alice", "event": "e", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ):
        await expect(gateway, "/api/publish", 400, "invalid_request", token=admin, data=publish, headers=json_header)


@pytest.mark.parametrize("path", [b"/ws/ticket", b"/api/publish", b"/api/users/alice/disconnect"])
async def test_a_bearer_that_is_not_ascii_is_a_401(gateway: Gateway, path: bytes) -> None:
    status, error = await raw_post(gateway, path, b"Authorization: Bearer \xff\xfe\r\n")
    assert (status, error["error"]["code"]) == (401, "invalid_token")


async def test_a_sub_in_the_path_that_is_not_utf8_is_no_500(gateway: Gateway) -> None:
    # Percent-escaped bytes that are not UTF-8 stay escaped text: a sub like any
    # other. (Raw non-ASCII bytes in a path never pass aiohttp's parser.)
    admin = f"Authorization: Bearer {gateway.config.admin_token}\r\n".encode()
    status, answer = await raw_post(gateway, b"/api/users/%ED%A0%80/disconnect", admin)
    assert (status, answer) == (200, {"disconnected": 0})
    status, error = await raw_post(gateway, b"/api/users/a%00b/disconnect", admin)
    assert (status, error["error"]["code"]) == (400, "invalid_request")


@pytest.mark.parametrize("event", ["_tg:close", "_tg:anything", "connect", "disconnect", "connect_error"])
async def test_reserved_event_names_are_refused(gateway: Gateway, probes: Callable[[], Probe], event: str) -> None:
    member = probes()
    assert await member.connect(gateway.url, auth={"token": gateway.mint("alice")})
    await member.wait_for("authenticated")
    admin = gateway.config.admin_token
    payload = {"room": "user:alice", "event": event, "data": {"room": "user:alice", "code": 4011, "reason": "x"}}
    status, error, _ = await http_json("POST", f"{gateway.url}/api/publish", token=admin, json=payload)
    assert (status, error["error"]["code"]) == (400, "invalid_request")
    assert "reserved" in error["error"]["message"]
    await asyncio.sleep(0.2)
    assert member.client.connected and not member.named("closing")


@pytest.mark.parametrize(
    "auth",
    [
        {"token": SURROGATE},
        {"ticket": SURROGATE},
        {"sessionId": SURROGATE, "wsToken": "x" * 43},
        {"sessionId": "s" * 24, "wsToken": SURROGATE},
        {"refreshToken": SURROGATE * 20},
    ],
    ids=["token", "ticket", "sessionId", "wsToken", "refreshToken"],
)
async def test_connect_with_a_lone_surrogate_is_refused(
    gateway: Gateway, probes: Callable[[], Probe], auth: dict[str, str]
) -> None:
    probe = probes()
    assert not await asyncio.wait_for(probe.connect(gateway.url, auth=auth), timeout=5)
    assert probe.connect_error["data"]["code"] == 4001, probe.connect_error


async def test_official_client_gets_a_refusal_for_a_lone_surrogate(gateway: Gateway, node_scripts: NodeScripts) -> None:
    client = await node_scripts(JsClient.connect(gateway.url, auth={"token": SURROGATE}, until=["connect_error"]))
    error = await client.wait_for("connect_error")
    assert error["data"] == {"code": 4001, "reason": "invalid_request"}, error


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("authenticate", {"token": SURROGATE}),
        ("authenticate", {"ticket": SURROGATE}),
        ("refresh", {"refreshToken": SURROGATE * 20}),
        ("join", {"room": f"room:{SURROGATE}"}),
        ("message", {"room": "room:chat", "data": {"text": SURROGATE}}),
    ],
)
async def test_events_with_a_lone_surrogate_are_acked_as_bad_requests(
    gateway: Gateway, probes: Callable[[], Probe], event: str, payload: dict[str, Any]
) -> None:
    probe = probes()
    assert await probe.connect(gateway.url, auth={"token": gateway.mint("alice", claims={"rooms": ["room:*"]})})
    await probe.wait_for("authenticated")
    assert (await probe.call("join", {"room": "room:chat"}))["ok"]
    ack = await probe.call(event, payload)
    assert ack == {"ok": False, "error": {"code": 4000, "reason": "invalid_request"}}
    assert probe.client.connected
    assert (await probe.call("message", {"room": "room:chat", "data": "still works"}))["ok"]


@pytest.mark.parametrize("path", ["/ws/session/%ED%A0%80?token=x", "/ws/session/abc?token=%ED%A0%80"])
async def test_raw_session_socket_with_broken_text_is_closed_4001(gateway: Gateway, path: str) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(gateway.url + path) as ws:
        frames, code = await raw_frames(ws)
    assert (frames, code) == ([], 4001)
