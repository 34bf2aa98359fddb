"""The one state-store interface, with a memory and a Redis implementation.

Every key lives under the ``tg:`` prefix and every value has a TTL, so a
cluster's state can never grow without bound. Implementations raise
``StoreUnavailable`` (and nothing else) when their backend cannot be reached.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Literal

PREFIX = "tg:"

Attempt = Literal["counted", "missing", "resolved", "exhausted"]


class Store(abc.ABC):
    """Small on purpose: add an operation only when a feature needs it."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return if the store answers; raise StoreUnavailable otherwise."""

    @abc.abstractmethod
    async def put(self, key: str, value: str, *, ttl: float) -> None:
        """Set ``key`` to ``value`` for ``ttl`` seconds (> 0)."""

    @abc.abstractmethod
    async def get(self, key: str) -> str | None:
        """The value of ``key``, or None when absent or expired."""

    @abc.abstractmethod
    async def take(self, key: str) -> str | None:
        """Atomically read and delete ``key``: of many concurrent callers on
        any node, exactly one gets the value."""

    # Records: flat str->str mappings (a Redis hash) with one TTL for the whole.
    # The atomic operations below follow two conventions: a record's
    # "status" starts as "pending", and "attempts" counts failures.

    @abc.abstractmethod
    async def create_record(self, key: str, fields: Mapping[str, str], *, ttl: float) -> None:
        """Create (or replace) a record living ``ttl`` seconds."""

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
    async def transition(self, key: str, *, from_status: str, to_status: str) -> bool:
        """Compare-and-set the record's status; True for exactly one caller."""

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

    @abc.abstractmethod
    async def read_stream(self, key: str, *, after: str = "0", count: int = 100) -> list[tuple[str, dict[str, str]]]:
        """Up to ``count`` entries with ids after ``after``, oldest first."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""


def check_ttl(ttl: float) -> None:
    if ttl <= 0:
        raise ValueError(f"ttl must be positive, got {ttl}")
