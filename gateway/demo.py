"""Where the web demo's files are: package data in an installed ticketgate,
else ``web_demo/`` of the checkout this package runs from (an editable install).

A wheel built by ``make dist`` (setup.py's build step) carries the page and the
pinned socket.io-client bundle in ``gateway/web_demo/`` and its ``vendor/``; a
checkout has the page in ``web_demo/`` and the bundle where ``npm ci`` puts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.errors import StartupError

# What index.html loads from vendor/.
CLIENT_BUNDLE = "socket.io.min.js"
# The package's own directory rather than importlib.resources: aiohttp serves
# static routes from a real directory, and pip installs a wheel unpacked.
PACKAGED = Path(__file__).resolve().parent / "web_demo"
CHECKOUT = Path(__file__).resolve().parent.parent / "web_demo"
CHECKOUT_VENDOR = CHECKOUT / "node_modules" / "socket.io-client" / "dist"


@dataclass(frozen=True, kw_only=True)
class DemoFiles:
    page: Path  # index.html and every file it loads but the bundle
    vendor: Path  # socket.io.min.js (and its source map)


def demo_files() -> DemoFiles:
    """The demo's directories, package data first.

    Raises StartupError naming the fix when the page or the bundle is missing.
    """
    if (PACKAGED / "index.html").is_file():
        files = DemoFiles(page=PACKAGED, vendor=PACKAGED / "vendor")
        fix = "reinstall ticketgate from a wheel that `make dist` built"
    else:
        files = DemoFiles(page=CHECKOUT, vendor=CHECKOUT_VENDOR)
        fix = "run `make run` or `cd web_demo && npm ci`"
    if not (files.page / "index.html").is_file():
        raise StartupError(f"the web demo is missing (looked in {PACKAGED} and {CHECKOUT}): {fix}")
    if not (files.vendor / CLIENT_BUNDLE).is_file():
        raise StartupError(f"the web demo's socket.io-client bundle is missing: {fix}")
    return files
