"""Rate limits, all of them, behind one small interface (issue #16).

* **Per client address** (``http_rate_per_ip``, ``connect_rate_per_ip``, per
  minute): counted by the ``limits`` library's sliding window counter, in its
  in-process storage on the memory engine and in Redis on the redis engine
  (limits' cluster storage on a Redis Cluster), so that the limit holds for
  the cluster, not per node. Sliding, not fixed: the
  previous minute's count weighs on the current one by how much of it is still
  inside the last 60 s, so a window's edge never lets 2N through. Two counters
  per address, not a list of every request (limits' moving window kept one,
  and its in-process storage swept those lists with a thread hop per key):
  O(1) per counted action, one EVALSHA on Redis. A
  refusal asks once more, for when the window frees a slot (``Retry-After``);
  until then this node refuses the address by itself, so a flood from one
  address costs no further Redis round trip. Keys are
  ``tg:ratelimit/<limit>/<address>/...`` and expire with their window.
* **Per socket** (``client_event_rate``, ``client_event_burst``): every
  client event, in-process on both engines (a socket lives on one node).
  Hand-written rather than ``limits``: that library keeps a list of entries
  and a lock per key in a dict, and its calls are coroutines; this is the
  token bucket in its GCRA form (one float on the ``Conn``, no object per
  socket, no await on the event path), and per-socket memory is measured.

A socket is **over the limit** while its events keep being refused with less
than ``ABUSE_GAP`` between two refusals (an event accepted in between, as a
flood gets one through each time a token comes back, does not end it). Once
such a run has lasted ``client_abuse_seconds``, the socket is sent ``closing``
4029 ``rate_limited`` (after the refused event's ack) and disconnected.

Domain errors only: a refusal is ``RateLimited``, a storage that cannot be
reached is ``StoreUnavailable``; the doors translate them.
"""

from __future__ import annotations

import logging
import math
import time
import urllib.parse
from typing import Any, cast

import limits
import redis.asyncio as aioredis
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisClusterStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from gateway import closes
from gateway.config import Config
from gateway.errors import RateLimited, StoreUnavailable
from gateway.metrics import Metrics
from gateway.realtime import Conn, Realtime
from gateway.redisconn import RedisTarget, learn_slots
from gateway.store.keys import PREFIX

logger = logging.getLogger(__name__)

NAMESPACE = "ratelimit"
CLIENT_NAME = "ticketgate-ratelimit"  # its Redis connections, as CLIENT LIST shows them
# A pause this long between two refused events ends a socket's run of refusals.
ABUSE_GAP = 1.0
# Addresses this node refuses without asking the storage; past this many, the
# stale ones are forgotten (the storage still knows: it is only asked again).
BLOCKED_MAX = 10_000
# As the store's (gateway/store/redis.py): a dead Redis is a fast 503/4503.
_CONNECT_TIMEOUT = 1.0
_COMMAND_TIMEOUT = 2.0
# Spare for float rounding in the bucket's comparison (a burst of exactly
# client_event_burst must pass).
_EPSILON = 1e-9


def _storage_uri(redis_url: str) -> str:
    """limits' name for the redis.asyncio client's URL (``unix://`` is ``async+redis+unix://``)."""
    if redis_url.startswith("unix://"):
        return "async+redis+" + redis_url
    return "async+" + redis_url


def _cluster_storage(target: RedisTarget) -> tuple[RedisClusterStorage, RedisCluster]:
    """limits' storage on a Redis Cluster, and the client it built (to close it).

    A plain client on the seed node would be answered MOVED for every address
    whose counters hash to another master. limits takes no client for a
    cluster, only a URL: its scheme names the mode, the seed's address and
    credentials come from ``redis_url``, and the client gets the gateway's
    timeouts and retry (``RedisTarget.cluster_options``). Its sliding window
    keeps both counters of an address under one hash tag, so its script runs
    on one master.
    """
    parsed = urllib.parse.urlsplit(target.url)
    options: dict[str, Any] = target.cluster_options(name=CLIENT_NAME)
    if parsed.scheme == "rediss":
        options["ssl"] = True
    storage = RedisClusterStorage(
        f"async+redis+cluster://{parsed.netloc}",
        implementation="redispy",
        key_prefix=PREFIX.rstrip(":"),
        wrap_exceptions=True,
        **options,
    )
    # limits has no close(): the client its redis-py bridge built is closed here.
    client = getattr(storage.bridge, "storage", None)
    if not isinstance(client, RedisCluster):
        raise RuntimeError(f"limits {limits.__version__}: no RedisCluster client on its cluster storage's bridge")
    return storage, client


class RateLimits:
    """Every rate limit of one gateway; ``create_app`` builds it for the engine."""

    def __init__(self, *, config: Config, realtime: Realtime, metrics: Metrics) -> None:
        self._realtime = realtime
        self._metrics = metrics
        self._interval = 1.0 / config.client_event_rate  # one token comes back this often
        self._capacity = config.client_event_burst * self._interval  # how far ahead of now a bucket may run
        self._abuse_seconds = config.client_abuse_seconds
        self._items: dict[str, RateLimitItem] = {
            "http": RateLimitItemPerMinute(config.http_rate_per_ip, namespace=NAMESPACE),
            "connect": RateLimitItemPerMinute(config.connect_rate_per_ip, namespace=NAMESPACE),
        }
        self._pool: aioredis.ConnectionPool | None = None
        self._cluster: RedisCluster | None = None
        storage: Storage
        if config.redis is not None and config.redis.cluster:
            storage, self._cluster = _cluster_storage(config.redis)
        elif config.redis is not None and config.redis.sentinel:
            # The master the Sentinel names, followed across fail-overs: the pool
            # of the gateway's own Sentinel client (limits builds its client on it).
            self._pool = cast(aioredis.Redis, config.redis.client(name=CLIENT_NAME)).connection_pool
            storage = RedisStorage(
                "async+redis://sentinel-master:6379",  # a placeholder: the pool decides where
                implementation="redispy",
                key_prefix=PREFIX.rstrip(":"),
                wrap_exceptions=True,
                connection_pool=cast(Any, self._pool),
            )
        elif config.redis_url:
            # limits builds a redis.asyncio client on this pool (one per gateway,
            # owned and closed here), with the store's timeouts.
            self._pool = aioredis.ConnectionPool.from_url(
                config.redis_url,
                socket_connect_timeout=_CONNECT_TIMEOUT,
                socket_timeout=_COMMAND_TIMEOUT,
                health_check_interval=15,
                retry_on_timeout=False,
                client_name=CLIENT_NAME,
            )
            storage = RedisStorage(
                _storage_uri(config.redis_url),
                implementation="redispy",
                key_prefix=PREFIX.rstrip(":"),
                wrap_exceptions=True,
                connection_pool=cast(Any, self._pool),
            )
        else:
            storage = MemoryStorage(wrap_exceptions=True)
        self._storage = storage
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._blocked: dict[str, float] = {}  # window key -> until when (time.time()) it is full

    async def warm(self) -> None:
        """As ``Store.warm``: a Redis Cluster's slot map, before the node listens."""
        if self._cluster is not None:
            try:
                await learn_slots(self._cluster)
            except (RedisError, OSError) as exc:
                raise StoreUnavailable(f"rate limit storage unreachable: {type(exc).__name__}") from None

    async def close(self) -> None:
        if self._cluster is not None:
            await self._cluster.aclose()
        elif self._pool is not None:
            await self._pool.aclose()
        elif isinstance(self._storage, MemoryStorage) and self._storage.timer is not None:
            self._storage.timer.cancel()  # its sweep of expired entries

    # -- per address -------------------------------------------------------------

    async def http(self, addr: str) -> None:
        """Count a request to a limited HTTP route from ``addr``; RateLimited (with
        ``retry_after``) over ``http_rate_per_ip``, StoreUnavailable if it cannot count."""
        await self._per_address("http", addr)

    async def connect(self, addr: str) -> None:
        """Count a connect (a Socket.IO CONNECT, a raw session WebSocket) from ``addr``;
        RateLimited over ``connect_rate_per_ip``, StoreUnavailable if it cannot count."""
        await self._per_address("connect", addr)

    async def _per_address(self, limit: str, addr: str) -> None:
        item = self._items[limit]
        key = item.key_for(limit, addr)
        until = self._blocked.get(key)
        if until is not None:
            if until > time.time():
                self._refuse(limit, until)
            del self._blocked[key]
        try:
            if await self._limiter.hit(item, limit, addr):
                return
            reset, remaining = await self._limiter.get_window_stats(item, limit, addr)
        except (StorageError, OSError) as exc:
            cause = exc.storage_error if isinstance(exc, StorageError) else exc
            raise StoreUnavailable(f"rate limit storage unreachable: {type(cause).__name__}") from None
        if remaining <= 0:  # no slot frees before `reset`: nobody can take one meanwhile
            self._block(key, reset)
        self._refuse(limit, reset)

    def _block(self, key: str, until: float) -> None:
        if len(self._blocked) >= BLOCKED_MAX:
            now = time.time()
            self._blocked = {k: t for k, t in self._blocked.items() if t > now}
            if len(self._blocked) >= BLOCKED_MAX:
                self._blocked.clear()
        self._blocked[key] = until

    def _refuse(self, limit: str, until: float) -> None:
        self._metrics.rate_limited.labels(limit).inc()
        what = "requests" if limit == "http" else "connects"
        raise RateLimited(f"too many {what} from this address", retry_after=max(1.0, until - time.time()))

    # -- per socket --------------------------------------------------------------

    def client_event(self, conn: Conn) -> None:
        """Spend one of ``conn``'s events. RateLimited when its bucket is empty;
        if it has been over the limit for ``client_abuse_seconds``, its close
        (4029) is ordered too, to follow the refused event's ack."""
        now = time.monotonic()
        if conn.limited_since == math.inf:
            # Its close is ordered: nothing more of it is handled, or an event
            # accepted while the close goes out would reach the room unacked.
            self._metrics.rate_limited.labels("client_event").inc()
            raise RateLimited("this socket is being closed for its rate", retry_after=self._abuse_seconds)
        # GCRA: event_tat is when the bucket will be full again; an event takes
        # one interval, and the bucket holds `client_event_burst` of them.
        tat = max(conn.event_tat, now)
        if tat + self._interval - now <= self._capacity + _EPSILON:
            conn.event_tat = tat + self._interval
            return
        self._metrics.rate_limited.labels("client_event").inc()
        if now - conn.limited_last > ABUSE_GAP:
            conn.limited_since = now
            logger.info("sid=%s is over client_event_rate: its events are refused", conn.sid)
        conn.limited_last = now
        if now - conn.limited_since >= self._abuse_seconds:
            conn.limited_since = math.inf  # ordered once
            logger.info("closing sid=%s reason=rate_limited (over client_event_rate too long)", conn.sid)
            sid = conn.sid
            self._realtime.scheduler.soon(self._realtime.close, sid, closes.RATE_LIMITED)
        raise RateLimited("too many events from this socket", retry_after=tat + self._interval - self._capacity - now)
