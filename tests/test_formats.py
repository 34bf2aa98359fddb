"""gateway/formats.py: the wire's time and base64url formats (PROTOCOL §6.1-6.2)."""

from __future__ import annotations

import pytest

from gateway.formats import is_canonical_b64url, iso_z


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1.9, "1970-01-01T00:00:01Z"),
        (1768471260, "2026-01-15T10:01:00Z"),
        (253402300799, "9999-12-31T23:59:59Z"),
    ],
)
def test_iso_z_whole_seconds_with_z(ts: float, text: str) -> None:
    assert iso_z(ts) == text


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (253402300799 + 30, "9999-12-31T23:59:59Z"),  # a reauth deadline: exp + reauth_grace
        (1e20, "9999-12-31T23:59:59Z"),
        (float("inf"), "9999-12-31T23:59:59Z"),
        (-1e20, "0001-01-01T00:00:00Z"),
        (float("-inf"), "0001-01-01T00:00:00Z"),
    ],
)
def test_iso_z_clamps_to_what_it_can_write(ts: float, text: str) -> None:
    """The domain accepts exp up to 9999-12-31T23:59:59Z and adds to it (the
    re-authentication deadline): iso_z writes the nearest time it can, never raises."""
    assert iso_z(ts) == text


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", True),
        ("AA", True),  # one byte
        ("AAE", True),  # two bytes
        ("AAAA", True),
        ("-_-_", True),
        ("AB", False),  # unused low bits set: the same byte as "AA"
        ("AAF", False),
        ("AA==", False),  # padding
        ("A", False),  # 1 mod 4: no whole byte
        ("AAAAA", False),
        ("+/+/", False),  # the standard alphabet
        ("AA AA", False),
        ("AAAA\n", False),
        ("ÄÄÄÄ", False),
    ],
)
def test_one_base64url_spelling(text: str, canonical: bool) -> None:
    assert is_canonical_b64url(text) is canonical
