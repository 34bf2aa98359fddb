"""Wire formats shared by the domain's events and the HTTP doors (PROTOCOL §6.1-6.2)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime


def iso_z(ts: float) -> str:
    """ISO 8601 UTC with a trailing Z, whole seconds."""
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def b64url(raw: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
