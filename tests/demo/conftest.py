"""Fixtures for the demo page: real `--demo` gateways and Debian's Chromium.

The browser runs through Playwright's *sync* API, whose event loop must not
outlive this package's modules (pytest-asyncio tests elsewhere need theirs):
hence a module-scoped browser. On a failure every page of the test leaves a
screenshot and its console log, and every gateway its log, under
``test-artifacts/<test>/``. A test also fails when a page logged a console
error it did not expect.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.demo.browser import ADMIN_TOKEN, WIDE, DemoPage, launch
from tests.support import ROOT, GatewayProcess

ARTIFACTS = ROOT / "test-artifacts"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def failed(node: pytest.Item) -> bool:
    return any(getattr(getattr(node, f"report_{when}", None), "failed", False) for when in ("setup", "call"))


def artifact_dir(node: pytest.Item) -> Path:
    path = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", node.nodeid)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_async(coro: Coroutine[Any, Any, Any], *, timeout: float = 30) -> Any:
    """Run a coroutine on a fresh loop in another thread: Playwright's sync API owns this one's."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=timeout)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def demo_settings(cluster_keys: dict[str, str]) -> dict[str, Any]:
    """A known admin token, and keys so that `ticketgate token` can mint tokens this gateway trusts."""
    return {**cluster_keys, "admin_token": ADMIN_TOKEN}


@pytest.fixture
def demo_gateway(
    demo_settings: dict[str, Any],
    gateway_process: Callable[..., GatewayProcess],
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., GatewayProcess]]:
    """Factory: a started `python -m gateway serve --demo` with the given setting overrides."""
    started: list[GatewayProcess] = []

    def start(name: str = "demo-a", **overrides: Any) -> GatewayProcess:
        settings = {**demo_settings, "node_name": name, **overrides}
        proc = gateway_process(settings, name=name, extra_args=("--demo",))
        proc.start()
        started.append(proc)
        return proc

    yield start
    if failed(request.node):
        target = artifact_dir(request.node)
        for proc in started:
            shutil.copy(proc.log_file, target / f"gateway-{proc.log_file.stem}.log")


@pytest.fixture
def open_demo(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Callable[..., DemoPage]]:
    """Factory: a new tab on ``gateway``'s demo page, in its own browser context unless
    ``beside`` names a page whose context (same browser profile, another tab) it joins."""
    pages: list[DemoPage] = []
    contexts: list[Any] = []

    def open_page(
        gateway: GatewayProcess, *, viewport: dict[str, int] = WIDE, beside: DemoPage | None = None
    ) -> DemoPage:
        if beside is None:
            context = browser.new_context(viewport=viewport)
            contexts.append(context)
        else:
            context = beside.page.context
        demo = DemoPage(page=context.new_page(), base_url=gateway.url)
        pages.append(demo)
        return demo.open()

    yield open_page
    errors = [f"tab {index}: {error}" for index, demo in enumerate(pages) for error in demo.errors]
    if failed(request.node) or errors:
        target = artifact_dir(request.node)
        for index, demo in enumerate(pages):
            try:
                demo.page.screenshot(path=str(target / f"tab-{index}.png"), full_page=True, timeout=5000)
            except Exception as exc:  # a crashed page still leaves its console log
                demo.console.append(f"[artifact] no screenshot: {exc}")
            (target / f"tab-{index}-console.log").write_text("\n".join(demo.console) + "\n")
    for context in contexts:
        context.close()
    if errors and not failed(request.node):
        pytest.fail("console errors on the demo page:\n" + "\n".join(errors), pytrace=False)
