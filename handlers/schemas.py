"""Marshmallow schemas of every body and payload, plus wire formatting helpers.

The same schemas validate requests and feed ``/openapi.json`` (apispec).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from gateway.realtime import RESERVED_EVENTS, ROOM_PATTERN


def iso_z(ts: float) -> str:
    """PROTOCOL §6.1: ISO 8601 UTC with a trailing Z, whole seconds."""
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


class ConnectAuth(Schema):
    """The Socket.IO ``auth`` object (or the query string): exactly one kind."""

    # Size and shape of tickets and tokens are judged by their services, so
    # that an oversized token is refused as invalid_token, not invalid_request.
    ticket = fields.String()
    token = fields.String()
