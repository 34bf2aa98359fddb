"""The official socket.io-client through a socket's auth lifetime, on both engines
(PROTOCOL §3 refresh_token, refresh, auth_expiring, reauth_required,
authenticate; §6.1, §6.5): node runs tests/js/reauth.mjs against an in-process
gateway; the test reads its output lines as they come and tells it, on stdin,
when to re-authenticate."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import MakeGateway
from tests.support import JsClient, NodeScripts, Probe

pytestmark = pytest.mark.timeout(60)


def instant(text: str) -> float:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text).timestamp()


def is_emit(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda line: line["event"] == "emit" and line["name"] == name


async def test_official_client_reauthenticates_and_gets_the_held_events_in_order(
    make_gateway: MakeGateway, node_scripts: NodeScripts, probes: Callable[[], Probe]
) -> None:
    gateway = await make_gateway(on_expiry="reauth", expiry_warning=1, reauth_grace=5)
    # `exp` is whole seconds: 2 to 3 s left, so neither the warning (1 s before)
    # nor the expiry falls inside node's start-up and the connect.
    client = await node_scripts(
        JsClient.reauth(gateway.url, gateway.mint("alice", ttl=3), gateway.mint("alice", ttl=600))
    )

    authenticated = await client.emit_wait("authenticated")
    assert (authenticated["sub"], authenticated["via"]) == ("alice", "token")
    # The refresh token follows `authenticated`; emitWithAck(`refresh`) rotates it.
    first = await client.emit_wait("refresh_token")
    assert client.index(is_emit("authenticated")) < client.index(is_emit("refresh_token"))
    rotation = await client.ack("refresh")
    assert rotation["ok"] is True and rotation["expiresAt"].endswith("Z")
    assert rotation["refreshToken"] != first["refreshToken"]

    warning = await client.emit_wait("auth_expiring", timeout=4)
    assert set(warning) == {"expiresAt", "in"}
    assert warning["expiresAt"] == authenticated["expiresAt"] and warning["in"] in (0, 1, 2)
    required = await client.emit_wait("reauth_required", timeout=3)
    assert instant(required["deadline"]) == instant(authenticated["expiresAt"]) + 5  # reauth_grace
    await client.wait_for("ready")

    for seq in (1, 2, 3):  # during the hold
        await gateway.publish("user:alice", "tick", {"seq": seq})
    await asyncio.sleep(0.3)
    assert client.received("tick") == []

    await client.command("authenticate")
    ack = await client.ack("authenticate")
    assert ack["ok"] is True and ack["sub"] == "alice" and "dropped" not in ack
    assert instant(ack["expiresAt"]) > instant(authenticated["expiresAt"])
    await client.emit_wait("tick", count=3)
    assert client.index(lambda line: line["event"] == "sent" and line["name"] == "authenticate") < client.index(
        is_emit("tick")
    )
    await gateway.publish("user:alice", "tick", {"seq": 4})
    await client.emit_wait("tick", count=4)
    assert [data["seq"] for data in client.received("tick")] == [1, 2, 3, 4]
    assert client.received("closing") == []
    await client.finish()

    # The rotation the client asked for happened in the store: the successor
    # works, and the rotated token is now reuse.
    successor = probes()
    assert await successor.connect(gateway.url, auth={"refreshToken": rotation["refreshToken"]})
    assert (await successor.wait_for("authenticated"))["via"] == "refresh"
    thief = probes()
    assert not await thief.connect(gateway.url, auth={"refreshToken": first["refreshToken"]})
    assert thief.connect_error["data"] == {"code": 4011, "reason": "refresh_reuse"}


async def test_official_client_is_warned_at_once_when_its_token_is_already_near_expiry(
    make_gateway: MakeGateway, node_scripts: NodeScripts
) -> None:
    gateway = await make_gateway(on_expiry="reauth", expiry_warning=30, reauth_grace=5, refresh_tokens=False)
    client = await node_scripts(
        JsClient.reauth(gateway.url, gateway.mint("alice", ttl=10), gateway.mint("alice", ttl=600))
    )
    authenticated = await client.emit_wait("authenticated")
    warning = await client.emit_wait("auth_expiring", timeout=3)  # due 20 s before the connect
    assert warning["expiresAt"] == authenticated["expiresAt"] and 0 < warning["in"] <= 10
    await client.finish()
