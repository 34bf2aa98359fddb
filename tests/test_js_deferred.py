"""Deferred authentication (PROTOCOL §3 "none (deferred)", `authenticate`, and
`closing` 4001 `unauthenticated`) driven by the official socket.io-client,
run by node (tests/js/deferred.mjs), against an in-process gateway on both
engines."""

from __future__ import annotations

import pytest

from tests.conftest import Gateway
from tests.support import JsClient, NodeScripts

pytestmark = pytest.mark.timeout(60)


# "polling,websocket" is socket.io-client's default: long-polling, then upgrade.
@pytest.mark.parametrize("transports", ["polling,websocket", "websocket"])
async def test_js_client_authenticates_after_connect_and_receives_user_events(
    gateway: Gateway, node_scripts: NodeScripts, transports: str
) -> None:
    client = await node_scripts(
        JsClient.deferred(gateway.url, "authenticate", gateway.mint("alice", ttl=600), transports)
    )
    # With polling first, the upgrade may already be done when `connect` fires.
    assert (await client.wait_for("connect"))["transport"] in transports.split(",")

    ack = await client.ack("authenticate")
    assert set(ack) == {"ok", "sub", "expiresAt"}
    assert ack["ok"] is True and ack["sub"] == "alice" and ack["expiresAt"].endswith("Z")
    # Nothing reached the socket before it authenticated: `authenticated` is its first event.
    assert client.emitted()[0][0] == "authenticated"
    authenticated = client.received("authenticated")[0]
    assert authenticated == {"sub": "alice", "expiresAt": ack["expiresAt"], "via": "token"}

    await gateway.publish("user:alice", "hello", {"n": 1, "text": "for alice"})
    disconnect = await client.wait_for("disconnect")  # the script disconnects once `hello` arrived
    assert disconnect["reason"] == "io client disconnect"
    assert client.received("hello") == [{"n": 1, "text": "for alice"}]
    assert not client.received("closing")
    await client.finish()


async def test_js_client_publish_to_another_user_does_not_arrive(gateway: Gateway, node_scripts: NodeScripts) -> None:
    """The room an authenticated socket joins is its own sub's, not anyone's."""
    client = await node_scripts(JsClient.deferred(gateway.url, "authenticate", gateway.mint("alice")))
    assert (await client.ack("authenticate"))["ok"] is True
    for room, n in (("user:bob", 1), ("user:alice", 2)):
        await gateway.publish(room, "hello", {"n": n})
    await client.wait_for("disconnect")
    assert client.received("hello") == [{"n": 2}]
    await client.finish()


async def test_js_client_join_before_authenticate_is_closed_4001(gateway: Gateway, node_scripts: NodeScripts) -> None:
    client = await node_scripts(JsClient.deferred(gateway.url, "join-first"))

    disconnect = await client.wait_for("disconnect")
    assert disconnect["reason"] == "io server disconnect"  # no automatic reconnection by the client
    assert client.received("closing") == [{"code": 4001, "reason": "unauthenticated"}]
    assert [name for name, _ in client.emitted()] == ["closing"]  # no ack, no `authenticated`
    assert client.seen("connect") and not client.seen("connect_error")
    await client.finish()
