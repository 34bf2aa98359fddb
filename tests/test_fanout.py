"""The delivery path as the official socket.io-client sees it (issue #12): one
broadcast, encoded once and written to every member, reaches WebSocket,
long-polling and upgrading clients alike, every event exactly once and in order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.conftest import Gateway
from tests.support import NodeScript, NodeScripts

pytestmark = pytest.mark.timeout(90)

EVENTS = 100


async def crowd(node_scripts: NodeScripts, gateway: Gateway, transports: list[str] | None, count: int) -> NodeScript:
    options: dict[str, Any] = {"count": count, "auth": {"token": gateway.mint("alice")}, "report": ["tick"]}
    if transports is not None:
        options["transports"] = transports
    client = await node_scripts(NodeScript.launch("crowd.mjs", gateway.url, json.dumps(options)))
    await client.wait(lambda line: line["event"] in ("connected", "timeout", "connect_error"), timeout=30)
    assert client.matching(lambda line: line["event"] == "connected"), client.lines[-3:]
    return client


async def test_a_broadcast_reaches_every_transport_once_and_in_order(
    gateway: Gateway, node_scripts: NodeScripts
) -> None:
    crowds = {
        "websocket": await crowd(node_scripts, gateway, ["websocket"], 10),
        "polling": await crowd(node_scripts, gateway, ["polling"], 10),
        "polling, then websocket": await crowd(node_scripts, gateway, None, 10),
    }
    # Back to back, some while the default clients may still be upgrading.
    await asyncio.gather(*(gateway.publish("user:alice", "tick", {"n": n}) for n in range(EVENTS // 2)))
    for n in range(EVENTS // 2, EVENTS):
        await gateway.publish("user:alice", "tick", {"n": n})
    for name, client in crowds.items():
        await client.wait(lambda line: line["event"] == "emit", count=10 * EVENTS, timeout=30)
        await asyncio.sleep(0.2)  # a duplicate would be here by now
        per_socket: dict[int, list[int]] = {}
        for line in client.matching(lambda line: line["event"] == "emit"):
            per_socket.setdefault(line["i"], []).append(line["args"][0]["n"])
        assert len(per_socket) == 10, name
        # The gathered half may have left the gateway in any order, but every
        # socket saw the same order, each event once; the second half in order.
        orders = {tuple(numbers) for numbers in per_socket.values()}
        assert len(orders) == 1, (name, orders)
        (order,) = orders
        assert sorted(order) == list(range(EVENTS)), name
        assert list(order[EVENTS // 2 :]) == list(range(EVENTS // 2, EVENTS)), name
