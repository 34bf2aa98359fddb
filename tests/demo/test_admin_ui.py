"""The operator UI (issue #15) in Debian's Chromium against a real `--demo`
gateway: an operator logs in at /admin/ with the admin token and sees the demo's
socket, its user's room and a query string without credentials."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.demo.browser import ADMIN_TOKEN, STEP_MS, WIDE, DemoPage, non_local
from tests.support import GatewayProcess

pytestmark = pytest.mark.timeout(90)


def log_in(page: Page, base_url: str, password: str) -> None:
    """The UI's connection form, filled as an operator does."""
    page.goto(f"{base_url}/admin/")
    page.get_by_label("Server URL").fill(base_url)
    page.get_by_label("Username").fill("operator")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Connect").click()


def test_an_operator_logs_in_and_sees_the_demos_socket(
    demo_gateway: Callable[..., GatewayProcess], open_demo: Callable[..., DemoPage], browser: Browser
) -> None:
    gateway = demo_gateway()
    demo = open_demo(gateway)
    demo.set_admin_token()
    demo.login("alice")
    demo.connect("alice")

    context = browser.new_context(viewport=WIDE)
    try:
        page = context.new_page()
        page.set_default_timeout(STEP_MS)
        requests: list[str] = []
        errors: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        log_in(page, gateway.url, "wrong-admin-token-0123456789")
        expect(page.get_by_text("Invalid credentials")).to_be_visible()
        log_in(page, gateway.url, ADMIN_TOKEN)
        expect(page.locator(".v-chip__content:visible", has_text="connected")).to_have_count(1)
        expect(page.get_by_label("Password")).to_be_hidden()

        page.get_by_role("link", name="Sockets").click()
        page.locator(".v-input__slot", has=page.get_by_label("Select namespace")).click()
        page.get_by_role("option", name="/", exact=True).click()
        rows = page.locator("tbody tr")
        expect(rows).to_have_count(1)  # the demo's one socket
        rows.first.click()
        expect(page).to_have_url(re.compile(r"/admin/#/n/%2F/sockets/[\w-]{20}$"))
        details = page.locator("main")
        expect(details.get_by_text("user:alice", exact=True)).to_be_visible()
        query = details.locator("table", has_text="EIO")
        expect(query).to_contain_text("transport")

        # The UI offers "Join a room"; the gateway serves no such action (read-only).
        page.get_by_label("Join a room").fill("room:operator-was-here")
        page.get_by_label("Join a room").press("Enter")
        page.wait_for_timeout(2500)  # more than a stats tick: a join would have been reported
        expect(details.get_by_text("room:operator-was-here", exact=True)).to_have_count(0)

        shown = page.locator("body").inner_text()
        assert ADMIN_TOKEN not in shown
        assert not re.search(r"eyJ[\w-]+\.", shown), shown  # no JWT
        assert non_local(requests, gateway.url) == []  # no CDN: the page, its fonts and icons are the gateway's
        assert errors == []
    finally:
        context.close()
