"""Every way the server ends a connection, named once (PROTOCOL §3 "Server-initiated
close", §4): the domain orders a ``Close``, the doors carry it out on their
transport (the ``closing`` event then a Socket.IO disconnect, or a WebSocket
close frame with the same code and reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Close:
    code: int
    reason: str

    def payload(self) -> dict[str, Any]:
        """The ``closing`` event's data."""
        return {"code": self.code, "reason": self.reason}


RESOLVED = Close(1000, "resolved")  # an auth session was approved or finally rejected
EXPIRED = Close(1000, "expired")  # an auth session timed out
GOING_AWAY = Close(1001, "going_away")  # this node is shutting down: reconnect elsewhere
UNAVAILABLE = Close(1011, "unavailable")  # raw WebSocket only: the store cannot be reached
UNAUTHENTICATED = Close(4001, "unauthenticated")  # an event before `authenticate`
INVALID_TOKEN = Close(4001, "invalid_token")  # re-authentication as another sub; a bad wsToken
AUTH_TIMEOUT = Close(4008, "auth_timeout")
REPLACED = Close(4009, "replaced")  # a newer connection to the same auth session
AUTH_EXPIRED = Close(4010, "auth_expired")
REVOKED = Close(4011, "revoked")
REFRESH_REUSE = Close(4011, "refresh_reuse")
DISCONNECTED = Close(4011, "disconnected")
SLOW_CONSUMER = Close(4012, "slow_consumer")  # more than max_buffered_bytes sent and not read
RATE_LIMITED = Close(4029, "rate_limited")  # a socket that stayed over client_event_rate
# A deferred socket whose `authenticate` would pass max_connections_per_user.
TOO_MANY_CONNECTIONS = Close(4029, "too_many_connections")
