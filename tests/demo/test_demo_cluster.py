"""The demo page against two real gateway processes sharing one redis-server:
each tab is served by a different node, logs in there, and chats across nodes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.demo.browser import DemoPage, chat_line
from tests.demo.conftest import run_async
from tests.support import GatewayProcess, Nodes, RedisServer, start_together, wait_subscribed

pytestmark = pytest.mark.timeout(90)

OpenDemo = Callable[..., DemoPage]


@pytest.fixture
def two_nodes(
    redis_server: RedisServer, demo_settings: dict[str, Any], gateway_process: Callable[..., GatewayProcess]
) -> Nodes:
    redis_server.flush()
    settings = {**demo_settings, "redis_url": redis_server.url}
    nodes = (
        gateway_process({**settings, "node_name": "node-a"}, name="node-a", extra_args=("--demo",)),
        gateway_process({**settings, "node_name": "node-b"}, name="node-b", extra_args=("--demo",)),
    )
    start_together(*nodes)
    run_async(wait_subscribed(redis_server.url, len(nodes)))
    return nodes


def test_login_and_chat_with_each_tab_on_its_own_node(two_nodes: Nodes, open_demo: OpenDemo) -> None:
    a, b = two_nodes
    alice = open_demo(a)
    bob = open_demo(b)
    expect(alice.by("page-node")).to_have_text("node: node-a")
    expect(bob.by("page-node")).to_have_text("node: node-b")

    alice.login("alice")
    alice.connect("alice")
    bob.login("bob")
    bob.connect("bob")
    expect(alice.by("socket-node")).to_contain_text("node-a")
    expect(bob.by("socket-node")).to_contain_text("node-b")

    alice.join("demo-lobby")
    bob.join("demo-lobby")
    alice.say("hello from node a")
    expect(chat_line(bob, "hello from node a")).to_contain_text("alice via node-a")
    bob.say("hello from node b")
    expect(chat_line(alice, "hello from node b")).to_contain_text("bob via node-b")
    expect(chat_line(alice, "hello from node b")).to_contain_text("received by user#1")
    bob.wait_for_log(r"^message user#1", count=2)


def test_disconnecting_a_user_on_one_node_closes_their_socket_on_the_other(
    two_nodes: Nodes, open_demo: OpenDemo
) -> None:
    a, b = two_nodes
    on_a = open_demo(a)
    on_b = open_demo(b)
    for demo in (on_a, on_b):  # the same user, a phone enrolled in each tab
        demo.login("alice")
        demo.connect("alice")
    on_a.set_admin_token()
    on_a.by("fail-disconnect-user").click()
    expect(on_a.by("fail-result-disconnect-user")).to_have_text("disconnected 2 socket(s) of alice ✓")
    on_b.wait_for_log(r"^closing 4011 disconnected user#1")
    expect(on_b.by("socket-status")).to_have_text("closed 4011 disconnected")


def test_who_is_in_the_chat_room_and_who_is_online_live_across_nodes(two_nodes: Nodes, open_demo: OpenDemo) -> None:
    """Presence (docs/presence.md) as QA sees it: the room's members, counted over
    both nodes, follow user_joined / user_left; the user's online status follows
    their connections anywhere in the cluster."""
    a, b = two_nodes
    alice = open_demo(a)
    bob = open_demo(b)
    alice.set_admin_token()
    alice.login("alice")
    alice.connect("alice")
    expect(alice.by("user-online")).to_have_text("online · 1 connection(s) in the cluster")
    alice.join("demo-lobby")
    expect(alice.by("chat-presence")).to_have_text("In room:demo-lobby: 1 user(s): alice (1)")

    bob.login("bob")
    bob.connect("bob")
    bob.join("demo-lobby")
    expect(alice.by("chat-presence")).to_have_text("In room:demo-lobby: 2 user(s): alice (1), bob (1)")
    expect(bob.by("chat-presence")).to_have_text("In room:demo-lobby: 2 user(s): alice (1), bob (1)")

    alice.by("chat-add-socket").click()  # alice's second connection: still one user
    expect(alice.by("chat-presence")).to_have_text("In room:demo-lobby: 2 user(s): alice (2), bob (1)")
    expect(alice.by("user-online")).to_have_text("online · 2 connection(s) in the cluster")

    bob.by("socket-disconnect").click()
    expect(alice.by("chat-presence")).to_have_text("In room:demo-lobby: 1 user(s): alice (2)")
