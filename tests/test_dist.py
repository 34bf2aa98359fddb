"""The demo as it is distributed (issue #10): the wheel `make dist` builds serves
`ticketgate serve --demo` from any directory with no checkout, node or npm; a
checkout without the socket.io-client bundle refuses to start in one line. The
operator UI (issue #15, on with --demo) travels the same way: its prebuilt page
and icon font from admin_ui/node_modules."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ROOT, free_port, wait_for_port

# Built once per module; the whole build, install and serve stays well under this.
pytestmark = pytest.mark.timeout(60)

# What the build reads (and nothing it would write into the repo: it runs on a copy).
BUILD_INPUTS = (
    "setup.py",
    "setup.cfg",
    "pyproject.toml",
    "README.md",
    "MANIFEST.in",
    "gateway",
    "handlers",
    "web_demo",
    "admin_ui",
)
LOCK = json.loads((ROOT / "web_demo" / "package-lock.json").read_text())
BUNDLE_BANNER = f"Socket.IO v{LOCK['packages']['node_modules/socket.io-client']['version']}"
# Where the product runs: no venv on PATH, no PYTHONPATH, no TICKETGATE_* settings.
# (The build and pip keep the caller's environment: it may hold their index or proxy.)
CLEAN_ENV = {"PATH": "/usr/bin:/bin"}
MISSING_BUNDLE = (
    "ticketgate: the web demo's socket.io-client bundle is missing: run `make run` or `cd web_demo && npm ci`"
)
# What of admin_ui/node_modules the sdist carries: the page, the icon font's stylesheet and WOFF2, licences.
ADMIN_UI_SOURCES = (
    "admin_ui/node_modules/@socket.io/admin-ui/ui/dist/",
    "admin_ui/node_modules/@socket.io/admin-ui/LICENSE",
    "admin_ui/node_modules/@mdi/font/LICENSE",
    "admin_ui/node_modules/@mdi/font/css/materialdesignicons.min.css",
    "admin_ui/node_modules/@mdi/font/fonts/materialdesignicons-webfont.woff2",
)


@dataclass
class Built:
    wheel: Path
    sdist: Path
    venv: Path


def copy_tree(dest: Path, names: tuple[str, ...], *, node_modules: bool) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", *(() if node_modules else ("node_modules",)))
    dest.mkdir()
    for name in names:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore)
        else:
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("dist")
    src = copy_tree(tmp / "src", BUILD_INPUTS, node_modules=True)
    # As `make dist` does: the sdist, then the wheel from the unpacked sdist
    # (so a file MANIFEST.in forgets is missing from the wheel too). The build
    # is isolated, like make dist's: `build` installs setuptools into a
    # throwaway env from PyPI (pip's cache makes that quick after the first run).
    run(sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), str(src), timeout=50)
    (wheel,) = (tmp / "dist").glob("ticketgate-*.whl")
    (sdist,) = (tmp / "dist").glob("ticketgate-*.tar.gz")
    # A venv of its own, into which only the wheel is installed (pip --no-deps,
    # through --python, so the venv needs no pip of its own). Its dependencies
    # come from the test run's own site-packages through a .pth line: a path
    # added that way is searched after the venv's site-packages and, unlike a
    # site dir, its .pth files are not run, so the editable install of this
    # checkout stays out of sight. A fresh venv that fetched every dependency
    # from PyPI would prove no more and cost a minute.
    venv = tmp / "venv"
    python = str(venv / "bin" / "python")
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", env=CLEAN_ENV).strip()
    (Path(purelib) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", str(wheel))
    return Built(wheel=wheel, sdist=sdist, venv=venv)


def run(*command: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 30) -> str:
    """Run a command to success (or fail the test with its output); its stdout."""
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}{result.stderr[-4000:]}"
    return result.stdout


def get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.headers.get_content_type(), resp.read().decode()


def test_wheel_and_sdist_carry_the_page_and_the_bundle(built: Built) -> None:
    page = {path.name for path in (ROOT / "web_demo").iterdir() if path.suffix in {".html", ".js", ".css"}}
    assert {"index.html", "demo.js", "demo.css", "crypto.js"} <= page
    names = set(zipfile.ZipFile(built.wheel).namelist())
    assert {f"gateway/web_demo/{name}" for name in page} <= names
    assert "gateway/web_demo/vendor/socket.io.min.js" in names
    assert "gateway/web_demo/vendor/LICENSE" in names  # socket.io-client's MIT licence travels with it
    assert not [name for name in names if "node_modules" in name]
    # The Redis engine's Lua scripts, which it loads at start.
    scripts = {f"gateway/store/lua/{path.name}" for path in (ROOT / "gateway" / "store" / "lua").glob("*.lua")}
    assert scripts and scripts <= names
    with tarfile.open(built.sdist) as sdist:
        members = {name.partition("/")[2] for name in sdist.getnames()}
        files = {member.name.partition("/")[2] for member in sdist.getmembers() if member.isfile()}
    assert "web_demo/node_modules/socket.io-client/dist/socket.io.min.js" in members
    from_node_modules = {name for name in members if name.startswith("web_demo/node_modules/")}
    assert {name for name in from_node_modules if "/socket.io-client" not in name} == set()
    # The operator UI: its page without source maps, the icon font, the licences; nothing else of node_modules.
    admin = {name.removeprefix("gateway/admin_ui_dist/") for name in names if name.startswith("gateway/admin_ui_dist/")}
    assert {"index.html", "favicon.png", "LICENSE", "vendor/mdi/LICENSE"} <= admin, admin
    assert {"vendor/mdi/css/materialdesignicons.min.css", "vendor/mdi/fonts/materialdesignicons-webfont.woff2"} <= admin
    assert [name for name in admin if name.startswith("js/") and name.endswith(".js")], admin
    assert not [name for name in admin if name.endswith(".map")]
    from_admin_modules = {name for name in files if name.startswith("admin_ui/node_modules/")}
    assert from_admin_modules and all(name.startswith(ADMIN_UI_SOURCES) for name in from_admin_modules), sorted(
        from_admin_modules
    )


@pytest.fixture
def served(built: Built, tmp_path: Path) -> Iterator[str]:
    """`ticketgate serve --demo` of the installed wheel, started in an empty directory."""
    port = free_port()
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [str(built.venv / "bin" / "ticketgate"), "serve", "--demo", "--port", str(port)],
        cwd=tmp_path,
        env=CLEAN_ENV,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        wait_for_port(port, proc=proc, timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_installed_wheel_serves_the_demo_from_any_directory(built: Built, served: str, tmp_path: Path) -> None:
    # The installed package, not this checkout, and its demo from package data.
    code = "import gateway.demo as d; print(d.__file__); print(d.demo_files().page)"
    where = run(str(built.venv / "bin" / "python"), "-c", code, cwd=tmp_path, env=CLEAN_ENV)
    module, page_dir = (Path(line) for line in where.splitlines())
    assert module.is_relative_to(built.venv) and page_dir.is_relative_to(built.venv), where

    status, kind, html = get(f"{served}/demo/")
    assert (status, kind) == (200, "text/html") and "ticketgate" in html
    status, kind, bundle = get(f"{served}/demo/vendor/socket.io.min.js")
    assert (status, kind) == (200, "application/javascript")
    assert BUNDLE_BANNER in bundle, bundle[:200]

    # Every file the page loads, and every module demo.js imports, comes from the gateway.
    loaded = set(re.findall(r'(?:src|href)="(?!data:|#|https?:)([^"]+)"', html))
    assert {"demo.css", "demo.js", "vendor/socket.io.min.js"} <= loaded
    scripts = [name for name in loaded if name.endswith(".js") and not name.startswith("vendor/")]
    for script in scripts:
        loaded |= set(re.findall(r'from\s+"\./([^"]+)"', get(f"{served}/demo/{script}")[2]))
    assert "crypto.js" in loaded
    for name in sorted(loaded):
        assert get(f"{served}/demo/{name}")[0] == 200, name


def test_installed_wheel_serves_the_operator_ui(built: Built, served: str, tmp_path: Path) -> None:
    code = "import gateway.admin_ui as a; print(a.admin_ui_files().page)"
    page_dir = Path(run(str(built.venv / "bin" / "python"), "-c", code, cwd=tmp_path, env=CLEAN_ENV).strip())
    assert page_dir.is_relative_to(built.venv), page_dir
    status, kind, html = get(f"{served}/admin/")
    assert (status, kind) == (200, "text/html") and "<title>Socket.IO Admin UI</title>" in html, html[:300]
    # Everything the page loads comes from the gateway: no CDN, the icon font bundled.
    assert not re.findall(r'(?:src|href)="(?:https?:)?//', html)
    loaded = set(re.findall(r'(?:src|href)="([^"]+)"', html))
    assert "vendor/mdi/css/materialdesignicons.min.css" in loaded, loaded
    for name in sorted(loaded | {"vendor/mdi/fonts/materialdesignicons-webfont.woff2"}):
        with urllib.request.urlopen(f"{served}/admin/{name}", timeout=5) as resp:
            assert resp.status == 200, name
    scripts = [get(f"{served}/admin/{name}")[2] for name in loaded if name.endswith(".js")]
    assert any("supportedFeatures" in script for script in scripts)


def test_checkout_without_the_bundle_names_the_fix(tmp_path: Path) -> None:
    """An editable install before `npm ci`: the checkout fallback finds the page
    but no bundle, and the gateway refuses to start in one line, status 2."""
    checkout = copy_tree(tmp_path / "checkout", ("gateway", "handlers", "web_demo"), node_modules=False)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--demo", "--port", "0"],
        capture_output=True,
        text=True,
        cwd=checkout,
        env={**CLEAN_ENV, "PYTHONPATH": str(checkout)},
        timeout=15,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [MISSING_BUNDLE], result.stderr
    assert result.stdout == ""


def test_checkout_without_the_operator_ui_names_the_fix(tmp_path: Path) -> None:
    """As above for admin_ui/node_modules: the demo's files are there, the operator UI's are not."""
    checkout = copy_tree(tmp_path / "checkout", ("gateway", "handlers"), node_modules=False)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--admin-ui", "--port", "0"],
        capture_output=True,
        text=True,
        cwd=checkout,
        env={**CLEAN_ENV, "PYTHONPATH": str(checkout), "TICKETGATE_ADMIN_TOKEN": "admin-token-0123456789"},
        timeout=15,
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("ticketgate: the operator UI (admin_ui) is missing (looked in "), line
    assert line.endswith("run `make run` or `cd admin_ui && npm ci`"), line
    assert result.stdout == ""
