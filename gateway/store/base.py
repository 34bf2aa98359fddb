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
