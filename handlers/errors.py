"""Domain errors translated for each surface, in one table and one lookup.

The domain raises classes of ``gateway.errors``; each door asks ``code_for``
what its wire shows: an HTTP status, a ``connect_error`` code, an ack error
code, or a raw WebSocket close code (PROTOCOL §2, §3, §4 and docs/protocol.md).
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

from gateway.errors import (
    AuthError,
    ClosedWhileConnecting,
    Forbidden,
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    RateLimited,
    Revoked,
    SessionNotFound,
    SessionResolved,
    StoreUnavailable,
)


class Surface(enum.Enum):
    HTTP = "http"
    CONNECT = "connect"  # connect_error's data.code
    ACK = "ack"  # {"ok": false, "error": {"code"}}
    RAW = "raw"  # the close code of /ws/session/{id}


class Codes(NamedTuple):
    http: int
    connect: int
    ack: int
    raw: int


# ``code_for`` walks an error's MRO and takes the first class listed here.
_CODES: dict[type[GatewayError], Codes] = {
    PayloadTooLarge: Codes(http=413, connect=4001, ack=4013, raw=1011),
    InvalidRequest: Codes(http=400, connect=4001, ack=4000, raw=1011),
    Revoked: Codes(http=401, connect=4011, ack=4011, raw=4001),
    AuthError: Codes(http=401, connect=4001, ack=4001, raw=4001),
    Forbidden: Codes(http=403, connect=4003, ack=4003, raw=1011),
    SessionNotFound: Codes(http=404, connect=4004, ack=4004, raw=4004),
    SessionResolved: Codes(http=409, connect=4001, ack=4000, raw=4004),
    RateLimited: Codes(http=429, connect=4029, ack=4029, raw=4029),
    StoreUnavailable: Codes(http=503, connect=4503, ack=4503, raw=1011),
    GatewayError: Codes(http=500, connect=4001, ack=4000, raw=1011),
}


def code_for(exc: GatewayError, surface: Surface) -> int:
    if isinstance(exc, ClosedWhileConnecting) and surface in (Surface.CONNECT, Surface.RAW):
        return exc.close.code
    for cls in type(exc).__mro__:
        codes = _CODES.get(cls)
        if codes is not None:
            return int(getattr(codes, surface.value))
    raise TypeError(f"{type(exc).__name__} is not a GatewayError")


def ack_error(exc: GatewayError) -> dict[str, Any]:
    """An event's failure ack: ``{"ok": false, "error": {"code", "reason"}}``."""
    return {"ok": False, "error": {"code": code_for(exc, Surface.ACK), "reason": exc.reason}}


def connect_error_data(exc: GatewayError) -> dict[str, Any]:
    """``err.data`` of a refused connect: ``{"code", "reason"}``."""
    return {"code": code_for(exc, Surface.CONNECT), "reason": exc.reason}
