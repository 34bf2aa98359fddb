"""gateway/auth/refresh.py: a refresh token carries its user's hash tag, so that
every key of a rotation lives in one slot of a Redis Cluster."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.auth.refresh import RefreshService, token_hash
from gateway.auth.tokens import Principal
from gateway.closes import Close
from gateway.errors import InvalidToken, RefreshReuse
from gateway.formats import b64url, b64url_decode, is_canonical_b64url
from gateway.realtime import family_room
from gateway.redisconn import RedisTarget
from gateway.store import Store, create_store, keys
from tests.support import RedisCluster


class Closes:
    """The fan-out as RefreshService uses it: the close orders it was given."""

    def __init__(self) -> None:
        self.closed: list[tuple[str, Close]] = []

    async def publish(self, room: str, event: str, data: Any) -> None:
        raise AssertionError("refresh tokens publish nothing")

    async def close_room(
        self, room: str, close: Close, *, older_than: int | None = None, via: str | None = None
    ) -> None:
        self.closed.append((room, close))


@pytest.fixture(params=["memory", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    target = None
    if request.param == "cluster":  # where keys of several slots in one script would fail
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        target = RedisTarget(cluster.url, cluster=True)
    made = create_store(target)
    yield made
    await made.close()


def alice(now: float | None = None) -> Principal:
    now = now or time.time()
    return Principal(sub="alice", exp=now + 60, iat=now, claims={"rooms": ["room:a"]})


async def test_a_token_carries_its_users_tag_and_its_record_sits_in_the_users_slot(store: Store) -> None:
    service = RefreshService(store=store, fanout=Closes(), ttl=60)
    issued = await service.start_family(alice())
    assert is_canonical_b64url(issued.token) and len(issued.token) == 54  # 40 bytes, one base64url string
    raw = b64url_decode(issued.token)
    assert raw[32:].hex() == keys.user_tag("alice")
    record = await store.get_record(keys.refresh(keys.user_tag("alice"), token_hash(issued.token)))
    assert record is not None and record["sub"] == "alice" and record["family"] == issued.family
    assert await store.get_record(keys.family("alice", issued.family)) == {"sub": "alice", "status": "active"}
    rotated = await service.rotate(issued.token)
    assert rotated.sub == "alice" and b64url_decode(rotated.issued.token)[32:] == raw[32:]


async def test_a_token_without_a_valid_tag_is_unknown(store: Store) -> None:
    service = RefreshService(store=store, fanout=Closes(), ttl=60)
    issued = await service.start_family(alice())
    raw = b64url_decode(issued.token)
    bob = bytes.fromhex(keys.user_tag("bob"))
    for token in [
        secrets.token_urlsafe(32),  # the format before tags: 256 bits alone
        b64url(raw[:32]),  # the token without its tag
        b64url(raw[:32] + bob),  # another user's tag
        b64url(raw + b"\0"),  # one byte too many
        issued.token + "A",  # not canonical base64url
        issued.token[:-1] + "~",  # not base64url at all
    ]:
        with pytest.raises(InvalidToken, match="unknown"):
            await service.rotate(token)
    assert (await service.rotate(issued.token)).sub == "alice"  # none of them touched it


async def test_renewal_finds_the_token_by_its_users_tag(store: Store) -> None:
    fanout = Closes()
    service = RefreshService(store=store, fanout=fanout, ttl=60)
    issued = await service.start_family(alice())
    renewed = await service.renew("alice", issued.hash)
    assert renewed is not None and renewed.sub == "alice"
    assert await service.renew("alice", issued.hash) is None  # rotated already: stale, not reuse
    with pytest.raises(InvalidToken):  # not bob's: no record in bob's slot
        await service.renew("bob", renewed.issued.hash)
    with pytest.raises(RefreshReuse):
        await service.rotate(issued.token)
    assert [room for room, _ in fanout.closed] == [family_room(issued.family)]
