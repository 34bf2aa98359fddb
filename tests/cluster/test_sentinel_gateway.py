"""Two real gateway processes on a Sentinel-managed Redis (``redis+sentinel://``,
docs/cluster.md): a ticket issued on one is consumed on the other, and an event
published on one reaches a socket on the other."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.auth.tokens import TokenService
from gateway.config import load_config
from tests.cluster.conftest import ADMIN_TOKEN
from tests.support import (
    GatewayProcess,
    Probe,
    RedisSentinel,
    issue_ticket,
    publish,
    start_together,
    wait_subscribed,
)

pytestmark = pytest.mark.timeout(60)


async def test_two_nodes_on_sentinel_share_tickets_and_events(
    redis_sentinel: RedisSentinel,
    cluster_keys: dict[str, str],
    gateway_process: Callable[..., GatewayProcess],
    probes: Callable[[], Probe],
) -> None:
    redis_sentinel.flush()
    settings: dict[str, Any] = {**cluster_keys, "redis_url": redis_sentinel.url, "admin_token": ADMIN_TOKEN}
    a, b = gateway_process(settings, name="a"), gateway_process(settings, name="b")
    start_together(a, b)
    await wait_subscribed(redis_sentinel.master.url, 2)
    token = TokenService(config=load_config(environ={}, flags=settings)).mint("alice")[0]
    probe = probes()
    assert await probe.connect(b.url, auth={"ticket": await issue_ticket(a.url, token)})
    assert (await probe.wait_for("authenticated"))["via"] == "ticket"
    await publish(a.url, ADMIN_TOKEN, "user:alice", "note", {"n": 1})
    assert await probe.wait_for("note") == {"n": 1}
