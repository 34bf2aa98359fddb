"""Backpressure (issue #12): a client that stops reading costs the gateway at most
``max_buffered_bytes``; past it the socket is a slow consumer: told `closing` 4012
`slow_consumer` (behind what it has not read), cut, and counted in /metrics.
Other sockets, the same user's among them, are untouched."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Gateway, MakeGateway
from tests.support import Probe, http_json, metric

pytestmark = pytest.mark.timeout(60)

CAP = 64 * 1024
SLOW = {"code": 4012, "reason": "slow_consumer"}


class Stalled:
    """A Socket.IO client on a raw WebSocket that reads nothing once it is in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, gateway: Gateway, token: str) -> Stalled:
        reader, writer = await asyncio.open_connection(gateway.server.host, gateway.server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await reader.readuntil(b"\r\n\r\n")
        stalled = cls(reader, writer)
        assert (await stalled.frame())[1].startswith("0{")  # OPEN
        stalled.send("40" + json.dumps({"token": token}))
        return stalled

    def send(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        header = (
            struct.pack("!BB", 0x81, 0x80 | len(payload))
            if len(payload) < 126
            else struct.pack("!BBH", 0x81, 0x80 | 126, len(payload))
        )
        self.writer.write(header + mask + masked)

    async def frame(self) -> tuple[int, str]:
        first, second = await self.reader.readexactly(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        data = await self.reader.readexactly(size)
        if first & 0x0F == 0x8:  # close
            return 8, str(struct.unpack("!H", data[:2])[0])
        return first & 0x0F, data.decode()


async def test_a_client_that_stops_reading_is_cut_at_the_cap(
    make_gateway: MakeGateway, probes: Callable[[], Probe]
) -> None:
    gateway = await make_gateway(max_buffered_bytes=CAP)
    reader = probes()  # the same user, reading
    assert await reader.connect(gateway.url, auth={"token": gateway.mint("alice")})
    await reader.wait_for("authenticated")
    stalled = await Stalled.connect(gateway, gateway.mint("alice"))
    await asyncio.sleep(0.3)
    assert await metric(gateway.url, "ticketgate_slow_consumers_total") == 0

    # 60 KB events until the stalled socket's kernel buffers are full and the
    # gateway's own buffer passes the cap.
    blob = "x" * 60_000
    sent = 0
    while await metric(gateway.url, "ticketgate_slow_consumers_total") == 0:
        assert sent < 400, "never a slow consumer: the cap does not hold"
        await gateway.publish("user:alice", "bulk", {"n": sent, "blob": blob})
        sent += 1
    # The other socket of the same user got every event, in order.
    await reader.wait_for("bulk", count=sent, timeout=20)
    assert [event["n"] for event in reader.named("bulk")] == list(range(sent))
    assert reader.client.connected

    # Read it all now: the events in order, then `closing` 4012, then the close frame.
    seen: list[Any] = []
    closing: Any = None
    async with asyncio.timeout(10):
        while True:
            opcode, text = await stalled.frame()
            if opcode == 8:
                close_code = int(text)
                break
            if text.startswith("42"):
                name, data, *_offset = json.loads(text[2:])  # room events end with their offset
                if name == "bulk":
                    assert closing is None, "an event after closing"
                    seen.append(data["n"])
                elif name == "closing":
                    closing = data
    assert closing == SLOW and close_code == 4012
    assert seen == list(range(sent))  # what it was sent up to (and across) the cap, in order, nothing after
    stalled.writer.close()
    # The gateway let it go: only the reading socket is left.
    async with asyncio.timeout(10):
        while await metric(gateway.url, "ticketgate_connected_sockets") != 1:
            await asyncio.sleep(0.1)
    await gateway.publish("user:alice", "after", {"ok": True})
    assert await reader.wait_for("after") == {"ok": True}


async def test_a_long_polling_client_that_stops_polling_is_cut_at_the_cap(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(max_buffered_bytes=CAP)
    base = f"{gateway.url}/socket.io/?EIO=4&transport=polling"
    status, body, _ = await http_json("GET", base)
    sid = json.loads(body[1:])["sid"]
    connect = ("40" + json.dumps({"token": gateway.mint("alice")})).encode()
    assert (await http_json("POST", f"{base}&sid={sid}", data=connect))[0] == 200
    status, body, _ = await http_json("GET", f"{base}&sid={sid}")  # CONNECT's answer, `authenticated`
    assert status == 200 and "authenticated" in body
    blob = "x" * 30_000
    for n in range(3):  # 90 KB queued for a client that does not poll
        await gateway.publish("user:alice", "bulk", {"n": n, "blob": blob})
    assert await metric(gateway.url, "ticketgate_slow_consumers_total") == 1
    async with asyncio.timeout(5):
        while await metric(gateway.url, "ticketgate_connected_sockets") != 0:
            await asyncio.sleep(0.05)
    # What was queued is gone with the session, not kept for a poll.
    status, body, _ = await http_json("GET", f"{base}&sid={sid}")
    assert status == 400 or "bulk" not in str(body), (status, str(body)[:200])
