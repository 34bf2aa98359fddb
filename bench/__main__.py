"""``make bench``: ticketgate's delivery path against Node socket.io and bare
python-socketio, measured in the same run, alternated, with the official
socket.io-client (bench/load.mjs) as the load.

    make bench            # or: .venv/bin/python -m bench [--quick]

Everything runs on 127.0.0.1 (a redis-server on a free port, each server in its
own process, the clients in node) and stops by itself. Figures:

* connects/s: 1000 websocket clients of one user connecting with an ES256 JWT
  (and, for ticketgate, with pre-issued tickets), from the first connect to
  the last ``authenticated``;
* fan-out deliveries/s: then 50 publishes (``POST /api/publish``) to the room
  of all 1000, from the first publish to the last delivery;
* KB of RSS per idle authenticated socket: the server's RSS growth with 2000;
* cross-node publish -> deliver latency: 2 gateways on one Redis and on a
  3-master Redis Cluster (alternated), 5000 sockets of 5000 users on node b,
  publishes through node a at a steady rate;
* routing: CPU seconds of each of 4 nodes when events go to users on one;
* recovery: Redis bytes per stored event, reconnect to the last of 1000 missed;
* workers: fan-out deliveries/s of `serve --workers 2` against one process.

Each server's figure is the median of its rounds; ratios are to Node socket.io.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import socketio

from gateway.auth.tokens import TokenService
from gateway.config import load_config
from tests.support import GatewayProcess, RedisCluster, RedisServer, free_port, keygen, wait_for_port, which, write_toml

BENCH = Path(__file__).resolve().parent
ADMIN = "bench-admin-token-0123456789abcdef"
SUB = "bench"
WARM_UP = 100  # publishes of the latency scenario not counted


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class Results:
    connects: dict[str, list[float]] = field(default_factory=dict)
    deliveries: dict[str, list[float]] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    latency: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    routing: dict[str, tuple[float, list[float]]] = field(default_factory=dict)
    recovery: dict[str, float] = field(default_factory=dict)

    def add(self, table: dict[str, list[float]], name: str, value: float) -> None:
        table.setdefault(name, []).append(value)


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.keys = keygen()
        self.redis = RedisServer(work / "redis")
        self.servers: list[Server] = []
        self.gateways: list[GatewayProcess] = []
        config = write_toml(work / "keys.toml", {**self.keys})
        self.tokens = TokenService(config=load_config(file=config, environ={}))
        self.public_jwk = json.dumps(self.tokens.jwks["keys"][0])

    # -- servers ----------------------------------------------------------------

    def node(self) -> Server:
        port = free_port()
        proc = subprocess.Popen(
            [which("node"), str(BENCH / "node_server.mjs"), str(port), self.public_jwk, ADMIN], cwd=BENCH
        )
        wait_for_port(port, proc=proc)
        return self._keep(Server("Node socket.io", f"http://127.0.0.1:{port}", proc))

    def bare(self, redis_url: str | None = None) -> Server:
        port = free_port()
        command = [sys.executable, "-m", "bench.bare_server", str(port), self.public_jwk, ADMIN]
        command += [redis_url] if redis_url else []
        proc = subprocess.Popen(command, cwd=BENCH.parent)
        wait_for_port(port, proc=proc)
        return self._keep(Server("bare python-socketio", f"http://127.0.0.1:{port}", proc))

    def gateway(self, name: str, *, extra_args: tuple[str, ...] = (), **settings: Any) -> Server:
        # Thousands of sockets from one address (127.0.0.1): the per-address limits out of the way.
        values = {
            **self.keys,
            "admin_token": ADMIN,
            "max_pending_per_ip": 1000,
            "connect_rate_per_ip": 1_000_000,
            "http_rate_per_ip": 1_000_000,
            **settings,
        }
        index = len(self.gateways)
        process = GatewayProcess(
            config_file=write_toml(self.work / f"gateway-{index}.toml", values),
            log_file=self.work / f"gateway-{index}.log",
            extra_args=extra_args,
        )
        process.start()
        self.gateways.append(process)
        assert process.proc is not None
        return self._keep(Server(name, process.url, process.proc))

    def _keep(self, server: Server) -> Server:
        self.servers.append(server)
        return server

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.redis.stop()

    # -- load -----------------------------------------------------------------------

    def auth_file(self, name: str, auths: list[dict[str, str]]) -> Path:
        path = self.work / f"{name}.jsonl"
        path.write_text("".join(json.dumps(auth) + "\n" for auth in auths))
        return path

    def token_auths(self, count: int, *, users: int = 1) -> Path:
        subs = [SUB if users == 1 else f"u{i}" for i in range(count)]
        return self.auth_file(f"tokens-{count}-{users}", [{"token": self.tokens.mint(s, ttl=3600)[0]} for s in subs])

    async def ticket_auths(self, url: str, count: int) -> Path:
        token = self.tokens.mint(SUB, ttl=3600)[0]
        async with aiohttp.ClientSession() as http:

            async def one() -> dict[str, str]:
                async with http.post(f"{url}/ws/ticket", headers={"Authorization": f"Bearer {token}"}) as resp:
                    return {"ticket": (await resp.json())["ticket"]}

            auths: list[dict[str, str]] = []
            for start in range(0, count, 50):  # 50 at a time: issuing is not what is measured
                auths += await asyncio.gather(*(one() for _ in range(min(50, count - start))))
        return self.auth_file(f"tickets-{time.monotonic_ns()}", auths)


async def load(url: str, spec: dict[str, Any], *, hold: Callable[[], Any] | None = None) -> list[dict[str, Any]]:
    """Run bench/load.mjs against ``url``; its output lines. With ``hold``, the
    sockets stay open while ``hold()`` runs (after they are all in)."""
    proc = await asyncio.create_subprocess_exec(
        which("node"),
        str(BENCH / "load.mjs"),
        url,
        json.dumps({**spec, "hold": hold is not None, "admin": ADMIN}),
        cwd=BENCH,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        limit=1 << 24,  # a line of latencies
    )
    assert proc.stdout is not None and proc.stdin is not None
    lines: list[dict[str, Any]] = []
    async for raw in proc.stdout:
        line = json.loads(raw)
        lines.append(line)
        if line["event"] == "timeout":
            raise RuntimeError(f"load against {url} timed out: {lines}")
        if hold is not None and line["event"] == "connected":
            await hold()
            proc.stdin.write(b"close\n")
            await proc.stdin.drain()
    await proc.wait()
    return lines


def line(lines: list[dict[str, Any]], event: str) -> dict[str, Any]:
    found = [item for item in lines if item["event"] == event]
    if not found:
        raise RuntimeError(f"no {event!r} line in {lines}")
    return found[0]


async def wake(url: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as resp:
        resp.raise_for_status()


async def fanout_round(bench: Bench, results: Results, servers: list[Server], *, sockets: int, publishes: int) -> None:
    auths = bench.token_auths(sockets)
    for server in servers:
        await wake(server.url)
        lines = await load(server.url, {"auths": str(auths), "publishes": publishes, "rooms": [f"user:{SUB}"]})
        connected, delivered = line(lines, "connected"), line(lines, "delivered")
        assert connected["failed"] == 0 and delivered["count"] == delivered["expected"], (server.name, lines)
        results.add(results.connects, server.name, connected["count"] / connected["seconds"])
        results.add(results.deliveries, server.name, delivered["count"] / delivered["seconds"])
        await asyncio.sleep(0.3)  # let the server close the last round's sockets


async def ticket_round(bench: Bench, results: Results, servers: list[Server], *, sockets: int) -> None:
    for server in servers:
        auths = await bench.ticket_auths(server.url, sockets)
        lines = await load(server.url, {"auths": str(auths)})
        connected = line(lines, "connected")
        assert connected["failed"] == 0, (server.name, lines)
        results.add(results.connects, f"{server.name}, ticket", connected["count"] / connected["seconds"])
        await asyncio.sleep(0.3)


async def memory(bench: Bench, results: Results, server: Server, *, sockets: int) -> None:
    """RSS growth per idle authenticated socket, after a warm-up round."""
    await load(server.url, {"auths": str(bench.token_auths(100))})
    await asyncio.sleep(1.0)
    before = server.rss_kb()
    after: list[int] = []

    async def settle() -> None:
        await asyncio.sleep(2.0)
        after.append(server.rss_kb())

    await load(server.url, {"auths": str(bench.token_auths(sockets))}, hold=settle)
    results.memory[server.name] = (after[0] - before) / sockets


async def cross_node(
    bench: Bench,
    results: Results,
    *,
    sockets: int,
    publishes: int,
    rate: float,
    label: str = "2 nodes + Redis",
    **redis: Any,
) -> None:
    """2 gateways + Redis (``redis``: their redis settings; a single Redis by
    default): sockets of ``sockets`` users on node b, publishes through node a."""
    redis = redis or {"redis_url": bench.redis.url}
    a = bench.gateway("ticketgate a", **redis)
    b = bench.gateway("ticketgate b", **redis)
    rooms = [f"user:u{i}" for i in range(sockets)]
    spec = {
        "auths": str(bench.token_auths(sockets, users=sockets)),
        "publishes": publishes + WARM_UP,
        "publishUrl": a.url,
        "rooms": rooms[:: max(1, sockets // publishes)][:publishes] * 2,
        "membersPerRoom": 1,
        "publishRate": rate,
    }
    lines = await load(b.url, spec)
    raw = line(lines, "delivered")["latencyMs"]
    (bench.work / "latencies.json").write_text(json.dumps(raw))
    latencies = sorted(raw[WARM_UP:])  # the first ones open connections and load scripts
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    results.latency.setdefault(label, []).append((p50, p99))
    a.stop()
    b.stop()


async def routing(bench: Bench, results: Results, *, users: int, publishes: int) -> None:
    """4 nodes on one Redis, ``users`` sockets (one per user) all on the first;
    ``publishes`` events to their user rooms through the first: the CPU seconds
    each node spends, ticketgate's routed fan-out against python-socketio's
    AsyncRedisManager (every event to every node: ticketgate before #13)."""
    spec = {
        "auths": str(bench.token_auths(users, users=users)),
        "publishes": publishes,
        "rooms": [f"user:u{i}" for i in range(users)],
        "membersPerRoom": 1,
        "concurrency": 20,
    }
    variants: list[tuple[str, Callable[[], Server]]] = [
        ("ticketgate, routed", lambda: bench.gateway("tg", redis_url=bench.redis.url)),
        ("python-socketio AsyncRedisManager, unrouted", lambda: bench.bare(bench.redis.url)),
    ]
    for name, start in variants:
        nodes = [start() for _ in range(4)]
        idle = [socketio.AsyncClient() for _ in nodes[1:]]  # the other nodes have users of their own
        for index, (client, node) in enumerate(zip(idle, nodes[1:], strict=True)):
            token = bench.tokens.mint(f"idle{index}", ttl=3600)[0]
            await client.connect(node.url, auth={"token": token}, transports=["websocket"])
        await asyncio.sleep(0.5)  # every node subscribed
        before = [node.cpu_seconds() for node in nodes]
        lines = await load(nodes[0].url, spec)
        delivered = line(lines, "delivered")
        assert delivered["count"] == delivered["expected"], (name, lines)
        spent = [node.cpu_seconds() - start_cpu for node, start_cpu in zip(nodes, before, strict=True)]
        results.routing[name] = (spent[0], spent[1:])
        for client in idle:
            await client.disconnect()
        for node in nodes:
            node.stop()


async def recovery(bench: Bench, results: Results, *, missed: int) -> None:
    """Connection state recovery (docs/recovery.md) on the redis engine: Redis
    memory per stored event (10 000 events of the size the fan-out rounds
    publish), and the time from a reconnect to the last of ``missed`` events it
    missed (the official client, recovered)."""
    from gateway.emitter import Emitter
    from gateway.store.keys import PREFIX, history

    server = bench.gateway("ticketgate (redis)", redis_url=bench.redis.url)
    client = await asyncio.create_subprocess_exec(
        which("node"),
        str(BENCH / "recover.mjs"),
        server.url,
        bench.tokens.mint(SUB, ttl=3600)[0],
        str(missed),
        cwd=BENCH,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert client.stdin is not None and client.stdout is not None

    async def expect(event: str) -> dict[str, Any]:
        assert client.stdout is not None
        got = json.loads(await asyncio.wait_for(client.stdout.readline(), 60))
        if got["event"] != event:
            raise RuntimeError(f"recover.mjs: {got}, not {event}")
        return got

    emitter = Emitter(bench.redis.url)
    redis = aioredis.Redis.from_url(bench.redis.url)
    try:
        await expect("ready")
        client.stdin.write(b"cut\n")
        await expect("cut")
        await asyncio.sleep(0.5)  # the gateway has seen the loss
        for n in range(missed):
            await emitter.publish(f"user:{SUB}", "tick", {"n": n, "sentAt": 0.0})
        client.stdin.write(b"reconnect\n")
        replayed = await expect("replayed")
        assert replayed["recovered"] is True, replayed
        results.recovery[f"reconnect -> last of {missed} missed events (ms)"] = replayed["ms"]

        room = "room:bench-memory"
        key = PREFIX + history(room)
        used = int((await redis.info("memory"))["used_memory"])
        for n in range(10_000):
            await emitter.publish(room, "tick", {"n": n, "sentAt": 1e12})
        per_event = int(await redis.memory_usage(key, samples=0)) / 10_000
        results.recovery["Redis bytes per stored event (MEMORY USAGE)"] = per_event
        grown = int((await redis.info("memory"))["used_memory"]) - used
        results.recovery["Redis bytes per stored event (used_memory)"] = grown / 10_000
        window = 150  # the default recovery_window (120 s) and the 30 s margin
        results.recovery["Redis MB for a full window at 1k events/s"] = per_event * 1000 * window / 1e6
    finally:
        await emitter.close()
        await redis.aclose()
        await client.wait()
        server.stop()


def report(results: Results) -> None:
    node = "Node socket.io"

    def median(values: list[float]) -> float:
        return statistics.median(values)

    def ratio(value: float, base: float | None) -> str:
        return f"{value / base:.2f}x" if base else ""

    for title, table in (("connects/s", results.connects), ("fan-out deliveries/s", results.deliveries)):
        if not table:
            continue
        print(f"\n## {title} (median of rounds; ratio to Node socket.io)")
        base = median(table[node]) if node in table else None
        for name, values in table.items():
            print(f"  {name:40} {median(values):9.0f}   {ratio(median(values), base)}")
    if results.memory:
        print("\n## KB of RSS per idle authenticated socket (lower is better; ratio to Node)")
    base = results.memory.get(node)
    for name, kb in results.memory.items():
        print(f"  {name:40} {kb:9.1f}   {ratio(kb, base)}")
    if results.latency:
        print("\n## cross-node publish -> deliver latency (ms)")
    for name, rounds in results.latency.items():
        p50, p99 = median([r[0] for r in rounds]), median([r[1] for r in rounds])
        print(f"  {name:40} p50 {p50:6.2f}   p99 {p99:6.2f}   (median of {len(rounds)})")
    if results.recovery:
        print("\n## connection state recovery (redis engine)")
    for name, value in results.recovery.items():
        print(f"  {name:55} {value:10.1f}")
    if results.routing:
        print("\n## CPU seconds per node: 4 nodes, events to users connected on the first (routing)")
    for name, (busy, others) in results.routing.items():
        idle = "  ".join(f"{value:5.2f}" for value in others)
        print(f"  {name:45} busy node {busy:6.2f}   the other three {idle}")


SCENARIOS = ("fanout", "memory", "latency", "routing", "recovery", "workers")


async def run(quick: bool, only: set[str] | None = None) -> None:
    work = Path(tempfile.mkdtemp(prefix="tg-bench-"))
    bench = Bench(work)
    results = Results()
    rounds, sockets = (1, 300) if quick else (3, 1000)
    started = time.monotonic()
    try:
        bench.redis.start()
        servers = [
            bench.node(),
            bench.bare(),
            bench.gateway("ticketgate (memory)"),
            bench.gateway("ticketgate (redis)", redis_url=bench.redis.url),
            bench.gateway("ticketgate (memory), recovery off", recovery_window=0),
            bench.gateway("ticketgate (redis), recovery off", redis_url=bench.redis.url, recovery_window=0),
        ]
        wanted = only or set(SCENARIOS)
        for round_index in range(rounds if "fanout" in wanted else 0):
            turn = round_index % len(servers)  # rotated: no server always follows the same one
            await fanout_round(bench, results, servers[turn:] + servers[:turn], sockets=sockets, publishes=50)
            await ticket_round(bench, results, servers[2:4], sockets=sockets)
        for server in servers if "memory" in wanted else []:
            await memory(bench, results, server, sockets=500 if quick else 2000)
        if "latency" in wanted:
            latency = {"sockets": 1000 if quick else 5000, "publishes": 1000, "rate": 500}
            cluster = RedisCluster(work / "redis-cluster")
            cluster.start()
            try:  # alternated: single, cluster, single, cluster
                for _ in range(1 if quick else 2):
                    await cross_node(bench, results, **latency, label="2 nodes + one Redis")
                    cluster.flush()
                    await cross_node(
                        bench,
                        results,
                        **latency,
                        label="2 nodes + 3-master Redis Cluster",
                        redis_url=cluster.url,
                        redis_cluster=True,
                    )
            finally:
                cluster.stop()
        if "workers" in wanted:
            one = bench.gateway("ticketgate (redis), 1 process", redis_url=bench.redis.url)
            two = bench.gateway(
                "ticketgate (redis), --workers 2", redis_url=bench.redis.url, extra_args=("--workers", "2")
            )
            for round_index in range(rounds):
                pair = [one, two] if round_index % 2 == 0 else [two, one]
                await fanout_round(bench, results, pair, sockets=sockets, publishes=50)
            one.stop()
            two.stop()
        if "routing" in wanted:
            await routing(bench, results, users=100, publishes=1000 if quick else 10_000)
        if "recovery" in wanted:
            await recovery(bench, results, missed=1000)
    finally:
        bench.stop()
    report(results)
    print(f"\n(bench took {time.monotonic() - started:.0f} s; work files in {work})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small round of each, for a smoke test")
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="run only these scenarios (repeatable)")
    args = parser.parse_args()
    asyncio.run(run(args.quick, set(args.only) if args.only else None))


if __name__ == "__main__":
    main()
