"""Device-approval sessions end to end on both engines (PROTOCOL §2 "Auth sessions",
§3 session connect, otp_ready/approved/rejected, closing 1000/4009, §4 raw endpoint)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
import pyotp
import pytest

from gateway import keys
from tests.conftest import Gateway, MakeGateway
from tests.device import Device, b64url, initiate
from tests.support import Probe, http_json, issue_ticket, raw_frames


def wrong(otp: str) -> str:
    return f"{(int(otp) + 500_000) % 1_000_000:06d}"


async def enrolled(gateway: Gateway, user: str = "alice") -> Device:
    device = Device()
    await device.enroll(gateway.url, user, admin_token=gateway.config.admin_token)
    return device


async def session_probe(gateway: Gateway, probes: Callable[[], Probe], session: dict[str, Any]) -> Probe:
    probe = probes()
    assert await probe.connect(gateway.url, auth={"sessionId": session["sessionId"], "wsToken": session["wsToken"]})
    return probe


async def test_full_approval(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    device = await enrolled(gateway)
    session = await initiate(gateway.url, "alice")
    # wsToken = base64url(HMAC-SHA256(secret, sessionId)), no padding (§6.2, §6.3)
    expected = hmac.new(gateway.config.secret or b"", session["sessionId"].encode(), hashlib.sha256).digest()
    assert session["wsToken"] == b64url(expected)
    assert session["expiresAt"].endswith("Z") and len(session["random"]) == 16

    browser = await session_probe(gateway, probes, session)
    authenticated = await browser.wait_for("authenticated")
    assert authenticated == {
        "sessionId": session["sessionId"],
        "expiresAt": session["expiresAt"],
        "via": "session",
        "recovered": False,
    }
    otp_ready = await browser.wait_for("otp_ready")
    assert otp_ready["type"] == "otp_ready" and otp_ready["expiresAt"] == session["expiresAt"]
    otp = device.otp()
    assert otp_ready["autoPassword"] == otp[:4] + "**"  # otp_mask 2

    status, body = await device.verify(gateway.url, session["sessionId"], otp=otp)
    assert (status, body) == (200, {"status": "approved"})
    approved = await browser.wait_for("approved")
    assert approved["type"] == "approved" and approved["random"] == session["random"]
    mac = hmac.new(session["wsToken"].encode(), f"{approved['jwt']}.{session['random']}".encode(), hashlib.sha256)
    assert approved["hash"] == b64url(mac.digest())

    # The JWT verifies against the published JWKS and carries exactly the protocol's claims.
    _, jwks, _ = await http_json("GET", f"{gateway.url}/.well-known/jwks.json")
    header = jwt.get_unverified_header(approved["jwt"])
    (key,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    claims = jwt.decode(approved["jwt"], jwt.PyJWK(key).key, algorithms=["ES256"])
    assert set(claims) == {"iss", "sub", "iat", "exp", "jti", "sid", "amr"}
    assert claims["sub"] == "alice" and claims["sid"] == session["sessionId"] and claims["amr"] == ["otp", "hwk"]
    assert claims["exp"] == int(claims["iat"] + 3600)
    assert approved["expiresAt"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims["exp"]))

    assert await browser.wait_for("closing") == {"code": 1000, "reason": "resolved"}
    await asyncio.wait_for(browser.disconnected.wait(), 5)
    assert [e for e, _ in browser.events][:4] == ["authenticated", "otp_ready", "approved", "closing"]

    # The approval JWT works at once for tickets and token connects.
    ticket = await issue_ticket(gateway.url, approved["jwt"])
    user = probes()
    assert await user.connect(gateway.url, auth={"ticket": ticket})
    assert (await user.wait_for("authenticated"))["sub"] == "alice"
    other = probes()
    assert await other.connect(gateway.url, auth={"token": approved["jwt"]})

    status, body = await device.verify(gateway.url, session["sessionId"])
    assert status == 409 and body["error"]["code"] == "session_resolved"


async def test_der_signatures_are_accepted(gateway: Gateway) -> None:
    device = await enrolled(gateway)
    session = await initiate(gateway.url, "alice")
    otp = device.otp()
    status, _ = await device.verify(
        gateway.url, session["sessionId"], otp=otp, signature=device.sign(session["sessionId"], otp, der=True)
    )
    assert status == 200


async def test_wrong_otp_then_too_many_attempts(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    device = await enrolled(gateway)
    session = await initiate(gateway.url, "alice")
    browser = await session_probe(gateway, probes, session)
    bad = wrong(device.otp())
    status, body = await device.verify(gateway.url, session["sessionId"], otp=bad)
    assert status == 401
    assert body["error"]["code"] == "invalid_otp" and body["error"]["attemptsLeft"] == 2
    assert await browser.wait_for("rejected") == {
        "type": "rejected",
        "reason": "Invalid OTP",
        "attemptsLeft": 2,
        "final": False,
    }

    status, body = await device.verify(gateway.url, session["sessionId"], signature=b64url(b"\x01" * 64))
    assert status == 401 and body["error"] == {
        "code": "invalid_signature",
        "message": body["error"]["message"],
        "attemptsLeft": 1,
    }
    assert (await browser.wait_for("rejected", count=2))["reason"] == "Invalid signature"

    status, body = await device.verify(gateway.url, session["sessionId"], otp=bad)
    assert status == 429
    assert body["error"]["code"] == "too_many_attempts" and body["error"]["attemptsLeft"] == 0
    final = await browser.wait_for("rejected", count=3)
    assert final == {"type": "rejected", "reason": "Too many attempts", "attemptsLeft": 0, "final": True}
    assert await browser.wait_for("closing") == {"code": 1000, "reason": "resolved"}

    status, body = await device.verify(gateway.url, session["sessionId"])  # even a right one
    assert status == 409 and body["error"]["code"] == "session_resolved"


async def test_too_many_attempts_carries_retry_after(gateway: Gateway) -> None:
    """§2: 429 rate limited with `Retry-After` (delta-seconds: a positive integer)."""
    device = await enrolled(gateway)
    session = await initiate(gateway.url, "alice")
    bad = wrong(device.otp())
    body = {"sessionId": session["sessionId"], "deviceId": device.device_id, "otp": bad}
    for attempt in range(3):
        body["signature"] = device.sign(session["sessionId"], bad)
        status, response, headers = await http_json("POST", f"{gateway.url}/auth/verify", json=body)
        if attempt < 2:
            assert status == 401 and response["error"]["code"] == "invalid_otp", response
            assert "Retry-After" not in headers
    assert status == 429 and response["error"]["code"] == "too_many_attempts", response
    retry_after = headers.get("Retry-After")
    assert retry_after is not None, headers
    assert re.fullmatch(r"[0-9]+", retry_after) and int(retry_after) > 0, retry_after


@pytest.mark.parametrize(
    "signature",
    [
        b64url(b"garbage-that-is-not-a-signature"),
        b64url(b"\x30\x44\x02\x20" + b"\x01" * 20),  # truncated DER
        b64url(b"\x01" * 65),
    ],
    ids=["garbage", "truncated", "65-bytes"],
)
async def test_bad_signatures_count_an_attempt(gateway: Gateway, signature: str) -> None:
    device = await enrolled(gateway)
    session = await initiate(gateway.url, "alice")
    status, body = await device.verify(gateway.url, session["sessionId"], signature=signature)
    assert status == 401 and body["error"]["code"] == "invalid_signature" and body["error"]["attemptsLeft"] == 2


async def test_a_valid_signature_of_another_session_is_refused(gateway: Gateway) -> None:
    device = await enrolled(gateway)
    one, two = await initiate(gateway.url, "alice"), await initiate(gateway.url, "alice")
    otp = device.otp()
    status, body = await device.verify(
        gateway.url, two["sessionId"], otp=otp, signature=device.sign(one["sessionId"], otp)
    )
    assert status == 401 and body["error"]["code"] == "invalid_signature"


@pytest.mark.parametrize("otp", ["12345", "1234567", "12a456", "", "123456\n", "\uff11\uff12\uff13\uff14\uff15\uff16"])
async def test_malformed_otp_is_bad_input_and_costs_no_attempt(gateway: Gateway, otp: str) -> None:
    device = await enrolled(gateway)
    session = await initiate(gateway.url, "alice")
    status, body = await device.verify(gateway.url, session["sessionId"], otp=otp, signature=b64url(b"\x01" * 64))
    assert status == 400 and body["error"]["code"] == "invalid_request" and "otp" in body["error"]["message"]
    status, body = await device.verify(gateway.url, session["sessionId"], otp=wrong(device.otp()))
    assert body["error"]["attemptsLeft"] == 2


async def test_signature_that_is_not_base64url(gateway: Gateway) -> None:
    device = await enrolled(gateway)
    session = await initiate(gateway.url, "alice")
    status, body = await device.verify(gateway.url, session["sessionId"], signature="not base64!")
    assert status == 400 and "signature" in body["error"]["message"]


async def test_unknown_device(gateway: Gateway) -> None:
    device = await enrolled(gateway)
    session = await initiate(gateway.url, "alice")
    status, body = await device.verify(gateway.url, session["sessionId"], device_id="no-such-device")
    assert status == 401 and body["error"]["code"] == "invalid_signature"


async def test_device_of_another_user_cannot_approve(gateway: Gateway) -> None:
    await enrolled(gateway, "alice")
    mallory = await enrolled(gateway, "mallory")
    session = await initiate(gateway.url, "alice")
    status, body = await mallory.verify(gateway.url, session["sessionId"])
    assert status == 401 and body["error"]["code"] == "invalid_signature"


async def test_unknown_user_gets_a_session_that_can_never_be_approved(
    gateway: Gateway, probes: Callable[[], Probe]
) -> None:
    session = await initiate(gateway.url, "nobody-enrolled")
    browser = await session_probe(gateway, probes, session)
    otp_ready = await browser.wait_for("otp_ready")
    assert len(otp_ready["autoPassword"]) == 6 and otp_ready["autoPassword"].endswith("**")
    stranger = await enrolled(gateway, "someone-else")
    status, _ = await stranger.verify(gateway.url, session["sessionId"])
    assert status == 401


async def test_verify_unknown_and_expired_session(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(session_ttl=1)
    device = await enrolled(gateway)
    status, body = await device.verify(gateway.url, "no-such-session")
    assert status == 404 and body["error"]["code"] == "session_not_found"
    session = await initiate(gateway.url, "alice")
    await asyncio.sleep(1.3)
    status, body = await device.verify(gateway.url, session["sessionId"])
    assert status == 404 and body["error"]["code"] == "session_not_found"


async def test_session_expiry_closes_sockets_and_leaves_nothing(
    make_gateway: MakeGateway, probes: Callable[[], Probe], engine: str
) -> None:
    gateway = await make_gateway(session_ttl=1)
    session = await initiate(gateway.url, "alice")
    browser = await session_probe(gateway, probes, session)
    assert await browser.wait_for("closing", timeout=4) == {"code": 1000, "reason": "expired"}
    await asyncio.wait_for(browser.disconnected.wait(), 5)
    assert await gateway.app[keys.store].get_record(f"session:{session['sessionId']}") is None
    again = probes()
    assert not await again.connect(gateway.url, auth={"sessionId": session["sessionId"], "wsToken": session["wsToken"]})
    assert again.connect_error["data"] == {"code": 4004, "reason": "session_not_found"}


async def test_session_connect_refusals(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    session = await initiate(gateway.url, "alice")
    probe = probes()
    assert not await probe.connect(gateway.url, auth={"sessionId": session["sessionId"], "wsToken": "x" * 43})
    assert probe.connect_error["data"] == {"code": 4001, "reason": "invalid_token"}
    # §6.13: a right wsToken for an unknown session -> 4004 (the wsToken is checked first)
    ghost_id = "ghost-session"
    ghost_token = b64url(hmac.new(gateway.config.secret or b"", ghost_id.encode(), hashlib.sha256).digest())
    probe = probes()
    assert not await probe.connect(gateway.url, auth={"sessionId": ghost_id, "wsToken": ghost_token})
    assert probe.connect_error["data"] == {"code": 4004, "reason": "session_not_found"}
    probe = probes()
    assert not await probe.connect(gateway.url, auth={"sessionId": session["sessionId"]})
    assert probe.connect_error["data"] == {"code": 4001, "reason": "invalid_request"}
    probe = probes()
    assert await probe.connect(gateway.url, query=f"sessionId={session['sessionId']}&wsToken={session['wsToken']}")
    assert (await probe.wait_for("otp_ready"))["type"] == "otp_ready"


async def test_newer_connection_replaces_older(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    session = await initiate(gateway.url, "alice")
    first = await session_probe(gateway, probes, session)
    await first.wait_for("otp_ready")
    second = await session_probe(gateway, probes, session)
    assert await first.wait_for("closing") == {"code": 4009, "reason": "replaced"}
    await asyncio.wait_for(first.disconnected.wait(), 5)
    await second.wait_for("otp_ready")
    await asyncio.sleep(0.2)
    assert not second.named("closing") and second.client.connected


async def test_concurrent_valid_verifies_approve_exactly_once(gateway: Gateway) -> None:
    device = await enrolled(gateway)
    session = await initiate(gateway.url, "alice")
    results = await asyncio.gather(*(device.verify(gateway.url, session["sessionId"]) for _ in range(5)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 409, 409, 409, 409]


async def test_concurrent_bad_attempts_never_exceed_max_attempts(gateway: Gateway) -> None:
    device = await enrolled(gateway)
    session = await initiate(gateway.url, "alice")
    bad = b64url(b"\x01" * 64)
    results = await asyncio.gather(
        *(device.verify(gateway.url, session["sessionId"], signature=bad) for _ in range(20))
    )
    statuses = [status for status, _ in results]
    # Only attempts that were counted reach a signature check: exactly max_attempts of them.
    assert statuses.count(401) + statuses.count(429) == 3
    assert statuses.count(429) == 1 and statuses.count(409) == 17


@pytest.mark.parametrize(
    ("public_key", "named"),
    [
        ({"kty": "RSA", "n": "abc", "e": "AQAB"}, "EC"),
        ({"kty": "EC", "crv": "P-384", "x": "a", "y": "b"}, "P-256"),
        ("not-an-object", "publicKey"),
        ({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}, "valid"),
    ],
)
async def test_enrollment_refuses_bad_keys(gateway: Gateway, public_key: Any, named: str) -> None:
    status, body, _ = await http_json(
        "POST",
        f"{gateway.url}/auth/devices",
        token=gateway.config.admin_token,
        json={"userId": "a", "publicKey": public_key},
    )
    assert status == 400 and body["error"]["code"] == "invalid_request" and named in body["error"]["message"]


async def test_enrollment_refuses_a_private_key(gateway: Gateway) -> None:
    device = Device()
    private = device.public_jwk() | {"d": b64url(device.key.private_numbers().private_value.to_bytes(32, "big"))}
    status, body, _ = await http_json(
        "POST",
        f"{gateway.url}/auth/devices",
        token=gateway.config.admin_token,
        json={"userId": "a", "publicKey": private},
    )
    assert status == 400 and "private" in body["error"]["message"]


async def test_enrollment_needs_the_admin_token_unless_demo(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway()
    body = {"userId": "a", "publicKey": Device().public_jwk()}
    status, response, _ = await http_json("POST", f"{gateway.url}/auth/devices", json=body)
    assert status == 401 and response["error"]["code"] == "missing_credentials"
    demo = await make_gateway(demo=True)
    status, response, _ = await http_json("POST", f"{demo.url}/auth/devices", json=body)
    assert status == 201 and response["digits"] == 6 and response["period"] == 30 and response["algorithm"] == "SHA1"
    base64.b32decode(response["totpSecret"])


async def test_otp_mask_zero_shows_the_whole_otp(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(otp_mask=0)
    device = await enrolled(gateway)
    browser = await session_probe(gateway, probes, await initiate(gateway.url, "alice"))
    assert (await browser.wait_for("otp_ready"))["autoPassword"] == device.otp()


# -- raw WebSocket endpoint (§4) -----------------------------------------------


async def raw_connect(
    gateway: Gateway, session_id: str, token: str
) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(f"{gateway.url}/ws/session/{session_id}?token={token}")
    return http, ws


async def test_raw_endpoint_approval(gateway: Gateway) -> None:
    device = await enrolled(gateway)
    session = await initiate(gateway.url, "alice")
    http, ws = await raw_connect(gateway, session["sessionId"], session["wsToken"])
    try:
        first = await asyncio.wait_for(ws.receive_json(), 5)
        assert first["type"] == "otp_ready" and first["autoPassword"] == device.otp()[:4] + "**"
        assert (await device.verify(gateway.url, session["sessionId"]))[0] == 200
        frames, code = await raw_frames(ws)
        assert [f["type"] for f in frames] == ["approved"] and code == 1000
    finally:
        await http.close()


async def test_raw_endpoint_rejections_then_close(gateway: Gateway) -> None:
    device = await enrolled(gateway)
    session = await initiate(gateway.url, "alice")
    http, ws = await raw_connect(gateway, session["sessionId"], session["wsToken"])
    try:
        await asyncio.wait_for(ws.receive_json(), 5)
        for _ in range(3):
            await device.verify(gateway.url, session["sessionId"], otp=wrong(device.otp()))
        frames, code = await raw_frames(ws)
        assert code == 1000
        assert [(f["type"], f["reason"], f["final"]) for f in frames] == [
            ("rejected", "Invalid OTP", False),
            ("rejected", "Invalid OTP", False),
            ("rejected", "Too many attempts", True),
        ]
    finally:
        await http.close()


@pytest.mark.parametrize(("which", "code"), [("token", 4001), ("session", 4004)])
async def test_raw_endpoint_close_codes(gateway: Gateway, which: str, code: int) -> None:
    session = await initiate(gateway.url, "alice")
    session_id, token = session["sessionId"], session["wsToken"]
    if which == "token":
        token = "x" * 43
    else:
        session_id = "ghost"
        token = b64url(hmac.new(gateway.config.secret or b"", b"ghost", hashlib.sha256).digest())
    http, ws = await raw_connect(gateway, session_id, token)
    try:
        assert await raw_frames(ws) == ([], code)
    finally:
        await http.close()


async def test_replacement_across_transports(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    session = await initiate(gateway.url, "alice")
    http, ws = await raw_connect(gateway, session["sessionId"], session["wsToken"])
    try:
        await asyncio.wait_for(ws.receive_json(), 5)
        socket_io = await session_probe(gateway, probes, session)  # Socket.IO replaces raw
        assert await raw_frames(ws) == ([], 4009)
        await socket_io.wait_for("otp_ready")
        http2, ws2 = await raw_connect(gateway, session["sessionId"], session["wsToken"])  # raw replaces Socket.IO
        try:
            assert await socket_io.wait_for("closing") == {"code": 4009, "reason": "replaced"}
            assert (await asyncio.wait_for(ws2.receive_json(), 5))["type"] == "otp_ready"
        finally:
            await http2.close()
    finally:
        await http.close()


async def test_raw_endpoint_expiry(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(session_ttl=1)
    session = await initiate(gateway.url, "alice")
    http, ws = await raw_connect(gateway, session["sessionId"], session["wsToken"])
    try:
        frames, code = await raw_frames(ws, timeout=4)
        assert [f["type"] for f in frames] == ["otp_ready"] and code == 1000
    finally:
        await http.close()


async def test_concurrent_connects_leave_exactly_the_newest(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    session = await initiate(gateway.url, "alice")
    clients = [probes() for _ in range(8)]
    auth = {"sessionId": session["sessionId"], "wsToken": session["wsToken"]}
    results = await asyncio.gather(*(c.connect(gateway.url, auth=auth) for c in clients))
    await asyncio.sleep(0.5)
    alive = [c for c in clients if c.client.connected]
    assert len(alive) == 1
    for client, connected in zip(clients, results, strict=True):
        if client is alive[0]:
            continue
        if connected:  # closed after connecting, once
            assert client.named("closing") == [{"code": 4009, "reason": "replaced"}]
        else:  # or refused while connecting
            assert client.connect_error["data"] == {"code": 4009, "reason": "replaced"}


TOTP_PERIOD = 30  # seconds (RFC 6238, §2)


async def in_mid_step(margin: float = 5.0) -> float:
    """Now, at least ``margin`` seconds before the next TOTP step begins: the
    verify that follows is then checked in the very step its codes were made for."""
    left = TOTP_PERIOD - time.time() % TOTP_PERIOD
    if left < margin:
        await asyncio.sleep(left + 0.05)
    return time.time()


@pytest.mark.parametrize(
    ("steps", "accepted"),
    [(-1, True), (1, True), (-2, False), (2, False), (-3, False), (3, False)],
    ids=["-30s", "+30s", "-60s", "+60s", "-90s", "+90s"],
)
async def test_verify_accepts_the_otp_window_and_no_more(gateway: Gateway, steps: int, accepted: bool) -> None:
    """§2: /auth/verify accepts the current step ± otp_window (default 1) steps."""
    assert gateway.config.otp_window == 1
    for _ in range(5):  # a device whose code at that step tells the window apart (a collision is ~1e-6)
        device = await enrolled(gateway)
        session = await initiate(gateway.url, "alice")
        now = await in_mid_step()
        totp = pyotp.TOTP(device.totp_secret)
        otp = totp.at(now + steps * TOTP_PERIOD)
        in_window = {totp.at(now + k * TOTP_PERIOD) for k in (-1, 0, 1)}
        if (otp != totp.at(now)) if accepted else (otp not in in_window):
            break
    else:
        pytest.fail("five devices in a row had colliding TOTP codes")
    status, body = await device.verify(gateway.url, session["sessionId"], otp=otp)  # signed over this otp
    if accepted:
        assert (status, body) == (200, {"status": "approved"})
    else:
        assert status == 401, body
        assert body["error"]["code"] == "invalid_otp" and body["error"]["attemptsLeft"] == 2, body


async def test_session_socket_is_in_the_session_room_only(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    """§3: an auth-session connect joins `session:<sessionId>` (and not `user:<userId>`)."""
    session = await initiate(gateway.url, "alice")
    browser = await session_probe(gateway, probes, session)
    await browser.wait_for("otp_ready")

    # Published in this order: had the socket been in user:alice, "to_user" would come first.
    await gateway.publish("user:alice", "to_user", {"room": "user:alice"})
    await gateway.publish(f"session:{session['sessionId']}", "to_session", {"room": f"session:{session['sessionId']}"})
    assert await browser.wait_for("to_session") == {"room": f"session:{session['sessionId']}"}
    assert browser.named("to_user") == []


class _Recording:
    """Records the operations the sessions service asks of the store, and the key
    kinds they touch (``device:…`` -> ``device``); everything else is the real store."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        async def recorded(key: str, *args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, key.partition(":")[0]))
            return await method(key, *args, **kwargs)

        return recorded


async def test_initiate_does_the_same_work_for_known_and_unknown_users(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No enumeration by timing (issue #11): a user with a device and an unknown
    user cost the same store operations, on the same kinds of keys, and one TOTP each."""
    await enrolled(gateway, "alice")
    sessions = gateway.app[keys.sessions]
    recording = _Recording(sessions._store)
    monkeypatch.setattr(sessions, "_store", recording)
    totps: list[str] = []
    real_totp = pyotp.TOTP

    def counted_totp(secret: str) -> pyotp.TOTP:
        totps.append(secret)
        return real_totp(secret)

    monkeypatch.setattr("gateway.auth.sessions.pyotp.TOTP", counted_totp)
    work = {}
    for user in ("alice", "nobody"):
        recording.calls.clear()
        totps.clear()
        await sessions.initiate(user)
        work[user] = (list(recording.calls), len(totps))
    assert work["alice"] == work["nobody"]
    assert work["alice"] == ([("members", "user_devices"), ("get_record", "device"), ("create_record", "session")], 1)
