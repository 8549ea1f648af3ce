"""Browser tests: Debian's Chromium driven by Playwright against a real livedmd with a realistic tree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from testkit.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.support.browser_site import Site, start_site
from tests.support.daemon_sessions import stop_when_idle


@pytest.fixture(scope="module")  # Playwright's sync API holds an event loop: let it go before asyncio tests
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (or set LIVEDM_CHROMIUM)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def site(tmp_path: Path, embedded_uri: str) -> Iterator[Site]:
    """A site of the test's own, for a test that changes what the others look at."""
    site = start_site(tmp_path, embedded_uri)
    yield site
    stop_when_idle(site.daemon)


@pytest.fixture(scope="module")
def shared_site(tmp_path_factory: pytest.TempPathFactory, embedded_uri: str) -> Iterator[Site]:
    """One site for the tests that leave every status, user and token as they found them."""
    site = start_site(tmp_path_factory.mktemp("site"), embedded_uri)
    yield site
    stop_when_idle(site.daemon)
