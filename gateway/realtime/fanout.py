"""What the domain needs of the delivery path: publish to a room, close a room.

Services (auth sessions, refresh tokens, messages) take this protocol, not
the concrete ``Realtime``: they say what reaches whom, the delivery path
decides how (this node's sockets, the cluster's, both transports).
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.closes import Close


class Fanout(Protocol):
    async def publish(self, room: str, event: str, data: Any) -> None:
        """Deliver ``event`` to every socket of ``room`` on every node; StoreUnavailable
        if the cluster cannot be reached (then no socket has it)."""

    async def close_room(
        self, room: str, close: Close, *, older_than: int | None = None, via: str | None = None
    ) -> None:
        """Send ``closing`` to, then close, every socket of ``room`` on every node
        (with ``older_than``: only connections numbered below it). ``via``: a room
        all of whose nodes hold ``room``'s sockets, for a ``room`` that is no
        Socket.IO room of its own (a refresh-token family: its user's room)."""
