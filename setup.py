"""One build step that setup.cfg (the metadata's home) cannot say: the wheel
carries the web demo and the operator UI, so that an installed ticketgate
serves ``--demo`` and ``admin_ui``.

The page (``web_demo/*.html|js|css``) and the pinned socket.io-client bundle
(from ``web_demo/node_modules``, which ``npm ci`` fills: it is never committed)
are copied into the built package as ``gateway/web_demo/`` and its ``vendor/``,
where ``gateway/demo.py`` looks first. The operator UI's prebuilt page (from
``admin_ui/node_modules/@socket.io/admin-ui/ui/dist``, without its source maps)
and its icon font (``@mdi/font``'s stylesheet and WOFF2 font) go to
``gateway/admin_ui_dist/`` and its ``vendor/mdi/``, where ``gateway/admin_ui.py``
looks first. MANIFEST.in puts the same files into the sdist, so a wheel built
from the sdist has them too.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import FileError

DEMO = Path("web_demo")
PAGE_SUFFIXES = {".html", ".js", ".css"}
CLIENT = DEMO / "node_modules" / "socket.io-client"
# The bundle index.html loads, its source map, and the MIT licence that must travel with copies.
VENDOR = (CLIENT / "dist" / "socket.io.min.js", CLIENT / "dist" / "socket.io.min.js.map", CLIENT / "LICENSE")
TARGET = Path("gateway", "web_demo")

ADMIN_UI = Path("admin_ui", "node_modules", "@socket.io", "admin-ui")
ADMIN_PAGE = ADMIN_UI / "ui" / "dist"
ICONS = Path("admin_ui", "node_modules", "@mdi", "font")
# Beside the page: the licences (MIT, Apache-2.0) that travel with copies, and
# what of the icon font the page loads (every browser that runs the UI reads WOFF2).
ADMIN_EXTRA = {
    ADMIN_UI / "LICENSE": Path("LICENSE"),
    ICONS / "LICENSE": Path("vendor", "mdi", "LICENSE"),
    ICONS / "css" / "materialdesignicons.min.css": Path("vendor", "mdi", "css", "materialdesignicons.min.css"),
    ICONS / "fonts" / "materialdesignicons-webfont.woff2": Path(
        "vendor", "mdi", "fonts", "materialdesignicons-webfont.woff2"
    ),
}
ADMIN_TARGET = Path("gateway", "admin_ui_dist")


class BuildPyWithDemo(build_py):
    def run(self) -> None:
        super().run()
        # An editable install serves web_demo/ and admin_ui/ of the checkout itself.
        if not self.editable_mode:
            for source, target in self._web_files().items():
                self.mkpath(str(target.parent))
                self.copy_file(str(source), str(target))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        web = [] if self.editable_mode else [str(target) for target in self._web_files().values()]
        return [*super().get_outputs(include_bytecode), *web]

    def _web_files(self) -> dict[Path, Path]:
        return {**self._demo_files(), **self._admin_ui_files()}

    def _demo_files(self) -> dict[Path, Path]:
        missing = [str(path) for path in VENDOR if not path.is_file()]
        if missing:
            # Fail the build: a wheel without the bundle would serve a page that cannot connect.
            raise FileError(f"missing {', '.join(missing)}: run `cd web_demo && npm ci` (or `make dist`) first")
        target = Path(self.build_lib) / TARGET
        pages = sorted(path for path in DEMO.iterdir() if path.suffix in PAGE_SUFFIXES and path.is_file())
        files = {page: target / page.name for page in pages}
        files.update({source: target / "vendor" / source.name for source in VENDOR})
        return files

    def _admin_ui_files(self) -> dict[Path, Path]:
        missing = [str(path) for path in (ADMIN_PAGE / "index.html", *ADMIN_EXTRA) if not path.is_file()]
        if missing:
            raise FileError(f"missing {', '.join(missing)}: run `cd admin_ui && npm ci` (or `make dist`) first")
        target = Path(self.build_lib) / ADMIN_TARGET
        pages = sorted(path for path in ADMIN_PAGE.rglob("*") if path.is_file() and path.suffix != ".map")
        files = {page: target / page.relative_to(ADMIN_PAGE) for page in pages}
        files.update({source: target / name for source, name in ADMIN_EXTRA.items()})
        return files


setup(cmdclass={"build_py": BuildPyWithDemo})
