"""handlers/transport.py: slow and idle HTTP clients are closed within their
limits (keepalive_timeout, header_timeout, body_timeout), long-polls and
WebSockets are not; what aiohttp's parser refuses is answered in the JSON
error shape without the request's bytes.

Raw sockets against real gateways (in-process, served by the CLI's runner,
and a real process for the settings' way through the config file), with
limits of a second or two so that the suite stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import Gateway, MakeGateway
from tests.support import GatewayProcess, Probe, http_json

pytestmark = pytest.mark.timeout(60)

LIMITS = {"header_timeout": 1.0, "body_timeout": 1.5, "keepalive_timeout": 2.0}
MARGIN = 0.75  # timer and scheduling slack on a busy machine
TRICKLE = 0.25  # seconds between two trickled bytes or lines


@pytest.fixture
def engine() -> str:
    return "memory"  # the transport is the same for both engines


@pytest.fixture
async def limited(make_gateway: MakeGateway) -> Gateway:
    return await make_gateway(**LIMITS)


def port_of(gateway: Gateway) -> int:
    port = gateway.server.port
    assert port is not None
    return port


async def until_closed(reader: asyncio.StreamReader, *, within: float) -> tuple[float, bytes]:
    """Read until the server closes the connection: (seconds it took, every byte it sent).
    Fails if the connection is still open after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    received = b""
    try:
        async with asyncio.timeout(within):
            while chunk := await reader.read(65536):
                received += chunk
    except TimeoutError:
        raise AssertionError(f"still open after {within}s; received {received[:200]!r}") from None
    except ConnectionResetError:
        pass
    return loop.time() - start, received


async def trickle(writer: asyncio.StreamWriter, pieces: list[bytes]) -> None:
    """Write ``pieces`` one every TRICKLE seconds, until the server has closed."""
    with contextlib.suppress(ConnectionError):
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(TRICKLE)


@contextlib.asynccontextmanager
async def connection(port: int) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# -- slow and idle clients are closed


async def test_an_idle_connection_is_closed_at_the_header_timeout(limited: Gateway) -> None:
    async with connection(port_of(limited)) as (reader, _):
        took, received = await until_closed(reader, within=LIMITS["header_timeout"] + MARGIN)
    assert received == b""
    assert took > LIMITS["header_timeout"] * 0.8, took  # that limit, not an earlier one


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\n", id="slow-loris"),
        pytest.param(
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            id="socket.io-websocket-upgrade",
        ),
        pytest.param(
            b"GET /ws/session/s1?token=t HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            id="raw-websocket-upgrade",
        ),
    ],
)
async def test_headers_that_never_finish_are_cut_at_the_header_timeout(limited: Gateway, head: bytes) -> None:
    """One header line per TRICKLE seconds, forever: the connection is closed
    header_timeout after it opened, unanswered (a WebSocket upgrade is no exception)."""
    lines = [line + b"\r\n" for line in head.split(b"\r\n") if line]
    lines += [f"X-Filler-{n}: {n}\r\n".encode() for n in range(100)]
    async with connection(port_of(limited)) as (reader, writer):
        trickling = asyncio.create_task(trickle(writer, lines))
        took, received = await until_closed(reader, within=LIMITS["header_timeout"] + MARGIN)
        await trickling
    assert received == b""
    assert took > LIMITS["header_timeout"] * 0.8, took


async def test_a_later_requests_head_is_timed_from_its_first_byte(limited: Gateway) -> None:
    """After a response, a keep-alive connection may idle (up to keepalive_timeout,
    which also ends a head still incomplete then); once the next request starts,
    its head must be complete within header_timeout of its first byte."""
    async with connection(port_of(limited)) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b'{"status": "ok"}')).startswith(b"HTTP/1.1 200 ")
        await asyncio.sleep(LIMITS["header_timeout"] / 2)  # timed from the response, the head would end earlier
        lines = [b"GET /healthz HTTP/1.1\r\n", *(f"X-Filler-{n}: {n}\r\n".encode() for n in range(100))]
        trickling = asyncio.create_task(trickle(writer, lines))
        took, received = await until_closed(reader, within=LIMITS["header_timeout"] + MARGIN)
        await trickling
    assert received == b""
    assert took > LIMITS["header_timeout"] * 0.8, took


async def test_an_idle_keep_alive_connection_is_closed_at_the_keepalive_timeout(limited: Gateway) -> None:
    async with connection(port_of(limited)) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await reader.readuntil(b'{"status": "ok"}')
        assert response.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in response
        took, received = await until_closed(reader, within=LIMITS["keepalive_timeout"] + MARGIN)
    assert received == b""
    assert took > LIMITS["keepalive_timeout"] * 0.8, took


async def test_a_trickled_body_is_answered_408_at_the_body_timeout(limited: Gateway) -> None:
    """A handler reading the body gets 408 in the JSON shape, then the connection closes."""
    head = (
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {limited.config.admin_token}\r\nContent-Length: 200\r\n\r\n"
    )
    async with connection(port_of(limited)) as (reader, writer):
        writer.write(head.encode())
        trickling = asyncio.create_task(trickle(writer, [b"{", *[b" "] * 199]))
        took, received = await until_closed(reader, within=LIMITS["body_timeout"] + MARGIN)
        await trickling
    assert took > LIMITS["body_timeout"] * 0.8, took
    status, body = parse_response(received)
    assert status == 408, received
    assert body["error"]["code"] == "request_timeout", body


async def test_a_trickled_body_nobody_reads_is_cut_at_the_body_timeout(limited: Gateway) -> None:
    """The handler answers before reading (401: no Bearer); aiohttp would then
    linger over the rest of the body for 10 s: the body timeout cuts it."""
    head = "POST /ws/ticket HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    async with connection(port_of(limited)) as (reader, writer):
        writer.write(head.encode())
        trickling = asyncio.create_task(trickle(writer, [b"{", *[b" "] * 199]))
        took, received = await until_closed(reader, within=LIMITS["body_timeout"] + MARGIN)
        await trickling
    status, body = parse_response(received)
    assert status == 401 and body["error"]["code"] == "missing_credentials", received
    assert took > LIMITS["body_timeout"] * 0.8, took


def parse_response(raw: bytes) -> tuple[int, Any]:
    """(status, JSON body) of one HTTP/1.1 response with a Content-Length."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    assert status is not None, raw
    length = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
    assert length is not None, raw
    return int(status[1]), json.loads(rest[: int(length[1])])


# -- what the limits must not touch


async def test_a_websocket_outlives_every_limit(limited: Gateway, probes: Callable[[], Probe]) -> None:
    """A WebSocket idles for hours: past every limit, it still delivers."""
    probe = probes()
    assert await probe.connect(limited.url, auth={"token": limited.mint("lena")})
    await probe.wait_for("authenticated")
    await asyncio.sleep(max(LIMITS.values()) + MARGIN)  # no byte either way meanwhile
    await limited.publish("user:lena", "note", {"n": 1})
    assert await probe.wait_for("note") == {"n": 1}
    assert not probe.disconnected.is_set()


async def test_a_long_poll_outlives_every_limit(make_gateway: MakeGateway) -> None:
    """A long-poll waits for events up to the ping interval (25 s): one pending
    past every limit is still answered with the next event. (Bare Engine.IO
    requests: python-socketio's client takes ~30 s to close a polling session.)"""
    gateway = await make_gateway(**LIMITS, refresh_tokens=False)
    base = f"{gateway.url}/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as session:
        async with session.get(base) as response:
            sid = json.loads((await response.text())[1:])["sid"]
        base += f"&sid={sid}"
        connect = "40" + json.dumps({"token": gateway.mint("lena")})
        async with session.post(base, data=connect.encode()) as response:
            assert response.status == 200
        received = ""
        while '"authenticated"' not in received:
            async with session.get(base) as response:
                received += await response.text()

        async def poll() -> str:
            async with session.get(base) as response:
                assert response.status == 200
                return await response.text()

        pending = asyncio.create_task(poll())
        await asyncio.sleep(max(LIMITS.values()) + MARGIN)
        assert not pending.done()
        await gateway.publish("user:lena", "note", {"n": 1})
        assert '42["note",{"n":1},"' in await asyncio.wait_for(pending, 5)  # then its offset


async def test_a_normal_request_and_body_are_untouched(limited: Gateway) -> None:
    status, body, _ = await http_json(
        "POST",
        f"{limited.url}/api/publish",
        token=limited.config.admin_token,
        json={"room": "user:x", "event": "e", "data": "d" * 30_000},
    )
    assert status == 202, body


# -- the CLI serves with the configured limits


async def test_the_cli_serves_with_the_configured_limits(gateway_process: Callable[..., GatewayProcess]) -> None:
    node = gateway_process({"header_timeout": 1.0, "keepalive_timeout": 1.5})
    node.start()
    async with connection(node.port) as (reader, _):
        took, received = await until_closed(reader, within=1.0 + MARGIN)
    assert received == b"" and took > 0.8, took
    async with connection(node.port) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b'{"status": "ok"}')).startswith(b"HTTP/1.1 200 ")
        took, received = await until_closed(reader, within=1.5 + MARGIN)
    assert received == b"" and took > 1.5 * 0.8, took


# -- what aiohttp's parser refuses: the JSON shape, none of the request's bytes

PARSER_REFUSALS = [
    # (request, status); SECRET is replaced by a fresh secret-looking value
    (b"GET /socket.io/?EIO=4&transport=polling&ticket=SECRET" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"POST /ws/ticket HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer SECRET" + b"b" * 17000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-SECRET" + b"c" * 17000 + b": v\r\n\r\n", 431),
    (b"GET /?token=SECRET HTTP/1.1\r\nHost: x\r\nAuthorization SECRET\r\n\r\n", 400),
    (b"G\x01T /?token=SECRET HTTP/1.1\r\nHost: x\r\n\r\n", 400),
]
CODES = {400: "invalid_request", 414: "uri_too_long", 431: "headers_too_large"}


async def test_parser_refusals_answer_json_without_the_requests_bytes(
    gateway_process: Callable[..., GatewayProcess],
) -> None:
    """aiohttp answered these with a text body repeating the request's first
    100 bytes (a Bearer token, a ticket in the query string). Now: the JSON
    error shape (PROTOCOL §2), and the secret in neither the answer nor the log."""
    node = gateway_process({})
    node.start()
    secrets = []
    try:
        for index, (template, status) in enumerate(PARSER_REFUSALS):
            secret = f"eyJhbGciOiJFUzI1NiJ9.tg-secret-{index}-{'k' * 12}"
            secrets.append(secret)
            async with connection(node.port) as (reader, writer):
                writer.write(template.replace(b"SECRET", secret.encode()))
                _, received = await until_closed(reader, within=5)
            assert secret[:16].encode() not in received and b"tg-secret" not in received, received
            got, body = parse_response(received)
            assert (got, body["error"]["code"]) == (status, CODES[status]), received
            assert set(body) == {"error"} and body["error"]["message"], body
        status, _, _ = await http_json("GET", f"{node.url}/healthz")
        assert status == 200
    finally:
        assert await asyncio.to_thread(node.terminate) == 0
    log = node.log()
    assert "tg-secret" not in log and not any(secret[:16] in log for secret in secrets), log
    assert "refused a malformed or oversized request: LineTooLong (414)" in log
    assert "refused a malformed or oversized request: LineTooLong (431)" in log
