"""Marshmallow schemas of every body and payload, plus wire formatting helpers.

The same schemas validate requests and feed ``/openapi.json`` (apispec).
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from gateway.errors import InvalidRequest
from gateway.realtime import RESERVED_EVENTS, ROOM_PATTERN


def load(schema: Schema, data: Any, *, not_an_object: str = "the payload must be an object") -> dict[str, Any]:
    """``data`` validated by ``schema``, or InvalidRequest naming the first bad field."""
    if not isinstance(data, dict):
        raise InvalidRequest(not_an_object)
    try:
        loaded: dict[str, Any] = schema.load(data)
    except ValidationError as exc:
        raise InvalidRequest(first_error(exc)) from None
    return loaded


def first_error(exc: ValidationError) -> str:
    """One readable line naming the first bad field."""
    messages: Any = exc.messages
    path: list[str] = []
    while isinstance(messages, dict) and messages:
        key, messages = next(iter(messages.items()))
        if key != "_schema":
            path.append(str(key))
    while isinstance(messages, list) and messages:
        messages = messages[0]
    text = str(messages).rstrip(".")
    if text == "Unknown field":
        return f"unknown field: {'.'.join(path)}"
    return f"{'.'.join(path)}: {text}" if path else text


class ErrorBody(Schema):
    code = fields.String(required=True, metadata={"description": "snake_case reason"})
    message = fields.String(required=True)
    attemptsLeft = fields.Integer()


class ErrorResponse(Schema):
    error = fields.Nested(ErrorBody, required=True)


class StatusResponse(Schema):
    status = fields.String(required=True)


class JwksResponse(Schema):
    keys = fields.List(fields.Dict(), required=True)


class TicketRequest(Schema):
    """POST /ws/ticket takes no fields; an empty body or ``{}``."""


class TicketResponse(Schema):
    ticket = fields.String(required=True)
    expires = fields.Integer(required=True, metadata={"description": "unix seconds"})
    expiresAt = fields.String(required=True, metadata={"description": "ISO 8601 UTC, Z"})


class PublishRequest(Schema):
    room = fields.String(
        required=True,
        validate=validate.Regexp(ROOM_PATTERN, error="must be user:<sub>, session:<id> or room:<name>"),
    )
    event = fields.String(
        required=True,
        validate=[
            validate.Length(min=1, max=100),
            validate.NoneOf(RESERVED_EVENTS, error="is reserved by Socket.IO"),
        ],
    )
    data = fields.Raw(load_default=None, allow_none=True)


class PublishResponse(Schema):
    room = fields.String(required=True)
    event = fields.String(required=True)


_ID = validate.Length(min=1, max=200)
_BASE64URL = validate.Regexp(r"^[A-Za-z0-9_-]+={0,2}\Z", error="must be base64url")


class EnrollRequest(Schema):
    userId = fields.String(required=True, validate=_ID)
    publicKey = fields.Dict(required=True, metadata={"description": "EC P-256 public JWK"})


class EnrollResponse(Schema):
    deviceId = fields.String(required=True)
    totpSecret = fields.String(required=True, metadata={"description": "base32"})
    digits = fields.Integer(required=True)
    period = fields.Integer(required=True)
    algorithm = fields.String(required=True)


class InitiateRequest(Schema):
    userId = fields.String(required=True, validate=_ID)


class InitiateResponse(Schema):
    sessionId = fields.String(required=True)
    wsToken = fields.String(required=True)
    random = fields.String(required=True)
    expiresAt = fields.String(required=True)


class VerifyRequest(Schema):
    sessionId = fields.String(required=True, validate=_ID)
    deviceId = fields.String(required=True, validate=_ID)
    otp = fields.String(required=True, validate=validate.Regexp(r"^[0-9]{6}\Z", error="must be 6 digits"))
    signature = fields.String(required=True, validate=[validate.Length(min=1, max=200), _BASE64URL])


class VerifyResponse(Schema):
    status = fields.String(required=True)


class ConnectAuth(Schema):
    """The Socket.IO ``auth`` object (or the query string): exactly one kind."""

    # Size and shape of tickets and tokens are judged by their services, so
    # that an oversized token is refused as invalid_token, not invalid_request.
    ticket = fields.String()
    token = fields.String()
    sessionId = fields.String(validate=_ID)
    wsToken = fields.String(validate=validate.Length(min=1, max=200))
    refreshToken = fields.String(validate=validate.Length(min=1, max=200))


class AuthenticateEvent(Schema):
    """``authenticate``: exactly one of token or ticket."""

    token = fields.String(validate=validate.Length(min=1))
    ticket = fields.String(validate=validate.Length(min=1))


class RoomEvent(Schema):
    room = fields.String(required=True, validate=validate.Regexp(r"^room:[^\s]{1,200}\Z", error="must be room:<name>"))


class MessageEvent(Schema):
    room = fields.String(required=True, validate=validate.Regexp(r"^room:[^\s]{1,200}\Z", error="must be room:<name>"))
    data = fields.Raw(required=True, allow_none=True)
    token = fields.String(validate=validate.Length(min=1))


class RefreshEvent(Schema):
    refreshToken = fields.String(required=True, validate=validate.Length(min=1, max=200))


class DisconnectRequest(Schema):
    revokeTokens = fields.Boolean(load_default=False)


class DisconnectResponse(Schema):
    disconnected = fields.Integer(required=True)
