"""get_overview with 50,000 sessions (500 projects of 100) over HTTP against a real livedmd: a first page,
a filtered search and a page far in, beside the old unpaged call (every session) as the baseline, in the
same run; then the page in headless Chromium: sign-in to the first rows, a search to its rows, the next
page. The sessions are put into the store directly through the Store API (the API would take minutes)."""

from __future__ import annotations

import http.client
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from livedm.server.embedded import EmbeddedStore
from livedm.server.overview_index import SYNC_LAG_S
from livedm.server.store import Store
from testkit.chromium import CHROMIUM, CHROMIUM_ARGS
from testkit.daemon import Daemon
from testkit.facility import fill

PROJECTS, SESSIONS_PER_PROJECT = 500, 100
ROUNDS = 9
PAGE_ROWS = 100  # what the page asks for
TARGET_MS = 150.0


class Client:
    """One keep-alive connection, as the page's browser holds one."""

    def __init__(self, daemon: Daemon) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=600)
        self.headers = {"Authorization": f"Bearer {daemon.token}", "Content-Type": "application/json"}

    def call(self, method: str, params: dict[str, Any]) -> tuple[float, Any, int]:
        """(ms, result, bytes of the reply)."""
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
        started = time.perf_counter()
        self.connection.request("POST", "/api", body=body, headers=self.headers)
        raw = self.connection.getresponse().read()
        reply = json.loads(raw)
        ms = (time.perf_counter() - started) * 1000
        assert "result" in reply, reply
        return ms, reply["result"], len(raw)


def timed(label: str, call: Callable[[], tuple[float, Any, int]], rounds: int = ROUNDS) -> float:
    times, answer, size = [], None, 0
    for _ in range(rounds):
        ms, answer, size = call()
        times.append(ms)
    rows = f"rows {answer['first_row']}-{answer['last_row']} of {answer['rows']:,}, {answer['matched_sessions']:,} " \
           f"sessions match" if answer else ""
    median = statistics.median(times)
    print(f"overview: {label}: median {median:.0f} ms, best {min(times):.0f} ms ({rounds} calls; "
          f"{size / 1024:.0f} KiB; {rows})")
    return median


def fill_store(uri: str) -> None:
    store = Store.connect(uri, "livedm", selection_timeout_s=30)
    try:
        store.ensure_indexes()
        started = time.perf_counter()
        fill(store, projects=PROJECTS, sessions_per_project=SESSIONS_PER_PROJECT)
        print(f"overview: put {PROJECTS * SESSIONS_PER_PROJECT:,} sessions in {PROJECTS} projects into the store in "
              f"{time.perf_counter() - started:.0f} s (Store API, batches of 1,000)")
    finally:
        store.close()


def http_figures(daemon: Daemon) -> None:
    client = Client(daemon)
    started = time.perf_counter()
    client.call("get_overview", {"page_size": PAGE_ROWS, "expand": False})
    print(f"overview: first call after start {1000 * (time.perf_counter() - started):.0f} ms (the index read at start, "
          "beside serving, may still be under way)")
    time.sleep(SYNC_LAG_S)  # the fill's last writes are read again by each look for this long, then no more
    first = timed("first page, projects (the page's first call)",
                  lambda: client.call("get_overview", {"page_size": PAGE_ROWS, "expand": False}))
    timed("first page, all expanded", lambda: client.call("get_overview", {"page_size": PAGE_ROWS}))
    search = timed("search 'grid 7' + running, expanded",
                   lambda: client.call("get_overview", {"search": "grid 7", "session_status": "running",
                                                        "page_size": PAGE_ROWS}))
    timed("category archived, page 50", lambda: client.call("get_overview", {
        "category_status": "archived", "page_size": PAGE_ROWS, "page": 50}))
    old = timed("old unpaged call (every project and session)", lambda: client.call("get_overview", {}), rounds=3)
    print(f"overview: first page {first:.0f} ms, search {search:.0f} ms (target <= {TARGET_MS:.0f} ms) vs the old "
          f"unpaged call {old:.0f} ms: {old / first:.0f}x and {old / search:.0f}x less")


def page_figures(daemon: Daemon) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # wait_for_function evaluates its expression, which the page's CSP refuses
        page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        page.goto(daemon.url + "/ui")
        page.fill("#token", daemon.token)
        started = time.perf_counter()
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_selector("tr.project")
        sign_in_ms = (time.perf_counter() - started) * 1000
        page.wait_for_function("document.querySelector('#pager-status').textContent.includes('of')")
        started = time.perf_counter()
        page.fill("#search", "grid 77")
        page.wait_for_function("document.querySelector('tr.session') && [...document.querySelectorAll('tr.session')]"
                               ".every((row) => row.textContent.includes('grid 77'))")
        search_ms = (time.perf_counter() - started) * 1000
        before = page.inner_text("#pager-status")
        started = time.perf_counter()
        page.click("#next-page")
        page.wait_for_function(f"document.querySelector('#pager-status').textContent !== {json.dumps(before)}")
        next_ms = (time.perf_counter() - started) * 1000
        rows_in_dom = page.evaluate("document.querySelectorAll('#rows tr').length")
        browser.close()
    print(f"overview: page (Chromium, 1280 px): sign-in to first rows {sign_in_ms:.0f} ms | typed search to its rows "
          f"{search_ms:.0f} ms (with the 250 ms the page waits for typing to pause) | next page {next_ms:.0f} ms | "
          f"{rows_in_dom} rows in the DOM")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = EmbeddedStore(root / "store-state")
        uri = store.start()
        try:
            fill_store(uri)
            daemon = Daemon(root / "state", env={"LIVEDM_MONGO_URI": uri}).start(timeout_s=120)
            try:
                http_figures(daemon)
                page_figures(daemon)
            finally:
                daemon.stop()
        finally:
            store.stop()


if __name__ == "__main__":
    main()
