"""Browser tests: Debian's Chromium driven by Playwright against a real livedmd with a realistic tree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from testkit.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.support.browser_site import Site, start_site


@pytest.fixture(scope="module")  # Playwright's sync API holds an event loop: let it go before asyncio tests
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (or set LIVEDM_CHROMIUM)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    site = start_site(tmp_path)
    yield site
    site.daemon.stop()
