"""Connect latency of ticketgate against a bare python-socketio server, measured
in the same run, and Redis commands per ticket connect.

    make bench            # or: .venv/bin/python -m bench --connects 300

Everything runs on 127.0.0.1: a redis-server on a free port, each server in its
own process, the clients here. Bounded: N connects per case, the cases taken in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
import socketio

from tests.support import GatewayProcess, RedisServer, free_port, keygen, wait_for_port, write_toml

ADMIN = "bench-admin-token-0123456789abcdef"


async def connect_once(url: str, auth: dict[str, str] | None) -> float:
    client = socketio.AsyncClient(reconnection=False)
    started = time.perf_counter()
    await client.connect(url, auth=auth, transports=["websocket"], wait_timeout=10)
    elapsed = time.perf_counter() - started
    await client.disconnect()
    return elapsed


Auth = Callable[[], Awaitable[dict[str, str] | None]]


async def interleaved(n: int, cases: list[tuple[str, str, Auth]]) -> dict[str, list[float]]:
    """``n`` rounds of one connect per case, the cases in turn: a slow spell of
    the machine falls on every case alike, so the ratios stay fair.

    Before each timed connect an untimed GET /healthz wakes the server's
    process: a ticket case's POST /ws/ticket does that anyway, and without it
    the other servers paid a wake-up from idle that made the bare baseline
    look slower than a ticket connect."""
    samples: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    async with aiohttp.ClientSession() as http:

        async def one(url: str, auth: Auth) -> float:
            async with http.get(f"{url}/healthz") as woken:
                woken.raise_for_status()
            return await connect_once(url, await auth())

        for _name, url, auth in cases:  # warm-up: imports, caches, the first Redis scripts
            for _ in range(min(20, n)):
                await one(url, auth)
        for i in range(n):
            turn = i % len(cases)  # rotated, so no case always follows the same one
            for name, url, auth in cases[turn:] + cases[:turn]:
                samples[name].append(await one(url, auth))
    return samples


async def ticket_factory(url: str, token: str) -> Callable[[], Awaitable[dict[str, str] | None]]:
    async def make() -> dict[str, str] | None:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{url}/ws/ticket", headers={"Authorization": f"Bearer {token}"}) as r,
        ):
            return {"ticket": (await r.json())["ticket"]}

    return make


def token_for(config: Path, sub: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "token", "--config", str(config), "--sub", sub],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


async def redis_calls(url: str) -> dict[str, int]:
    client = aioredis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    finally:
        await client.aclose()


def summary(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    return (
        statistics.median(ordered) * 1000,
        ordered[int(len(ordered) * 0.95) - 1] * 1000,
        statistics.mean(ordered) * 1000,
    )


async def run(n: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="tg-bench-"))
    redis = RedisServer(work / "redis")
    redis.start()
    keys = keygen()
    bare_port = free_port()
    bare = subprocess.Popen([sys.executable, "-m", "bench.bare_server", str(bare_port)])
    memory_config = write_toml(work / "memory.toml", {**keys, "admin_token": ADMIN})
    memory = GatewayProcess(config_file=memory_config, log_file=work / "memory.log")
    cluster = GatewayProcess(
        config_file=write_toml(work / "redis.toml", {**keys, "admin_token": ADMIN, "redis_url": redis.url}),
        log_file=work / "redis.log",
    )
    try:
        wait_for_port(bare_port, proc=bare)
        memory.start()
        cluster.start()
        token = token_for(memory.config_file, "bench")

        async def no_auth() -> dict[str, str] | None:
            return None

        async def by_token() -> dict[str, str] | None:
            return {"token": token}

        rows = await interleaved(
            n,
            [
                ("bare python-socketio (baseline)", f"http://127.0.0.1:{bare_port}", no_auth),
                ("ticketgate memory, token", memory.url, by_token),
                ("ticketgate memory, ticket", memory.url, await ticket_factory(memory.url, token)),
                ("ticketgate redis, token", cluster.url, by_token),
                ("ticketgate redis, ticket", cluster.url, await ticket_factory(cluster.url, token)),
            ],
        )
        base = statistics.median(rows["bare python-socketio (baseline)"])
        print(f"\nconnect latency, {n} websocket connects per case, the cases interleaved (ms)")
        print(f"{'case':34} {'p50':>7} {'p95':>7} {'mean':>7} {'p50/baseline':>13}")
        for name, samples in rows.items():
            p50, p95, mean = summary(samples)
            print(f"{name:34} {p50:7.2f} {p95:7.2f} {mean:7.2f} {statistics.median(samples) / base:12.2f}x")

        # Redis commands: a pass of ticket connects alone, tickets issued beforehand.
        make_ticket = await ticket_factory(cluster.url, token)
        tickets = [await make_ticket() for _ in range(n)]
        before = await redis_calls(redis.url)
        for ticket in tickets:
            await connect_once(cluster.url, ticket)
        after = await redis_calls(redis.url)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
        per = {k: v / n for k, v in sorted(delta.items()) if k not in ("info",)}
        print("\nRedis commands per ticket connect + disconnect (INFO commandstats; commands run")
        print("inside a Lua script are counted too, but cost no extra round trip):")
        for name, value in per.items():
            print(f"  {name:18} {value:.2f}")
        trips = {k: per.get(k, 0.0) for k in ("getdel", "evalsha", "exec", "zrem")}
        print(
            f"round trips: connect path {trips['getdel'] + trips['evalsha']:.2f} (GETDEL ticket, EVALSHA admit),"
            f" after `authenticated`"
            f" {trips['exec']:.2f} (refresh token), at disconnect {trips['zrem']:.2f}"
        )
    finally:
        for proc in (memory, cluster):
            proc.terminate()
        bare.terminate()
        bare.wait(timeout=10)
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connects", type=int, default=300, help="per case; bounded to 10..5000")
    args = parser.parse_args()
    asyncio.run(run(min(max(args.connects, 10), 5000)))


if __name__ == "__main__":
    main()
