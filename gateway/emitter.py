"""Publish into a ticketgate cluster from any Python backend, without running
a gateway: the gateway's own routed manager, write-only (an event goes only to
the nodes with members of its room).

    emitter = Emitter("redis://localhost:6379/0")   # cluster=True for a Redis Cluster
    await emitter.publish("user:alice", "invoice_paid", {"id": 42})
    await emitter.close()
"""

from __future__ import annotations

from typing import Any

from gateway.realtime import ROOM_PATTERN, is_reserved_event
from gateway.realtime.history import HISTORY_MARGIN
from gateway.realtime.managers import RoutedManager
from gateway.redisconn import RedisTarget


class Emitter:
    def __init__(
        self, redis_url: str, *, channel: str = "socketio", cluster: bool = False, recovery_window: float = 120
    ) -> None:
        """``recovery_window``: the gateways' (docs/recovery.md); events are then
        kept in their rooms' history, as the gateways' own, for reconnects to recover."""
        keep = recovery_window + HISTORY_MARGIN if recovery_window > 0 else 0.0
        target = RedisTarget(redis_url, cluster=cluster)
        self._manager = RoutedManager(target, channel=channel, write_only=True, keep=keep)

    async def publish(self, room: str, event: str, data: Any = None) -> None:
        """Deliver ``event`` to ``room`` on every gateway of the cluster.

        ``room`` is ``user:<sub>``, ``session:<id>`` or ``room:<name>``. Raises
        ValueError for a bad room or event name, StoreUnavailable when Redis
        cannot be reached.
        """
        if not ROOM_PATTERN.match(room):
            raise ValueError("room must be user:<sub>, session:<id> or room:<name>")
        if not event or is_reserved_event(event):
            raise ValueError(f"event name {event!r} is empty or reserved (Socket.IO's own, or _tg: control messages)")
        await self._manager.emit(event, data, room=room)

    async def close(self) -> None:
        await self._manager.close()
