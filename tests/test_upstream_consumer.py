"""examples/upstream_consumer.py, run for real as a subprocess against a
redis-engine gateway: it prints every `message` of `tg:upstream` once, in
order, acknowledges what it printed, and after a crash re-reads what it had
been given but never acknowledged (PROTOCOL §3 `message`, §6.9)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from tests.conftest import Gateway
from tests.support import ROOT, Probe

pytestmark = pytest.mark.timeout(60)

# The consumer reads a Redis Stream; with the memory engine the upstream is an
# in-process queue that no outside worker can read. So only the redis engine
# (this overrides the parametrized `engine` fixture that `settings` uses).
only_redis = pytest.mark.parametrize("engine", ["redis"])

EXAMPLE = ROOT / "examples" / "upstream_consumer.py"
STREAM = "tg:upstream"
ROOM = "room:chat"
GROUP = "workers"


async def run_consumer(redis_url: str, *args: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Run the example to completion (it must exit 0 within ``timeout``); its JSON lines."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "--redis-url", redis_url, "--block-ms", "200", *args,
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")
    return [json.loads(line) for line in out.decode().splitlines()]


async def member(gateway: Gateway, probes: Callable[[], Probe], sub: str) -> Probe:
    probe = probes()
    assert await probe.connect(gateway.url, auth={"token": gateway.mint(sub, claims={"rooms": [ROOM]})})
    await probe.wait_for("authenticated")
    assert (await probe.call("join", {"room": ROOM}))["ok"]
    return probe


async def send(probe: Probe, data: Any) -> str:
    ack = await probe.call("message", {"room": ROOM, "data": data})
    assert ack["ok"] is True, ack
    return str(ack["id"])


async def pending(redis_url: str, group: str = GROUP) -> int:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        summary = await client.xpending(STREAM, group)
    finally:
        await client.aclose()
    return int(summary["pending"])


async def blocked_reading(redis_url: str, consumer: str, timeout: float = 15.0) -> None:
    """Wait until ``consumer`` has read from the group and a client blocks in Redis
    (its XREADGROUP ... BLOCK on the empty stream)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(ResponseError):  # no stream or group yet
                    names = [c["name"] for c in await client.xinfo_consumers(STREAM, GROUP)]
                    if consumer in names and (await client.info("clients"))["blocked_clients"] >= 1:
                        return
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()


@only_redis
async def test_consumer_prints_each_message_once_in_order_and_acks(
    gateway: Gateway, probes: Callable[[], Probe]
) -> None:
    redis_url = str(gateway.config.redis_url)
    alice, bob = await member(gateway, probes, "alice"), await member(gateway, probes, "bob")
    sent = [
        await send(alice, {"text": "first"}),
        await send(bob, [1, 2, {"x": None}]),
        await send(alice, "third"),
    ]
    delivered = [await alice.wait_for("message", count=n) for n in (1, 2, 3)]

    printed = await run_consumer(redis_url, "--group", GROUP, "--consumer", "w1", "--max", "3")
    # Exactly what the room's members received, field for field, in the order sent.
    assert printed == delivered
    assert [line["id"] for line in printed] == sent
    assert [line["sub"] for line in printed] == ["alice", "bob", "alice"]
    assert [line["data"] for line in printed] == [{"text": "first"}, [1, 2, {"x": None}], "third"]
    assert await pending(redis_url) == 0

    # A second run of the same group starts after what the first acknowledged:
    # of the four entries now in the stream it prints only the new one.
    fourth = await send(bob, {"text": "fourth"})
    again = await run_consumer(redis_url, "--group", GROUP, "--consumer", "w1", "--max", "1")
    assert [line["id"] for line in again] == [fourth]
    assert await pending(redis_url) == 0

    # Another group is another reader: it sees the whole stream.
    audit = await run_consumer(redis_url, "--group", "audit", "--consumer", "a1", "--max", "4")
    assert [line["id"] for line in audit] == [*sent, fourth]


@only_redis
async def test_consumer_first_rereads_what_a_crashed_run_left_pending(
    gateway: Gateway, probes: Callable[[], Probe]
) -> None:
    redis_url = str(gateway.config.redis_url)
    alice = await member(gateway, probes, "alice")
    before_crash = [await send(alice, {"n": n}) for n in range(2)]

    # A run of consumer w1 that was given both entries and died before XACK.
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await client.xgroup_create(STREAM, GROUP, id="0")
        taken: Any = await client.xreadgroup(GROUP, "w1", {STREAM: ">"}, count=10)  # [[stream, entries]]
        assert [fields["id"] for _, fields in taken[0][1]] == before_crash
    finally:
        await client.aclose()
    assert await pending(redis_url) == 2

    after_crash = await send(alice, {"n": 2})
    # The restart (same consumer name; the group exists already: BUSYGROUP is fine)
    # processes its pending entries first, then the new one.
    printed = await run_consumer(redis_url, "--group", GROUP, "--consumer", "w1", "--max", "3")
    assert [line["id"] for line in printed] == [*before_crash, after_crash]
    assert [line["data"] for line in printed] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert await pending(redis_url) == 0


@only_redis
async def test_consumer_waits_for_messages_sent_while_it_runs(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    """Started on an empty stream (MKSTREAM creates it), it blocks until messages come."""
    redis_url = str(gateway.config.redis_url)
    alice = await member(gateway, probes, "alice")
    consumer = asyncio.create_task(run_consumer(redis_url, "--group", GROUP, "--consumer", "w1", "--max", "2"))
    await blocked_reading(redis_url, "w1")
    assert not consumer.done()
    sent = [await send(alice, "one"), await send(alice, "two")]
    printed = await asyncio.wait_for(consumer, 25)
    assert [line["id"] for line in printed] == sent
    assert await pending(redis_url) == 0
