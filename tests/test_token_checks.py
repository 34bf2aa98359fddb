"""The checks of an access JWT are the same at every door (PROTOCOL §3 connect,
`authenticate`, §2 `POST /ws/ticket`, and a ticket's consumption), on both engines:
time claims the gateway can represent, one spelling per token, one leeway."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import pytest

from tests.conftest import Gateway, MakeGateway
from tests.support import Probe, http_json, issue_ticket, refused_everywhere

pytestmark = pytest.mark.timeout(60)

LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z


async def authenticated(gateway: Gateway, probes: Callable[[], Probe], auth: dict[str, str]) -> dict[str, str]:
    probe = probes()
    assert await probe.connect(gateway.url, auth=auth), probe.connect_error
    data: dict[str, str] = await probe.wait_for("authenticated")
    return data


async def test_a_far_future_exp_is_refused_everywhere(gateway: Gateway) -> None:
    """exp 1e20, validly signed: the connect used to succeed and then crash writing
    `expiresAt`, leaving a socket without `authenticated` whose events were held."""
    await refused_everywhere(gateway.url, gateway.mint("alice", ttl=1e20), "invalid_token")


async def test_the_last_representable_second_works_everywhere(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    now = int(time.time())
    token = gateway.mint("alice", ttl=LAST_SECOND - now, now=now)
    expected = "9999-12-31T23:59:59Z"
    assert (await authenticated(gateway, probes, {"token": token}))["expiresAt"] == expected
    ticket = await issue_ticket(gateway.url, token)
    assert (await authenticated(gateway, probes, {"ticket": ticket}))["expiresAt"] == expected
    pending = probes()
    assert await pending.connect(gateway.url, auth={})
    ack = await pending.call("authenticate", {"token": token})
    assert ack["ok"] is True and ack["expiresAt"] == expected, ack


async def test_a_padded_signature_is_another_spelling_and_refused(gateway: Gateway) -> None:
    """PyJWT accepts `==` after the signature: two strings would be one token."""
    token = gateway.mint("alice")
    status, _, _ = await http_json("POST", f"{gateway.url}/ws/ticket", token=token)
    assert status == 201
    await refused_everywhere(gateway.url, token + "==", "invalid_token")


async def minted_past_exp(gateway: Gateway, seconds: int) -> tuple[str, int]:
    """A token whose exp (whole seconds) was ``seconds`` ago, to within a few
    milliseconds, and that exp."""
    await asyncio.sleep(math.ceil(time.time()) - time.time())  # just after a whole second
    exp = math.floor(time.time()) - seconds
    return gateway.mint("lee", ttl=60, now=exp - 60), exp


async def test_a_token_within_the_leeway_gets_a_ticket_that_connects(
    make_gateway: MakeGateway, probes: Callable[[], Probe]
) -> None:
    """One leeway wherever a token's validity is judged: a token 3 s past its exp
    (leeway 5) connected, yet `POST /ws/ticket` refused it, and a ticket's
    consumption compared the exp without the leeway too."""
    gateway = await make_gateway(leeway=5)
    token, exp = await minted_past_exp(gateway, 3)
    status, body, _ = await http_json("POST", f"{gateway.url}/ws/ticket", token=token)
    assert status == 201, body
    assert body["expires"] <= exp + 5  # never past exp + leeway
    assert (await authenticated(gateway, probes, {"ticket": body["ticket"]}))["via"] == "ticket"
    assert (await authenticated(gateway, probes, {"token": token}))["via"] == "token"
    pending = probes()
    assert await pending.connect(gateway.url, auth={})
    assert (await pending.call("authenticate", {"token": token}))["ok"] is True


async def test_a_token_beyond_the_leeway_is_refused_everywhere(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(leeway=5)
    token, _ = await minted_past_exp(gateway, 6)
    await refused_everywhere(gateway.url, token, "token_expired")
