"""How every part of the gateway reaches Redis: one instance, Sentinel, or Cluster.

``redis_url`` names it: ``redis://``/``rediss://``/``unix://`` for one instance,
``redis+sentinel://host:port[,host:port...]/db/service`` for the master a
Sentinel watches (python-socketio's form), and with ``redis_cluster = true`` a
``redis://`` URL is the seed node of a Redis Cluster. The store, the fan-out
and the rate limits all build their clients here, with the same short
timeouts: a dead Redis must turn into a fast 503/4503, not a hung connect.
(One exception: limits' cluster storage builds its own ``RedisCluster``, as
it takes no client, from ``cluster_options``.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from socketio.redis_manager import parse_redis_sentinel_url

CONNECT_TIMEOUT = 1.0
COMMAND_TIMEOUT = 2.0
# A cluster client's connections per node. redis-py's default (100) raises
# MaxConnectionsError for the 101st concurrent command on one node, which a
# burst of connects would meet as 503s; a single Redis's pool has no such
# cap, and neither has a node's here (connections open on demand, are reused).
CLUSTER_MAX_CONNECTIONS = 2**31
POOL_SIZE = 256  # connections of one client to one Redis; more commands at once wait for one
POOL_WAIT = 5.0  # seconds a command waits for a free connection
# After a connection error a cluster client reloads the slot map and tries
# again: once, which follows a failover that has already happened. redis-py's
# default is 10 times, each behind a connect timeout where a node is silent.
CLUSTER_RETRIES = 1

Client = aioredis.Redis | RedisCluster


class SentinelMaster(aioredis.Redis):
    """The master a Sentinel names. Closing it closes its connections to the
    Sentinels too, which redis-py leaves open (one more for each client built)."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if close_connection_pool or (close_connection_pool is None and self.auto_close_connection_pool):
            pool = cast(SentinelConnectionPool, self.connection_pool)
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.aclose()


@dataclass(frozen=True)
class RedisTarget:
    url: str
    cluster: bool = False

    @property
    def sentinel(self) -> bool:
        return self.url.startswith("redis+sentinel://")

    def cluster_options(self, *, decode_responses: bool = False, name: str | None = None) -> dict[str, Any]:
        """The keyword arguments of this target's ``RedisCluster``, besides its nodes."""
        return {
            "decode_responses": decode_responses,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": COMMAND_TIMEOUT,
            "client_name": name,
            "max_connections": CLUSTER_MAX_CONNECTIONS,
            "retry": Retry(NoBackoff(), CLUSTER_RETRIES),
        }

    def client(self, *, decode_responses: bool = False, name: str | None = None, **options: Any) -> Client:
        """A client with the gateway's timeouts; ``name`` shows in CLIENT LIST."""
        if self.cluster:
            cluster = self.cluster_options(decode_responses=decode_responses, name=name)
            return RedisCluster.from_url(self.url, **{**cluster, **options})
        settings: dict[str, Any] = {
            "decode_responses": decode_responses,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": COMMAND_TIMEOUT,
            "client_name": name,
            # Once more on a new connection after a connection error: after a Redis
            # restart every pooled connection is dead, and fails its next command.
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            **options,
        }
        if self.sentinel:
            sentinels, service, connection = parse_redis_sentinel_url(self.url)
            sentinel_settings = {
                "socket_connect_timeout": CONNECT_TIMEOUT,
                "socket_timeout": COMMAND_TIMEOUT,
                "client_name": name,
            }
            settings.setdefault("max_connections", CLUSTER_MAX_CONNECTIONS)  # no cap that raises (see below)
            sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_settings)  # type: ignore[no-untyped-call]
            master = sentinel.master_for(service, redis_class=SentinelMaster, **{**connection, **settings})
            return cast(SentinelMaster, master)
        # redis-py 8's pool raises MaxConnectionsError past 100 connections in use
        # (a burst of connects or disconnects): wait for a free one instead.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=POOL_SIZE, timeout=POOL_WAIT, health_check_interval=15, **settings
        )
        return aioredis.Redis.from_pool(pool)


async def learn_slots(client: Client) -> None:
    """Have a Redis Cluster client read the cluster's slot map now, before it
    carries traffic (nothing to do for any other client); a RedisError or
    OSError if the cluster cannot be reached.

    redis-py's cluster client otherwise reads it on its first command, and the
    commands sent together with that one (a burst of connects to a node that
    just started) are routed without it: redirected, they refresh the slot
    map, which drops connections other commands are opening or using. Those
    fail with ConnectionError, or with AttributeError or RuntimeError that no
    caller expects (redis-py 8.1).
    """
    if isinstance(client, RedisCluster):
        await client.initialize()


class Script:
    """One Lua script (``source``), run by its SHA-1 (EVALSHA) on the node that holds its keys.

    Not redis-py's ``register_script``: where a node does not know the script
    (restarted, or never used) that one loads it with SCRIPT LOAD, which a
    cluster client sends to every primary, so it fails while any shard is
    down. EVAL on the keys' own node loads it there and runs it in one go.
    """

    def __init__(self, client: Client, source: str) -> None:
        self._client = client
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 (Redis names scripts so)

    async def __call__(self, *, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self._client.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._client.execute_command("EVAL", self._source, len(keys), *keys, *args)
