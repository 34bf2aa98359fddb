"""The QA demo page (issue 6) in Debian's Chromium against a real `--demo` gateway
(memory engine): every flow a QA person walks through, as they would click it."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from playwright.sync_api import expect

from tests.demo.browser import NARROW, WIDE, DemoPage, chat_line, non_local
from tests.support import ROOT, GatewayProcess

pytestmark = pytest.mark.timeout(90)

StartGateway = Callable[..., GatewayProcess]
OpenDemo = Callable[..., DemoPage]

TIME = r"\d{2}:\d{2}:\d{2}\.\d{3}"


def test_login_by_device_approval_then_a_ticket_socket(demo_gateway: StartGateway, open_demo: OpenDemo) -> None:
    gateway = demo_gateway()
    demo = open_demo(gateway)
    expect(demo.by("page-node")).to_have_text("node: demo-a")
    demo.enroll("alice")

    demo.start_login()
    # The browser shows the OTP with its last two digits masked; the phone's own
    # TOTP (computed with WebCrypto) starts with the same four digits.
    expect(demo.by("phone-request")).to_contain_text("matches this phone's code ✓")
    expect(demo.by("phone-otp")).to_have_value(re.compile(r"^\d{6}$"))
    demo.approve()

    demo.connect("alice")
    expect(demo.by("socket-node")).to_contain_text("demo-a")
    expect(demo.by("token-summary")).to_contain_text("approval JWT for alice · amr otp+hwk")
    expect(demo.by("socket-expiry")).to_contain_text(re.compile(r"in (59|60):\d\d"))
    expect(demo.by("socket-refresh")).to_contain_text("expires")

    # The log lists every event in order, each entry starting with the event name,
    # with its socket and a time stamp.
    demo.wait_for_log(r"^refresh_token .*user#1")
    heads = demo.log_heads()
    order = [
        demo.index_of(r"^authenticated .*session#1"),
        demo.index_of(r"^otp_ready .*session#1"),
        demo.index_of(r"^approved .*session#1"),
        demo.index_of(r"^closing 1000 resolved session#1"),
        demo.index_of(r"^authenticated .*user#1"),
        demo.index_of(r"^refresh_token .*user#1"),
    ]
    assert order == sorted(order), heads
    for text in demo.log_texts():
        assert re.match(r"^[a-z_]+ ", text) and re.search(TIME, text), text
    assert non_local(demo.requests, gateway.url) == []


def test_wrong_code_from_the_phone_is_rejected_with_attempts_left(
    demo_gateway: StartGateway, open_demo: OpenDemo
) -> None:
    demo = open_demo(demo_gateway())
    demo.allow_http_errors(401)
    demo.enroll("alice")
    demo.start_login()
    demo.by("phone-otp").fill("000000" if demo.by("phone-code").text_content() != "000000" else "111111")
    demo.by("phone-approve").click()
    expect(demo.by("login-status")).to_have_text("rejected — Invalid OTP (2 attempts left)")
    expect(demo.by("phone-result")).to_contain_text("401 invalid_otp (2 attempts left)")
    demo.wait_for_log(r"^rejected session#1")

    # The session stays open: the right code still approves it.
    demo.by("phone-otp").fill(str(demo.by("phone-code").text_content()))
    demo.approve()


def test_wrong_code_three_times_ends_the_session(demo_gateway: StartGateway, open_demo: OpenDemo) -> None:
    demo = open_demo(demo_gateway())
    demo.allow_http_errors(401, 429)
    demo.by("demo-user-id").fill("carol")
    demo.by("fail-wrong-otp").click()  # enrolls, starts a login, sends three wrong codes
    expect(demo.by("fail-result-wrong-otp")).to_have_text(
        "401 invalid_otp (2 attempts left) → 401 invalid_otp (1 attempt left) → 429 too_many_attempts (0 attempts left)"
    )
    expect(demo.by("login-status")).to_have_text("rejected — Too many attempts")
    demo.wait_for_log(r"^closing 1000 resolved session#1")
    rejected = [i for i, head in enumerate(demo.log_heads()) if head.startswith("rejected ")]
    assert len(rejected) == 3
    assert rejected[-1] < demo.index_of(r"^closing 1000 resolved")
    texts = demo.log_texts()
    assert "reason=Too many attempts" in texts[rejected[-1]] and "final=true" in texts[rejected[-1]]


def test_reusing_a_ticket_is_refused(demo_gateway: StartGateway, open_demo: OpenDemo) -> None:
    demo = open_demo(demo_gateway())
    demo.login("alice")
    demo.by("fail-reuse-ticket").click()
    expect(demo.by("fail-result-reuse-ticket")).to_have_text(
        "first use connected ✓; second use refused: 4001 invalid_ticket ✓"
    )
    demo.wait_for_log(r"^connect_error 4001 invalid_ticket reuse#2")
    assert demo.index_of(r"^authenticated .*reuse#1") < demo.index_of(r"^connect_error .*reuse#2")


def test_a_second_connection_replaces_the_first_with_4009(demo_gateway: StartGateway, open_demo: OpenDemo) -> None:
    demo = open_demo(demo_gateway())
    demo.enroll("alice")
    demo.start_login()
    demo.by("fail-second-connection").click()
    expect(demo.by("fail-result-second-connection")).to_contain_text("session#1 got closing 4009 replaced ✓")
    demo.wait_for_log(r"^closing 4009 replaced session#1")
    demo.wait_for_log(r"^otp_ready .*session#2")
    # The newer connection is the live one: the approval reaches it.
    demo.approve()
    assert demo.index_of(r"^approved .*session#2") > demo.index_of(r"^closing 4009")


def test_the_page_says_why_it_cannot_show_token_expired_with_a_live_token(
    demo_gateway: StartGateway, open_demo: OpenDemo
) -> None:
    demo = open_demo(demo_gateway())
    demo.login("alice")
    demo.by("fail-expired-token").click()
    expect(demo.by("fail-result-expired-token")).to_contain_text("refused: 4001 invalid_token ✓")
    expect(demo.by("fail-result-expired-token")).to_contain_text("no token of yours has expired yet")
    demo.wait_for_log(r"^connect_error 4001 invalid_token expired#1")


def test_an_expired_gateway_token_is_refused_as_token_expired(demo_gateway: StartGateway, open_demo: OpenDemo) -> None:
    demo = open_demo(demo_gateway(access_token_ttl=3, leeway=0))
    demo.login("alice")
    time.sleep(4)  # the approval JWT lives access_token_ttl = 3 s
    demo.by("fail-expired-token").click()
    expect(demo.by("fail-result-expired-token")).to_contain_text("refused: 4001 token_expired ✓")
    demo.wait_for_log(r"^connect_error 4001 token_expired expired#1")


def test_an_unapproved_session_expires(demo_gateway: StartGateway, open_demo: OpenDemo) -> None:
    demo = open_demo(demo_gateway(session_ttl=3))
    demo.enroll("alice")
    demo.start_login()
    expect(demo.by("login-status")).to_contain_text("expired")
    demo.wait_for_log(r"^closing 1000 expired session#1")


def test_expiry_warning_reauthentication_and_held_events(demo_gateway: StartGateway, open_demo: OpenDemo) -> None:
    demo = open_demo(demo_gateway(access_token_ttl=6, expiry_warning=4, reauth_grace=30, leeway=0))
    demo.set_admin_token()
    demo.login("alice")
    demo.connect("alice")
    expect(demo.by("socket-refresh")).to_contain_text("expires")

    demo.wait_for_log(r"^auth_expiring user#1")
    expect(demo.by("socket-banner")).to_contain_text("auth_expiring")
    demo.wait_for_log(r"^reauth_required user#1")
    expect(demo.by("socket-status")).to_contain_text("reauth required")
    expect(demo.by("socket-banner")).to_contain_text("held")

    # Published while the socket waits for re-authentication: held, not delivered.
    for n in (1, 2):
        demo.by("socket-publish").click()
        expect(demo.by("socket-result")).to_contain_text(f"Published demo_notice #{n}")
    time.sleep(0.5)
    assert not any(head.startswith("demo_notice") for head in demo.log_heads())

    demo.by("socket-reauth").click()  # a new device approval, then `authenticate` on the same socket
    expect(demo.by("login-status")).to_contain_text("waiting for approval")
    demo.approve()
    # (Not socket-status: the new 6 s token soon warns again and the status says so.)
    expect(demo.by("socket-result")).to_contain_text("Re-authenticated ✓")
    expect(demo.by("socket-held").locator("li")).to_have_count(2)
    held = demo.by("socket-held").locator("li").all_text_contents()
    assert held[0].startswith("demo_notice n=1 ") and held[1].startswith("demo_notice n=2 "), held
    demo.wait_for_log(r"^authenticate ok user#1 ack")
    demo.wait_for_log(r"^demo_notice user#1 held", count=2)
    assert demo.index_of(r"^reauth_required") < demo.index_of(r"^demo_notice user#1 held")


def test_events_held_for_a_socket_that_never_reauthenticates_go_to_the_next_one(
    demo_gateway: StartGateway, open_demo: OpenDemo
) -> None:
    demo = open_demo(demo_gateway(access_token_ttl=4, expiry_warning=0, reauth_grace=2, leeway=0))
    demo.set_admin_token()
    demo.login("alice")
    demo.connect("alice")
    demo.wait_for_log(r"^reauth_required user#1")
    for n in (1, 2):
        demo.by("socket-publish").click()
        expect(demo.by("socket-result")).to_contain_text(f"Published demo_notice #{n}")
    demo.wait_for_log(r"^closing 4010 auth_expired user#1")  # the grace ran out

    demo.start_login()
    demo.approve()
    demo.connect("alice")
    demo.wait_for_log(r"^demo_notice user#2 parked", count=2)
    parked = demo.by("socket-held").locator("li").all_text_contents()
    assert [line.split(" ")[1] for line in parked] == ["n=1", "n=2"], parked
    demo.by("socket-publish").click()
    demo.wait_for_log(r"^demo_notice user#2$")  # a new event: delivered, neither held nor parked
    assert demo.index_of(r"^demo_notice user#2 parked") < demo.index_of(r"^demo_notice user#2$")


def test_a_cut_connection_comes_back_recovered_with_what_was_published_meanwhile(
    demo_gateway: StartGateway, open_demo: OpenDemo
) -> None:
    """Connection state recovery (docs/recovery.md) as QA sees it: the transport
    dropped, 3 events published while it is away, the socket back with them."""
    demo = open_demo(demo_gateway())
    demo.set_admin_token()
    demo.login("alice")
    demo.connect("alice")
    demo.wait_for_log(r"^refresh_token .*user#1")
    demo.by("socket-cut").click()
    expect(demo.by("socket-result")).to_contain_text("recovered: the 3 events follow", timeout=15_000)
    expect(demo.by("socket-status")).to_contain_text("recovered: missed events replayed")
    demo.wait_for_log(r"^demo_notice user#1", count=3)
    notices = [text for text in demo.log_heads() if text.startswith("demo_notice user#1")]
    assert len(notices) == 3, notices  # once each
    back = demo.index_of(r"^connect user#1", start=demo.index_of(r"^disconnect .*user#1"))
    assert back < demo.index_of(r"^demo_notice user#1")  # published while away, delivered once back


def test_disconnect_user_through_the_admin_api(demo_gateway: StartGateway, open_demo: OpenDemo) -> None:
    demo = open_demo(demo_gateway())
    demo.allow_http_errors(401)
    demo.set_admin_token()
    demo.login("alice")
    demo.connect("alice")
    demo.by("chat-add-socket").click()
    demo.wait_for_log(r"^authenticated .*user#2")

    demo.by("fail-disconnect-user").click()
    expect(demo.by("fail-result-disconnect-user")).to_have_text("disconnected 2 socket(s) of alice ✓")
    demo.wait_for_log(r"^closing 4011 disconnected user#1")
    demo.wait_for_log(r"^closing 4011 disconnected user#2")
    expect(demo.by("socket-status")).to_have_text("closed 4011 disconnected")

    # Without revocation the token still buys a ticket; with it, it does not.
    demo.connect("alice")
    demo.by("fail-revoke").check()
    demo.by("fail-disconnect-user").click()
    expect(demo.by("fail-result-disconnect-user")).to_have_text("disconnected 1 socket(s) of alice; tokens revoked ✓")
    demo.wait_for_log(r"^closing 4011 revoked user#3")
    demo.by("socket-connect").click()
    expect(demo.by("socket-result")).to_have_text("No ticket: 401 revoked")


def test_admin_actions_ask_for_the_admin_token(demo_gateway: StartGateway, open_demo: OpenDemo) -> None:
    demo = open_demo(demo_gateway())
    demo.allow_http_errors(401)
    demo.login("alice")
    demo.connect("alice")
    demo.by("fail-disconnect-user").click()
    expect(demo.by("fail-result-disconnect-user")).to_contain_text("Enter the admin token first")
    expect(demo.by("admin-token")).to_be_focused()
    demo.set_admin_token("not-the-admin-token-0123456789")
    demo.by("fail-disconnect-user").click()
    expect(demo.by("fail-result-disconnect-user")).to_have_text("Refused: 401 invalid_token")
    expect(demo.by("socket-status")).to_contain_text("authenticated")


def test_chat_fans_out_to_every_socket_and_tab(demo_gateway: StartGateway, open_demo: OpenDemo) -> None:
    gateway = demo_gateway()
    alice = open_demo(gateway)
    bob = open_demo(gateway, beside=alice)  # another tab of the same browser
    alice.login("alice")
    alice.connect("alice")
    alice.by("chat-add-socket").click()
    alice.wait_for_log(r"^authenticated .*user#2")
    bob.login("bob")
    bob.connect("bob")
    alice.join("demo-lobby")
    expect(alice.by("chat-mode")).to_contain_text("with 2 socket(s)")
    bob.join("demo-lobby")

    bob.say("hello from bob")
    line = chat_line(alice, "hello from bob")
    expect(line).to_contain_text("received by user#1, user#2")
    expect(line).to_contain_text("bob via demo-a")
    expect(chat_line(bob, "hello from bob")).to_contain_text("received by user#1")

    alice.say("hi bob")
    expect(chat_line(bob, "hi bob")).to_contain_text("alice via demo-a")
    alice.wait_for_log(r"^message user#1")
    alice.wait_for_log(r"^message ok user#1 ack")


def test_chat_relays_through_user_rooms_when_join_is_refused(demo_gateway: StartGateway, open_demo: OpenDemo) -> None:
    gateway = demo_gateway()
    alice = open_demo(gateway)
    bob = open_demo(gateway, beside=alice)
    for demo, user in ((alice, "alice"), (bob, "bob")):
        demo.set_admin_token()
        demo.login(user)
        demo.connect(user)
        demo.by("chat-room").fill("qa-private")  # not public, and the approval JWT has no rooms claim
        demo.by("chat-join").click()
        expect(demo.by("chat-mode")).to_contain_text("join refused (4003")
        demo.wait_for_log(r"^join 4003 forbidden user#1 ack")

    bob.by("chat-members").fill("alice")
    bob.say("relayed hello")
    expect(chat_line(alice, "relayed hello")).to_contain_text("relayed")
    expect(chat_line(bob, "relayed hello")).to_be_visible()
    alice.wait_for_log(r"^demo_chat user#1")
    alice.say("relayed reply")  # alice learned bob from his message
    expect(chat_line(bob, "relayed reply")).to_contain_text("alice via demo-a")


def test_a_pasted_token_with_a_rooms_claim_joins_its_rooms(demo_gateway: StartGateway, open_demo: OpenDemo) -> None:
    gateway = demo_gateway()
    mint = ["token", "--config", str(gateway.config_file), "--sub", "dave", "--claims", '{"rooms": ["room:team-*"]}']
    token = subprocess.run(
        [sys.executable, "-m", "gateway", *mint],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    demo = open_demo(gateway)
    demo.page.locator("summary", has_text="Use an access token of your own").click()
    demo.by("custom-token").fill(token)
    demo.by("custom-token-use").click()
    expect(demo.by("token-summary")).to_contain_text("pasted JWT for dave · rooms room:team-*")
    demo.connect("dave")
    demo.join("team-qa")
    demo.say("team only")
    expect(chat_line(demo, "team only")).to_contain_text("dave via demo-a")


@pytest.mark.parametrize("viewport", [WIDE, NARROW], ids=["1280x800", "390x844"])
def test_layout_fits_the_viewport_and_keeps_the_log_in_view(
    viewport: dict[str, int], demo_gateway: StartGateway, open_demo: OpenDemo
) -> None:
    demo = open_demo(demo_gateway(), viewport=viewport)
    demo.login("alice")
    demo.connect("alice")
    assert demo.horizontal_overflow() == 0
    panel = demo.page.locator("#event-log-panel")
    newest = demo.by("event-log").locator("li").last
    # The event log stays on screen, its newest entry in view, wherever the page is scrolled.
    for target in ("login-start", "chat-send", "fail-disconnect-user"):
        demo.by(target).scroll_into_view_if_needed()
        expect(demo.by(target)).to_be_in_viewport()
        box = panel.bounding_box()
        assert box is not None, target
        assert box["height"] >= 0.3 * viewport["height"], (target, box)
        assert box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"] + 1, (target, box)
        assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], (target, box)
        expect(newest).to_be_in_viewport()
    # No control sticks out sideways.
    outside = demo.page.evaluate(
        """() => [...document.querySelectorAll('button, input, textarea, .otp, .entry, .card')]
            .filter(el => el.offsetParent !== null)
            .map(el => el.getBoundingClientRect())
            .filter(r => r.left < -1 || r.right > window.innerWidth + 1).length"""
    )
    assert outside == 0
    assert demo.horizontal_overflow() == 0


def test_keyboard_alone_logs_in(demo_gateway: StartGateway, open_demo: OpenDemo) -> None:
    demo = open_demo(demo_gateway())
    page = demo.page

    def tab_to(test_id: str) -> None:
        for _ in range(60):
            if page.evaluate("() => document.activeElement?.dataset?.testid") == test_id:
                return
            page.keyboard.press("Tab")
        raise AssertionError(f"Tab never reaches {test_id}")

    tab_to("demo-user-id")
    page.keyboard.press("Control+A")
    page.keyboard.type("erin")
    tab_to("phone-enroll")
    page.keyboard.press("Enter")
    expect(demo.by("phone-device")).to_contain_text("enrolled for erin")
    page.keyboard.press("Shift+Tab")  # back to the browser panel
    expect(demo.by("login-start")).to_be_focused()
    page.keyboard.press("Enter")
    expect(demo.by("browser-otp")).to_have_text(re.compile(r"^\d{4}\*\*$"))
    tab_to("phone-otp")
    page.keyboard.press("Enter")  # submits the phone's form: Approve
    expect(demo.by("login-status")).to_have_text("approved")
    tab_to("socket-connect")
    page.keyboard.press("Enter")
    expect(demo.by("socket-status")).to_contain_text("authenticated as erin")
    # Focus is visible: the focused control draws an outline.
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")
