"""Auth lifetime (PROTOCOL §3 auth_expiring, reauth_required, refresh_token, refresh,
closing 4010/4011, "Refresh tokens"; §2 disconnect API; §6.5, §6.7, §6.8)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Callable

import pytest

from gateway import keys
from gateway.formats import b64url_decode
from tests.conftest import Gateway, MakeGateway
from tests.device import initiate
from tests.support import ROOT, Probe, RedisServer, http_json, metric, redis_contents, wait_subscribed


async def token_socket(gateway: Gateway, probes: Callable[[], Probe], sub: str = "alice", ttl: float = 600) -> Probe:
    probe = probes()
    assert await probe.connect(gateway.url, auth={"token": gateway.mint(sub, ttl=ttl)})
    await probe.wait_for("authenticated")
    return probe


def seqs(probe: Probe, event: str = "tick") -> list[int]:
    return [data["seq"] for data in probe.named(event)]


# -- expiry --------------------------------------------------------------------


async def test_on_expiry_close(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(on_expiry="close", expiry_warning=1, refresh_tokens=False)
    probe = await token_socket(gateway, probes, ttl=2)
    warning = await probe.wait_for("auth_expiring", timeout=3)
    assert warning["expiresAt"] == (await probe.wait_for("authenticated"))["expiresAt"]
    assert warning["in"] in (0, 1, 2)
    assert await probe.wait_for("closing", timeout=4) == {"code": 4010, "reason": "auth_expired"}
    await asyncio.wait_for(probe.disconnected.wait(), 5)


async def test_on_expiry_ignore(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(on_expiry="ignore", expiry_warning=1, refresh_tokens=False)
    probe = await token_socket(gateway, probes, ttl=1)
    await asyncio.sleep(2.0)
    assert probe.client.connected
    assert not probe.named("auth_expiring") and not probe.named("reauth_required") and not probe.named("closing")
    await gateway.publish("user:alice", "tick", {"seq": 1})
    assert (await probe.wait_for("tick"))["seq"] == 1


async def test_reauth_holds_events_in_order_and_delivers_them(
    make_gateway: MakeGateway, probes: Callable[[], Probe]
) -> None:
    gateway = await make_gateway(on_expiry="reauth", expiry_warning=1, reauth_grace=5, refresh_tokens=False)
    probe = await token_socket(gateway, probes, ttl=2)
    await probe.wait_for("auth_expiring", timeout=3)
    required = await probe.wait_for("reauth_required", timeout=3)
    assert required["deadline"].endswith("Z")
    for seq in range(1, 6):
        await gateway.publish("user:alice", "tick", {"seq": seq})
    await asyncio.sleep(0.3)
    assert seqs(probe) == []  # held, not delivered
    ack = await probe.call("authenticate", {"token": gateway.mint("alice", ttl=600)})
    assert ack["ok"] is True and ack["sub"] == "alice" and "dropped" not in ack
    await probe.wait_for("tick", count=5)
    await gateway.publish("user:alice", "tick", {"seq": 6})
    await probe.wait_for("tick", count=6)
    assert seqs(probe) == [1, 2, 3, 4, 5, 6]
    assert not probe.named("closing")


async def test_reauth_with_another_sub_is_refused_and_closed(
    make_gateway: MakeGateway, probes: Callable[[], Probe]
) -> None:
    gateway = await make_gateway(on_expiry="reauth", expiry_warning=0, reauth_grace=5, refresh_tokens=False)
    probe = await token_socket(gateway, probes, ttl=1)
    await probe.wait_for("reauth_required", timeout=3)
    ack = await probe.call("authenticate", {"token": gateway.mint("mallory")})
    assert ack == {"ok": False, "error": {"code": 4001, "reason": "invalid_token"}}
    assert await probe.wait_for("closing") == {"code": 4001, "reason": "invalid_token"}


async def test_held_events_over_the_cap_are_dropped_and_reported(
    make_gateway: MakeGateway, probes: Callable[[], Probe]
) -> None:
    gateway = await make_gateway(
        on_expiry="reauth", expiry_warning=0, reauth_grace=5, max_held_events=3, refresh_tokens=False
    )
    probe = await token_socket(gateway, probes, ttl=1)
    await probe.wait_for("reauth_required", timeout=3)
    for seq in range(1, 6):
        await gateway.publish("user:alice", "tick", {"seq": seq})
    ack = await probe.call("authenticate", {"token": gateway.mint("alice")})
    assert ack["ok"] is True and ack["dropped"] == 2
    await probe.wait_for("tick", count=3)
    assert seqs(probe) == [3, 4, 5]
    _, metrics, _ = await http_json("GET", f"{gateway.url}/metrics")
    assert "ticketgate_held_events_dropped_total 2.0" in metrics


async def test_grace_over_closes_4010_and_the_next_socket_gets_the_held_events_first(
    make_gateway: MakeGateway, probes: Callable[[], Probe]
) -> None:
    gateway = await make_gateway(on_expiry="reauth", expiry_warning=0, reauth_grace=1, refresh_tokens=False)
    probe = await token_socket(gateway, probes, ttl=1)
    await probe.wait_for("reauth_required", timeout=3)
    for seq in range(1, 4):
        await gateway.publish("user:alice", "tick", {"seq": seq})
    assert await probe.wait_for("closing", timeout=3) == {"code": 4010, "reason": "auth_expired"}
    assert seqs(probe) == []
    nxt = probes()
    assert await nxt.connect(gateway.url, auth={"ticket": await gateway.ticket("alice")})
    await gateway.publish("user:alice", "tick", {"seq": 4})
    await nxt.wait_for("tick", count=4)
    assert seqs(nxt) == [1, 2, 3, 4]
    # Delivered once: a further socket of the user gets nothing old.
    later = await token_socket(gateway, probes)
    await asyncio.sleep(0.3)
    assert seqs(later) == []


async def test_reauth_before_expiry_extends_the_socket(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(on_expiry="close", expiry_warning=0, refresh_tokens=False)
    probe = await token_socket(gateway, probes, ttl=2)
    ack = await probe.call("authenticate", {"token": gateway.mint("alice", ttl=600)})
    assert ack["ok"] is True
    await asyncio.sleep(2.8)
    assert probe.client.connected and not probe.named("closing")


# -- refresh tokens ------------------------------------------------------------------


async def test_refresh_token_after_authentication_and_rotation(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    probe = await token_socket(gateway, probes)
    first = await probe.wait_for("refresh_token")
    assert len(first["refreshToken"]) >= 43 and first["expiresAt"].endswith("Z")
    ack = await probe.call("refresh", {"refreshToken": first["refreshToken"]})
    assert ack["ok"] is True and ack["refreshToken"] != first["refreshToken"] and ack["expiresAt"].endswith("Z")
    # The successor connects a new socket (rotating again); the rotated one is reuse.
    other = probes()
    assert await other.connect(gateway.url, auth={"refreshToken": ack["refreshToken"]})
    authenticated = await other.wait_for("authenticated")
    assert authenticated["sub"] == "alice" and authenticated["via"] == "refresh"
    pushed = await other.wait_for("refresh_token")
    assert pushed["refreshToken"] not in (first["refreshToken"], ack["refreshToken"])


async def test_refresh_reuse_revokes_the_family_and_closes_its_sockets(
    gateway: Gateway, probes: Callable[[], Probe]
) -> None:
    probe = await token_socket(gateway, probes)
    first = (await probe.wait_for("refresh_token"))["refreshToken"]
    second = (await probe.call("refresh", {"refreshToken": first}))["refreshToken"]
    # §6.5: a socket later authenticated with a token of the family is bound to it too.
    heir = probes()
    assert await heir.connect(gateway.url, auth={"refreshToken": second})
    assert (await heir.wait_for("authenticated"))["via"] == "refresh"
    third = (await heir.wait_for("refresh_token"))["refreshToken"]
    bystander = await token_socket(gateway, probes)  # same user, another family: unaffected
    await bystander.wait_for("refresh_token")
    thief = probes()
    assert not await thief.connect(gateway.url, auth={"refreshToken": first})
    assert thief.connect_error["data"] == {"code": 4011, "reason": "refresh_reuse"}
    for member in (probe, heir):
        assert await member.wait_for("closing") == {"code": 4011, "reason": "refresh_reuse"}
        await asyncio.wait_for(member.disconnected.wait(), 5)
    # The whole family is revoked: the latest token too.
    for token in (second, third):
        late = probes()
        assert not await late.connect(gateway.url, auth={"refreshToken": token})
        assert late.connect_error["data"]["code"] == 4011
    await asyncio.sleep(0.2)
    assert bystander.client.connected and not bystander.named("closing")


async def test_concurrent_rotations_of_one_token(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    probe = await token_socket(gateway, probes)
    token = (await probe.wait_for("refresh_token"))["refreshToken"]
    helpers = [await token_socket(gateway, probes) for _ in range(2)]
    acks = await asyncio.gather(*(h.call("refresh", {"refreshToken": token}) for h in helpers))
    oks = [a for a in acks if a["ok"]]
    reuse = [a for a in acks if not a["ok"]]
    assert len(oks) == 1 and reuse == [{"ok": False, "error": {"code": 4011, "reason": "refresh_reuse"}}]


async def test_bad_refresh_tokens(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    probe = await token_socket(gateway, probes)
    for payload, code, reason in [
        ({"refreshToken": "x" * 43}, 4001, "invalid_token"),
        ({"refreshToken": "short"}, 4001, "invalid_token"),
        ({}, 4000, "invalid_request"),
        ({"refreshToken": 5}, 4000, "invalid_request"),
    ]:
        assert await probe.call("refresh", payload) == {"ok": False, "error": {"code": code, "reason": reason}}
    refused = probes()
    assert not await refused.connect(gateway.url, auth={"refreshToken": "y" * 43})
    assert refused.connect_error["data"] == {"code": 4001, "reason": "invalid_token"}


async def test_a_new_refresh_token_is_pushed_before_the_bound_one_expires(
    make_gateway: MakeGateway, probes: Callable[[], Probe]
) -> None:
    ttl = 3.0
    gateway = await make_gateway(refresh_ttl=ttl)
    started = time.monotonic()  # the first token is issued after this: it expires after started + ttl
    probe = await token_socket(gateway, probes)
    first = await probe.wait_for("refresh_token")
    received_first = time.monotonic()
    second = await probe.wait_for("refresh_token", count=2, timeout=4)  # at 9/10 of 3 s
    received_second = time.monotonic()
    assert second["refreshToken"] != first["refreshToken"]
    # §6.5: pushed only once less than a tenth of refresh_ttl is left (the tolerance
    # covers the first push's own delivery), and before the first one expires.
    assert received_second - received_first >= 0.9 * ttl - 0.15
    assert received_second - started < ttl
    assert (await probe.call("refresh", {"refreshToken": second["refreshToken"]}))["ok"] is True


async def test_refresh_tokens_off(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(refresh_tokens=False)
    probe = await token_socket(gateway, probes)
    await asyncio.sleep(0.3)
    assert not probe.named("refresh_token")


# -- disconnect API ----------------------------------------------------------------------


async def test_disconnect_without_revocation(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    token = gateway.mint("alice")
    sockets = [await token_socket(gateway, probes) for _ in range(2)]
    other = await token_socket(gateway, probes, "bob")
    status, body = await gateway.disconnect_user("alice", revoke=False)
    assert (status, body) == (200, {"disconnected": 2})
    for probe in sockets:
        assert await probe.wait_for("closing") == {"code": 4011, "reason": "disconnected"}
    await asyncio.sleep(0.2)
    assert other.client.connected
    again = probes()
    assert await again.connect(gateway.url, auth={"token": token})  # tokens still work


async def test_disconnect_with_revocation(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    old = gateway.mint("alice")
    probe = await token_socket(gateway, probes)
    refresh = (await probe.wait_for("refresh_token"))["refreshToken"]
    pending = probes()
    assert await pending.connect(gateway.url)
    status, body = await gateway.disconnect_user("alice", revoke=True)
    assert (status, body) == (200, {"disconnected": 1})
    assert await probe.wait_for("closing") == {"code": 4011, "reason": "revoked"}
    refused = probes()
    assert not await refused.connect(gateway.url, auth={"token": old})
    assert refused.connect_error["data"] == {"code": 4011, "reason": "revoked"}
    status, body, _ = await http_json("POST", f"{gateway.url}/ws/ticket", token=old)
    assert status == 401 and body["error"]["code"] == "revoked"
    assert await pending.call("authenticate", {"token": old}) == {
        "ok": False,
        "error": {"code": 4011, "reason": "revoked"},
    }
    by_refresh = probes()
    assert not await by_refresh.connect(gateway.url, auth={"refreshToken": refresh})
    assert by_refresh.connect_error["data"] == {"code": 4011, "reason": "revoked"}
    # A token issued after the revocation works everywhere.
    fresh = probes()
    assert await fresh.connect(gateway.url, auth={"ticket": await gateway.ticket("alice")})


async def test_disconnect_api_validation(gateway: Gateway) -> None:
    url = f"{gateway.url}/api/users/alice/disconnect"
    status, body, _ = await http_json("POST", url, json={"revokeTokens": True})
    assert status == 401
    status, body, _ = await http_json("POST", url, token=gateway.config.admin_token, json={"revokeTokens": "maybe"})
    assert status == 400 and "revokeTokens" in body["error"]["message"]
    status, body, _ = await http_json("POST", url, token=gateway.config.admin_token, json={"revoke": True})
    assert status == 400 and "revoke" in body["error"]["message"]


async def test_live_registry_is_kept_in_the_store(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    sockets = [await token_socket(gateway, probes, "zoe") for _ in range(3)]
    await sockets[0].close()
    await asyncio.sleep(0.3)
    closed = await gateway.app[keys.lifetime].disconnect_user("zoe", revoke=False)
    assert closed == 2


async def test_timers_cost_no_task_per_socket(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    """Expiry, warning and refresh timers are loop handles: going from 1 to 20 idle sockets
    with their timers armed starts no task in gateway code. The node's own tasks (fan-out
    subscriber, recovery heartbeat) are per node, not per socket."""
    gateway = await make_gateway(on_expiry="reauth", refresh_tokens=True)
    roots = (str(ROOT / "gateway"), str(ROOT / "handlers"))

    def ours() -> list[str]:
        return sorted(
            t.get_coro().cr_code.co_qualname
            for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "cr_code", None) is not None and t.get_coro().cr_code.co_filename.startswith(roots)
        )

    await (await token_socket(gateway, probes, "user0")).wait_for("refresh_token")
    await asyncio.sleep(0.2)
    per_node = ours()
    for i in range(1, 20):
        probe = await token_socket(gateway, probes, f"user{i}")
        await probe.wait_for("refresh_token")
    await asyncio.sleep(0.2)
    assert gateway.app[keys.realtime].scheduler.pending >= 20 * 3  # warning, expiry, refresh
    assert ours() == per_node
    assert len(per_node) <= 4


async def test_reauth_as_another_user_leaves_that_users_parked_events_alone(
    make_gateway: MakeGateway, probes: Callable[[], Probe]
) -> None:
    gateway = await make_gateway(on_expiry="reauth", expiry_warning=0, reauth_grace=0.5, refresh_tokens=False)
    bob = await token_socket(gateway, probes, "bob", ttl=1)
    await bob.wait_for("reauth_required", timeout=3)
    await gateway.publish("user:bob", "tick", {"seq": 1})
    assert await bob.wait_for("closing", timeout=3) == {"code": 4010, "reason": "auth_expired"}  # parked for bob
    for credential in ({"token": gateway.mint("bob")}, {"ticket": await gateway.ticket("bob")}):
        alice = await token_socket(gateway, probes, "alice")  # each refusal closes the socket (§6.8)
        ack = await alice.call("authenticate", credential)
        assert ack == {"ok": False, "error": {"code": 4001, "reason": "invalid_token"}}
        assert await alice.wait_for("closing") == {"code": 4001, "reason": "invalid_token"}
    nxt = await token_socket(gateway, probes, "bob")
    assert (await nxt.wait_for("tick"))["seq"] == 1  # still there for bob


async def test_a_socket_leaving_during_the_hold_parks_its_events(
    make_gateway: MakeGateway, probes: Callable[[], Probe]
) -> None:
    gateway = await make_gateway(on_expiry="reauth", expiry_warning=0, reauth_grace=30, refresh_tokens=False)
    first = await token_socket(gateway, probes, ttl=1)
    await first.wait_for("reauth_required", timeout=3)
    for seq in (1, 2):
        await gateway.publish("user:alice", "tick", {"seq": seq})
    await first.close()  # a page reload instead of re-authenticating
    async with asyncio.timeout(5):  # the node has let it go, its held events parked
        while await metric(gateway.url, "ticketgate_connected_sockets") != 0:
            await asyncio.sleep(0.02)
    nxt = await token_socket(gateway, probes)
    await gateway.publish("user:alice", "tick", {"seq": 3})
    await nxt.wait_for("tick", count=3)
    assert seqs(nxt) == [1, 2, 3]


async def test_renewal_of_a_token_a_client_rotated_is_not_reuse(
    make_gateway: MakeGateway, probes: Callable[[], Probe]
) -> None:
    gateway = await make_gateway(refresh_ttl=3)
    first_tab = await token_socket(gateway, probes)
    shared = (await first_tab.wait_for("refresh_token"))["refreshToken"]
    second_tab = probes()
    assert await second_tab.connect(gateway.url, auth={"refreshToken": shared})  # a legitimate rotation
    await asyncio.sleep(3.2)  # both renewal timers (9/10 of refresh_ttl) have fired
    assert not first_tab.named("closing") and not second_tab.named("closing")
    assert len(second_tab.named("refresh_token")) >= 2  # the family's newest holder was renewed


async def test_a_revoked_token_is_refused_in_a_message(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(per_message_auth=True, public_rooms=["room:q"])
    old = gateway.mint("alice")
    status, _ = await gateway.disconnect_user("alice", revoke=True)
    assert status == 200
    probe = await token_socket(gateway, probes)
    assert (await probe.call("join", {"room": "room:q"}))["ok"]
    ack = await probe.call("message", {"room": "room:q", "data": 1, "token": old})
    assert ack == {"ok": False, "error": {"code": 4011, "reason": "revoked"}}
    ok = await probe.call("message", {"room": "room:q", "data": 2, "token": gateway.mint("alice")})
    assert ok["ok"] is True


async def test_a_warning_already_due_at_connect_is_sent(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(on_expiry="close", expiry_warning=30, refresh_tokens=False)
    probe = await token_socket(gateway, probes, ttl=10)
    warning = await probe.wait_for("auth_expiring")
    assert 8 <= warning["in"] <= 10
    assert [name for name, _ in probe.events][:2] == ["authenticated", "auth_expiring"]


async def test_auth_that_expires_during_the_connect_still_gets_the_reauth_rules(
    make_gateway: MakeGateway, probes: Callable[[], Probe]
) -> None:
    """A token already past its exp (but within the leeway) is admitted with its expiry
    behind it: the expiry runs right after `authenticated`, and holding is kept."""
    gateway = await make_gateway(on_expiry="reauth", expiry_warning=0, reauth_grace=1, refresh_tokens=False)
    probe = probes()
    assert await probe.connect(gateway.url, auth={"token": gateway.mint("alice", ttl=1, now=time.time() - 3)})
    await probe.wait_for("reauth_required")
    assert [name for name, _ in probe.events][:2] == ["authenticated", "reauth_required"]
    await gateway.publish("user:alice", "tick", {"seq": 1})
    assert await probe.wait_for("closing", timeout=3) == {"code": 4010, "reason": "auth_expired"}
    assert seqs(probe) == []  # held, then parked: not delivered to the expired socket


async def test_no_join_or_message_while_awaiting_reauth(make_gateway: MakeGateway, probes: Callable[[], Probe]) -> None:
    gateway = await make_gateway(
        on_expiry="reauth", expiry_warning=0, reauth_grace=5, refresh_tokens=False, public_rooms=["room:x"]
    )
    probe = await token_socket(gateway, probes, ttl=1)
    assert (await probe.call("join", {"room": "room:x"}))["ok"] is True
    await probe.wait_for("reauth_required", timeout=3)
    expired = {"ok": False, "error": {"code": 4001, "reason": "auth_expired"}}
    assert await probe.call("message", {"room": "room:x", "data": 1}) == expired
    assert await probe.call("join", {"room": "room:x"}) == expired
    assert (await probe.call("authenticate", {"token": gateway.mint("alice")}))["ok"] is True
    assert (await probe.call("message", {"room": "room:x", "data": 2}))["ok"] is True


# -- refresh-token connects (§3 credentials table) and storage (§3, §6.2) -------------


async def test_a_refresh_token_connect_joins_the_users_room(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    owner = await token_socket(gateway, probes)
    token = (await owner.wait_for("refresh_token"))["refreshToken"]
    probe = probes()
    assert await probe.connect(gateway.url, auth={"refreshToken": token})
    authenticated = await probe.wait_for("authenticated")
    assert authenticated["sub"] == "alice" and authenticated["via"] == "refresh"
    await gateway.publish("user:alice", "tick", {"seq": 1})
    assert await probe.wait_for("tick") == {"seq": 1}
    await gateway.publish("user:bob", "tick", {"seq": 2})
    await gateway.publish("user:alice", "tick", {"seq": 3})
    await probe.wait_for("tick", count=2)
    assert seqs(probe) == [1, 3]  # its user's room, no other


async def test_a_refresh_token_in_the_query_string_is_no_credential(
    gateway: Gateway, probes: Callable[[], Probe]
) -> None:
    """The credentials table has no query form for refresh tokens: with deferred_auth
    on, such a socket is pending (no room, no `authenticated`) and the token is untouched."""
    owner = await token_socket(gateway, probes)
    token = (await owner.wait_for("refresh_token"))["refreshToken"]
    pending = probes()
    assert await pending.connect(gateway.url, query=f"refreshToken={token}")
    await gateway.publish("user:alice", "tick", {"seq": 1})
    await owner.wait_for("tick")
    # An ack the server sends after the publish comes after anything the publish sent it.
    refused = await pending.call("authenticate", {"token": "not-a-jwt"})
    assert refused == {"ok": False, "error": {"code": 4001, "reason": "invalid_token"}}
    assert pending.events == []  # no authenticated, refresh_token or tick
    # The query's token was not presented: it still rotates (no reuse, owner not closed).
    assert (await owner.call("refresh", {"refreshToken": token}))["ok"] is True
    # And the socket is still pending: it can authenticate now.
    ack = await pending.call("authenticate", {"token": gateway.mint("alice")})
    assert ack["ok"] is True and ack["sub"] == "alice"
    assert (await pending.wait_for("authenticated"))["via"] == "token"
    assert not owner.named("closing")


async def test_a_refresh_token_in_the_query_string_without_deferred_auth_is_refused(
    make_gateway: MakeGateway, probes: Callable[[], Probe]
) -> None:
    gateway = await make_gateway(deferred_auth=False)
    owner = await token_socket(gateway, probes)
    token = (await owner.wait_for("refresh_token"))["refreshToken"]
    refused = probes()
    assert not await refused.connect(gateway.url, query=f"refreshToken={token}")
    assert refused.connect_error["data"] == {"code": 4001, "reason": "missing_credentials"}
    assert (await owner.call("refresh", {"refreshToken": token}))["ok"] is True  # not consumed


@pytest.mark.parametrize("engine", ["redis"])
async def test_refresh_tokens_are_stored_hashed_and_written_without_padding(
    gateway: Gateway, probes: Callable[[], Probe], redis_server: RedisServer
) -> None:
    probe = await token_socket(gateway, probes)
    tokens = [(await probe.wait_for("refresh_token"))["refreshToken"]]
    tokens.append((await probe.call("refresh", {"refreshToken": tokens[0]}))["refreshToken"])
    heir = probes()
    assert await heir.connect(gateway.url, auth={"refreshToken": tokens[1]})
    tokens.append((await heir.wait_for("refresh_token"))["refreshToken"])
    assert len(set(tokens)) == 3
    for token in tokens:
        assert "=" not in token and re.fullmatch(r"[A-Za-z0-9_-]+", token), token  # §6.2 base64url
        assert len(b64url_decode(token)) >= 16  # ≥128 bits
    contents = await redis_contents(redis_server.url)
    stored = b"\n".join(blob for key, values in contents.items() for blob in (key, *values))
    for token in tokens:
        assert hashlib.sha256(token.encode()).hexdigest().encode() in stored  # the records are there...
        assert token.encode() not in stored  # ...but not the token, as text
        assert b64url_decode(token) not in stored  # nor as raw bytes


async def test_reuse_closes_every_socket_of_the_family_on_every_node(
    engine: str, make_gateway: MakeGateway, probes: Callable[[], Probe], request: pytest.FixtureRequest
) -> None:
    """§6.5: A authenticates with a token and gets R1; B connects (on another node,
    with the redis engine) with R1 and is bound to the family; R1 presented again,
    here through the `refresh` event, closes both."""
    first_node = await make_gateway()
    second_node = first_node
    if engine == "redis":
        second_node = await make_gateway()
        await wait_subscribed(request.getfixturevalue("redis_server").url, 2)
    first_tab = await token_socket(first_node, probes)
    r1 = (await first_tab.wait_for("refresh_token"))["refreshToken"]
    second_tab = probes()
    assert await second_tab.connect(second_node.url, auth={"refreshToken": r1})
    assert (await second_tab.wait_for("authenticated"))["via"] == "refresh"
    r2 = (await second_tab.wait_for("refresh_token"))["refreshToken"]
    assert r2 != r1
    other = await token_socket(first_node, probes)  # another family of the same user
    await other.wait_for("refresh_token")
    ack = await other.call("refresh", {"refreshToken": r1})
    assert ack == {"ok": False, "error": {"code": 4011, "reason": "refresh_reuse"}}
    for tab in (first_tab, second_tab):
        assert await tab.wait_for("closing") == {"code": 4011, "reason": "refresh_reuse"}
        await asyncio.wait_for(tab.disconnected.wait(), 5)
    late = probes()
    assert not await late.connect(first_node.url, auth={"refreshToken": r2})
    assert late.connect_error["data"]["code"] == 4011


async def test_a_refresh_token_of_another_user_is_refused_and_left_unused(
    gateway: Gateway, probes: Callable[[], Probe]
) -> None:
    """`refresh` with alice's token on bob's socket: an `invalid_token` ack, and
    alice's token is not consumed (her next rotation is not taken for reuse)."""
    alice = await token_socket(gateway, probes, "alice")
    token = (await alice.wait_for("refresh_token"))["refreshToken"]
    bob = await token_socket(gateway, probes, "bob")
    ack = await bob.call("refresh", {"refreshToken": token})
    assert ack == {"ok": False, "error": {"code": 4001, "reason": "invalid_token"}}
    rotated = await alice.call("refresh", {"refreshToken": token})
    assert rotated["ok"] is True, rotated
    assert alice.named("closing") == [] and bob.named("closing") == []


async def test_a_used_refresh_token_of_another_user_still_counts_as_reuse(
    gateway: Gateway, probes: Callable[[], Probe]
) -> None:
    """A stolen, already rotated token presented on another user's socket still
    revokes its family: the check of the owner must not hide the theft."""
    alice = await token_socket(gateway, probes, "alice")
    first = (await alice.wait_for("refresh_token"))["refreshToken"]
    assert (await alice.call("refresh", {"refreshToken": first}))["ok"] is True
    bob = await token_socket(gateway, probes, "bob")
    ack = await bob.call("refresh", {"refreshToken": first})
    assert ack == {"ok": False, "error": {"code": 4011, "reason": "refresh_reuse"}}
    assert await alice.wait_for("closing") == {"code": 4011, "reason": "refresh_reuse"}
    assert bob.named("closing") == []


async def test_an_auth_session_socket_cannot_refresh(gateway: Gateway, probes: Callable[[], Probe]) -> None:
    alice = await token_socket(gateway, probes, "alice")
    token = (await alice.wait_for("refresh_token"))["refreshToken"]
    session = await initiate(gateway.url, "alice")
    browser = probes()
    assert await browser.connect(gateway.url, auth={"sessionId": session["sessionId"], "wsToken": session["wsToken"]})
    await browser.wait_for("otp_ready")
    ack = await browser.call("refresh", {"refreshToken": token})
    assert ack == {"ok": False, "error": {"code": 4001, "reason": "invalid_token"}}
    assert (await alice.call("refresh", {"refreshToken": token}))["ok"] is True  # left unused
