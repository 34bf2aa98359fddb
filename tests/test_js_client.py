"""The official JavaScript client (socket.io-client, pinned in tests/js/package.json)
against the gateway, on both engines: refusals reach it as ``connect_error`` with
``err.data = {code, reason}`` (PROTOCOL §3), a ticket connect with the default
transports (long-polling, then the upgrade to WebSocket) is authenticated and
receives published events, and a disallowed ``Origin`` is refused at the HTTP
handshake (403 ``origin_not_allowed``, the option PROTOCOL §3 allows for 4003)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import Gateway, MakeGateway
from tests.support import JsClient, NodeScripts, http_json

pytestmark = pytest.mark.timeout(60)

EVIL = "http://evil.example"
APP = "http://app.example"


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# -- refusals ---------------------------------------------------------------------------


async def refusal(node_scripts: NodeScripts, url: str, **options: Any) -> dict[str, Any]:
    """Run a connect expected to be refused; its ``connect_error`` line, after
    checking that nothing else happened (no connect, no event)."""
    client = await node_scripts(JsClient.connect(url, until=["connect_error", "connect"], **options))
    lines = await client.finish()
    # The Engine.IO session may upgrade before the refusal arrives: that is the transport, not Socket.IO.
    assert [line["event"] for line in lines if line["event"] != "upgrade"] == ["open", "connect_error"], lines
    error = lines[-1]
    assert isinstance(error["message"], str) and error["message"], error
    return error


@pytest.mark.parametrize("transports", [None, ["websocket"]], ids=["polling", "websocket"])
@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unknown_ticket", "invalid_ticket"),
        ("used_ticket", "invalid_ticket"),
        ("garbage_ticket", "invalid_ticket"),
        ("garbage_token", "invalid_token"),
        ("expired_token", "token_expired"),
        ("ticket_and_token", "ambiguous_credentials"),
        ("unknown_field", "invalid_request"),
    ],
)
async def test_refused_connect_reaches_js_as_connect_error(
    gateway: Gateway, node_scripts: NodeScripts, case: str, reason: str, transports: list[str] | None
) -> None:
    if case == "unknown_ticket":
        auth: dict[str, Any] = {"ticket": "A" * 43}  # well-formed, never issued
    elif case == "used_ticket":
        ticket = await gateway.ticket("alice")
        first = await node_scripts(
            JsClient.connect(gateway.url, auth={"ticket": ticket}, transports=transports, until=["authenticated"])
        )
        await first.finish()
        auth = {"ticket": ticket}
    elif case == "garbage_ticket":
        auth = {"ticket": "not-a-ticket"}
    elif case == "garbage_token":
        auth = {"token": "not.a.jwt"}
    elif case == "expired_token":
        auth = {"token": gateway.mint("erin", ttl=60, now=time.time() - 3600)}
    elif case == "ticket_and_token":
        auth = {"ticket": await gateway.ticket("alice"), "token": gateway.mint("alice")}
    else:
        auth = {"user": "alice"}
    error = await refusal(node_scripts, gateway.url, auth=auth, transports=transports)
    assert error["data"] == {"code": 4001, "reason": reason}


@pytest.mark.parametrize("transports", [None, ["websocket"]], ids=["polling", "websocket"])
async def test_credentials_over_8kb_are_refused_before_decoding(
    gateway: Gateway, node_scripts: NodeScripts, transports: list[str] | None
) -> None:
    # A real, valid token, only too large: refused for its size alone.
    token = gateway.mint("alice", claims={"pad": "p" * 9000})
    error = await refusal(node_scripts, gateway.url, auth={"token": token}, transports=transports)
    assert error["data"] == {"code": 4001, "reason": "invalid_token"}
    assert error["message"] == "token too large"


@pytest.mark.parametrize("transports", [None, ["websocket"]], ids=["polling", "websocket"])
async def test_credentials_over_the_engineio_message_limit_are_refused_by_the_transport(
    gateway: Gateway, node_scripts: NodeScripts, transports: list[str] | None
) -> None:
    """An auth object over the 64 KB Engine.IO message limit never reaches the
    connect handler: the client sees its transport fail, without a {code, reason}
    (docs/protocol.md, "Choice: oversized credentials")."""
    client = await node_scripts(
        JsClient.connect(
            gateway.url,
            auth={"token": "x" * 70_000},
            transports=transports,
            until=["connect_error", "connect", "disconnect"],
        )
    )
    lines = await client.finish()
    events = [line["event"] for line in lines if line["event"] != "upgrade"]
    if transports is None:  # the POST carrying the CONNECT packet is answered 413, at once
        assert events == ["open", "connect_error"], lines
        assert lines[-1]["message"] == "xhr post error"
        assert lines[-1]["description"] == 413
        assert lines[-1]["data"] is None
    else:  # the WebSocket is closed under the client
        assert events == ["open", "disconnect"], lines
        assert lines[-1]["reason"] == "transport close"


@pytest.mark.parametrize("auth", [None, {}], ids=["no_auth", "empty_auth"])
async def test_missing_credentials_without_deferred_auth(
    make_gateway: MakeGateway, node_scripts: NodeScripts, auth: dict[str, Any] | None
) -> None:
    gateway = await make_gateway(deferred_auth=False)
    options = {} if auth is None else {"auth": auth}
    error = await refusal(node_scripts, gateway.url, **options)
    assert error["data"] == {"code": 4001, "reason": "missing_credentials"}


async def test_without_credentials_deferred_auth_admits_but_does_not_authenticate(
    gateway: Gateway, node_scripts: NodeScripts
) -> None:
    """The counterpart of the test above with the default ``deferred_auth`` on:
    the connect succeeds, and no ``authenticated`` comes (nor any user event)."""
    client = await node_scripts(JsClient.connect(gateway.url, transports=["websocket"], until=["connect"]))
    await client.finish()
    assert [line["event"] for line in client.lines] == ["open", "connect"]
    assert client.emitted() == []


# -- ticket connect, default transports ---------------------------------------------------------


async def test_ticket_connect_polling_then_websocket_gets_authenticated_and_published_events(
    gateway: Gateway, node_scripts: NodeScripts
) -> None:
    exp = time.time() + 600
    ticket = await gateway.ticket("alice", ttl=600)
    client = await node_scripts(JsClient.connect(gateway.url, auth={"ticket": ticket}, until=["note"]))

    authenticated = await client.wait_for("authenticated")
    assert authenticated["args"][0]["sub"] == "alice"
    assert authenticated["args"][0]["via"] == "ticket"
    assert authenticated["args"][0]["expiresAt"] in {iso(exp + d) for d in (-1, 0, 1)}  # PROTOCOL §6.14
    assert set(authenticated["args"][0]) == {"sub", "expiresAt", "via", "recovered"}
    assert authenticated["args"][0]["recovered"] is False
    assert (await client.wait_for("upgrade"))["transport"] == "websocket"

    # Published after the upgrade: it travels over the WebSocket. Bob's goes
    # first: had it reached alice, it would come before hers.
    await gateway.publish("user:bob", "note", {"n": "not for alice"})
    await gateway.publish("user:alice", "note", {"n": 1})
    lines = await client.finish()

    events = [line["event"] for line in lines]
    assert lines[0] == {"event": "open", "transport": "polling"}
    # The upgrade may finish before or after the Socket.IO connect; it finished before the publish.
    assert events.count("upgrade") == 1 and events.count("connect") == 1
    # `authenticated` is the first event the client hands over (whether the server
    # sent it before or after its CONNECT packet: socket.io-client buffers events
    # until it is connected).
    assert client.emitted()[0][0] == "authenticated"
    assert lines[-1]["name"] == "note" and lines[-1]["args"][0] == {"n": 1}  # then its offset
    # The published data, then its offset (connection state recovery, docs/recovery.md).
    [(data, offset)] = [args for name, args in client.emitted() if name == "note"]
    assert data == {"n": 1} and isinstance(offset, str)
    assert "connect_error" not in events and "disconnect" not in events


async def test_token_connect_websocket_only(gateway: Gateway, node_scripts: NodeScripts) -> None:
    client = await node_scripts(
        JsClient.connect(gateway.url, auth={"token": gateway.mint("bob")}, transports=["websocket"], until=["note"])
    )
    authenticated = await client.wait_for("authenticated")
    assert authenticated["args"][0]["via"] == "token"
    assert authenticated["args"][0]["sub"] == "bob"
    await gateway.publish("user:bob", "note", ["hello"])
    lines = await client.finish()
    assert lines[0] == {"event": "open", "transport": "websocket"}
    assert "upgrade" not in [line["event"] for line in lines]
    assert lines[-1]["args"][:-1] == [["hello"]] and isinstance(lines[-1]["args"][-1], str)  # then its offset


# -- Origin ----------------------------------------------------------------------------------------


async def test_disallowed_origin_is_refused_at_the_http_handshake(gateway: Gateway) -> None:
    handshake = f"{gateway.url}/socket.io/?EIO=4&transport=polling"
    status, body, _ = await http_json("GET", handshake, headers={"Origin": EVIL})
    assert status == 403
    assert body["error"]["code"] == "origin_not_allowed"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    # The same handshake without an Origin (a non-browser client) or from the
    # gateway's own origin opens an Engine.IO session (PROTOCOL §6.16).
    for headers in ({}, {"Origin": gateway.url}):
        status, body, _ = await http_json("GET", handshake, headers=headers)
        assert status == 200, (headers, body)
        assert isinstance(body, str) and body.startswith("0{"), body


@pytest.mark.parametrize(
    ("transports", "message"), [(None, "xhr poll error"), (["websocket"], "websocket error")], ids=["polling", "ws"]
)
async def test_js_client_from_a_disallowed_origin_is_refused(
    make_gateway: MakeGateway, node_scripts: NodeScripts, transports: list[str] | None, message: str
) -> None:
    gateway = await make_gateway(allowed_origins=[APP])
    ticket = await gateway.ticket("alice")
    client = await node_scripts(
        JsClient.connect(
            gateway.url,
            auth={"ticket": ticket},
            transports=transports,
            extraHeaders={"Origin": EVIL},
            until=["connect_error", "connect"],
        )
    )
    lines = await client.finish()
    # A transport error, not a Socket.IO refusal: no `data`, and no Engine.IO session ever opened.
    assert [line["event"] for line in lines] == ["connect_error"]
    error = lines[0]
    assert error["message"] == message
    assert error["data"] is None
    assert error["type"] == "TransportError"
    if transports is None:
        assert error["description"] == 403
    # The ticket was never presented, so it is still good, from an allowed Origin.
    allowed = await node_scripts(
        JsClient.connect(gateway.url, auth={"ticket": ticket}, extraHeaders={"Origin": APP}, until=["authenticated"])
    )
    await allowed.finish()


async def test_js_client_from_an_allowed_origin_connects_and_upgrades(
    make_gateway: MakeGateway, node_scripts: NodeScripts
) -> None:
    gateway = await make_gateway(allowed_origins=[APP])
    status, _, headers = await http_json(
        "GET", f"{gateway.url}/socket.io/?EIO=4&transport=polling", headers={"Origin": APP}
    )
    assert status == 200
    assert headers.get("Access-Control-Allow-Origin") == APP
    ticket = await gateway.ticket("alice")
    client = await node_scripts(
        JsClient.connect(gateway.url, auth={"ticket": ticket}, extraHeaders={"Origin": APP}, until=["note"])
    )
    assert (await client.wait_for("authenticated"))["args"][0]["sub"] == "alice"
    assert (await client.wait_for("upgrade"))["transport"] == "websocket"
    await gateway.publish("user:alice", "note", {"n": 2})
    lines = await client.finish()
    assert lines[-1]["name"] == "note" and lines[-1]["args"][0] == {"n": 2}  # then its offset
    assert "connect_error" not in [line["event"] for line in lines]
