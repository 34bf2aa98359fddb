"""A trusted external issuer end to end (PROTOCOL §1 `issuers`, §3 "access JWT
(gateway-issued or a trusted issuer's, via JWKS)", seed 001): a real HTTP
server on 127.0.0.1 serves the issuer's JWKS, the gateway fetches it, and the
issuer's tokens work at connect, in `authenticate` and for `POST /ws/ticket`;
foreign tokens are refused; a key rotation is picked up without a restart."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import jwt
import pytest
from aiohttp import web
from jwcrypto import jwk

from gateway import keys
from gateway.app import create_app
from gateway.auth.tokens import JWKS_REFETCH_INTERVAL
from gateway.config import load_config
from tests.conftest import Gateway, MakeGateway
from tests.support import (
    AUDIENCE,
    ISSUER,
    GatewayTestServer,
    JsClient,
    JwksServer,
    NodeScripts,
    Probe,
    http_json,
    issue_ticket,
    refused_everywhere,
)

pytestmark = pytest.mark.timeout(60)

INVALID_TOKEN = {"code": 4001, "reason": "invalid_token"}


@pytest.fixture
async def gateway(make_gateway: MakeGateway, jwks_server: JwksServer) -> Gateway:
    issuer = {"iss": ISSUER, "jwks_uri": jwks_server.uri, "audience": AUDIENCE, "algorithms": ["ES256"]}
    return await make_gateway(issuers=[issuer])


def expires_at(token: str) -> str:
    """The token's ``exp`` as PROTOCOL §6.1 writes times."""
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp))


async def connect(gateway: Gateway, probes: Callable[[], Probe], token: str) -> Probe:
    probe = probes()
    await probe.connect(gateway.url, auth={"token": token})
    return probe


async def test_issuer_token_at_connect(gateway: Gateway, jwks_server: JwksServer, probes: Callable[[], Probe]) -> None:
    assert jwks_server.fetches == 0  # fetched on first need, not at start
    token = jwks_server.token(rooms=["room:idp-*"])
    probe = await connect(gateway, probes, token)
    assert probe.client.connected, probe.connect_error
    authenticated = await probe.wait_for("authenticated")
    assert authenticated == {"sub": "ivy", "expiresAt": expires_at(token), "via": "token", "recovered": False}
    # The issuer's own claims govern the socket, e.g. its rooms.
    assert (await probe.call("join", {"room": "room:idp-blue"}))["ok"] is True
    assert (await probe.call("join", {"room": "room:other"}))["ok"] is False
    # A second token of the same key is verified from the cache.
    again = await connect(gateway, probes, jwks_server.token(sub="ivan"))
    assert (await again.wait_for("authenticated"))["sub"] == "ivan"
    assert jwks_server.fetches == 1


async def test_issuer_token_authenticates_a_pending_socket(
    gateway: Gateway, jwks_server: JwksServer, probes: Callable[[], Probe]
) -> None:
    probe = probes()
    assert await probe.connect(gateway.url, auth={})
    ack = await probe.call("authenticate", {"token": jwks_server.token()})
    assert ack["ok"] is True and ack["sub"] == "ivy"
    assert (await probe.wait_for("authenticated"))["via"] == "token"


async def test_issuer_token_buys_a_ticket(
    gateway: Gateway, jwks_server: JwksServer, probes: Callable[[], Probe]
) -> None:
    token = jwks_server.token()
    ticket = await issue_ticket(gateway.url, token)
    probe = probes()
    assert await probe.connect(gateway.url, auth={"ticket": ticket})
    authenticated = await probe.wait_for("authenticated")
    assert authenticated["sub"] == "ivy" and authenticated["via"] == "ticket"
    assert authenticated["expiresAt"] == expires_at(token)  # §6.14: the token's exp


def foreign_token(jwks_server: JwksServer, case: str) -> str:
    known = jwks_server.keys[0]
    stranger = jwk.JWK.generate(kty="EC", crv="P-256", kid="stranger")
    tokens = {
        "another audience": lambda: jwks_server.token(known, aud="someone-else"),
        "no audience": lambda: jwks_server.token(known, aud=None),
        "an unknown key with the known kid": lambda: jwks_server.token(stranger, kid=known["kid"]),
        "an unknown key and kid": lambda: jwks_server.token(stranger),
        "an untrusted issuer with the known key": lambda: jwks_server.token(known, iss="https://evil.example.test"),
    }
    return tokens[case]()


@pytest.mark.parametrize("case", [
    "another audience",
    "no audience",
    "an unknown key with the known kid",
    "an unknown key and kid",
    "an untrusted issuer with the known key",
])  # fmt: skip
async def test_foreign_tokens_are_refused(
    gateway: Gateway, jwks_server: JwksServer, probes: Callable[[], Probe], case: str
) -> None:
    token = foreign_token(jwks_server, case)
    refused = await connect(gateway, probes, token)
    assert not refused.client.connected
    assert refused.connect_error["data"] == INVALID_TOKEN

    pending = probes()
    assert await pending.connect(gateway.url, auth={})
    assert await pending.call("authenticate", {"token": token}) == {
        "ok": False,
        "error": INVALID_TOKEN,
    }

    status, body, _ = await http_json("POST", f"{gateway.url}/ws/ticket", token=token)
    assert status == 401 and body["error"]["code"] == "invalid_token", body


async def test_key_rotation_without_restart(
    gateway: Gateway, jwks_server: JwksServer, probes: Callable[[], Probe], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = jwks_server.keys[0]
    assert (await (await connect(gateway, probes, jwks_server.token(first))).wait_for("authenticated"))["sub"] == "ivy"
    assert jwks_server.fetches == 1

    second = jwks_server.rotate("k2")  # the issuer now publishes only k2
    early = await connect(gateway, probes, jwks_server.token(second, sub="rotated"))
    # Refused, and without a fetch: an unknown kid may trigger a refetch at most
    # once per JWKS_REFETCH_INTERVAL, so garbage kids cannot make the gateway
    # hammer the issuer. The last fetch was just now.
    assert early.connect_error["data"] == INVALID_TOKEN
    assert jwks_server.fetches == 1

    # Simulate the interval passing. The source took its interval (30 s) at
    # construction, so patching the module constant now would change nothing,
    # and this test must not sleep 30 s: move the live source's clock forward
    # by exactly one interval instead. This is the same JwksSource the
    # gateway's TokenService consults on every connect.
    source = gateway.app[keys.tokens].source(ISSUER)
    monkeypatch.setattr(source, "_clock", lambda: time.monotonic() + JWKS_REFETCH_INTERVAL)
    late = await connect(gateway, probes, jwks_server.token(second, sub="rotated"))
    assert (await late.wait_for("authenticated"))["sub"] == "rotated"
    assert jwks_server.fetches == 2  # exactly one more fetch

    # k1 left the issuer's key set with that fetch; a k1 token is now unknown,
    # and asking again so soon after a fetch does not fetch again.
    stale = await connect(gateway, probes, jwks_server.token(first))
    assert stale.connect_error["data"] == INVALID_TOKEN
    assert jwks_server.fetches == 2


# -- an alg that does not fit the key its kid names ----------------------------------------


@pytest.fixture
async def two_alg_gateway(make_gateway: MakeGateway, jwks_server: JwksServer) -> Gateway:
    """An issuer allowing RS256 and ES256, its JWKS holding an EC key (k1) and an RSA key (r1)."""
    jwks_server.keys.append(jwk.JWK.generate(kty="RSA", size=2048, kid="r1"))
    issuer = {"iss": ISSUER, "jwks_uri": jwks_server.uri, "audience": AUDIENCE, "algorithms": ["RS256", "ES256"]}
    return await make_gateway(issuers=[issuer])


def mismatched_token(jwks_server: JwksServer, case: str) -> str:
    ec, rsa = jwks_server.keys
    if case == "ES256 with the kid of the RSA key":
        return jwks_server.token(ec, kid=rsa["kid"])
    return jwks_server.token(rsa, kid=ec["kid"], alg="RS256")


MISMATCHES = ["ES256 with the kid of the RSA key", "RS256 with the kid of the EC key"]


@pytest.mark.parametrize("case", MISMATCHES)
async def test_alg_that_does_not_fit_its_key_is_refused_everywhere(
    two_alg_gateway: Gateway, jwks_server: JwksServer, probes: Callable[[], Probe], case: str
) -> None:
    """PyJWT was handed a key of the wrong type and raised TypeError: HTTP 500 for a
    ticket, and a connect that neither succeeded nor was refused."""
    ec, rsa = jwks_server.keys
    for fitting in (jwks_server.token(ec), jwks_server.token(rsa, alg="RS256")):  # both keys do work
        assert (await (await connect(two_alg_gateway, probes, fitting)).wait_for("authenticated"))["sub"] == "ivy"
    await refused_everywhere(two_alg_gateway.url, mismatched_token(jwks_server, case), "invalid_token")


@pytest.mark.parametrize("transports", [None, ["websocket"]], ids=["polling", "websocket"])
@pytest.mark.parametrize("case", MISMATCHES)
async def test_alg_that_does_not_fit_its_key_reaches_js_as_connect_error(
    two_alg_gateway: Gateway,
    jwks_server: JwksServer,
    node_scripts: NodeScripts,
    case: str,
    transports: list[str] | None,
) -> None:
    auth = {"token": mismatched_token(jwks_server, case)}
    client = await node_scripts(
        JsClient.connect(two_alg_gateway.url, auth=auth, transports=transports, until=["connect_error", "connect"])
    )
    lines = await client.finish()
    assert [line["event"] for line in lines if line["event"] != "upgrade"] == ["open", "connect_error"], lines
    assert lines[-1]["data"] == INVALID_TOKEN


# -- time claims the gateway cannot represent ----------------------------------------------


@pytest.mark.parametrize(
    ("claim", "value"),
    [("exp", 1e20), ("exp", float("inf")), ("exp", float("nan")), ("exp", "9999999999"), ("iat", "0"), ("nbf", 1e20)],
)
async def test_time_claims_beyond_numbers_are_refused_everywhere(
    gateway: Gateway, jwks_server: JwksServer, claim: str, value: object
) -> None:
    """A validly signed token with exp 1e20 connected, then the socket stayed
    without `authenticated`, its events held (OverflowError writing expiresAt)."""
    await refused_everywhere(gateway.url, jwks_server.token(**{claim: value}), "invalid_token")


# -- the issuer's key set is refreshed in the background --------------------------------------


async def serve(app: web.Application) -> AsyncIterator[GatewayTestServer]:
    server = GatewayTestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def wait_until(predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


@pytest.fixture
async def refreshing(jwks_server: JwksServer) -> AsyncIterator[Gateway]:
    """A gateway trusting ``jwks_server``, which says ``Cache-Control: max-age=1``,
    with the lower bound of the refresh interval (60 s) lowered to 0.5 s."""
    jwks_server.cache_control = "max-age=1"
    jwks_server.keys.append(jwk.JWK.generate(kty="EC", crv="P-256", kid="k2"))
    issuer = {"iss": ISSUER, "jwks_uri": jwks_server.uri, "audience": AUDIENCE, "algorithms": ["ES256"]}
    app = create_app(load_config(environ={}, flags={"issuers": [issuer]}), jwks_min_refresh=0.5)
    async for server in serve(app):
        yield Gateway(app=app, server=server)


async def test_a_removed_key_stops_working_once_the_key_set_is_refreshed(
    refreshing: Gateway, jwks_server: JwksServer, probes: Callable[[], Probe]
) -> None:
    """A key the issuer no longer publishes used to stay trusted until some unknown
    kid caused a refetch: now the key set is refreshed after its max-age."""
    first, second = jwks_server.keys
    assert (await (await connect(refreshing, probes, jwks_server.token(first))).wait_for("authenticated"))["sub"]
    jwks_server.keys.remove(first)
    fetched = jwks_server.fetches
    await wait_until(lambda: jwks_server.fetches >= fetched + 2)  # a whole refresh after the removal
    stale = await connect(refreshing, probes, jwks_server.token(first))
    assert stale.connect_error["data"] == INVALID_TOKEN
    fresh = await connect(refreshing, probes, jwks_server.token(second, sub="kept"))
    assert (await fresh.wait_for("authenticated"))["sub"] == "kept"


async def test_a_failing_refresh_keeps_the_keys_and_retries(
    refreshing: Gateway, jwks_server: JwksServer, probes: Callable[[], Probe], caplog: pytest.LogCaptureFixture
) -> None:
    first = jwks_server.keys[0]
    assert await (await connect(refreshing, probes, jwks_server.token(first))).wait_for("authenticated")
    caplog.set_level(logging.WARNING, logger="gateway.auth.tokens")
    jwks_server.failing = True
    fetched = jwks_server.fetches
    await wait_until(lambda: jwks_server.fetches >= fetched + 2)  # refreshes fail, and are retried
    assert f"jwks fetch for {ISSUER} failed" in caplog.text
    kept = await connect(refreshing, probes, jwks_server.token(first, sub="kept"))
    assert (await kept.wait_for("authenticated"))["sub"] == "kept"
    # The issuer recovers: the next refresh succeeds and drops the removed key.
    jwks_server.keys.remove(first)
    jwks_server.failing = False
    fetched = jwks_server.fetches
    await wait_until(lambda: jwks_server.fetches >= fetched + 2)
    stale = await connect(refreshing, probes, jwks_server.token(first))
    assert stale.connect_error["data"] == INVALID_TOKEN
