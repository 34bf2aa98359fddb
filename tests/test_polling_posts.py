"""Long-polling POSTs that break the Engine.IO protocol end at once, and leave
nothing behind (gateway/realtime/engine.py EngineServer).

python-engineio closed the session of such a POST from inside it and waited
for a poll that never came: a POST announcing more than the 64 KB payload
limit, or holding a no-op packet, was never answered, and each one kept its
handler, task and session for good. Bare Engine.IO requests over real
sockets, against in-process gateways; the leak test serves its gateway as
the CLI does (handlers are not cancelled when their client goes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway import keys
from gateway.app import create_app, create_runner
from gateway.config import load_config
from tests.conftest import Gateway, MakeGateway

pytestmark = pytest.mark.timeout(60)

POLLING = "/socket.io/?EIO=4&transport=polling"


@pytest.fixture
def engine() -> str:
    return "memory"  # Engine.IO sessions are the node's own, whatever the engine


async def handshake(session: aiohttp.ClientSession, url: str) -> str:
    """Open an Engine.IO long-polling session; its sid."""
    async with session.get(url + POLLING) as response:
        text = await response.text()
        assert response.status == 200 and text.startswith("0{"), text
        return str(json.loads(text[1:])["sid"])


async def raw_post(
    port: int, sid: str, body: bytes, *, length: int | None = None, pause: float = 0.0, within: float = 1.0
) -> tuple[int, bytes]:
    """A POST of ``body`` (announced as ``length`` bytes), its first half written
    ``pause`` seconds before the rest; (status, body) of the answer, which must
    come within ``within`` seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        announced = len(body) if length is None else length
        head = f"POST {POLLING}&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Length: {announced}\r\n\r\n"
        half = len(body) // 2 if pause else len(body)
        writer.write(head.encode() + body[:half])
        if pause:
            await writer.drain()
            await asyncio.sleep(pause)
            writer.write(body[half:])
        async with asyncio.timeout(within):
            head_bytes = await reader.readuntil(b"\r\n\r\n")
            size = re.search(rb"(?i)\r\ncontent-length: (\d+)", head_bytes)
            assert size is not None, head_bytes
            answer = await reader.readexactly(int(size[1]))
        status = re.match(rb"HTTP/1\.1 (\d{3}) ", head_bytes)
        assert status is not None, head_bytes
        return int(status[1]), answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def poll(session: aiohttp.ClientSession, url: str, sid: str) -> tuple[int, str]:
    async with session.get(f"{url}{POLLING}&sid={sid}") as response:
        return response.status, await response.text()


def port_of(gateway: Gateway) -> int:
    assert gateway.server.port is not None
    return gateway.server.port


async def test_an_oversized_post_is_answered_413_at_once_and_ends_its_session(gateway: Gateway) -> None:
    """2 MB announced (and sent) against the 64 KB limit: 413 in the JSON shape
    within a second, before the body is read; the session is closed without
    waiting, its pending poll gets the CLOSE packet, later requests 400."""
    eio = gateway.app[keys.realtime].sio.eio
    async with aiohttp.ClientSession() as session:
        sid = await handshake(session, gateway.url)
        pending = asyncio.create_task(poll(session, gateway.url, sid))
        await asyncio.sleep(0.1)
        status, answer = await raw_post(port_of(gateway), sid, b"x" * (2 * 1024 * 1024), within=1.0)
        assert status == 413, answer
        assert json.loads(answer)["error"]["code"] == "payload_too_large", answer
        assert await asyncio.wait_for(pending, 1.0) == (200, "1")  # CLOSE
        assert sid not in eio.sockets
        assert (await poll(session, gateway.url, sid))[0] == 400
        status, _ = await raw_post(port_of(gateway), sid, b"1")
        assert status == 400  # closing it again: an unknown session, not a 500


@pytest.mark.parametrize("pending_poll", [False, True], ids=["no-poll-pending", "poll-pending"])
async def test_a_noop_packet_is_answered_and_the_session_closed_cleanly(gateway: Gateway, pending_poll: bool) -> None:
    """A client may not send ``6`` (no-op): the POST is answered 400 within a
    second, even with no poll to fetch the CLOSE packet (it hung for good);
    the socket's disconnect runs; a pending poll gets CLOSE, a later one 400."""
    realtime = gateway.app[keys.realtime]
    async with aiohttp.ClientSession() as session:
        sid = await handshake(session, gateway.url)
        connect = "40" + json.dumps({"token": gateway.mint("nina")})
        assert (await raw_post(port_of(gateway), sid, connect.encode()))[0] == 200
        status, text = await poll(session, gateway.url, sid)
        assert status == 200 and '"authenticated"' in text, text
        assert len(realtime.registry) == 1
        pending = asyncio.create_task(poll(session, gateway.url, sid)) if pending_poll else None
        await asyncio.sleep(0.1)
        assert (await raw_post(port_of(gateway), sid, b"6", within=1.0))[0] == 400
        if pending is not None:
            status, text = await asyncio.wait_for(pending, 1.0)
            assert status == 200 and text.endswith("1"), text  # CLOSE
        assert len(realtime.registry) == 0 and sid not in realtime.sio.eio.sockets
        assert (await poll(session, gateway.url, sid))[0] == 400


async def test_a_post_to_a_closed_session_is_400_not_500(gateway: Gateway) -> None:
    """A session closed by its client's CLOSE packet stays known to
    python-engineio until a poll or its sweep forgets it; a POST meanwhile
    raised its KeyError out of the handler as a 500."""
    async with aiohttp.ClientSession() as session:
        sid = await handshake(session, gateway.url)
        assert (await raw_post(port_of(gateway), sid, b"1"))[0] == 200  # the client closes
        status, answer = await raw_post(port_of(gateway), sid, b"40")
        assert status == 400, answer
        assert (await poll(session, gateway.url, sid))[0] == 400


async def test_a_post_whose_body_arrives_in_two_parts_is_read_whole(gateway: Gateway) -> None:
    """python-engineio read ``Content-Length`` bytes from the stream once: what
    had arrived. A CONNECT split over two TCP segments lost its second half."""
    async with aiohttp.ClientSession() as session:
        sid = await handshake(session, gateway.url)
        connect = "40" + json.dumps({"token": gateway.mint("omar")})
        status, _ = await raw_post(port_of(gateway), sid, connect.encode(), pause=0.2)
        assert status == 200
        received = ""
        while '"authenticated"' not in received:
            status, text = await asyncio.wait_for(poll(session, gateway.url, sid), 5)
            assert status == 200 and '"connect_error"' not in text and not text.startswith("44"), text
            received += text
        assert '"sub":"omar"' in received, received


async def test_a_trickled_polling_post_is_answered_408_at_the_body_timeout(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(body_timeout=1.0)
    async with aiohttp.ClientSession() as session:
        sid = await handshake(session, gateway.url)
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway))
        try:
            head = f"POST {POLLING}&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n40"
            writer.write(head.encode())
            async with asyncio.timeout(1.0 + 0.75):
                answer = await reader.read()  # the connection closes after the answer
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b'"request_timeout"' in answer, answer


# -- nothing left behind


@pytest.fixture
async def served_like_the_cli(settings: dict[str, Any]) -> AsyncIterator[tuple[web.AppRunner, str]]:
    """A gateway served as `ticketgate serve` serves it: create_runner and a
    TCPSite, without the test server's handler cancellation. Sessions that never
    send CONNECT are not capped per address here: a thousand come from one."""
    config = load_config(environ={}, flags={**settings, "max_pending_per_ip": 100_000})
    runner = create_runner(create_app(config), config)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def live_tasks() -> int:
    """Tasks of this loop, but python-engineio's pingers: each session starts
    one that sleeps out the ping interval (25 s) and then ends by itself."""
    return sum(
        1 for task in asyncio.all_tasks() if getattr(task.get_coro(), "__qualname__", "") != "AsyncSocket._send_ping"
    )


async def test_a_thousand_abandoned_oversized_posts_leave_nothing_behind(
    served_like_the_cli: tuple[web.AppRunner, str],
) -> None:
    """Open a session, announce 70 kB in a POST, hang up; a thousand times.
    Each used to keep its session, its handler and its task for good (~20 MB
    in all). Afterwards: no session, no connection, no task more than before."""
    runner, url = served_like_the_cli
    assert runner.server is not None
    eio = runner.app[keys.realtime].sio.eio
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        await handshake(session, url)  # python-engineio starts its sweeper task on the first session
    await asyncio.sleep(0.2)
    before = (len(eio.sockets), len(runner.server.connections), live_tasks())

    async def abandon(session: aiohttp.ClientSession) -> None:
        sid = await handshake(session, url)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        head = f"POST {POLLING}&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n"
        writer.write(head.encode() + b"x" * 1000)
        await writer.drain()
        writer.close()

    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            await asyncio.gather(*(abandon(session) for _ in range(50)))

    after = before
    for _ in range(100):  # up to 5 s for the last ones to finish
        after = (len(eio.sockets), len(runner.server.connections), live_tasks())
        if all(now <= then for now, then in zip(after, before, strict=True)):
            break
        await asyncio.sleep(0.05)
    assert after[0] <= before[0], f"{after[0] - before[0]} Engine.IO sessions left"
    assert after[1] <= before[1], f"{after[1] - before[1]} connections (with their handlers) left"
    assert after[2] <= before[2], f"{after[2] - before[2]} tasks left"
