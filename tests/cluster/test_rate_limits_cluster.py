"""Per-address rate limits hold for the cluster, not per node (issue #16): two
real gateway processes on one redis-server, requests and connects spread over
both, the client address as trusted_proxies allows it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.cluster.conftest import cli_token, start_nodes
from tests.support import GatewayProcess, Probe, http_json, raw_frames

pytestmark = pytest.mark.timeout(90)

HTTP_RATE, CONNECT_RATE = 20, 20
CLIENT, OTHER = "198.51.100.1", "198.51.100.2"
UNTRUSTED_PEER = "127.0.0.2"  # a loopback address of its own, not in trusted_proxies


async def initiate(url: str, *, forwarded_for: str | None = None, source: str | None = None) -> tuple[int, Any, Any]:
    """POST /auth/initiate from ``source`` (a local address; default 127.0.0.1),
    with X-Forwarded-For ``forwarded_for``: (status, body, headers)."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    connector = aiohttp.TCPConnector(local_addr=(source, 0)) if source else None
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(f"{url}/auth/initiate", json={"userId": "alice"}, headers=headers) as response,
    ):
        return response.status, await response.json(), response.headers


async def rate_limited(url: str, limit: str) -> float:
    _, text, _ = await http_json("GET", f"{url}/metrics")
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == f'ticketgate_rate_limited_total{{limit="{limit}"}}':
            return float(value)
    raise KeyError(limit)


async def test_http_rate_per_address_holds_across_two_nodes(
    cluster_settings: dict[str, Any], gateway_process: Callable[..., GatewayProcess]
) -> None:
    nodes = await start_nodes(
        gateway_process, cluster_settings, http_rate_per_ip=HTTP_RATE, trusted_proxies=["127.0.0.1"]
    )
    answers: list[tuple[int, Any, Any]] = []
    for batch in range(0, 200, 20):  # 200 requests within a few seconds, both nodes, 20 at a time
        answers += await asyncio.gather(
            *(initiate(nodes[i % 2].url, forwarded_for=CLIENT) for i in range(batch, batch + 20))
        )
    statuses = [status for status, _, _ in answers]
    assert statuses.count(201) == HTTP_RATE, statuses
    assert statuses.count(429) == 200 - HTTP_RATE, statuses
    for status, body, headers in answers:
        if status == 429:
            assert body["error"]["code"] == "rate_limited" and body["error"]["message"], body
            assert 1 <= int(headers["Retry-After"]) <= 60, headers
    # Both nodes refused some: one budget for the cluster, not one per node.
    refused = [await rate_limited(node.url, "http") for node in nodes]
    assert sum(refused) == 200 - HTTP_RATE and all(refused), refused

    # Another address, and the proxy's own, are unaffected.
    assert (await initiate(nodes[0].url, forwarded_for=OTHER))[0] == 201
    assert (await initiate(nodes[1].url))[0] == 201
    # A peer that is no trusted proxy is counted as itself: its X-Forwarded-For
    # neither lands it in the full address's window nor gets it out of its own.
    assert (await initiate(nodes[0].url, forwarded_for=CLIENT, source=UNTRUSTED_PEER))[0] == 201
    spoofed = [
        (await initiate(nodes[i % 2].url, forwarded_for=f"203.0.113.{i}", source=UNTRUSTED_PEER))[0]
        for i in range(HTTP_RATE)
    ]
    assert spoofed == [201] * (HTTP_RATE - 1) + [429], spoofed


async def test_connect_rate_per_address_holds_across_two_nodes(
    cluster_settings: dict[str, Any], gateway_process: Callable[..., GatewayProcess], probes: Callable[[], Probe]
) -> None:
    nodes = await start_nodes(
        gateway_process, cluster_settings, connect_rate_per_ip=CONNECT_RATE, trusted_proxies=["127.0.0.1"]
    )
    token = await cli_token(nodes[0].config_file, "alice")
    clients = [probes() for _ in range(2 * CONNECT_RATE)]
    results: list[bool] = []
    for batch in range(0, len(clients), 10):
        results += await asyncio.gather(
            *(clients[i].connect(nodes[i % 2].url, auth={"token": token}) for i in range(batch, batch + 10))
        )
    assert results.count(True) == CONNECT_RATE, results
    refusals = [client.connect_error for client, ok in zip(clients, results, strict=True) if not ok]
    assert all(error["data"] == {"code": 4029, "reason": "rate_limited"} for error in refusals), refusals
    admitted = [client for client, ok in zip(clients, results, strict=True) if ok]
    assert all(await asyncio.gather(*(client.wait_for("authenticated") for client in admitted)))

    # The raw session endpoint counts against the same window, on either node.
    async with aiohttp.ClientSession() as session:
        for node in nodes:
            async with session.ws_connect(f"{node.url}/ws/session/abc?token=def") as ws:
                assert await raw_frames(ws) == ([], 4029)
    # Another address (through the trusted proxy) still connects.
    other = probes()
    assert await other.connect(nodes[1].url, auth={"token": token}, headers={"X-Forwarded-For": OTHER})
    refused = [await rate_limited(node.url, "connect") for node in nodes]
    assert sum(refused) == CONNECT_RATE + 2, refused
