"""gateway/presence.py on one gateway of each engine: the admin API, the
`presence` event, user_joined / user_left once per user, the per-user
connection limit, and webhooks from transitions with their grace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError
from tests.conftest import Gateway, MakeGateway
from tests.support import Probe, http_json, metric, write_toml
from tests.test_recovery import conn_of, gone, lose
from tests.test_webhooks import SECRET, Receiver

ROOMS = {"rooms": ["room:team-*", "room:other"]}
TRACKED = {"presence_rooms": ["room:team-*"]}


async def connected(gateway: Gateway, probes: Callable[[], Probe], sub: str = "alice", **mint: Any) -> Probe:
    probe = probes()
    assert await probe.connect(gateway.url, auth={"token": gateway.mint(sub, claims=ROOMS, **mint)})
    await probe.wait_for("authenticated")
    return probe


async def get(gateway: Gateway, path: str, *, token: str | None = "admin") -> tuple[int, Any]:
    admin = gateway.config.admin_token if token == "admin" else token
    status, body, _ = await http_json("GET", f"{gateway.url}{path}", token=admin)
    return status, body


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.05)


async def test_user_presence_counts_connections(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway()
    assert await get(gateway, "/api/users/alice") == (200, {"sub": "alice", "online": False, "connections": 0})
    first = await connected(gateway, probes)
    await connected(gateway, probes)
    await connected(gateway, probes, "bob")
    assert await get(gateway, "/api/users/alice") == (200, {"sub": "alice", "online": True, "connections": 2})
    await first.close()

    async def one_left() -> bool:
        return (await get(gateway, "/api/users/alice"))[1]["connections"] == 1

    await until(one_left)
    status, body = await get(gateway, "/api/users/alice", token=None)
    assert status == 401 and body["error"]["code"] == "missing_credentials"


async def test_room_presence_event_and_user_joined_left_once_per_user(
    make_gateway: MakeGateway, probes: Callable[[], Probe]
) -> None:
    gateway = await make_gateway(**TRACKED)
    bob = await connected(gateway, probes, "bob")
    assert (await bob.call("join", {"room": "room:team-a"}))["ok"]
    alice1 = await connected(gateway, probes)
    alice2 = await connected(gateway, probes)
    for probe in (alice1, alice2):
        assert (await probe.call("join", {"room": "room:team-a"}))["ok"]
    assert await bob.wait_for("user_joined") == {"room": "room:team-a", "sub": "alice"}

    ack = await alice1.call("presence", {"room": "room:team-a"})
    assert ack == {
        "ok": True,
        "room": "room:team-a",
        "users": 2,
        "connections": 3,
        "members": [{"sub": "alice", "connections": 2}, {"sub": "bob", "connections": 1}],
        "cursor": None,
    }
    assert await get(gateway, "/api/rooms/room:team-a/presence") == (200, {k: v for k, v in ack.items() if k != "ok"})

    assert (await alice1.call("leave", {"room": "room:team-a"}))["ok"]
    await alice2.close()  # her last connection in the room
    assert await bob.wait_for("user_left") == {"room": "room:team-a", "sub": "alice"}
    await asyncio.sleep(0.3)
    assert bob.named("user_joined") == [{"room": "room:team-a", "sub": "alice"}]  # once, not per socket
    assert bob.named("user_left") == [{"room": "room:team-a", "sub": "alice"}]
    assert (await bob.call("presence", {"room": "room:team-a"}))["members"] == [{"sub": "bob", "connections": 1}]


async def test_presence_event_refusals(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(**TRACKED, client_event_rate=0.01, client_event_burst=3)
    alice = await connected(gateway, probes)
    assert (await alice.call("join", {"room": "room:other"}))["ok"]
    not_member = await alice.call("presence", {"room": "room:team-a"})
    assert not_member == {"ok": False, "error": {"code": 4003, "reason": "not_a_member"}}
    untracked = await alice.call("presence", {"room": "room:other"})
    assert untracked == {"ok": False, "error": {"code": 4000, "reason": "invalid_request"}}
    # A burst of 3: the join and two presence events; the next one is over the socket's rate.
    limited = await alice.call("presence", {"room": "room:other"})
    assert limited == {"ok": False, "error": {"code": 4029, "reason": "rate_limited"}}


async def test_room_pages_are_exact(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(**TRACKED)
    subs = [f"user{n:02d}" for n in range(12)]
    for sub in subs:
        assert (await (await connected(gateway, probes, sub)).call("join", {"room": "room:team-a"}))["ok"]
    for limit, sizes in ((5, [5, 5, 2]), (6, [6, 6]), (12, [12]), (1000, [12])):
        seen, cursor = [], None
        pages = []
        while True:
            query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            status, body = await get(gateway, f"/api/rooms/room:team-a/presence{query}")
            assert status == 200 and body["users"] == 12 and body["connections"] == 12
            pages.append(len(body["members"]))
            seen += [member["sub"] for member in body["members"]]
            cursor = body["cursor"]
            if cursor is None:
                break
        assert pages == sizes and seen == subs, limit


@pytest.mark.parametrize(
    "path",
    [
        "/api/rooms/room:team-a/presence?limit=0",
        "/api/rooms/room:team-a/presence?limit=1001",
        "/api/rooms/room:team-a/presence?limit=ten",
        "/api/rooms/room:team-a/presence?limit=5&limit=6",
        "/api/rooms/room:team-a/presence?page=2",
        "/api/rooms/room:team-a/presence?cursor=%25%25",
        "/api/rooms/room:other/presence",
        "/api/rooms/user:alice/presence",
        "/api/rooms/lobby/presence",
    ],
)
async def test_bad_presence_requests(make_gateway: MakeGateway, path: str) -> None:
    gateway = await make_gateway(**TRACKED)
    status, body = await get(gateway, path)
    assert status == 400 and set(body) == {"error"} and body["error"]["code"] == "invalid_request", body


async def test_empty_room_is_not_an_error(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(**TRACKED)
    status, body = await get(gateway, "/api/rooms/room:team-nobody/presence")
    assert status == 200
    assert body == {"room": "room:team-nobody", "users": 0, "connections": 0, "members": [], "cursor": None}


async def test_connections_per_user_limit(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(max_connections_per_user=2)
    first = await connected(gateway, probes)
    await connected(gateway, probes)
    over = probes()
    assert not await over.connect(gateway.url, auth={"token": gateway.mint("alice")})
    assert over.connect_error["data"] == {"code": 4029, "reason": "too_many_connections"}
    assert await connected(gateway, probes, "bob")  # another user's own count
    samples = 'ticketgate_rate_limited_total{limit="connections_per_user"}'
    assert await metric(gateway.url, samples) == 1
    refused = 'ticketgate_connect_attempts_total{reason="too_many_connections",result="refused"}'
    assert await metric(gateway.url, refused) == 1

    deferred = probes()  # over the limit at `authenticate`: the ack says so, then the socket is closed
    assert await deferred.connect(gateway.url, auth={})
    ack = await deferred.call("authenticate", {"token": gateway.mint("alice")})
    assert ack == {"ok": False, "error": {"code": 4029, "reason": "too_many_connections"}}
    assert await deferred.wait_for("closing") == {"code": 4029, "reason": "too_many_connections"}

    await first.close()
    again = probes()

    async def admitted() -> bool:
        return await again.connect(gateway.url, auth={"token": gateway.mint("alice")})

    await until(admitted)  # a slot is free once the closed one is counted out
    assert (await get(gateway, "/api/users/alice"))[1]["connections"] == 2


# -- webhooks -----------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    made = Receiver()
    await made.start()
    yield made
    await made.close()


def hooks(receiver: Receiver) -> list[dict[str, Any]]:
    every = ["user.online", "user.offline", "room.occupied", "room.vacated", "user.joined", "user.left"]
    return [{"url": receiver.url, "secret": SECRET, "events": every}]


def events(receiver: Receiver) -> list[tuple[str, dict[str, Any]]]:
    return [(r.event["type"], r.event["data"]) for r in receiver.requests]


async def test_webhooks_follow_transitions_with_the_grace(
    make_gateway: MakeGateway, probes: Callable[[], Probe], receiver: Receiver
) -> None:
    gateway = await make_gateway(**TRACKED, webhooks=hooks(receiver), offline_grace=0.6)
    alice = await connected(gateway, probes)
    assert (await alice.call("join", {"room": "room:team-a"}))["ok"]
    await receiver.until(3)
    assert sorted(events(receiver)) == [  # each hook delivers up to 4 at once: in any order
        ("room.occupied", {"room": "room:team-a"}),
        ("user.joined", {"room": "room:team-a", "sub": "alice"}),
        ("user.online", {"sub": "alice"}),
    ]

    await alice.close()  # and back within the grace: no offline, online, vacated or occupied
    back = await connected(gateway, probes)
    assert (await back.call("join", {"room": "room:team-a"}))["ok"]
    await receiver.until(5)
    assert sorted(events(receiver)[3:]) == [
        ("user.joined", {"room": "room:team-a", "sub": "alice"}),
        ("user.left", {"room": "room:team-a", "sub": "alice"}),  # not graced
    ]
    await asyncio.sleep(1.5)
    assert len(receiver.requests) == 5

    await back.close()  # for good this time: offline and vacated, once the grace is over
    await receiver.until(8, timeout=5)
    assert events(receiver)[5] == ("user.left", {"room": "room:team-a", "sub": "alice"})
    graced = sorted(events(receiver)[6:], key=lambda item: item[0])
    assert graced == [("room.vacated", {"room": "room:team-a"}), ("user.offline", {"sub": "alice"})]
    assert min(r.at for r in receiver.requests[6:]) - receiver.requests[5].at >= 0.5
    await asyncio.sleep(0.5)
    assert all(r.verified for r in receiver.requests) and len(receiver.requests) == 8
    assert len({r.event["id"] for r in receiver.requests}) == 8


async def test_a_recovered_socket_makes_neither_offline_nor_online(
    make_gateway: MakeGateway, probes: Callable[[], Probe], receiver: Receiver
) -> None:
    gateway = await make_gateway(**TRACKED, webhooks=hooks(receiver), offline_grace=1.0)
    first = await connected(gateway, probes)
    assert (await first.call("join", {"room": "room:team-a"}))["ok"]
    await receiver.until(3)
    conn = conn_of(gateway, "alice")
    assert conn.pid is not None
    await lose(first)
    await gone(gateway, conn.sid)
    second = probes()
    auth = {"token": gateway.mint("alice", claims=ROOMS), "pid": conn.pid, "offset": ""}
    assert await second.connect(gateway.url, auth=auth)
    assert (await second.wait_for("authenticated"))["recovered"] is True
    page = await second.call("presence", {"room": "room:team-a"})  # back in the room, counted once
    assert page["members"] == [{"sub": "alice", "connections": 1}]
    await asyncio.sleep(1.8)  # past the grace
    # Only the two without a grace (each hook delivers up to 4 at once: in any order).
    assert sorted(r.event["type"] for r in receiver.requests) == sorted(
        ["user.online", "room.occupied", "user.joined", "user.left", "user.joined"]
    )


# -- settings -------------------------------------------------------------------------


def test_presence_settings_defaults_env_and_file(tmp_path: Path) -> None:
    defaults = load_config(environ={})
    assert defaults.presence_rooms == () and defaults.presence_ttl == 30
    assert defaults.offline_grace == 5 and defaults.max_connections_per_user == 0
    environ = {
        "TICKETGATE_PRESENCE_ROOMS": "room:team-*, room:lobby",
        "TICKETGATE_PRESENCE_TTL": "3",
        "TICKETGATE_OFFLINE_GRACE": "0",
        "TICKETGATE_MAX_CONNECTIONS_PER_USER": "5",
    }
    config = load_config(environ=environ)
    assert config.presence_rooms == ("room:team-*", "room:lobby") and config.presence_ttl == 3
    assert config.offline_grace == 0 and config.max_connections_per_user == 5
    file = write_toml(tmp_path / "c.toml", {"presence_rooms": ["room:a"], "max_connections_per_user": 2})
    from_file = load_config(file=file, environ={})
    assert from_file.presence_rooms == ("room:a",) and from_file.max_connections_per_user == 2


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"presence_rooms": ["team-*"]}, "presence_rooms"),
        ({"presence_ttl": 0.5}, "presence_ttl"),
        ({"offline_grace": -1}, "offline_grace"),
        ({"max_connections_per_user": -1}, "max_connections_per_user"),
        ({"node_name": "a\nb"}, "node_name"),
    ],
)
def test_bad_presence_settings(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(environ={}, flags=settings)
