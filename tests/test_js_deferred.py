"""Deferred authentication (PROTOCOL §3 "none (deferred)", `authenticate`, and
`closing` 4001 `unauthenticated`) driven by the official socket.io-client,
run by node (tests/js/deferred.mjs), against an in-process gateway on both
engines."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import Gateway
from tests.support import NodeScript, NodeScripts

pytestmark = pytest.mark.timeout(60)

NODE_TIMEOUT_MS = 15_000


class JsClient(NodeScript):
    """One node process running deferred.mjs."""

    @classmethod
    async def start(cls, url: str, scenario: str, token: str = "", transports: str = "polling,websocket") -> JsClient:
        env = {"DEFERRED_TIMEOUT_MS": str(NODE_TIMEOUT_MS)}
        return await cls.launch("deferred.mjs", url, scenario, token, transports, env=env)

    def named(self, event: str) -> list[dict[str, Any]]:
        return self.matching(lambda line: line["event"] == event)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The Socket.IO events the client received (all, or those called ``name``)."""
        return [line for line in self.named("event") if name in (None, line["name"])]

    async def wait_for(self, event: str, *, timeout: float = 10.0) -> dict[str, Any]:
        return await self.wait(lambda line: line["event"] == event, timeout=timeout)


StartJsClient = Callable[..., Awaitable[JsClient]]


@pytest.fixture
def js_clients(node_scripts: NodeScripts) -> StartJsClient:
    async def start(*args: str) -> JsClient:
        return await node_scripts(JsClient.start(*args))

    return start


# "polling,websocket" is socket.io-client's default: long-polling, then upgrade.
@pytest.mark.parametrize("transports", ["polling,websocket", "websocket"])
async def test_js_client_authenticates_after_connect_and_receives_user_events(
    gateway: Gateway, js_clients: StartJsClient, transports: str
) -> None:
    client = await js_clients(gateway.url, "authenticate", gateway.mint("alice", ttl=600), transports)
    # With polling first, the upgrade may already be done when `connect` fires.
    assert (await client.wait_for("connect"))["transport"] in transports.split(",")

    ack = (await client.wait_for("ack"))["ack"]
    assert set(ack) == {"ok", "sub", "expiresAt"}
    assert ack["ok"] is True and ack["sub"] == "alice" and ack["expiresAt"].endswith("Z")
    # Nothing reached the socket before it authenticated: `authenticated` is its first event.
    assert client.events()[0]["name"] == "authenticated"
    authenticated = client.events()[0]["data"]
    assert authenticated == {"sub": "alice", "expiresAt": ack["expiresAt"], "via": "token"}

    await gateway.publish("user:alice", "hello", {"n": 1, "text": "for alice"})
    disconnect = await client.wait_for("disconnect")  # the script disconnects once `hello` arrived
    assert disconnect["reason"] == "io client disconnect"
    assert [e["data"] for e in client.events("hello")] == [{"n": 1, "text": "for alice"}]
    assert not client.events("closing")
    await client.finish()


async def test_js_client_publish_to_another_user_does_not_arrive(gateway: Gateway, js_clients: StartJsClient) -> None:
    """The room an authenticated socket joins is its own sub's, not anyone's."""
    client = await js_clients(gateway.url, "authenticate", gateway.mint("alice"))
    assert (await client.wait_for("ack"))["ack"]["ok"] is True
    for room, n in (("user:bob", 1), ("user:alice", 2)):
        await gateway.publish(room, "hello", {"n": n})
    await client.wait_for("disconnect")
    assert [e["data"] for e in client.events("hello")] == [{"n": 2}]
    await client.finish()


async def test_js_client_join_before_authenticate_is_closed_4001(gateway: Gateway, js_clients: StartJsClient) -> None:
    client = await js_clients(gateway.url, "join-first")

    disconnect = await client.wait_for("disconnect")
    assert disconnect["reason"] == "io server disconnect"  # no automatic reconnection by the client
    assert [e["data"] for e in client.events("closing")] == [{"code": 4001, "reason": "unauthenticated"}]
    assert [e["name"] for e in client.events()] == ["closing"]  # no ack, no `authenticated`
    assert client.named("connect") and not client.named("connect_error")
    await client.finish()
