"""The IDToken WebSocket API's browser client (seed 000's ``connectSession``),
run unchanged by node with the ``ws`` package, works against the raw endpoint
(PROTOCOL §4) on both engines: OTP display, approval with a hash the browser
can check, rejection, and the close codes 4009, 4001 and 4004."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyotp
import pytest

from tests.conftest import Gateway
from tests.device import Device, b64url, initiate
from tests.support import JS_DIR, NodeScript, NodeScripts

pytestmark = pytest.mark.timeout(60)

SCRIPT = JS_DIR / "seed_connect_session.mjs"
NODE_TIMEOUT = 20.0
# The seed's function as the IDToken documentation prints it.
SEED_FUNCTION = """
function connectSession(sessionId, wsToken) {
const ws = new WebSocket(
`wss://auth.idtoken.example.com/ws/session/${sessionId}?token=${wsToken}`
);
ws.onmessage = (event) => {
const data = JSON.parse(event.data);
switch (data.type) {
case 'otp_ready':
displayOTP(data.autoPassword);
break;
case 'approved':
handleSuccess(data.jwt, data.hash, data.random);
ws.close();
break;
case 'rejected':
handleRejection(data.reason);
ws.close();
break;
}
};
ws.onclose = (event) => {
if (event.code === 4009) {
console.log('Connection replaced by another tab');
}
};
return ws;
}
"""
SEED_ORIGIN = "wss://auth.idtoken.example.com"
OUR_ORIGIN = "ws://127.0.0.1:${PORT}"


class SeedClient(NodeScript):
    """One node process running the seed's client, in one or more tabs; its
    ``console.log`` lines are kept as ``{"event": "log", "text": ...}``."""

    @classmethod
    async def start(cls, gateway: Gateway, session_id: str, ws_token: str, *, tabs: int = 1) -> SeedClient:
        port = str(gateway.server.port)
        env = {"SEED_CLIENT_TIMEOUT_MS": str(int(NODE_TIMEOUT * 1000))}
        return await cls.launch(SCRIPT.name, port, session_id, ws_token, str(tabs), env=env)

    def named(self, event: str, tab: int | None = None) -> list[dict[str, Any]]:
        return self.matching(lambda line: line["event"] == event and tab in (None, line.get("tab")))

    async def wait_for(self, event: str, *, tab: int | None = None, timeout: float = 10.0) -> dict[str, Any]:
        return await self.wait(lambda line: line["event"] == event and tab in (None, line.get("tab")), timeout=timeout)


StartSeedClient = Callable[..., Awaitable[SeedClient]]


@pytest.fixture
def seed_clients(node_scripts: NodeScripts) -> StartSeedClient:
    async def start(gateway: Gateway, session_id: str, ws_token: str, *, tabs: int = 1) -> SeedClient:
        return await node_scripts(SeedClient.start(gateway, session_id, ws_token, tabs=tabs))

    return start


async def enrolled(gateway: Gateway) -> Device:
    device = Device()
    await device.enroll(gateway.url, "alice", admin_token=gateway.config.admin_token)
    return device


def masked_otps(device: Device) -> set[str]:
    """The autoPassword the session may show: the OTP of this step or the previous one."""
    totp = pyotp.TOTP(device.totp_secret)
    return {totp.at(time.time() + delta)[:4] + "**" for delta in (-30, 0)}


def function_text(source: str) -> str:
    found = re.search(r"function connectSession\(.*?return ws;\s*}", source, re.DOTALL)
    assert found is not None
    return " ".join(found.group(0).split())


def test_the_script_holds_the_seed_function_unchanged_but_for_its_url() -> None:
    ours = function_text(SCRIPT.read_text())
    seed = function_text(SEED_FUNCTION.strip())
    assert seed.count(SEED_ORIGIN) == 1
    assert ours == seed.replace(SEED_ORIGIN, OUR_ORIGIN)
    assert "import WebSocket from 'ws';" in SCRIPT.read_text()


async def test_approval(gateway: Gateway, seed_clients: StartSeedClient) -> None:
    device = await enrolled(gateway)
    session = await initiate(gateway.url, "alice")
    client = await seed_clients(gateway, session["sessionId"], session["wsToken"])

    shown = await client.wait_for("displayOTP")
    assert shown["autoPassword"] in masked_otps(device)
    assert (await device.verify(gateway.url, session["sessionId"]))[0] == 200

    success = await client.wait_for("handleSuccess")
    assert success["random"] == session["random"]
    mac = hmac.new(session["wsToken"].encode(), f"{success['jwt']}.{success['random']}".encode(), hashlib.sha256)
    assert success["hash"] == b64url(mac.digest())
    assert (await client.wait_for("close"))["code"] == 1000
    await client.finish()
    assert [line["data"]["type"] for line in client.named("frame")] == ["otp_ready", "approved"]
    assert [line["event"] for line in client.lines] == [
        "displayOTP",
        "frame",
        "handleSuccess",
        "frame",
        "close",
    ]


async def test_rejection(gateway: Gateway, seed_clients: StartSeedClient) -> None:
    device = await enrolled(gateway)
    session = await initiate(gateway.url, "alice")
    client = await seed_clients(gateway, session["sessionId"], session["wsToken"])
    await client.wait_for("displayOTP")

    wrong = f"{(int(device.otp()) + 500_000) % 1_000_000:06d}"
    status, body = await device.verify(gateway.url, session["sessionId"], otp=wrong)
    assert status == 401 and body["error"]["code"] == "invalid_otp"

    assert (await client.wait_for("handleRejection"))["reason"] == "Invalid OTP"
    assert (await client.wait_for("close"))["code"] == 1000  # the seed closes after any rejection
    await client.finish()
    rejected = client.named("frame")[-1]["data"]
    assert rejected == {"type": "rejected", "reason": "Invalid OTP", "attemptsLeft": 2, "final": False}
    assert client.named("handleSuccess") == []


async def test_a_second_tab_replaces_the_first(gateway: Gateway, seed_clients: StartSeedClient) -> None:
    device = await enrolled(gateway)
    session = await initiate(gateway.url, "alice")
    client = await seed_clients(gateway, session["sessionId"], session["wsToken"], tabs=2)

    assert (await client.wait_for("close", tab=1))["code"] == 4009
    replaced = {"event": "log", "text": "Connection replaced by another tab"}
    assert client.lines.count(replaced) == 1
    # The seed's onclose runs before our listener on the same socket.
    assert client.lines.index(replaced) == client.lines.index(client.named("close", tab=1)[0]) - 1
    await client.wait_for("displayOTP", tab=2)
    assert client.named("close", tab=2) == []

    # The second tab is the session's connection: it gets the approval.
    assert (await device.verify(gateway.url, session["sessionId"]))[0] == 200
    success = await client.wait_for("handleSuccess")
    assert success["tab"] == 2 and success["random"] == session["random"]
    assert (await client.wait_for("close", tab=2))["code"] == 1000
    await client.finish()
    assert client.lines.count(replaced) == 1


@pytest.mark.parametrize(("case", "code"), [("bad_token", 4001), ("unknown_session", 4004)])
async def test_refusal_close_codes(gateway: Gateway, seed_clients: StartSeedClient, case: str, code: int) -> None:
    session = await initiate(gateway.url, "alice")
    if case == "bad_token":
        session_id, ws_token = session["sessionId"], "x" * 43
    else:  # a right wsToken for a session that does not exist (§6.13)
        session_id = "ghost-session"
        ws_token = b64url(hmac.new(gateway.config.secret or b"", session_id.encode(), hashlib.sha256).digest())
    client = await seed_clients(gateway, session_id, ws_token)
    assert (await client.wait_for("close"))["code"] == code
    await client.finish()
    assert [line["event"] for line in client.lines] == ["close"]
