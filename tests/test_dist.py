"""The demo as it is distributed (issue #10): a checkout without the
socket.io-client bundle refuses to start in one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

# Where the product runs: no venv on PATH, no PYTHONPATH, no TICKETGATE_* settings.
CLEAN_ENV = {"PATH": "/usr/bin:/bin"}
MISSING_BUNDLE = (
    "ticketgate: the web demo's socket.io-client bundle is missing: run `make run` or `cd web_demo && npm ci`"
)


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
