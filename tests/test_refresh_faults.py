"""Refresh fails closed when the store cannot be reached (issue 5), and recovers by itself."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gateway import keys
from gateway.app import create_app
from gateway.config import load_config
from tests.support import GatewayTestServer, Probe, RedisServer


async def test_refresh_fails_closed_while_redis_is_down(
    own_redis: RedisServer, cluster_keys: dict[str, str], probes: Callable[[], Probe]
) -> None:
    config = load_config(environ={}, flags={**cluster_keys, "redis_url": own_redis.url})
    app = create_app(config)
    server = GatewayTestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    try:
        probe = probes()
        assert await probe.connect(url, auth={"token": app[keys.tokens].mint("alice")[0]})
        token = (await probe.wait_for("refresh_token"))["refreshToken"]

        own_redis.stop()
        ack: Any = await probe.call("refresh", {"refreshToken": token}, timeout=10)
        assert ack == {"ok": False, "error": {"code": 4503, "reason": "unavailable"}}
        refused = probes()
        assert not await refused.connect(url, auth={"refreshToken": token})
        assert refused.connect_error["data"] == {"code": 4503, "reason": "unavailable"}
        assert probe.client.connected  # the live socket stays up

        own_redis.start()  # same port; nothing restarted on the gateway side
        for _ in range(50):
            ack = await probe.call("refresh", {"refreshToken": token}, timeout=10)
            if ack["ok"] or ack["error"]["code"] != 4503:
                break
            await asyncio.sleep(0.2)
        # Redis restarted empty (no persistence): the token is unknown now, which is
        # refused as invalid rather than accepted; a new socket gets a working one.
        assert ack == {"ok": False, "error": {"code": 4001, "reason": "invalid_token"}}
        fresh = probes()
        assert await fresh.connect(url, auth={"token": app[keys.tokens].mint("alice")[0]})
        new_token = (await fresh.wait_for("refresh_token"))["refreshToken"]
        assert (await fresh.call("refresh", {"refreshToken": new_token}, timeout=10))["ok"] is True
    finally:
        await server.close()
