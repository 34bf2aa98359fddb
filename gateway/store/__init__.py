"""State stores: ``create_store(target)`` picks the engine: memory without a
Redis, else redis (one Redis, Sentinel or Cluster, as ``target`` says)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.store import keys
from gateway.store.base import Store
from gateway.store.keys import PREFIX
from gateway.store.memory import MemoryStore

if TYPE_CHECKING:
    from gateway.redisconn import RedisTarget


def create_store(target: RedisTarget | None) -> Store:
    if target is None:
        return MemoryStore()
    from gateway.store.redis import RedisStore

    return RedisStore(target=target)


__all__ = ["PREFIX", "MemoryStore", "Store", "create_store", "keys"]
