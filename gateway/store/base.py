"""The one state-store interface, with a memory and a Redis implementation.

Every key lives under the ``tg:`` prefix and every value has a TTL, so a
cluster's state can never grow without bound. Implementations raise
``StoreUnavailable`` (and nothing else) when their backend cannot be reached.
An operation on several keys takes keys of one hash slot only (one
``keys.slot_tag``; Redis Cluster runs a script on one shard), and both
engines refuse others with ValueError, so that the memory engine catches a
caller that would break on a cluster.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.store.keys import slot_tag

Attempt = Literal["counted", "missing", "resolved", "exhausted"]
Rotation = Literal["rotated", "missing", "reuse", "revoked", "stale"]


@dataclass(frozen=True, kw_only=True)
class Admission:
    """The outcome of ``Store.admit``."""

    revoked: bool = False  # the credential was issued before the user's revocation
    parked: list[str] = field(default_factory=list)  # held events waiting for this user


@dataclass(frozen=True, kw_only=True)
class PresenceChange:
    """What one presence operation did to a room, decided in the store, once
    for the whole cluster: the node whose call reports a transition is the one
    that acts on it (events, webhooks)."""

    room: str
    entered: tuple[str, ...] = ()  # subs whose first connection to the room came
    left: tuple[str, ...] = ()  # subs whose last connection went
    occupied: bool = False  # the room's first connection (not within offline_grace of its vacating)
    vacated: bool = False  # its last one went offline_grace ago, and none came back since
    refused: bool = False  # presence_enter: the sub already holds ``limit`` connections
    lost: bool = False  # presence_beat: this node's part was gone (reaped, or lost by Redis)
    connections: int = 0  # the room's connections afterwards

    @property
    def changed(self) -> bool:
        return bool(self.entered or self.left or self.occupied or self.vacated)


@dataclass(frozen=True, kw_only=True)
class PresencePage:
    """Members of a room in order of their sub, after ``presence_read``'s ``after``."""

    users: int  # members of the room
    connections: int  # their connections
    members: list[tuple[str, int]]  # (sub, connections)
    more: bool  # members follow the last one of this page


class Store(abc.ABC):
    """Every operation here has a caller among the services; add one only when a
    feature needs it. Key names come from ``gateway.store.keys``."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return if the store answers; raise StoreUnavailable otherwise."""

    @abc.abstractmethod
    async def put(self, key: str, value: str, *, ttl: float) -> None:
        """Set ``key`` to ``value`` for ``ttl`` seconds (> 0)."""

    @abc.abstractmethod
    async def take(self, key: str) -> str | None:
        """Atomically read and delete ``key`` (None when absent or expired): of
        many concurrent callers on any node, exactly one gets the value."""

    # Records: flat str->str mappings (a Redis hash) with one TTL for the whole.
    # The atomic operations below follow two conventions: a record's
    # "status" starts as "pending", and "attempts" counts failures.

    async def create_record(self, key: str, fields: Mapping[str, str], *, ttl: float) -> None:
        """Create (or replace) a record living ``ttl`` seconds."""
        await self.create_records({key: fields}, ttl=ttl)

    @abc.abstractmethod
    async def create_records(self, records: Mapping[str, Mapping[str, str]], *, ttl: float) -> None:
        """Create (or replace) several records at once (one round trip), each living
        ``ttl``; their keys share one slot tag."""

    @abc.abstractmethod
    async def get_record(self, key: str) -> dict[str, str] | None:
        """The record, or None when absent or expired."""

    @abc.abstractmethod
    async def incr_field(self, key: str, field: str) -> dict[str, str] | None:
        """Atomically add 1 to an integer field of an existing record and return
        the updated record; None (and nothing created) if the record is absent."""

    @abc.abstractmethod
    async def count_attempt(self, key: str, *, limit: int) -> tuple[Attempt, dict[str, str] | None]:
        """Atomically spend one attempt of a pending record.

        Returns ("counted", record) with ``attempts`` already incremented;
        ("missing", None); ("resolved", record) when status is not pending;
        or ("exhausted", record) when ``limit`` attempts were already spent.
        """

    @abc.abstractmethod
    async def transition(self, key: str, *, from_status: str, to_status: str, ttl: float | None = None) -> bool:
        """Compare-and-set the record's status; True for exactly one caller. With
        ``ttl``, the record then lives ``ttl`` more seconds (> 0)."""

    @abc.abstractmethod
    async def append(self, key: str, member: str, *, ttl: float) -> None:
        """Append ``member`` to the list at ``key`` (if not there yet) and set its TTL."""

    @abc.abstractmethod
    async def members(self, key: str) -> list[str]:
        """The list at ``key`` in insertion order (empty when absent)."""

    # Streams: an append-only log trimmed to about ``maxlen`` entries (a Redis
    # Stream; a bounded deque in memory), for consumers outside the gateway.

    @abc.abstractmethod
    async def append_stream(self, key: str, fields: Mapping[str, str], *, maxlen: int, ttl: float) -> str:
        """Append one entry; return its stream id. The stream's TTL is renewed."""

    # Users: admission, revocation, parked events, live-socket registry.

    @abc.abstractmethod
    async def admit(self, *, sub: str, iat: float, sid: str, until: float, ttl: float) -> Admission:
        """Atomically admit socket ``sid`` of user ``sub``.

        If the credential's ``iat`` is before the user's revocation cut-off,
        return ``revoked`` and change nothing. Otherwise take (remove and
        return) the user's parked events and register ``sid`` as live until
        ``until``; the registry then lives ``ttl`` seconds.
        """

    @abc.abstractmethod
    async def is_revoked(self, sub: str, iat: float) -> bool:
        """True if a credential of ``sub`` issued at ``iat`` is revoked."""

    @abc.abstractmethod
    async def forget_socket(self, sub: str, sid: str) -> None:
        """Remove ``sid`` from the user's live-socket registry."""

    @abc.abstractmethod
    async def disconnect_user(self, sub: str, *, now: float, revoke: bool, ttl: float) -> int:
        """Count (and clear) the user's live sockets; with ``revoke``, also set the
        revocation cut-off to ``now`` (kept ``ttl`` seconds)."""

    @abc.abstractmethod
    async def park(self, sub: str, events: Sequence[str], *, cap: int, ttl: float) -> int:
        """Append held events for the user's next socket, keeping the newest
        ``cap``; return how many old ones were dropped."""

    # Refresh tokens: records keyed by token hash, grouped in family records.

    @abc.abstractmethod
    async def rotate(
        self,
        old_key: str,
        new_key: str,
        *,
        family_key: str,
        fields: Mapping[str, str],
        ttl: float,
        revoked_key: str,
        renewal: bool = False,
    ) -> tuple[Rotation, dict[str, str] | None]:
        """Atomically rotate a refresh token.

        "missing": no such token. "reuse": the token was already rotated; the
        family is marked revoked (with ``renewal``, the gateway's own push of a
        successor, an already rotated token is "stale" instead and nothing
        changes: a client rotated it, which is no reuse). "revoked": the family is revoked or the
        token's ``iat`` is before the cut-off at ``revoked_key``. "rotated":
        the old token is marked rotated and ``new_key`` created with ``fields``
        (both and the family live ``ttl``). The old record is returned.
        """

    # Presence (docs/presence.md): per room (``user:<sub>`` and tracked rooms),
    # each member's connections over the cluster. A node owns its part of a room
    # under a lease of ``ttl`` seconds that its heartbeat renews
    # (``presence_beat``); every operation first drops the parts of nodes whose
    # lease ran out. A room left empty is *vacating* for ``grace`` seconds: a
    # connection within them cancels it (no vacated, no occupied), else
    # ``presence_sweep`` reports it vacated. Every operation on a room is one
    # atomic step (one round trip on Redis, plus one when it starts a lease or
    # a vacate: the work that falls due later is indexed).

    @abc.abstractmethod
    async def presence_enter(
        self, room: str, sub: str, *, node: str, ttl: float, grace: float, limit: int = 0
    ) -> PresenceChange:
        """One more connection of ``sub`` on ``node``; with ``limit`` > 0, refused
        (``refused``, nothing changed) if ``sub`` holds ``limit`` already."""

    @abc.abstractmethod
    async def presence_leave(self, room: str, sub: str, *, node: str, ttl: float, grace: float) -> PresenceChange:
        """One connection of ``sub`` on ``node`` fewer."""

    @abc.abstractmethod
    async def presence_beat(self, rooms: Sequence[str], *, node: str, ttl: float, grace: float) -> list[PresenceChange]:
        """Renew ``node``'s leases in ``rooms``; a room where it held nothing any
        more comes back ``lost`` (call ``presence_sync`` for it)."""

    @abc.abstractmethod
    async def presence_sync(
        self, room: str, held: Mapping[str, int], *, node: str, ttl: float, grace: float
    ) -> PresenceChange:
        """Make ``node``'s part of ``room`` exactly ``held`` (sub -> connections)."""

    @abc.abstractmethod
    async def presence_read(
        self, room: str, *, after: str | None, limit: int, ttl: float, grace: float
    ) -> tuple[PresencePage, PresenceChange]:
        """Up to ``limit`` members with subs after ``after`` (None: from the first),
        and what dropping dead nodes' parts changed on the way."""

    @abc.abstractmethod
    async def presence_sweep(self, *, ttl: float, grace: float, batch: int = 100) -> list[PresenceChange]:
        """Do the presence work that is due, at most ``batch`` items: rooms where
        a lease ran out, vacates whose grace is over. Each item is done by one
        caller of the cluster (claimed for ``ttl`` seconds, then retried)."""

    async def warm(self) -> None:  # noqa: B027 (optional: only the redis engine has something to do)
        """Get ready for traffic before the node listens (a Redis Cluster client
        reads the slot map: ``gateway.redisconn.learn_slots``); StoreUnavailable
        if Redis cannot be reached, and then the first command does it."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""


def check_ttl(ttl: float) -> None:
    if ttl <= 0:
        raise ValueError(f"ttl must be positive, got {ttl}")


def check_one_slot(names: Iterable[str]) -> None:
    """ValueError unless every key in ``names`` has the same slot tag."""
    tags = {slot_tag(name) for name in names}
    if len(tags) > 1:
        raise ValueError(f"the keys of one operation must share one hash slot tag, not {len(tags)}")
