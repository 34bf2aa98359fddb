"""The one state-store interface, with a memory and a Redis implementation.

Every key lives under the ``tg:`` prefix and every value has a TTL, so a
cluster's state can never grow without bound. Implementations raise
``StoreUnavailable`` (and nothing else) when their backend cannot be reached.
"""

from __future__ import annotations

import abc

PREFIX = "tg:"


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

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""


def check_ttl(ttl: float) -> None:
    if ttl <= 0:
        raise ValueError(f"ttl must be positive, got {ttl}")
