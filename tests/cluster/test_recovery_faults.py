"""Nothing lost across faults (docs/recovery.md): real gateway processes on the
redis engine, the official socket.io-client (tests/js/fleet.mjs) reconnecting by
itself, and numbered events published at a steady rate. Each test counts, per
socket, the events lost, duplicated and out of order: all must be 0.

* a node killed with SIGKILL, and a node drained with SIGTERM, behind the nginx of
  deploy/nginx.conf: its sockets reconnect through nginx to the other node;
* a client whose transport is cut for 10 s;
* Redis restarted mid-stream: publishes during the outage answer 503 and are
  retried after it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.auth.tokens import TokenService
from gateway.config import load_config
from tests.cluster.conftest import ADMIN_TOKEN, start_nodes
from tests.cluster.test_nginx import Nginx, host_and_other
from tests.support import JS_DIR, GatewayProcess, Nodes, Probe, RedisServer, free_port, metric, wait_subscribed, which

pytestmark = pytest.mark.timeout(240)

ROOM = "user:fleet"
# Hundreds of sockets and their reconnects from one address (127.0.0.1): its limit out of the way.
FLEET_SETTINGS = {"connect_rate_per_ip": 100_000}


class Fleet:
    """tests/js/fleet.mjs: official clients that reconnect by themselves and count."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, sockets: list[dict[str, Any]]) -> Fleet:
        proc = await asyncio.create_subprocess_exec(
            which("node"),
            str(JS_DIR / "fleet.mjs"),
            json.dumps({"sockets": sockets, "timeoutMs": 200_000}),
            cwd=JS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            limit=1 << 24,
        )
        fleet = cls(proc)
        await fleet.expect("connected", timeout=60)
        return fleet

    async def expect(self, event: str, *, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = json.loads(await self.proc.stdout.readline())
                self.lines.append(line)
                assert line["event"] != "timeout", self.lines[-5:]
                if line["event"] == event:
                    return line

    async def command(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def report(self, count: int) -> list[dict[str, Any]]:
        await self.command(f"report {count}")
        sockets: list[dict[str, Any]] = (await self.expect("report", timeout=30))["sockets"]
        await self.proc.wait()
        return sockets

    def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


class Publisher:
    """Numbered events to ROOM at ``rate`` per second through ``url``; an event
    refused with 503 is retried (the same number) until accepted, so the events
    are accepted in order."""

    def __init__(self, url: str, count: int, rate: float) -> None:
        self.url, self.count, self.rate = url, count, rate
        self.accepted = 0
        self.refused = 0

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            started = time.monotonic()
            while self.accepted < self.count:
                await asyncio.sleep(max(0.0, started + self.accepted / self.rate - time.monotonic()))
                body = {"room": ROOM, "event": "tick", "data": {"n": self.accepted}}
                try:
                    async with http.post(f"{self.url}/api/publish", json=body) as resp:
                        status = resp.status
                except aiohttp.ClientError:
                    status = 0
                if status == 202:
                    self.accepted += 1
                else:
                    assert status in (0, 503), status
                    self.refused += 1
                    await asyncio.sleep(0.1)
                    started = time.monotonic() - self.accepted / self.rate

    async def until(self, accepted: int) -> None:
        while self.accepted < accepted:
            await asyncio.sleep(0.01)


def token(settings: dict[str, Any]) -> str:
    return TokenService(config=load_config(environ={}, flags=settings)).mint("fleet", ttl=3600)[0]


def assert_nothing_lost(sockets: list[dict[str, Any]], count: int) -> None:
    bad = [s for s in sockets if (s["lost"], s["duplicated"], s["unordered"], s["received"]) != (0, 0, 0, count)]
    assert bad == [], bad[:5]
    assert all(s["recovered"] == s["reconnects"] for s in sockets), [s for s in sockets if s["reconnects"]][:5]


@pytest.fixture
async def behind_nginx(
    cluster_settings: dict[str, Any], gateway_process: Callable[..., GatewayProcess], tmp_path: Path
) -> AsyncIterator[tuple[Nodes, Nginx]]:
    port = free_port()
    settings = {**cluster_settings, **FLEET_SETTINGS}
    nodes = await start_nodes(gateway_process, settings, public_url=f"http://127.0.0.1:{port}")
    workdir = tmp_path / "nginx"
    workdir.mkdir()
    server = Nginx(workdir, nodes, port=port)
    server.start()
    yield nodes, server
    server.stop()


@pytest.mark.parametrize("fault", ["kill", "drain"])
async def test_sockets_of_a_failed_node_recover_through_nginx_on_the_other(
    behind_nginx: tuple[Nodes, Nginx], cluster_settings: dict[str, Any], fault: str
) -> None:
    """200 sockets: 100 through nginx (on the node ip_hash picks for 127.0.0.1) and
    100 straight to the other; 1000 events at 200/s; halfway the first node is
    killed (SIGKILL) or drained (SIGTERM, 1001)."""
    nodes, nginx = behind_nginx
    access = token(cluster_settings)
    probe = Probe()
    assert await probe.connect(nginx.url, auth={"token": access})
    target, other = await host_and_other(nodes)
    await probe.client.disconnect()
    sockets = [{"url": nginx.url, "auth": {"token": access}} for _ in range(100)]
    sockets += [{"url": other.url, "auth": {"token": access}} for _ in range(100)]
    fleet = await Fleet.start(sockets)
    try:
        assert await metric(target.url, "ticketgate_connected_sockets") == 100
        publisher = Publisher(other.url, 1000, 200)
        publishing = asyncio.create_task(publisher.run())
        await publisher.until(500)
        assert target.proc is not None
        target.proc.send_signal(signal.SIGKILL if fault == "kill" else signal.SIGTERM)
        await publishing
        async with asyncio.timeout(60):
            while await metric(other.url, "ticketgate_connected_sockets") < 200:
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # the last deliveries
        report = await fleet.report(1000)
    finally:
        fleet.stop()
    assert_nothing_lost(report, 1000)
    assert [s["reconnects"] >= 1 for s in report] == [True] * 100 + [False] * 100


async def test_a_transport_cut_for_ten_seconds_recovers_what_was_published_meanwhile(
    gateway_process: Callable[..., GatewayProcess], cluster_settings: dict[str, Any]
) -> None:
    a, b = await start_nodes(gateway_process, {**cluster_settings, **FLEET_SETTINGS})
    access = token(cluster_settings)
    fleet = await Fleet.start([{"url": a.url, "auth": {"token": access}} for _ in range(10)])
    try:
        publisher = Publisher(b.url, 1000, 100)
        publishing = asyncio.create_task(publisher.run())
        await publisher.until(100)
        await fleet.command("cut 0 10000")
        await publishing
        reconnected = await fleet.expect("reconnected", timeout=30)
        assert reconnected == {"event": "reconnected", "i": 0, "recovered": True}
        await asyncio.sleep(1.0)
        report = await fleet.report(1000)
    finally:
        fleet.stop()
    assert_nothing_lost(report, 1000)
    assert report[0]["reconnects"] == 1


async def test_a_redis_restart_mid_stream_loses_and_duplicates_nothing(
    own_redis: RedisServer,
    cluster_keys: dict[str, str],
    gateway_process: Callable[..., GatewayProcess],
) -> None:
    settings = {**cluster_keys, **FLEET_SETTINGS, "redis_url": own_redis.url, "admin_token": ADMIN_TOKEN}
    a, b = gateway_process(settings, name="a"), gateway_process(settings, name="b")
    a.start()
    b.start()
    await wait_subscribed(own_redis.url, 2)
    access = token(settings)
    fleet = await Fleet.start([{"url": node.url, "auth": {"token": access}} for node in (a, b) for _ in range(10)])
    try:
        publisher = Publisher(a.url, 600, 100)
        publishing = asyncio.create_task(publisher.run())
        await publisher.until(200)
        own_redis.stop()
        await asyncio.sleep(2.0)
        own_redis.start()  # same port, empty
        await publishing
        await asyncio.sleep(2.0)
        report = await fleet.report(600)
    finally:
        fleet.stop()
    assert publisher.refused > 0  # the outage was seen: 503s, retried
    assert_nothing_lost(report, 600)
