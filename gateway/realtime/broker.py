"""The broker: channels and publications over Redis, nothing else (issue #13).

A node subscribes to a room's channel while it has a local member of that
room (``retain``/``release``, counted), so an event published to a room
reaches only the nodes that need it; an event for a room nobody is in costs
one publish. The cluster's broadcast channel (``redis_channel``, python-
socketio's ``socketio``) is always subscribed: a stock python-socketio
``AsyncRedisManager(write_only=True)`` publishes there (unrouted), and so do
the few messages that name no room.

* One Redis (or the master a Sentinel names): every channel is a plain
  channel on one subscriber connection (SUBSCRIBE/PUBLISH).
* Redis Cluster: a room's channel is a *shard* channel (SSUBSCRIBE/SPUBLISH,
  Redis >= 7), kept by the master that owns its slot: one subscriber
  connection per master, and a room's traffic stays on one shard. The
  broadcast channel stays a plain one (plain pub/sub reaches every node of a
  cluster), on a connection of its own.

A channel's name carries its room as a hash tag (``socketio:{user:alice}``)
so that its slot is the room's: the room's history (issue #14) lives there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from gateway.errors import StoreUnavailable
from gateway.realtime.history import ORIGIN, REPLAY_MAX, Entry
from gateway.redisconn import CONNECT_TIMEOUT, RedisTarget, Script
from gateway.store import keys
from gateway.store.keys import PREFIX
from gateway.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

OnMessage = Callable[[bytes], Awaitable[None]]
RETRY_MAX = 5.0  # the longest wait between two attempts to reach Redis again
READY_TIMEOUT = 2.0  # how long a join waits for its room's subscription
BROADCAST = "broadcast"  # the subscriber of plain channels


def room_channel(base: str, room: str) -> str:
    """The channel of ``room``'s events: its room is its hash tag (its slot on a cluster)."""
    return f"{base}:{{{room}}}"


class _Subscriber:
    """One pub/sub connection and the channels it should hold: it subscribes what
    is wanted, unsubscribes what is not, and starts over (everything wanted)
    when its connection is lost.

    A channel is *ready* once Redis confirmed its subscription and no
    unsubscribe of it is in flight: ``subscribed`` (confirmed), ``_sent``
    (subscribe sent, unconfirmed), ``_leaving`` (unsubscribe sent, unconfirmed).
    Redis answers a connection's commands in order, so a channel left and
    wanted again is unsubscribed, then subscribed: ready after both answers.
    """

    def __init__(self, *, name: str, connect: Callable[[], aioredis.Redis], sharded: bool, broker: Broker) -> None:
        self.name = name
        self._connect = connect
        self._sharded = sharded
        self._broker = broker
        self.wanted: set[str] = set()
        self.subscribed: set[str] = set()
        self._sent: set[str] = set()
        self._leaving: set[str] = set()
        self._known: set[str] = set()  # confirmed once and still wanted: a new confirmation is a resubscription
        self._pubsub: Any = None
        self._changed = asyncio.Event()  # the wanted set changed: for _sync
        self._armed = asyncio.Event()  # a subscription was sent: for _listen
        self._tasks: list[asyncio.Task[None]] = []
        self._failed: Exception | None = None  # a send that failed: the connection is gone
        self.lost = 0  # how many times its connection was lost (tests, logs)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._sync())]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        await self._close()

    def want(self, channel: str, wanted: bool) -> None:
        (self.wanted.add if wanted else self.wanted.discard)(channel)
        self._changed.set()

    def ready(self, channel: str) -> bool:
        return channel in self.subscribed and channel not in self._leaving and channel not in self._sent

    async def _close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _listen(self) -> None:
        delay = 0.2
        while True:
            try:
                self._pubsub = self._connect().pubsub()
                self._changed.set()  # subscribe everything wanted on this connection
                while True:
                    if not self._pubsub.subscribed:  # listen() would end at once
                        self._armed.clear()
                        await self._armed.wait()
                        if self._failed is not None:
                            raise self._failed
                        continue
                    async for message in self._pubsub.listen():
                        delay = 0.2
                        await self._handle(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # RedisError, OSError: the connection is gone
                self.lost += 1
                logger.warning(
                    "fan-out subscriber %s lost Redis (%s); retrying in %.1fs", self.name, type(exc).__name__, delay
                )
            self._failed = None
            self._known &= self.wanted
            self.subscribed.clear()
            self._sent.clear()
            self._leaving.clear()
            self._broker.notify()
            await self._close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            await self._broker.lost(self)

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = _text(message["type"])
        if kind in ("message", "smessage"):
            await self._broker.on_message(message["data"])
            return
        channel = _text(message["channel"])
        if kind in ("subscribe", "ssubscribe"):
            self._sent.discard(channel)
            self.subscribed.add(channel)
            if channel in self._known:
                await self._broker.resubscribed(channel)
            self._known.add(channel)
        elif kind in ("unsubscribe", "sunsubscribe"):
            self.subscribed.discard(channel)
            self._leaving.discard(channel)
            if channel not in self.wanted:
                self._known.discard(channel)
        self._broker.notify()

    async def _sync(self) -> None:
        """Send what the wanted set asks for, batched, whenever it changes."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            pubsub = self._pubsub
            if pubsub is None:
                continue
            held = (self.subscribed | self._sent) - self._leaving
            subscribe = sorted(self.wanted - held)
            unsubscribe = sorted(held - self.wanted)
            try:
                for batch in self._batches(unsubscribe):
                    self._leaving.update(batch)
                    await (pubsub.sunsubscribe if self._sharded else pubsub.unsubscribe)(*batch)
                for batch in self._batches(subscribe):
                    self._sent.update(batch)
                    await (pubsub.ssubscribe if self._sharded else pubsub.subscribe)(*batch)
                    self._armed.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the listener starts over (it may be waiting for this send)
                logger.debug("fan-out subscriber %s could not send (%s)", self.name, type(exc).__name__)
                self._failed = exc
                self._armed.set()

    def _batches(self, channels: list[str]) -> list[list[str]]:
        """One command for plain channels; for shard channels one per hash slot
        (SSUBSCRIBE refuses channels of several slots)."""
        if not self._sharded:
            return [channels] if channels else []
        slots: dict[int, list[str]] = {}
        for channel in channels:
            slots.setdefault(key_slot(channel.encode()), []).append(channel)
        return list(slots.values())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Broker:
    """Publications and counted subscriptions of one node (see the module's docstring)."""

    def __init__(
        self,
        *,
        target: RedisTarget,
        base_channel: str,
        on_message: OnMessage,
        on_resubscribed: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.target = target
        self.base_channel = base_channel
        self.on_message = on_message
        # A room's channel subscribed again after its connection was lost: what
        # was published meanwhile never came (called before its next message).
        self.on_resubscribed = on_resubscribed
        self._client = target.client(name="ticketgate-fanout")
        # Not register_script: its SCRIPT LOAD goes to every primary of a cluster,
        # so a recorded publish to a shard that lacks the script failed while any
        # other shard was down.
        self._publish_script = Script(
            self._client, resources.files("gateway.realtime").joinpath("lua", "publish.lua").read_text()
        )
        self._counts: Counter[str] = Counter()
        self._changed = asyncio.Condition()
        self._subscribers: dict[str, _Subscriber] = {}
        self._home: dict[str, _Subscriber] = {}  # channel -> the subscriber that holds it
        self._started = False  # rooms are placed from now on (a cluster: its slots are known)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def sharded(self) -> bool:
        return isinstance(self._client, RedisCluster)

    async def start(self) -> None:
        """Start receiving: the broadcast channel, and every room retained so far.
        On a cluster the rooms wait for its slot map (retried in the background
        while the cluster cannot be reached: their joins answer 4503 meanwhile)."""
        self._place(self.base_channel)
        if self.sharded:
            self._tasks.append(asyncio.create_task(self._learn_slots()))
        else:
            self._open()

    def _open(self) -> None:
        self._started = True
        for room in self._counts:
            self._place(self.channel(room))

    async def _learn_slots(self) -> None:
        delay = 0.2
        while True:
            try:
                await cast(RedisCluster, self._client).initialize()
                break
            except (RedisError, OSError) as exc:
                logger.warning("fan-out cannot reach the Redis Cluster (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
        self._open()

    async def stop(self) -> None:
        self._started = False
        await cancel_and_wait(*self._tasks)
        for subscriber in self._subscribers.values():
            await subscriber.stop()
        self._subscribers.clear()
        with contextlib.suppress(Exception):
            await self._client.aclose()

    # -- publishing ------------------------------------------------------------

    def channel(self, room: str | None) -> str:
        return self.base_channel if room is None else room_channel(self.base_channel, room)

    async def publish(self, room: str | None, payload: bytes | str) -> None:
        """Publish to ``room``'s channel (None: the broadcast channel, every node);
        StoreUnavailable if Redis cannot be reached."""
        channel = self.channel(room)
        try:
            if room is not None and self.sharded:
                await self._client.execute_command("SPUBLISH", channel, payload)
            else:
                await self._client.publish(channel, payload)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"cannot publish to redis: {type(exc).__name__}") from None

    async def publish_recorded(self, room: str, head: bytes, tail: bytes, entry: bytes, *, keep: float) -> str:
        """Publish ``head + id + tail`` to ``room``'s channel and keep ``entry``
        under that id in the room's history for ``keep`` seconds, atomically
        (``lua/publish.lua``); the id. StoreUnavailable if Redis cannot be reached."""
        names = [PREFIX + keys.history(room)]
        if not self.sharded:
            names.append(PREFIX + keys.HISTORY_CLOCK)
        command = "SPUBLISH" if self.sharded else "PUBLISH"
        args: list[Any] = [self.channel(room), command, head, tail, entry, int(keep * 1000)]
        try:
            event_id = await self._publish_script(keys=names, args=args)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"cannot publish to redis: {type(exc).__name__}") from None
        return event_id.decode() if isinstance(event_id, bytes) else str(event_id)

    # -- history (gateway/realtime/history.py) --------------------------------------

    async def head(self, room: str) -> str:
        found = await self._read(self._client.xrevrange(PREFIX + keys.history(room), count=1))
        return _text(found[0][0]) if found else ORIGIN

    async def since(self, room: str, after: str, *, exact: bool) -> list[Entry] | None:
        if exact and after == ORIGIN:
            return None
        # From `after` itself, to see that it is there; one more than the cap, to see it is passed.
        found = await self._read(self._client.xrange(PREFIX + keys.history(room), min=after, count=REPLAY_MAX + 2))
        if found and _text(found[0][0]) == after:
            found = found[1:]
        elif exact:
            return None
        if len(found) > REPLAY_MAX:
            return None
        entries = []
        for raw_id, fields in found:
            event, *args = orjson.loads(fields[b"m"])
            entries.append(Entry(id=_text(raw_id), room=room, event=event, args=args))
        return entries

    async def _read(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"cannot read the history: {type(exc).__name__}") from None

    # -- subscriptions ---------------------------------------------------------------

    def retain(self, room: str) -> None:
        """One more local member of ``room``: the first one subscribes its channel."""
        self._counts[room] += 1
        if self._counts[room] == 1 and self._started:
            self._place(self.channel(room))

    def release(self, room: str) -> bool:
        """One local member less: after the last one the channel is unsubscribed (True)."""
        if self._counts[room] > 1:
            self._counts[room] -= 1
            return False
        self._counts.pop(room, None)
        home = self._home.pop(self.channel(room), None)
        if home is not None:
            home.want(self.channel(room), False)
        return True

    def retained(self, room: str) -> bool:
        return room in self._counts

    async def resubscribed(self, channel: str) -> None:
        prefix = self.base_channel + ":{"
        if self.on_resubscribed is not None and channel.startswith(prefix) and channel.endswith("}"):
            await self.on_resubscribed(channel[len(prefix) : -1])

    def subscribed(self, room: str) -> bool:
        home = self._home.get(self.channel(room))
        return home is not None and home.ready(self.channel(room))

    @property
    def rooms(self) -> int:
        """How many rooms this node holds a subscription for."""
        return len(self._counts)

    async def ready(self, room: str) -> None:
        """Return once ``room``'s channel is subscribed (a join waits for it, so an
        event published right after reaches the new member); StoreUnavailable if
        Redis does not confirm it in time."""
        if self.subscribed(room):
            return
        try:
            async with asyncio.timeout(READY_TIMEOUT), self._changed:
                await self._changed.wait_for(lambda: self.subscribed(room) or room not in self._counts)
        except TimeoutError:
            raise StoreUnavailable("the fan-out subscription was not confirmed") from None

    def notify(self) -> None:
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def lost(self, subscriber: _Subscriber) -> None:
        """A subscriber's connection was lost: on a cluster its channels may have
        moved (a failover, a resharding), so the slot map is read again and each
        channel goes to the subscriber of the node that owns its slot now."""
        if not self.sharded or subscriber.name == BROADCAST:
            return
        with contextlib.suppress(RedisError, OSError):
            await cast(RedisCluster, self._client).nodes_manager.initialize()
        for channel in list(subscriber.wanted):
            if self._node(channel).name != subscriber.name:
                subscriber.want(channel, False)
                self._place(channel)

    def _place(self, channel: str) -> None:
        subscriber = self._subscriber_for(channel)
        self._home[channel] = subscriber
        subscriber.want(channel, True)

    def _node(self, channel: str) -> ClusterNode:
        node = cast(RedisCluster, self._client).get_node_from_key(channel)
        if node is None:  # no slot map: _learn_slots had to succeed before any room is placed
            raise RuntimeError("the Redis Cluster's slots are not known yet")
        return node

    def _subscriber_for(self, channel: str) -> _Subscriber:
        if channel == self.base_channel or not self.sharded:
            name, sharded, connect = BROADCAST, False, self._plain_client
        else:
            node = self._node(channel)
            name, sharded = str(node.name), True
            # The node's own settings (address, credentials, TLS), without the
            # command timeout: a subscriber waits for messages indefinitely.
            settings = {**node.connection_kwargs, "socket_timeout": None, "socket_keepalive": True}
            settings["client_name"] = "ticketgate-fanout"
            connection_class = node.connection_class

            def connect() -> aioredis.Redis:
                pool = aioredis.ConnectionPool(connection_class=connection_class, **settings)
                return aioredis.Redis(connection_pool=pool)

        subscriber = self._subscribers.get(name)
        if subscriber is None:
            subscriber = _Subscriber(name=name, connect=connect, sharded=sharded, broker=self)
            self._subscribers[name] = subscriber
            subscriber.start()
        return subscriber

    def _plain_client(self) -> aioredis.Redis:
        """A connection for plain pub/sub: the instance, the Sentinel's master, or a
        cluster's seed node (plain pub/sub reaches every node of a cluster)."""
        if self.sharded:
            return aioredis.Redis.from_url(
                self.target.url,
                client_name="ticketgate-fanout",
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_keepalive=True,
            )
        client = self.target.client(name="ticketgate-fanout", socket_timeout=None, socket_keepalive=True)
        assert isinstance(client, aioredis.Redis)
        return client
