"""How every part of the gateway reaches Redis: one instance, Sentinel, or Cluster.

``redis_url`` names it: ``redis://``/``rediss://``/``unix://`` for one instance,
``redis+sentinel://host:port[,host:port...]/db/service`` for the master a
Sentinel watches (python-socketio's form), and with ``redis_cluster = true`` a
``redis://`` URL is the seed node of a Redis Cluster. The store, the fan-out
and the rate limits all build their clients here, with the same short
timeouts: a dead Redis must turn into a fast 503/4503, not a hung connect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from socketio.redis_manager import parse_redis_sentinel_url

CONNECT_TIMEOUT = 1.0
COMMAND_TIMEOUT = 2.0

Client = aioredis.Redis | RedisCluster


@dataclass(frozen=True)
class RedisTarget:
    url: str
    cluster: bool = False

    @property
    def sentinel(self) -> bool:
        return self.url.startswith("redis+sentinel://")

    def client(self, *, decode_responses: bool = False, name: str | None = None, **options: Any) -> Client:
        """A client with the gateway's timeouts; ``name`` shows in CLIENT LIST."""
        settings: dict[str, Any] = {
            "decode_responses": decode_responses,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": COMMAND_TIMEOUT,
            "client_name": name,
            **options,
        }
        if self.cluster:
            return RedisCluster.from_url(self.url, **settings)
        if self.sentinel:
            sentinels, service, connection = parse_redis_sentinel_url(self.url)
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                sentinels, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=COMMAND_TIMEOUT
            )
            return cast(aioredis.Redis, sentinel.master_for(service, **{**connection, **settings}))
        return aioredis.Redis.from_url(self.url, health_check_interval=15, retry_on_timeout=False, **settings)
