"""Debian's Chromium through Playwright, and the demo page as a QA person uses it.

Never downloads a browser: Playwright drives ``/usr/bin/chromium`` (installed
by ``make test`` from Debian's packages). Shared by the tests and by
``python -m tests.demo.screenshot``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}
# How long a step of the page may take: every action is a local HTTP call or socket event.
STEP_MS = 10_000
ADMIN_TOKEN = "admin-token-for-demo-tests-0123456789"

# What Chromium logs for an HTTP error answer to the page's fetch (it cannot be silenced from JS).
_HTTP_ERROR_LOG = re.compile(r"^Failed to load resource: the server responded with a status of (\d{3})\b")


def launch(playwright: Playwright) -> Browser:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run `make test`, which installs Debian's chromium")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=30_000)


@dataclass
class DemoPage:
    """One tab of the demo page; records its console and every URL it loads."""

    page: Page
    base_url: str
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    allowed_http_errors: set[int] = field(default_factory=set)
    # The tab in front, per browser context: Chromium throttles background tabs
    # (animation frames stop), so a test switches tabs as a person would.
    _in_front: ClassVar[dict[int, Page]] = {}

    def __post_init__(self) -> None:
        self.page.set_default_timeout(STEP_MS)
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.on("request", lambda request: self.requests.append(request.url))

    def _on_console(self, message: ConsoleMessage) -> None:
        line = f"[{message.type}] {message.text}"
        self.console.append(line)
        if message.type != "error":
            return
        refused = _HTTP_ERROR_LOG.match(message.text)
        if refused and int(refused.group(1)) in self.allowed_http_errors:
            return  # a refusal the test provoked on purpose (e.g. 401 invalid_otp)
        self.errors.append(line)

    def allow_http_errors(self, *statuses: int) -> None:
        """The test provokes these HTTP refusals; Chromium's console line for them is expected."""
        self.allowed_http_errors.update(statuses)

    # -- navigation and reading ------------------------------------------------

    def front(self) -> None:
        context = id(self.page.context)
        if self._in_front.get(context) is not self.page:
            self.page.bring_to_front()
            self._in_front[context] = self.page

    def open(self) -> DemoPage:
        self.front()
        self.page.goto(f"{self.base_url}/demo/")
        expect(self.page.locator("body")).to_have_attribute("data-ready", "true")
        return self

    def by(self, test_id: str) -> Any:
        self.front()
        return self.page.get_by_test_id(test_id)

    def log_heads(self) -> list[str]:
        """The event log's entries as 'name summary socket', in order."""
        heads: list[str] = self.by("event-log").evaluate(
            "log => [...log.children].map(entry => entry.querySelector('.entry-head').textContent)"
        )
        return heads

    def log_texts(self) -> list[str]:
        texts: list[str] = self.by("event-log").evaluate("log => [...log.children].map(entry => entry.textContent)")
        return texts

    def wait_for_log(self, pattern: str, *, count: int = 1, timeout: int = STEP_MS) -> None:
        """Until ``count`` entries' heads match ``pattern`` (a regular expression)."""
        self.page.wait_for_function(
            """([pattern, count]) => {
                const re = new RegExp(pattern);
                const heads = [...document.querySelectorAll('[data-testid="event-log"] > li .entry-head')];
                return heads.filter(h => re.test(h.textContent)).length >= count;
            }""",
            arg=[pattern, count],
            polling=100,
            timeout=timeout,
        )

    def index_of(self, pattern: str, *, start: int = 0) -> int:
        """Position of the first log entry at or after ``start`` whose head matches ``pattern``."""
        heads = self.log_heads()
        for index in range(start, len(heads)):
            if re.search(pattern, heads[index]):
                return index
        raise AssertionError(f"no event log entry matches {pattern!r} after #{start}: {heads}")

    def horizontal_overflow(self) -> int:
        overflow: int = self.page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        return overflow

    # -- the flows -----------------------------------------------------------------

    def set_admin_token(self, token: str = ADMIN_TOKEN) -> None:
        self.by("admin-token").fill(token)
        self.by("admin-token").dispatch_event("change")

    def enroll(self, user: str) -> None:
        self.by("demo-user-id").fill(user)
        self.by("phone-enroll").click()
        expect(self.by("phone-device")).to_contain_text(f"enrolled for {user}")
        expect(self.by("phone-code")).to_have_text(re.compile(r"^\d{6}$"))

    def start_login(self) -> str:
        """Start a login; the masked OTP the browser shows."""
        self.by("login-start").click()
        expect(self.by("browser-otp")).to_have_text(re.compile(r"^\d{4}\*\*$"))
        expect(self.by("login-status")).to_contain_text("waiting for approval")
        return str(self.by("browser-otp").text_content())

    def approve(self) -> None:
        self.by("phone-approve").click()
        expect(self.by("login-status")).to_contain_text("approved")
        expect(self.by("login-hash")).to_contain_text("hash verified")

    def login(self, user: str) -> None:
        self.enroll(user)
        self.start_login()
        self.approve()

    def connect(self, user: str) -> None:
        self.by("socket-connect").click()
        expect(self.by("socket-status")).to_contain_text(f"authenticated as {user} via ticket")

    def join(self, room: str) -> None:
        self.by("chat-room").fill(room)
        self.by("chat-join").click()
        expect(self.by("chat-mode")).to_contain_text(f"Joined room:{room}")

    def say(self, text: str) -> None:
        self.by("chat-input").fill(text)
        self.by("chat-input").press("Enter")
        expect(self.by("chat-input")).to_have_value("")


def chat_line(demo: DemoPage, text: str) -> Any:
    return demo.by("chat-log").locator("li", has_text=text)


def non_local(urls: Iterable[str], base_url: str) -> list[str]:
    """URLs a page loaded from anywhere but its gateway (a CDN would show up here)."""
    return [url for url in urls if not (url.startswith(base_url + "/") or url.startswith("data:"))]
