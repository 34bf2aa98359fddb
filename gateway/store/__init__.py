"""State stores: ``create_store(url)`` picks the engine from the Redis URL."""

from __future__ import annotations

from gateway.store import keys
from gateway.store.base import Store
from gateway.store.keys import PREFIX
from gateway.store.memory import MemoryStore


def create_store(redis_url: str | None) -> Store:
    if not redis_url:
        return MemoryStore()
    from gateway.store.redis import RedisStore

    return RedisStore(url=redis_url)


__all__ = ["PREFIX", "MemoryStore", "Store", "create_store", "keys"]
