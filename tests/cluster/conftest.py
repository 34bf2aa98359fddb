"""Two real gateway processes sharing the session's redis-server (PROTOCOL §5)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.support import ROOT, GatewayProcess, Nodes, Probe, RedisServer, metric, start_together, wait_subscribed

ADMIN_TOKEN = "admin-token-for-cluster-tests-0123456789"


@pytest.fixture
def cluster_settings(redis_server: RedisServer, cluster_keys: dict[str, str]) -> dict[str, Any]:
    redis_server.flush()
    return {**cluster_keys, "redis_url": redis_server.url, "admin_token": ADMIN_TOKEN}


async def start_nodes(
    gateway_process: Callable[..., GatewayProcess], settings: dict[str, Any], **overrides: Any
) -> Nodes:
    """Nodes a and b with ``settings`` and ``overrides``, both listening and both
    subscribed to the fan-out channel."""
    values = {**settings, **overrides}
    nodes = (gateway_process(values, name="a"), gateway_process(values, name="b"))
    start_together(*nodes)
    await wait_subscribed(settings["redis_url"], len(nodes))
    return nodes


@pytest.fixture
async def two_nodes(cluster_settings: dict[str, Any], gateway_process: Callable[..., GatewayProcess]) -> Nodes:
    """Nodes a and b with the cluster settings, listening and subscribed."""
    return await start_nodes(gateway_process, cluster_settings)


@contextlib.asynccontextmanager
async def writes_held(redis_url: str, *, until_waiting: int) -> AsyncIterator[None]:
    """Hold every write in Redis (CLIENT PAUSE WRITE) until ``until_waiting``
    commands are queued behind the pause, then release them all at once.

    Consuming a ticket is a write, so this makes "concurrent" exact: all the
    redemptions are in flight together, whatever the scheduling of the clients
    and of the two nodes. (A read-then-delete would let every one of them win.)
    """
    admin = aioredis.Redis.from_url(redis_url)
    await admin.client_pause(10_000, all=False)  # WRITE mode: reads still run
    try:
        yield
        deadline = time.monotonic() + 10
        while (await admin.info("clients"))["blocked_clients"] < until_waiting:
            assert time.monotonic() < deadline, "the connects never all reached Redis"
            await asyncio.sleep(0.01)
    finally:
        await admin.client_unpause()
        await admin.aclose()


async def race_one_ticket(
    nodes: Nodes, ticket: str, *, redis_url: str, probes: Callable[[], Probe], sub: str = "alice"
) -> None:
    """50 connects with one ticket, alternating between ``nodes``, all in flight at
    once (writes held on ``redis_url``, the Redis that holds the ticket): exactly
    one is ``sub``'s socket, the other 49 get 4001 invalid_ticket."""
    clients = [probes() for _ in range(50)]
    async with writes_held(redis_url, until_waiting=len(clients)):
        connects = [
            asyncio.create_task(client.connect(nodes[i % 2].url, auth={"ticket": ticket}))
            for i, client in enumerate(clients)
        ]
    results = await asyncio.gather(*connects)
    winners = [client for client, ok in zip(clients, results, strict=True) if ok]
    assert len(winners) == 1
    assert (await winners[0].wait_for("authenticated"))["sub"] == sub
    refusals = [client.connect_error for client, ok in zip(clients, results, strict=True) if not ok]
    assert len(refusals) == 49
    assert all(error["data"] == {"code": 4001, "reason": "invalid_ticket"} for error in refusals), refusals
    # One ticket consumed and one socket connected, summed over both nodes.
    assert sum([await metric(node.url, "ticketgate_tickets_consumed_total") for node in nodes]) == 1
    assert sum([await metric(node.url, "ticketgate_connected_sockets") for node in nodes]) == 1


async def cli_token(config_file: Path, sub: str) -> str:
    """An access JWT minted by the real `python -m gateway token --config F --sub S`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETGATE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "token",
        "--config",
        str(config_file),
        "--sub",
        sub,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode(errors="replace")
    token = out.decode().strip()
    assert token.count(".") == 2, token
    return token
