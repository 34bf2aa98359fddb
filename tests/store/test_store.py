"""The store contract, held by both engines: memory, and redis on a real
redis-server, a real Redis Cluster and a real Sentinel (tests/store/conftest.py)."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio.cluster import RedisCluster

from gateway.errors import StoreUnavailable
from gateway.redisconn import Client, RedisTarget
from gateway.store import PREFIX, MemoryStore, Store, create_store, keys
from gateway.store.base import Admission
from gateway.store.redis import CLIENT_NAME, RedisStore
from tests.support import RedisSentinel


async def all_keys(client: Client) -> list[str]:
    if isinstance(client, RedisCluster):
        return sorted(await client.keys("*", target_nodes=RedisCluster.PRIMARIES))
    return sorted(await client.keys("*"))


async def store_connections(client: Client) -> int:
    """How many connections named as the store's the Redis (every master of a cluster) holds."""
    if isinstance(client, RedisCluster):
        per_node = await client.client_list(target_nodes=RedisCluster.PRIMARIES)
        listed = [entry for entries in per_node.values() for entry in entries]
    else:
        listed = await client.client_list()
    return sum(1 for entry in listed if entry["name"] == CLIENT_NAME)


async def test_warm_readies_the_store_or_says_it_cannot(store: Store, target: RedisTarget | None) -> None:
    await store.warm()  # a cluster client has its slot map now; one Redis or memory: nothing to do
    await store.put("warm", "1", ttl=5)
    assert await store.take("warm") == "1"
    if target is not None:
        nowhere = create_store(RedisTarget("redis://127.0.0.1:1/0", cluster=target.cluster))
        try:
            with pytest.raises(StoreUnavailable):
                await nowhere.warm() if target.cluster else await nowhere.ping()
        finally:
            await nowhere.close()


async def test_put_take(store: Store) -> None:
    await store.ping()
    await store.put("k", "v", ttl=5)
    assert await store.take("k") == "v"
    assert await store.take("k") is None


async def test_ttl(store: Store) -> None:
    await store.put("short", "v", ttl=0.2)
    await store.put("long", "v", ttl=5)
    await asyncio.sleep(0.35)
    assert await store.take("short") is None
    assert await store.take("long") == "v"


async def test_take_is_atomic(store: Store) -> None:
    await store.put("once", "v", ttl=5)
    results = await asyncio.gather(*(store.take("once") for _ in range(50)))
    assert results.count("v") == 1 and results.count(None) == 49


async def test_ttl_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.put("k", "v", ttl=0)


async def test_redis_keys_are_prefixed_and_expire(store: Store, observer: Client) -> None:
    await store.put("k", "v", ttl=30)
    await store.admit(sub="alice", iat=time.time(), sid="s1", until=time.time() + 60, ttl=60)
    await store.append_stream(keys.UPSTREAM, {"n": "1"}, maxlen=10, ttl=30)
    names = await all_keys(observer)
    assert names == sorted(["tg:k", PREFIX + keys.sockets("alice"), PREFIX + keys.UPSTREAM])
    for name in names:
        assert 0 < await observer.ttl(name) <= 60


async def test_memory_store_drops_expired_keys() -> None:
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    for i in range(100):
        await store.put(f"k{i}", "v", ttl=1)
    now[0] = 2.0
    await store.put("fresh", "v", ttl=1)
    assert len(store) == 1  # bounded by live keys, no sweeper task needed


async def test_records(store: Store) -> None:
    assert await store.get_record("r") is None
    await store.create_record("r", {"status": "pending", "attempts": "0", "conn": "0"}, ttl=5)
    assert await store.get_record("r") == {"status": "pending", "attempts": "0", "conn": "0"}
    assert (await store.incr_field("r", "conn") or {})["conn"] == "1"
    assert await store.incr_field("missing", "conn") is None
    assert await store.get_record("missing") is None  # incr_field creates nothing


async def test_count_attempt_is_atomic_and_bounded(store: Store) -> None:
    await store.create_record("s", {"status": "pending", "attempts": "0"}, ttl=5)
    results = await asyncio.gather(*(store.count_attempt("s", limit=3) for _ in range(20)))
    outcomes = [outcome for outcome, _ in results]
    assert outcomes.count("counted") == 3 and outcomes.count("exhausted") == 17
    assert sorted(int(r["attempts"]) for o, r in results if o == "counted" and r) == [1, 2, 3]
    assert await store.count_attempt("nope", limit=3) == ("missing", None)
    assert await store.transition("s", from_status="pending", to_status="rejected")
    outcome, record = await store.count_attempt("s", limit=3)
    assert outcome == "resolved" and record is not None and record["status"] == "rejected"


async def test_transition_has_one_winner(store: Store) -> None:
    await store.create_record("t", {"status": "pending"}, ttl=5)
    wins = await asyncio.gather(
        *(store.transition("t", from_status="pending", to_status="approved") for _ in range(10))
    )
    assert wins.count(True) == 1
    assert not await store.transition("missing", from_status="pending", to_status="approved")


async def test_transition_can_set_a_new_ttl(store: Store) -> None:
    await store.create_record("short", {"status": "live"}, ttl=60)
    assert not await store.transition("short", from_status="other", to_status="lost", ttl=0.2)
    assert await store.transition("short", from_status="live", to_status="lost", ttl=0.2)
    assert (await store.get_record("short") or {}).get("status") == "lost"
    await asyncio.sleep(0.35)
    assert await store.get_record("short") is None


async def test_records_expire(store: Store) -> None:
    await store.create_record("e", {"status": "pending"}, ttl=0.2)
    await asyncio.sleep(0.35)
    assert await store.get_record("e") is None
    assert await store.incr_field("e", "conn") is None


async def test_append_keeps_order_without_duplicates(store: Store) -> None:
    assert await store.members("l") == []
    for member in ("b", "a", "b", "c"):
        await store.append("l", member, ttl=5)
    assert await store.members("l") == ["b", "a", "c"]


async def test_create_records_at_once(store: Store) -> None:
    await store.create_records({"a:{t}": {"x": "1"}, "b:{t}": {"y": "2"}}, ttl=5)
    assert await store.get_record("a:{t}") == {"x": "1"} and await store.get_record("b:{t}") == {"y": "2"}
    await store.create_records({"a:{t}": {"z": "3"}}, ttl=5)  # replaces, not merges
    assert await store.get_record("a:{t}") == {"z": "3"}


async def test_records_of_several_slots_are_refused_at_once(store: Store) -> None:
    """Every engine refuses what a Redis Cluster could not run in one script."""
    with pytest.raises(ValueError, match="slot"):
        await store.create_records({"a": {"x": "1"}, "b": {"y": "2"}}, ttl=5)
    with pytest.raises(ValueError, match="slot"):
        await store.create_records({"a:{t}": {"x": "1"}, "b:{other}": {"y": "2"}}, ttl=5)
    assert await store.get_record("a") is None and await store.get_record("a:{t}") is None


async def test_append_stream_keeps_order_and_ids(store: Store) -> None:
    ids = [await store.append_stream(keys.UPSTREAM, {"n": str(i)}, maxlen=1000, ttl=5) for i in range(3)]
    assert len(set(ids)) == 3
    assert [fields["n"] for _, fields in await _stream(store, keys.UPSTREAM)] == ["0", "1", "2"]
    assert [entry_id for entry_id, _ in await _stream(store, keys.UPSTREAM)] == ids


async def test_append_stream_is_trimmed(store: Store) -> None:
    for i in range(300):
        await store.append_stream(keys.UPSTREAM, {"n": str(i)}, maxlen=50, ttl=5)
    entries = await _stream(store, keys.UPSTREAM)
    # Redis trims approximately (MAXLEN ~): never below maxlen, and far below 300.
    assert 50 <= len(entries) < 300 and entries[-1][1]["n"] == "299"


async def _stream(store: Store, key: str) -> list[tuple[str, dict[str, str]]]:
    if isinstance(store, MemoryStore):
        return store.read_stream(key, count=1000)
    assert isinstance(store, RedisStore)
    client = store.target.client(decode_responses=True)
    try:
        return [(entry_id, dict(fields)) for entry_id, fields in await client.xrange(PREFIX + key)]
    finally:
        await client.aclose()


async def test_admit_registers_and_hands_over_parked_events(store: Store) -> None:
    now = time.time()
    assert await store.park("alice", ["e1", "e2"], cap=10, ttl=5) == 0
    first = await store.admit(sub="alice", iat=now, sid="s1", until=now + 60, ttl=60)
    assert first == Admission(revoked=False, parked=["e1", "e2"])
    second = await store.admit(sub="alice", iat=now, sid="s2", until=now + 60, ttl=60)
    assert second.parked == []  # taken by the first admission
    assert await store.disconnect_user("alice", now=time.time(), revoke=False, ttl=60) == 2


async def test_admit_drops_stale_registry_entries(store: Store) -> None:
    now = time.time()
    await store.admit(sub="alice", iat=now, sid="stale", until=now - 1, ttl=60)
    await store.admit(sub="alice", iat=now, sid="live", until=now + 60, ttl=60)
    assert await store.disconnect_user("alice", now=time.time(), revoke=False, ttl=60) == 1


async def test_forget_socket(store: Store) -> None:
    now = time.time()
    for sid in ("s1", "s2"):
        await store.admit(sub="alice", iat=now, sid=sid, until=now + 60, ttl=60)
    await store.forget_socket("alice", "s1")
    await store.forget_socket("nobody", "s1")  # no error for an unknown user
    assert await store.disconnect_user("alice", now=time.time(), revoke=False, ttl=60) == 1


async def test_disconnect_user_revokes_earlier_credentials(store: Store) -> None:
    before = time.time() - 1
    await store.admit(sub="alice", iat=before, sid="s1", until=time.time() + 60, ttl=60)
    cutoff = time.time()
    assert await store.disconnect_user("alice", now=cutoff, revoke=True, ttl=60) == 1
    assert await store.disconnect_user("alice", now=cutoff, revoke=False, ttl=60) == 0  # cleared
    assert await store.is_revoked("alice", before)
    assert not await store.is_revoked("alice", cutoff + 1)
    assert not await store.is_revoked("bob", before)
    refused = await store.admit(sub="alice", iat=before, sid="s2", until=time.time() + 60, ttl=60)
    assert refused.revoked and refused.parked == []
    # A later, smaller cut-off never lowers the first.
    await store.disconnect_user("alice", now=cutoff - 100, revoke=True, ttl=60)
    assert await store.is_revoked("alice", cutoff - 50)


async def test_revoked_admission_leaves_parked_events(store: Store) -> None:
    await store.park("alice", ["e1"], cap=10, ttl=5)
    await store.disconnect_user("alice", now=time.time(), revoke=True, ttl=60)
    assert (await store.admit(sub="alice", iat=0.0, sid="s", until=time.time() + 60, ttl=60)).revoked
    assert (await store.admit(sub="alice", iat=time.time() + 1, sid="s", until=time.time() + 60, ttl=60)).parked == [
        "e1"
    ]


async def test_park_keeps_the_newest_up_to_the_cap(store: Store) -> None:
    assert await store.park("alice", ["1", "2", "3"], cap=4, ttl=5) == 0
    assert await store.park("alice", ["4", "5", "6"], cap=4, ttl=5) == 2
    admission = await store.admit(sub="alice", iat=time.time(), sid="s", until=time.time() + 60, ttl=60)
    assert admission.parked == ["3", "4", "5", "6"]


ALICE = keys.user_tag("alice")


async def _family(store: Store, *, family: str = "f1", token: str = "t1", iat: float | None = None) -> None:
    record = {"sub": "alice", "family": family, "iat": repr(iat or time.time()), "state": "active"}
    await store.create_records(
        {keys.family("alice", family): {"sub": "alice", "status": "active"}, keys.refresh(ALICE, token): record},
        ttl=60,
    )


async def _rotate(store: Store, old: str, new: str, *, renewal: bool = False) -> str:
    outcome, _ = await store.rotate(
        keys.refresh(ALICE, old),
        keys.refresh(ALICE, new),
        family_key=keys.family("alice", "f1"),
        fields={"sub": "alice", "family": "f1", "iat": repr(time.time()), "state": "active"},
        ttl=60,
        revoked_key=keys.revoked("alice"),
        renewal=renewal,
    )
    return outcome


async def test_rotate_then_reuse_revokes_the_family(store: Store) -> None:
    await _family(store)
    assert await _rotate(store, "t1", "t2") == "rotated"
    assert (await store.get_record(keys.refresh(ALICE, "t1")) or {})["state"] == "rotated"
    assert await _rotate(store, "t1", "t3") == "reuse"
    assert (await store.get_record(keys.family("alice", "f1")) or {})["status"] == "revoked"
    assert await _rotate(store, "t2", "t4") == "revoked"  # the successor died with its family
    assert await _rotate(store, "nope", "t5") == "missing"


async def test_rotate_renewal_of_a_rotated_token_is_stale(store: Store) -> None:
    await _family(store)
    assert await _rotate(store, "t1", "t2") == "rotated"
    assert await _rotate(store, "t1", "t3", renewal=True) == "stale"
    assert (await store.get_record(keys.family("alice", "f1")) or {})["status"] == "active"
    assert await _rotate(store, "t2", "t4") == "rotated"


async def test_rotate_is_atomic(store: Store) -> None:
    await _family(store)
    outcomes = await asyncio.gather(*(_rotate(store, "t1", f"n{i}") for i in range(10)))
    assert outcomes.count("rotated") == 1 and outcomes.count("reuse") == 9


async def test_rotate_refuses_a_token_older_than_the_cut_off(store: Store) -> None:
    await _family(store, iat=time.time() - 10)
    await store.disconnect_user("alice", now=time.time(), revoke=True, ttl=60)
    assert await _rotate(store, "t1", "t2") == "revoked"


async def test_rotate_refuses_keys_of_another_users_slot(store: Store) -> None:
    await _family(store)
    with pytest.raises(ValueError, match="slot"):
        await store.rotate(
            keys.refresh(ALICE, "t1"),
            keys.refresh(keys.user_tag("bob"), "t2"),
            family_key=keys.family("alice", "f1"),
            fields={"sub": "alice", "family": "f1", "iat": repr(time.time()), "state": "active"},
            ttl=60,
            revoked_key=keys.revoked("alice"),
        )
    assert (await store.get_record(keys.refresh(ALICE, "t1")) or {})["state"] == "active"  # untouched


async def test_close_releases_everything(
    store: Store, target: RedisTarget | None, request: pytest.FixtureRequest
) -> None:
    await store.put("k", "v", ttl=5)
    if isinstance(store, MemoryStore):
        await store.close()
        assert len(store) == 0
        return
    assert target is not None
    observers = [target.client(decode_responses=True)]
    if target.sentinel:  # and the Sentinel it asked where the master is
        sentinel: RedisSentinel = request.getfixturevalue("redis_sentinel")
        observers.append(RedisTarget(f"redis://127.0.0.1:{sentinel.port}").client(decode_responses=True))
    try:
        for observer in observers:
            assert await store_connections(observer) >= 1  # named, as CLIENT LIST shows it
        await store.close()
        for observer in observers:
            assert await store_connections(observer) == 0
    finally:
        for observer in observers:
            await observer.aclose()


def test_every_store_operation_is_tested_here() -> None:
    """The contract tests (this file, and test_presence.py for presence) must reach
    every operation of the interface, on both engines."""
    from pathlib import Path

    source = "".join(path.read_text() for path in sorted(Path(__file__).parent.glob("test_*.py")))
    operations = [name for name in vars(Store) if not name.startswith("_") and callable(getattr(Store, name))]
    untested = [name for name in operations if f"store.{name}(" not in source]
    assert operations and not untested, untested
