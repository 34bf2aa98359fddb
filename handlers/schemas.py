"""Marshmallow schemas of every body and payload, plus wire formatting helpers.

The same schemas validate requests and feed ``/openapi.json`` (apispec).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from gateway.errors import InvalidRequest
from gateway.realtime import ROOM_PATTERN, is_reserved_event

# C0 and C1 controls and DEL: never part of an id, a credential, a room or an event name.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_DEPTH = 32  # nesting of published and sent data; deeper is refused, not recursed into


def _is_text(value: str) -> bool:
    """Encodable as UTF-8: JSON can carry a lone surrogate (``"\\ud800"``), and every
    store, hash and encoder after the door would fail on it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Text(fields.String):
    """A string that is valid Unicode text without control characters."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text: str = super()._deserialize(value, attr, data, **kwargs)
        if not _is_text(text):
            raise ValidationError("must be valid Unicode text")
        if _CONTROL.search(text):
            raise ValidationError("must not contain control characters")
        return text


class Json(fields.Raw):
    """Any JSON value whose strings are valid Unicode text, nested at most MAX_DEPTH deep."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        _check_json(value, 0)
        return value


def _check_json(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValidationError(f"nested deeper than {MAX_DEPTH}")
    if isinstance(value, str):
        if not _is_text(value):
            raise ValidationError("must be valid Unicode text")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json(key, depth + 1)
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)


def load(schema: type[Schema], data: Any, *, not_an_object: str = "the payload must be an object") -> dict[str, Any]:
    """``data`` validated by ``schema``, or InvalidRequest naming the first bad field."""
    if not isinstance(data, dict):
        raise InvalidRequest(not_an_object)
    try:
        loaded: dict[str, Any] = _instance(schema).load(data)
    except ValidationError as exc:
        raise InvalidRequest(first_error(exc)) from None
    return loaded


@functools.cache
def _instance(schema: type[Schema]) -> Schema:
    """One instance of each schema: building one copies its fields (marshmallow),
    a measurable cost on a connect."""
    return schema()


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


def _not_reserved(name: str) -> None:
    if is_reserved_event(name):
        raise ValidationError("is reserved (Socket.IO's own events, the gateway's _tg: control messages)")


class PublishRequest(Schema):
    room = Text(
        required=True,
        validate=validate.Regexp(ROOM_PATTERN, error="must be user:<sub>, session:<id> or room:<name>"),
    )
    event = Text(
        required=True,
        validate=[
            validate.Length(min=1, max=100),
            _not_reserved,
        ],
    )
    data = Json(load_default=None, allow_none=True)


class PublishResponse(Schema):
    room = fields.String(required=True)
    event = fields.String(required=True)


_ID = validate.Length(min=1, max=200)
_BASE64URL = validate.Regexp(r"^[A-Za-z0-9_-]+={0,2}\Z", error="must be base64url")


class EnrollRequest(Schema):
    userId = Text(required=True, validate=_ID)
    publicKey = fields.Dict(required=True, metadata={"description": "EC P-256 public JWK"})


class EnrollResponse(Schema):
    deviceId = fields.String(required=True)
    totpSecret = fields.String(required=True, metadata={"description": "base32"})
    digits = fields.Integer(required=True)
    period = fields.Integer(required=True)
    algorithm = fields.String(required=True)


class InitiateRequest(Schema):
    userId = Text(required=True, validate=_ID)


class InitiateResponse(Schema):
    sessionId = fields.String(required=True)
    wsToken = fields.String(required=True)
    random = fields.String(required=True)
    expiresAt = fields.String(required=True)


class VerifyRequest(Schema):
    sessionId = Text(required=True, validate=_ID)
    deviceId = Text(required=True, validate=_ID)
    otp = Text(required=True, validate=validate.Regexp(r"^[0-9]{6}\Z", error="must be 6 digits"))
    signature = Text(required=True, validate=[validate.Length(min=1, max=200), _BASE64URL])


class VerifyResponse(Schema):
    status = fields.String(required=True)


class ConnectAuth(Schema):
    """The Socket.IO ``auth`` object (or the query string): exactly one kind."""

    # Size and shape of tickets and tokens are judged by their services, so
    # that an oversized token is refused as invalid_token, not invalid_request.
    ticket = Text()
    token = Text()
    sessionId = Text(validate=_ID)
    wsToken = Text(validate=validate.Length(min=1, max=200))
    refreshToken = Text(validate=validate.Length(min=1, max=200))
    # socket.io-client's connection state recovery (docs/recovery.md): sent back on a reconnect.
    pid = Text(validate=validate.Length(min=1, max=64))
    offset = Text(validate=validate.Length(max=4096))


class AuthenticateEvent(Schema):
    """``authenticate``: exactly one of token or ticket."""

    token = Text(validate=validate.Length(min=1))
    ticket = Text(validate=validate.Length(min=1))


class RoomEvent(Schema):
    room = Text(required=True, validate=validate.Regexp(r"^room:[^\s]{1,200}\Z", error="must be room:<name>"))


class MessageEvent(Schema):
    room = Text(required=True, validate=validate.Regexp(r"^room:[^\s]{1,200}\Z", error="must be room:<name>"))
    data = Json(required=True, allow_none=True)
    token = Text(validate=validate.Length(min=1))


class PresenceEvent(Schema):
    """``presence``: the first page of a tracked room's members (or the page after ``cursor``)."""

    room = Text(required=True, validate=validate.Regexp(r"^room:[^\s]{1,200}\Z", error="must be room:<name>"))
    cursor = Text(validate=validate.Length(min=1, max=400))


class RefreshEvent(Schema):
    refreshToken = Text(required=True, validate=validate.Length(min=1, max=200))


class RawSessionParams(Schema):
    """``/ws/session/{sessionId}?token={wsToken}``."""

    sessionId = Text(required=True, validate=_ID)
    token = Text(required=True, validate=validate.Length(min=1, max=200))


class UserPath(Schema):
    """The ``{sub}`` of ``/api/users/{sub}/...``."""

    sub = Text(required=True, validate=_ID)


class RoomPath(Schema):
    """The ``{room}`` of ``/api/rooms/{room}/...``: the full ``room:<name>``."""

    room = Text(required=True, validate=validate.Regexp(r"^room:[^\s]{1,200}\Z", error="must be room:<name>"))


class PresenceQuery(Schema):
    """``GET /api/rooms/{room}/presence``'s query string."""

    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = Text(validate=validate.Length(min=1, max=400), metadata={"description": "the last page's cursor"})


class UserPresenceResponse(Schema):
    sub = fields.String(required=True)
    online = fields.Boolean(required=True)
    connections = fields.Integer(required=True, metadata={"description": "over the whole cluster"})


class PresenceMember(Schema):
    sub = fields.String(required=True)
    connections = fields.Integer(required=True)


class RoomPresenceResponse(Schema):
    room = fields.String(required=True)
    users = fields.Integer(required=True)
    connections = fields.Integer(required=True)
    members = fields.List(fields.Nested(PresenceMember), required=True)
    cursor = fields.String(
        required=True, allow_none=True, metadata={"description": "the next page's; null on the last page"}
    )


class DisconnectRequest(Schema):
    revokeTokens = fields.Boolean(load_default=False)


class DisconnectResponse(Schema):
    disconnected = fields.Integer(required=True)
