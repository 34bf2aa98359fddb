"""Where the operator UI's files are: package data in an installed ticketgate,
else ``admin_ui/node_modules`` of the checkout this package runs from (as
``gateway/demo.py`` finds the web demo).

The UI is the Socket.IO Admin UI: npm ``@socket.io/admin-ui`` (pinned in
``admin_ui/package.json``) ships its page prebuilt in ``ui/dist``. That page
loads two stylesheets from CDNs: Roboto from Google Fonts, and the Material
Design Icons font from jsdelivr at ``@latest``. The gateway serves the page
with neither: the icons come from ``@mdi/font``, pinned beside it and served
under ``vendor/mdi/``, and the system's sans-serif stands in for Roboto. So an
operator's browser loads nothing but the gateway's own files, offline too.

A wheel built by ``make dist`` (setup.py) carries the page in
``gateway/admin_ui_dist/`` and the icon font in its ``vendor/mdi/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import StartupError

# The package's own directory, as for the demo: aiohttp serves static routes from a real directory.
PACKAGED = Path(__file__).resolve().parent / "admin_ui_dist"
CHECKOUT = Path(__file__).resolve().parent.parent / "admin_ui" / "node_modules"
CHECKOUT_PAGE = CHECKOUT / "@socket.io" / "admin-ui" / "ui" / "dist"
CHECKOUT_ICONS = CHECKOUT / "@mdi" / "font"
# Where the page finds the icon font's stylesheet, relative to /admin/; the
# stylesheet loads its font from ../fonts/, so both keep @mdi/font's layout.
ICONS_URL = "vendor/mdi/"
ICONS_CSS = "css/materialdesignicons.min.css"
ICONS_FONT = "fonts/materialdesignicons-webfont.woff2"

_CDN_STYLESHEET = re.compile(r'<link rel="stylesheet" href="https?://[^"]*">')


@dataclass(frozen=True, kw_only=True)
class AdminUIFiles:
    page: Path  # ui/dist: index.html, js/, css/, img/, favicon.png
    icons: Path  # @mdi/font's css/ and fonts/

    def index_html(self) -> str:
        """The page's index.html, loading its stylesheets from the gateway only."""
        return local_stylesheets((self.page / "index.html").read_text())


def local_stylesheets(html: str) -> str:
    """``html`` with its CDN stylesheets replaced: the icon font's by the bundled
    copy, any other (the Roboto text font) left out."""

    def local(match: re.Match[str]) -> str:
        return f'<link rel="stylesheet" href="{ICONS_URL}{ICONS_CSS}">' if "/@mdi/font" in match.group(0) else ""

    return _CDN_STYLESHEET.sub(local, html)


def admin_ui_files() -> AdminUIFiles:
    """The operator UI's directories, package data first.

    Raises StartupError naming the fix when the page or the icon font is missing.
    """
    if (PACKAGED / "index.html").is_file():
        files = AdminUIFiles(page=PACKAGED, icons=PACKAGED / "vendor" / "mdi")
        fix = "reinstall ticketgate from a wheel that `make dist` built"
    else:
        files = AdminUIFiles(page=CHECKOUT_PAGE, icons=CHECKOUT_ICONS)
        fix = "run `make run` or `cd admin_ui && npm ci`"
    if not (files.page / "index.html").is_file():
        raise StartupError(f"the operator UI (admin_ui) is missing (looked in {PACKAGED} and {CHECKOUT}): {fix}")
    if not (files.icons / ICONS_CSS).is_file() or not (files.icons / ICONS_FONT).is_file():
        raise StartupError(f"the operator UI's icon font is missing: {fix}")
    return files
