"""Wire formats shared by the domain's events and the HTTP doors (PROTOCOL §6.1-6.2)."""

from __future__ import annotations

import base64
import math
import re
from datetime import UTC, datetime

_B64URL = re.compile(r"[A-Za-z0-9_-]*")

# The first and last whole seconds ISO 8601 (and Python's datetime) can write:
# 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
FIRST_TIMESTAMP = -62135596800
LAST_TIMESTAMP = 253402300799


def iso_z(ts: float) -> str:
    """ISO 8601 UTC with a trailing Z, whole seconds (truncated).

    A time past 9999-12-31T23:59:59Z (a token may expire then, and a deadline be
    later still) is written as that second, one before year 1 as year 1: the
    nearest time the format can say, never an OverflowError. ValueError for NaN.
    """
    if math.isnan(ts):
        raise ValueError("NaN is not a time")
    whole = int(min(max(ts, FIRST_TIMESTAMP), LAST_TIMESTAMP))
    return datetime.fromtimestamp(whole, UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def b64url(raw: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_canonical_b64url(text: str) -> bool:
    """Whether ``text`` is the one base64url spelling of its bytes: only the
    URL-safe alphabet, no padding, no length of 1 mod 4, and the unused low
    bits of the last character zero (re-encoding gives ``text`` back)."""
    return bool(_B64URL.fullmatch(text)) and len(text) % 4 != 1 and b64url(b64url_decode(text)) == text
