"""The delivery path: how an event reaches the sockets it is for.

* ``engine``: the Engine.IO layer (python-engineio's server with sessions
  whose WebSocket is written directly, and the long-polling fixes);
* ``server``: the Socket.IO server (python-socketio's, on that engine);
* ``managers``: the client managers, where every local delivery is one
  encoded frame written to each recipient, and the Redis fan-out;
* ``registry``: this node's sockets;
* ``node``: ``Realtime``, the emits, closes, the drain and held events;
* ``fanout``: the protocol the domain services depend on.
"""

from __future__ import annotations

from gateway.realtime.fanout import Fanout
from gateway.realtime.names import (
    NAMESPACE,
    RESERVED_EVENTS,
    ROOM_PATTERN,
    family_room,
    is_reserved_event,
    user_room,
)
from gateway.realtime.node import RawSocket, Realtime
from gateway.realtime.registry import Conn
from gateway.realtime.server import Server, create_server

__all__ = [
    "NAMESPACE",
    "RESERVED_EVENTS",
    "ROOM_PATTERN",
    "Conn",
    "Fanout",
    "RawSocket",
    "Realtime",
    "Server",
    "create_server",
    "family_room",
    "is_reserved_event",
    "user_room",
]
