"""PROTOCOL §3 `message` and §6.9 across two real `python -m gateway serve`
processes on one redis-server (§5): a message sent on one node reaches the
room's members on both nodes with one id, and lands exactly once in the
`tg:upstream` stream, whichever node took it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.auth.tokens import TokenService
from gateway.config import load_config
from tests.support import ROOT, GatewayProcess, Nodes, Probe

pytestmark = pytest.mark.timeout(60)

ROOM = "room:chat"
STREAM = "tg:upstream"


async def cli_token(config_file: Path, sub: str, claims: dict[str, Any]) -> str:
    """An access JWT with ``claims``, minted by the real
    `python -m gateway token --config F --sub S --claims JSON`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETGATE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "token", "--config", str(config_file), "--sub", sub,
        "--claims", json.dumps(claims),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode(errors="replace")
    return out.decode().strip()


async def member(node: GatewayProcess, probes: Callable[[], Probe], token: str) -> Probe:
    """A socket on ``node``, authenticated with ``token`` and joined to the chat room."""
    probe = probes()
    assert await probe.connect(node.url, auth={"token": token})
    await probe.wait_for("authenticated")
    assert await probe.call("join", {"room": ROOM}) == {"ok": True, "room": ROOM}
    return probe


async def members(
    nodes: Nodes, probes: Callable[[], Probe], settings: dict[str, Any], placed: list[tuple[str, int]]
) -> dict[str, Probe]:
    """One member per (sub, node index), each allowed the room by its ``rooms`` claim.

    The first member's token comes from the real CLI; the others' from a
    TokenService built from the same configured key, which is what the CLI
    runs, without a Python start-up per token."""
    claims = {"rooms": [ROOM]}
    (first, first_node), *rest = placed
    minter = TokenService(config=load_config(environ={}, flags=settings))
    tokens = [await cli_token(nodes[first_node].config_file, first, claims)]
    tokens += [minter.mint(sub, claims=claims)[0] for sub, _ in rest]
    made = await asyncio.gather(
        *(member(nodes[i], probes, token) for (_, i), token in zip(placed, tokens, strict=True))
    )
    return {sub: probe for (sub, _), probe in zip(placed, made, strict=True)}


async def upstream(redis_url: str) -> list[dict[str, str]]:
    """Every entry of `tg:upstream`, oldest first, read directly with XRANGE."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries: Any = await client.xrange(STREAM)  # [(entry id, fields)]
    finally:
        await client.aclose()
    return [dict(fields) for _, fields in entries]


async def test_message_on_one_node_reaches_both_and_the_stream_once(
    two_nodes: Nodes, cluster_settings: dict[str, Any], probes: Callable[[], Probe]
) -> None:
    settings = cluster_settings
    people = await members(two_nodes, probes, settings, [("alice", 0), ("bob", 1), ("carol", 1)])
    outsider = probes()  # authenticated on b, allowed the room, but never joined it
    eve = TokenService(config=load_config(environ={}, flags=settings)).mint("eve", claims={"rooms": [ROOM]})[0]
    assert await outsider.connect(two_nodes[1].url, auth={"token": eve})
    await outsider.wait_for("authenticated")

    data = {"text": "hi from a", "n": [1, 2], "nested": {"ok": True}}
    ack = await people["alice"].call("message", {"room": ROOM, "data": data})
    assert ack["ok"] is True and ack["id"]

    for probe in people.values():  # the sender on a too (§6.9)
        message = await probe.wait_for("message")
        assert set(message) == {"id", "ts", "sub", "room", "data"}
        assert message["id"] == ack["id"]
        assert (message["sub"], message["room"], message["data"]) == ("alice", ROOM, data)
        assert message["ts"].endswith("Z")
    received = [probe.named("message")[0] for probe in people.values()]
    assert all(m == received[0] for m in received)  # one message, the same everywhere

    await asyncio.sleep(0.3)  # a duplicate (from the other node, or a second fan-out) would be here by now
    assert all(len(probe.named("message")) == 1 for probe in people.values())
    assert not outsider.named("message")
    entries = await upstream(cluster_settings["redis_url"])
    assert len(entries) == 1
    (entry,) = entries
    assert set(entry) == {"id", "ts", "sub", "room", "data"}
    assert entry["id"] == ack["id"] and entry["ts"] == received[0]["ts"]
    assert (entry["sub"], entry["room"]) == ("alice", ROOM)
    assert json.loads(entry["data"]) == data


async def test_twenty_messages_from_both_nodes_keep_per_sender_order(
    two_nodes: Nodes, cluster_settings: dict[str, Any], probes: Callable[[], Probe]
) -> None:
    placed = [("alice", 0), ("bob", 1), ("carol", 0), ("dave", 1)]
    people = await members(two_nodes, probes, cluster_settings, placed)
    per_sender = 10

    async def send(sub: str) -> list[str]:
        ids = []
        for n in range(per_sender):  # each waits for its ack, as a chat client would
            ack = await people[sub].call("message", {"room": ROOM, "data": {"n": n}})
            assert ack["ok"] is True, ack
            ids.append(ack["id"])
        return ids

    # alice sends through a while bob sends through b, concurrently.
    alice_ids, bob_ids = await asyncio.gather(send("alice"), send("bob"))
    sent = {"alice": alice_ids, "bob": bob_ids}
    total = 2 * per_sender

    for sub, probe in people.items():
        await probe.wait_for("message", count=total, timeout=10)
        seen = probe.named("message")
        assert len(seen) == total, sub
        assert len({m["id"] for m in seen}) == total, sub
        for sender, ids in sent.items():
            mine = [m for m in seen if m["sub"] == sender]
            assert [m["id"] for m in mine] == ids, (sub, sender)
            assert [m["data"]["n"] for m in mine] == list(range(per_sender)), (sub, sender)

    await asyncio.sleep(0.3)
    assert all(len(probe.named("message")) == total for probe in people.values())
    entries = await upstream(cluster_settings["redis_url"])
    assert len(entries) == total
    assert sorted(e["id"] for e in entries) == sorted(alice_ids + bob_ids)
    for sender, ids in sent.items():  # each sender's entries were appended in the order sent
        assert [e["id"] for e in entries if e["sub"] == sender] == ids
        assert [json.loads(e["data"]) for e in entries if e["sub"] == sender] == [{"n": n} for n in range(per_sender)]
