"""Deferred authentication (PROTOCOL §3 "none (deferred)", `authenticate`, and
`closing` 4001 `unauthenticated`) driven by the official socket.io-client,
run by node (tests/js/deferred.mjs), against an in-process gateway on both
engines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import Gateway
from tests.support import JS_DIR, http_json, which

pytestmark = pytest.mark.timeout(60)

SCRIPT = JS_DIR / "deferred.mjs"
NODE_TIMEOUT_MS = 15_000


class JsClient:
    """One node process running deferred.mjs; its JSON output lines, in order."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, url: str, scenario: str, token: str = "", transports: str = "polling,websocket") -> JsClient:
        proc = await asyncio.create_subprocess_exec(
            which("node"), str(SCRIPT), url, scenario, token, transports,
            cwd=JS_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "DEFERRED_TIMEOUT_MS": str(NODE_TIMEOUT_MS)},
        )  # fmt: skip
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = json.loads(raw)
            async with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def named(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["event"] == event]

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The Socket.IO events the client received (all, or those called ``name``)."""
        return [line for line in self.named("event") if name in (None, line["name"])]

    async def wait_for(self, event: str, *, timeout: float = 10.0) -> dict[str, Any]:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.named(event)), timeout=timeout)
        return self.named(event)[0]

    async def finish(self, timeout: float = 10.0) -> None:
        """Wait for node to exit by itself; it must exit 0 with nothing on stderr."""
        async with asyncio.timeout(timeout):
            await self._reader
            status = await self.proc.wait()
        assert self.proc.stderr is not None
        errors = (await self.proc.stderr.read()).decode()
        assert status == 0 and not errors, (status, errors, self.lines)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


StartJsClient = Callable[..., Awaitable[JsClient]]


@pytest.fixture
async def js_clients() -> AsyncIterator[StartJsClient]:
    made: list[JsClient] = []

    async def start(*args: Any, **kwargs: Any) -> JsClient:
        client = await JsClient.start(*args, **kwargs)
        made.append(client)
        return client

    yield start
    for client in made:
        await client.stop()


# "polling,websocket" is socket.io-client's default: long-polling, then upgrade.
@pytest.mark.parametrize("transports", ["polling,websocket", "websocket"])
async def test_js_client_authenticates_after_connect_and_receives_user_events(
    gateway: Gateway, js_clients: StartJsClient, transports: str
) -> None:
    client = await js_clients(gateway.url, "authenticate", gateway.mint("alice", ttl=600), transports)
    # With polling first, the upgrade may already be done when `connect` fires.
    assert (await client.wait_for("connect"))["transport"] in transports.split(",")

    ack = (await client.wait_for("ack"))["ack"]
    assert set(ack) == {"ok", "sub", "expiresAt"}
    assert ack["ok"] is True and ack["sub"] == "alice" and ack["expiresAt"].endswith("Z")
    # Nothing reached the socket before it authenticated: `authenticated` is its first event.
    assert client.events()[0]["name"] == "authenticated"
    authenticated = client.events()[0]["data"]
    assert authenticated == {"sub": "alice", "expiresAt": ack["expiresAt"], "via": "token"}

    status, body, _ = await http_json(
        "POST",
        f"{gateway.url}/api/publish",
        token=gateway.config.admin_token,
        json={"room": "user:alice", "event": "hello", "data": {"n": 1, "text": "for alice"}},
    )
    assert status == 202, body
    disconnect = await client.wait_for("disconnect")  # the script disconnects once `hello` arrived
    assert disconnect["reason"] == "io client disconnect"
    assert [e["data"] for e in client.events("hello")] == [{"n": 1, "text": "for alice"}]
    assert not client.events("closing")
    await client.finish()


async def test_js_client_publish_to_another_user_does_not_arrive(gateway: Gateway, js_clients: StartJsClient) -> None:
    """The room an authenticated socket joins is its own sub's, not anyone's."""
    client = await js_clients(gateway.url, "authenticate", gateway.mint("alice"))
    assert (await client.wait_for("ack"))["ack"]["ok"] is True
    for room, n in (("user:bob", 1), ("user:alice", 2)):
        status, body, _ = await http_json(
            "POST",
            f"{gateway.url}/api/publish",
            token=gateway.config.admin_token,
            json={"room": room, "event": "hello", "data": {"n": n}},
        )
        assert status == 202, body
    await client.wait_for("disconnect")
    assert [e["data"] for e in client.events("hello")] == [{"n": 2}]
    await client.finish()


async def test_js_client_join_before_authenticate_is_closed_4001(gateway: Gateway, js_clients: StartJsClient) -> None:
    client = await js_clients(gateway.url, "join-first")

    disconnect = await client.wait_for("disconnect")
    assert disconnect["reason"] == "io server disconnect"  # no automatic reconnection by the client
    assert [e["data"] for e in client.events("closing")] == [{"code": 4001, "reason": "unauthenticated"}]
    assert [e["name"] for e in client.events()] == ["closing"]  # no ack, no `authenticated`
    assert client.named("connect") and not client.named("connect_error")
    await client.finish()
