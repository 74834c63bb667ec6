"""A real browser (Debian's chromium, driven by Playwright) in front of real proxy processes.

Playwright's own browser download is not reachable here, so the system Chromium is launched by
path. A machine without it fails these tests (it does not skip them): `.ci/run` installs it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright

from tests.e2e.conftest import _fresh_upstream_records, cerebras_upstream, local_upstream, start_proxy  # noqa: F401 - pytest fixtures shared with this folder

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str:
    """GLM_SAVER_CHROMIUM, else `chromium` on PATH, else Debian's /usr/bin/chromium."""
    found = os.environ.get("GLM_SAVER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists():
        pytest.fail(f"no Chromium at {found}: `apt-get install chromium` (.ci/run does this)")
    return found


# Module scope, not session: Playwright's sync API keeps an event loop running in the main thread
# while it is open, and every later test that calls asyncio.run() would fail on it.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
    yield browser
    browser.close()
