"""PROTOCOL §3 connect: ticket and token kinds, the refusal table, `authenticated`."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from tests.conftest import Gateway, MakeGateway
from tests.support import Probe, RedisServer, http_json, redis_contents

TICKET_SHAPE = re.compile(r"[A-Za-z0-9_-]{22,}")  # ≥128 bits of base64url, no `=` padding (§6.2)


async def test_ticket_connect_joins_user_room_and_emits_authenticated(
    gateway: Gateway, probes: Callable[[], Probe]
) -> None:
    exp = int(time.time()) + 600
    ticket = await gateway.ticket("alice", ttl=600)
    probe = probes()
    assert await probe.connect(gateway.url, auth={"ticket": ticket})
    authenticated = await probe.wait_for("authenticated")
    assert authenticated["sub"] == "alice"
    assert authenticated["via"] == "ticket"
    # §6.14: a ticket socket expires with the token the ticket was issued for.
    assert authenticated["expiresAt"] in {time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp + d)) for d in (-1, 0, 1)}
    await gateway.publish("user:alice", "note", {"n": 1})
    assert await probe.wait_for("note") == {"n": 1}


async def test_token_connect(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    probe = probes()
    assert await probe.connect(gateway.url, auth={"token": gateway.mint("bob")})
    assert (await probe.wait_for("authenticated"))["via"] == "token"


async def test_query_string_credentials_for_seed_style_clients(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    ticket = await gateway.ticket("carol")
    probe = probes()
    assert await probe.connect(gateway.url, query=f"ticket={ticket}")
    assert (await probe.wait_for("authenticated"))["sub"] == "carol"


async def test_auth_object_wins_over_query(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    """§6.12: a non-empty auth object wins; the query is read only when auth is empty."""
    probe = probes()
    assert await probe.connect(gateway.url, auth={"token": gateway.mint("dave")}, query="ticket=garbage")
    assert (await probe.wait_for("authenticated"))["sub"] == "dave"


async def test_ticket_reuse_is_refused(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    ticket = await gateway.ticket()
    first, second = probes(), probes()
    assert await first.connect(gateway.url, auth={"ticket": ticket})
    assert not await second.connect(gateway.url, auth={"ticket": ticket})
    assert second.connect_error["data"] == {"code": 4001, "reason": "invalid_ticket"}


async def test_ticket_expires(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(ticket_ttl=0.5)
    ticket = await gateway.ticket()
    await asyncio.sleep(0.8)
    probe = probes()
    assert not await probe.connect(gateway.url, auth={"ticket": ticket})
    assert probe.connect_error["data"] == {"code": 4001, "reason": "invalid_ticket"}


async def test_concurrent_connects_with_one_ticket_exactly_one_wins(
    gateway: Gateway, probes: Callable[[], Probe]
) -> None:
    ticket = await gateway.ticket()
    clients = [probes() for _ in range(20)]
    results = await asyncio.gather(*(c.connect(gateway.url, auth={"ticket": ticket}) for c in clients))
    assert sum(results) == 1


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        ({"ticket": "x" * 43}, "invalid_ticket"),
        ({"ticket": "short"}, "invalid_ticket"),
        ({"token": "not.a.jwt"}, "invalid_token"),
        ({"ticket": "a" * 43, "token": "b"}, "ambiguous_credentials"),
        ({"unknown": "field"}, "invalid_request"),
        ({"token": 42}, "invalid_request"),
    ],
)
async def test_refusals_carry_code_and_reason(
    gateway: Gateway, probes: Callable[[], Probe], auth: object, reason: str
) -> None:
    probe = probes()
    assert not await probe.connect(gateway.url, auth=auth)
    assert probe.connect_error["data"] == {"code": 4001, "reason": reason}
    assert isinstance(probe.connect_error["message"], str) and probe.connect_error["message"]


async def test_expired_token_is_refused_as_token_expired(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    probe = probes()
    token = gateway.mint("erin", ttl=60, now=time.time() - 3600)
    assert not await probe.connect(gateway.url, auth={"token": token})
    assert probe.connect_error["data"] == {"code": 4001, "reason": "token_expired"}


async def test_missing_credentials_when_deferred_auth_is_off(
    make_gateway: MakeGateway, probes: Callable[[], Probe]
) -> None:
    gateway = await make_gateway(deferred_auth=False)
    probe = probes()
    assert not await probe.connect(gateway.url)
    assert probe.connect_error["data"] == {"code": 4001, "reason": "missing_credentials"}


async def test_authenticated_follows_the_connect(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    """python-socketio sends CONNECT after the connect handler; `authenticated` comes after it."""
    probe = probes()
    assert await probe.connect(gateway.url, auth={"token": gateway.mint("alice")})
    await probe.wait_for("authenticated")
    assert probe.events_before_connect == 0


async def test_ticket_response_shape(make_gateway: MakeGateway) -> None:
    """§2: POST /ws/ticket -> 201 {"ticket", "expires" (unix s), "expiresAt" (ISO 8601 Z)}, nothing else."""
    gateway = await make_gateway(ticket_ttl=45)
    before = time.time()
    status, body, _ = await http_json("POST", f"{gateway.url}/ws/ticket", token=gateway.mint("alice"))
    after = time.time()
    assert status == 201, body
    assert set(body) == {"ticket", "expires", "expiresAt"}
    assert isinstance(body["ticket"], str) and TICKET_SHAPE.fullmatch(body["ticket"]), body["ticket"]
    expires = body["expires"]
    assert type(expires) is int, expires
    assert before + 45 - 2 <= expires <= after + 45 + 2
    expires_at = body["expiresAt"]
    assert isinstance(expires_at, str) and expires_at.endswith("Z"), expires_at
    assert datetime.fromisoformat(expires_at).astimezone(UTC).timestamp() == expires  # the same instant
    assert expires_at == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))


async def test_publish_answers_exactly_room_and_event(gateway: Gateway) -> None:
    """§2: POST /api/publish -> 202 {"room", "event"}."""
    status, body, _ = await http_json(
        "POST",
        f"{gateway.url}/api/publish",
        token=gateway.config.admin_token,
        json={"room": "room:lobby", "event": "note", "data": {"n": 1}},
    )
    assert (status, body) == (202, {"room": "room:lobby", "event": "note"})


async def test_ticket_is_stored_only_as_a_hash(
    gateway: Gateway, engine: str, request: pytest.FixtureRequest, probes: Callable[[], Probe]
) -> None:
    """§2 Tickets: ≥128 bits, URL-safe, stored only as a hash: no Redis key or value holds it."""
    if engine != "redis":
        ticket = await gateway.ticket()
        assert TICKET_SHAPE.fullmatch(ticket), ticket
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    assert gateway.config.redis_url == server.url  # the database scanned below is the gateway's
    before = await redis_contents(server.url)
    ticket = await gateway.ticket()  # not consumed: its record is still in Redis
    assert TICKET_SHAPE.fullmatch(ticket), ticket
    after = await redis_contents(server.url)
    assert set(after) - set(before), "issuing a ticket stored nothing in this Redis database"
    raw = base64.urlsafe_b64decode(ticket + "=" * (-len(ticket) % 4))
    assert len(raw) >= 16
    forms = (ticket.encode(), raw, raw.hex().encode(), raw.hex().upper().encode())
    for key, values in after.items():
        for blob in (key, *values):
            assert not any(form in blob for form in forms), f"the ticket is readable in Redis at {key!r}"
    # The stored record is the live one: the ticket still connects once.
    probe = probes()
    assert await probe.connect(gateway.url, auth={"ticket": ticket})
