"""``make screenshot``: docs/demo.png, the demo page right after a full login.

Starts a real ``--demo`` gateway on a free port, drives Debian's Chromium
through Playwright exactly as the tests do (enroll the phone, log in by
device approval, connect with a ticket, say hello in the chat), and saves
the 1280x800 viewport.

    python -m tests.demo.screenshot [--out docs/demo.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.demo.browser import WIDE, DemoPage, launch
from tests.support import ROOT, GatewayProcess, gateway_processes, write_toml

ADMIN_TOKEN = "admin-token-for-the-screenshot-0123456789"


def take(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = write_toml(Path(tmp) / "demo.toml", {"admin_token": ADMIN_TOKEN, "node_name": "node-a"})
        gateway = GatewayProcess(config_file=config, log_file=Path(tmp) / "gateway.log", extra_args=("--demo",))
        with gateway_processes(gateway), sync_playwright() as playwright:
            browser = launch(playwright)
            try:
                context = browser.new_context(viewport=WIDE)
                demo = DemoPage(page=context.new_page(), base_url=gateway.url).open()
                demo.set_admin_token(ADMIN_TOKEN)
                demo.login("alice")
                demo.connect("alice")
                demo.join("demo-lobby")
                demo.say("Hello from QA")
                demo.page.evaluate("() => window.scrollTo(0, 0)")
                if demo.errors:
                    raise RuntimeError("console errors on the demo page: " + "; ".join(demo.errors))
                out.parent.mkdir(parents=True, exist_ok=True)
                demo.page.screenshot(path=str(out))
            finally:
                browser.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.demo.screenshot", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "demo.png")
    args = parser.parse_args(argv)
    take(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
