"""PROTOCOL §5 with two real `python -m gateway serve` processes on one redis-server:
tickets and tokens work across nodes, a ticket is consumed once cluster-wide,
and a publish on one node reaches sockets on the other."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.cluster.conftest import ADMIN_TOKEN, cli_token, race_one_ticket
from tests.support import Nodes, Probe, issue_ticket, publish

pytestmark = pytest.mark.timeout(60)


async def test_one_ticket_fifty_concurrent_connects_on_two_nodes_exactly_one_wins(
    two_nodes: Nodes, cluster_settings: dict[str, Any], probes: Callable[[], Probe]
) -> None:
    a = two_nodes[0]
    ticket = await issue_ticket(a.url, await cli_token(a.config_file, "alice"))
    await race_one_ticket(two_nodes, ticket, redis_url=cluster_settings["redis_url"], probes=probes)


async def test_publish_on_one_node_reaches_a_socket_on_the_other(two_nodes: Nodes, probes: Callable[[], Probe]) -> None:
    a, b = two_nodes
    alice, bob = probes(), probes()
    alice_token, bob_token = await asyncio.gather(cli_token(a.config_file, "alice"), cli_token(b.config_file, "bob"))
    assert await alice.connect(a.url, auth={"ticket": await issue_ticket(a.url, alice_token)})
    assert await bob.connect(b.url, auth={"token": bob_token})
    await alice.wait_for("authenticated")
    await bob.wait_for("authenticated")

    await publish(b.url, ADMIN_TOKEN, "user:alice", "invoice_paid", {"id": 42})
    await publish(b.url, ADMIN_TOKEN, "user:bob", "note", {"n": 1})

    assert await alice.wait_for("invoice_paid") == {"id": 42}
    # Node b handled alice's event before bob's (each publish is delivered on
    # the publishing node first): once bob has his, alice's has passed him by.
    assert await bob.wait_for("note") == {"n": 1}
    assert bob.named("invoice_paid") == []
    assert alice.named("note") == []


async def test_ticket_issued_on_one_node_is_consumed_on_the_other(
    two_nodes: Nodes, probes: Callable[[], Probe]
) -> None:
    a, b = two_nodes
    ticket = await issue_ticket(a.url, await cli_token(a.config_file, "carol"))
    probe = probes()
    assert await probe.connect(b.url, auth={"ticket": ticket})
    authenticated = await probe.wait_for("authenticated")
    assert authenticated["sub"] == "carol"
    assert authenticated["via"] == "ticket"
    # Consumed on b means gone on a too.
    again = probes()
    assert not await again.connect(a.url, auth={"ticket": ticket})
    assert again.connect_error["data"] == {"code": 4001, "reason": "invalid_ticket"}


async def test_token_minted_for_one_node_works_on_the_other(two_nodes: Nodes, probes: Callable[[], Probe]) -> None:
    a, b = two_nodes
    token_from_a, token_from_b = await asyncio.gather(
        cli_token(a.config_file, "dave"), cli_token(b.config_file, "erin")
    )

    on_b, on_a = probes(), probes()
    assert await on_b.connect(b.url, auth={"token": token_from_a})
    assert await on_a.connect(a.url, auth={"token": token_from_b})
    for probe, sub in ((on_b, "dave"), (on_a, "erin")):
        authenticated = await probe.wait_for("authenticated")
        assert (authenticated["sub"], authenticated["via"]) == (sub, "token")
    # The token also buys a ticket on the other node.
    assert await issue_ticket(b.url, token_from_a)
