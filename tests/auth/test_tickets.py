"""gateway/auth/tickets.py: a ticket's lifetime and consumption judge the token's
exp with the same leeway as the token's verification (PROTOCOL §6.15)."""

from __future__ import annotations

import json
import time

import pytest

from gateway.auth.tickets import TicketService
from gateway.auth.tokens import Principal
from gateway.errors import TokenExpired
from gateway.store import MemoryStore


def principal(exp: float) -> Principal:
    return Principal(sub="lee", exp=exp, iat=exp - 60, claims={"rooms": ["room:a"]})


async def test_issue_and_consume_within_the_leeway() -> None:
    store = MemoryStore()
    tickets = TicketService(store=store, ttl=30, leeway=5)
    now = time.time()
    issued = await tickets.issue(principal(now - 3))
    assert issued.expires <= now + 2  # the ticket never outlives exp + leeway
    taken = tickets.principal(await store.take(tickets.key(issued.ticket)))
    assert taken.sub == "lee" and taken.exp == pytest.approx(now - 3) and taken.claims == {"rooms": ["room:a"]}


async def test_issue_beyond_the_leeway_is_token_expired() -> None:
    tickets = TicketService(store=MemoryStore(), ttl=30, leeway=5)
    with pytest.raises(TokenExpired):
        await tickets.issue(principal(time.time() - 6))


async def test_consumption_judges_exp_with_the_leeway() -> None:
    """A ticket is redeemed a little later than it was issued: the exp in its record
    is judged then, with the leeway, like the token's was."""
    store = MemoryStore()
    lenient, strict = TicketService(store=store, ttl=30, leeway=5), TicketService(store=store, ttl=30, leeway=0)
    issued = await lenient.issue(principal(time.time() + 30))
    raw = await store.take(lenient.key(issued.ticket))
    assert raw is not None
    record = json.loads(raw)
    record["exp"] = time.time() - 3  # the token expired 3 s ago, meanwhile
    assert lenient.principal(json.dumps(record)).sub == "lee"
    with pytest.raises(TokenExpired):
        strict.principal(json.dumps(record))
