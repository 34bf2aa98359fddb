"""The key layout: every key of one user in one hash slot, and nothing else tied together."""

from __future__ import annotations

import hashlib

import pytest
from redis.crc import key_slot

from gateway.store import PREFIX, keys
from gateway.store.keys import slot_tag


def slot(key: str) -> int:
    return key_slot((PREFIX + key).encode())


@pytest.mark.parametrize("sub", ["alice", "bob", "", "user:{weird}", "{u:0000000000000000}", "ü" * 300])
def test_a_users_keys_share_one_slot(sub: str) -> None:
    tag = keys.user_tag(sub)
    assert tag == hashlib.sha256(sub.encode()).hexdigest()[:16]
    user_keys = [
        keys.revoked(sub),
        keys.parked(sub),
        keys.sockets(sub),
        keys.family(sub, "f1"),
        keys.refresh(tag, "d" * 64),
    ]
    assert {slot_tag(key) for key in user_keys} == {f"u:{tag}"}
    assert len({slot(key) for key in user_keys}) == 1  # as Redis Cluster computes it
    for key in user_keys:
        assert slot_tag(key) == slot_tag(PREFIX + key)


def test_a_users_keys_hold_the_sub_so_colliding_tags_share_no_key() -> None:
    """Two subs whose tags were equal would still have keys of their own (a tag is
    only 64 bits: a chosen sub could be made to collide); a sub cannot take another
    user's tag by holding braces."""
    for key in (keys.revoked, keys.parked, keys.sockets):
        assert key("alice").endswith(":alice") and key("alice:x").endswith(":alice:x")
    forged = "{u:" + keys.user_tag("bob") + "}"
    assert slot_tag(keys.parked(forged)) == f"u:{keys.user_tag(forged)}" != f"u:{keys.user_tag('bob')}"


def test_other_keys_hash_whole() -> None:
    others = [keys.ticket("a" * 64), keys.session("s1"), keys.device("d1"), keys.user_devices("alice"), keys.UPSTREAM]
    for key in others:
        assert slot_tag(key) == key


def test_slot_tag_follows_redis() -> None:
    for key in ["plain", "a{b}c", "a{}b", "a{b", "a}b{c}", "{a}{b}", "{}{b}", "x{{y}}"]:
        tag = slot_tag(key)
        assert key_slot(key.encode()) == key_slot(tag.encode()), key
    assert slot_tag("a{}b") == "a{}b" and slot_tag("{a}{b}") == "a" and slot_tag("x{{y}}") == "{y"


def test_a_refresh_key_needs_a_user_tag() -> None:
    for bad in ["", "abc", "G" * 16, "A" * 16, "0" * 15, "0" * 17, "}" + "0" * 15]:
        with pytest.raises(ValueError):
            keys.refresh(bad, "d" * 64)
