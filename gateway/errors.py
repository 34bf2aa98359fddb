"""One rooted exception tree for the domain.

Domain code raises these; only ``handlers/`` translates them into Socket.IO
refusals, ``closing`` codes or HTTP error bodies. Each class carries the
protocol's snake_case ``reason`` so the boundary needs no string tables.
"""

from __future__ import annotations

from gateway.closes import Close


class GatewayError(Exception):
    """Root of every error ticketgate raises on purpose."""

    reason = "internal_error"


class ConfigError(GatewayError):
    """The configuration is invalid; the message names the setting."""

    reason = "invalid_config"


class StartupError(GatewayError):
    """The gateway cannot start (a port in use, a part of the web demo missing);
    the message says what is wrong and how to fix it. Never crosses the wire:
    the CLI prints it as one line and exits 2."""


class StoreUnavailable(GatewayError):
    """The state store (Redis) cannot be reached."""

    reason = "unavailable"


class InvalidRequest(GatewayError):
    """Malformed input: wrong shape, unknown field, wrong type."""

    reason = "invalid_request"


class AuthError(GatewayError):
    """The presented credentials do not authenticate anyone."""

    reason = "unauthenticated"


class MissingCredentials(AuthError):
    reason = "missing_credentials"


class AmbiguousCredentials(AuthError):
    reason = "ambiguous_credentials"


class InvalidToken(AuthError):
    reason = "invalid_token"


class TokenExpired(InvalidToken):
    reason = "token_expired"


class AuthExpired(AuthError):
    """The socket's authentication expired and it has not re-authenticated."""

    reason = "auth_expired"


class InvalidTicket(AuthError):
    reason = "invalid_ticket"


class Revoked(AuthError):
    reason = "revoked"


class Forbidden(GatewayError):
    reason = "forbidden"


class RateLimited(GatewayError):
    reason = "rate_limited"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyConnections(RateLimited):
    """The user holds ``max_connections_per_user`` connections over the cluster already."""

    reason = "too_many_connections"


class NotAMember(Forbidden):
    """Presence of a room the socket is not in."""

    reason = "not_a_member"


class SessionNotFound(GatewayError):
    reason = "session_not_found"


class SessionResolved(GatewayError):
    reason = "session_resolved"


class VerifyFailed(AuthError):
    """A failed device verification; counts an attempt."""

    def __init__(self, message: str, *, attempts_left: int) -> None:
        super().__init__(message)
        self.attempts_left = attempts_left


class InvalidOtp(VerifyFailed):
    reason = "invalid_otp"


class InvalidSignature(VerifyFailed):
    reason = "invalid_signature"


class TooManyAttempts(RateLimited):
    reason = "too_many_attempts"
    attempts_left = 0


class PayloadTooLarge(InvalidRequest):
    reason = "payload_too_large"


class RefreshReuse(Revoked):
    """A rotated refresh token was presented again: its family is revoked."""

    reason = "refresh_reuse"


class ClosedWhileConnecting(GatewayError):
    """A close order (replaced, revoked, ...) reached a socket still inside its
    connect handler, where it cannot be disconnected: the connect is refused
    with the order's code instead."""

    def __init__(self, close: Close) -> None:
        super().__init__(f"closed while connecting: {close.reason}")
        self.close = close
        self.reason = close.reason
