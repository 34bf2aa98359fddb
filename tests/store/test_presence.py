"""The presence contract of the store (docs/presence.md), held by both engines:
memory, and redis on one Redis, a Redis Cluster and a Sentinel's master."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.redisconn import Client
from gateway.store import PREFIX, Store
from gateway.store.base import PresenceChange
from gateway.store.keys import slot_tag
from tests.store.test_store import all_keys

ROOM = "room:lobby"
TTL = 5.0
GRACE = 0.3


def times(**overrides: Any) -> dict[str, float]:
    return {"ttl": TTL, "grace": GRACE, **overrides}


async def enter(store: Store, sub: str, node: str = "a", room: str = ROOM, **kw: Any) -> PresenceChange:
    return await store.presence_enter(room, sub, node=node, **times(**kw))


async def leave(store: Store, sub: str, node: str = "a", room: str = ROOM, **kw: Any) -> PresenceChange:
    return await store.presence_leave(room, sub, node=node, **times(**kw))


async def members(store: Store, room: str = ROOM) -> tuple[int, int, list[tuple[str, int]]]:
    page, _ = await store.presence_read(room, after=None, limit=1000, **times())
    return page.users, page.connections, page.members


async def sweep_until(store: Store, predicate: Any, timeout: float = 5.0, **kw: Any) -> list[PresenceChange]:
    """Sweep until ``predicate(changes so far)``; every change seen."""
    seen: list[PresenceChange] = []
    async with asyncio.timeout(timeout):
        while not predicate(seen):
            seen += await store.presence_sweep(**times(**kw))
            await asyncio.sleep(0.05)
    return seen


async def test_counts_over_nodes_and_transitions_once(store: Store) -> None:
    first = await enter(store, "alice", "a")
    assert first.entered == ("alice",) and first.occupied and first.connections == 1
    second = await enter(store, "alice", "b")
    assert not second.changed and second.connections == 2
    bob = await enter(store, "bob", "b")
    assert bob.entered == ("bob",) and not bob.occupied
    assert await members(store) == (2, 3, [("alice", 2), ("bob", 1)])

    assert not (await leave(store, "alice", "a")).changed
    gone = await leave(store, "alice", "b")
    assert gone.left == ("alice",) and not gone.vacated
    last = await leave(store, "bob", "b")
    assert last.left == ("bob",) and not last.vacated and last.connections == 0  # vacating: within the grace
    assert await members(store) == (0, 0, [])
    # A leave of a connection that is not there changes nothing (a double leave, a reaped node).
    assert not (await leave(store, "bob", "b")).changed


async def test_vacated_once_after_the_grace_and_not_at_all_when_they_come_back(store: Store) -> None:
    await enter(store, "alice")
    await leave(store, "alice")
    assert await store.presence_sweep(**times()) == []  # not due yet
    seen: list[PresenceChange] = []
    async with asyncio.timeout(5):
        while not any(c.vacated for c in seen):
            await asyncio.sleep(0.05)
            for changes in await asyncio.gather(*(store.presence_sweep(**times()) for _ in range(3))):
                seen += changes
    for changes in await asyncio.gather(*(store.presence_sweep(**times()) for _ in range(3))):
        seen += changes
    assert [c.room for c in seen if c.vacated] == [ROOM]  # three sweepers at once, one reports it

    await enter(store, "alice")
    await leave(store, "alice")
    back = await enter(store, "alice", "b")  # within the grace: neither occupied nor vacated
    assert back.entered == ("alice",) and not back.occupied
    await asyncio.sleep(GRACE + 0.2)
    assert not any(c.vacated for c in await store.presence_sweep(**times()))
    assert await members(store) == (1, 1, [("alice", 1)])


async def test_without_a_grace_vacated_at_once(store: Store) -> None:
    await enter(store, "alice", grace=0)
    assert (await leave(store, "alice", grace=0)).vacated


async def test_limit_counts_over_nodes_and_refuses_atomically(store: Store) -> None:
    assert not (await enter(store, "alice", "a", room="user:alice", limit=2)).refused
    assert not (await enter(store, "alice", "b", room="user:alice", limit=2)).refused
    refused = await enter(store, "alice", "b", room="user:alice", limit=2)
    assert refused.refused and refused.connections == 2 and not refused.changed

    outcomes = await asyncio.gather(*(enter(store, "bob", "ab"[n % 2], room="user:bob", limit=5) for n in range(20)))
    assert sum(1 for change in outcomes if not change.refused) == 5
    assert await members(store, "user:bob") == (1, 5, [("bob", 5)])


async def test_a_dead_nodes_connections_go_when_its_lease_runs_out(store: Store) -> None:
    await enter(store, "alice", "live")
    await enter(store, "bob", "dead", ttl=0.3)
    await enter(store, "alice", "dead", ttl=0.3)
    assert await members(store) == (2, 3, [("alice", 2), ("bob", 1)])
    await asyncio.sleep(0.4)
    page, change = await store.presence_read(ROOM, after=None, limit=10, **times())
    assert page.members == [("alice", 1)] and page.connections == 1
    assert change.left == ("bob",)  # the read that dropped them reports it, once
    _, again = await store.presence_read(ROOM, after=None, limit=10, **times())
    assert not again.changed


async def test_beats_keep_a_lease_and_a_lost_one_is_synced_back(store: Store) -> None:
    await enter(store, "alice", "a", ttl=0.5)
    for _ in range(5):
        [beat] = await store.presence_beat([ROOM], node="a", **times(ttl=0.5))
        assert not beat.lost
        await asyncio.sleep(0.2)
    assert await members(store) == (1, 1, [("alice", 1)])

    await asyncio.sleep(0.6)  # a stalled node: its lease runs out
    [beat] = await store.presence_beat([ROOM], node="a", **times(ttl=0.5))
    assert beat.lost and beat.left == ("alice",)
    synced = await store.presence_sync(ROOM, {"alice": 2, "carol": 1}, node="a", **times())
    assert set(synced.entered) == {"alice", "carol"} and synced.connections == 3
    synced = await store.presence_sync(ROOM, {"carol": 1}, node="a", **times())
    assert synced.left == ("alice",) and synced.connections == 1


async def test_a_room_only_a_dead_node_held_is_swept_then_vacated(store: Store) -> None:
    await enter(store, "alice", "dead", room="user:alice", ttl=0.3)
    seen = await sweep_until(store, lambda seen: any(c.vacated for c in seen))
    assert [c.left for c in seen if c.left] == [("alice",)]
    assert [c.room for c in seen if c.vacated] == ["user:alice"]
    assert await members(store, "user:alice") == (0, 0, [])


async def test_pages_are_exact_and_ordered(store: Store) -> None:
    subs = [f"user{n:02d}" for n in range(25)]
    for sub in subs:
        await enter(store, sub)
    pages: list[list[str]] = []
    after = None
    while True:
        page, _ = await store.presence_read(ROOM, after=after, limit=10, **times())
        assert page.users == 25 and page.connections == 25
        pages.append([sub for sub, _ in page.members])
        if not page.more:
            break
        after = page.members[-1][0]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [sub for p in pages for sub in p] == subs
    page, _ = await store.presence_read(ROOM, after=subs[19], limit=5, **times())
    assert len(page.members) == 5 and not page.more  # a full last page says no more


async def test_presence_keys_are_prefixed_expire_and_share_a_slot(store: Store, observer: Client) -> None:
    await enter(store, "alice", "a")
    await enter(store, "bob", "b")
    await leave(store, "bob", "b")
    names = [name for name in await all_keys(observer) if "presence" in name]
    room_keys = [name for name in names if ROOM in name]
    assert len(room_keys) == 5 and all(name.startswith(PREFIX) for name in names)
    assert len({slot_tag(name) for name in room_keys}) == 1
    for name in names:
        assert 0 < await observer.pttl(name) <= (2 * TTL + GRACE) * 1000
    await leave(store, "alice", "a")
    await asyncio.sleep(GRACE + 0.1)
    await sweep_until(store, lambda seen: any(c.vacated for c in seen))
    assert [name for name in await all_keys(observer) if ROOM in name] == []  # an empty room leaves nothing
