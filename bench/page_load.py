"""The Data Management page with 500 projects and 5,000 sessions in headless Chromium: time from
sign-in to the first rows (a page of 100), to all projects expanded and to the last page, beside the
get_overview calls (the page's paged one, and the old unpaged one as the baseline) fetched by the same
browser in the same run."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from testkit.chromium import CHROMIUM, CHROMIUM_ARGS
from testkit.daemon import Daemon

PROJECTS = 500
SESSIONS_PER_PROJECT = 10
PAGE_ROWS = 100  # what the page asks for (paging.js)
FETCH_BEST_OF_3 = """async ([token, params]) => {
    const times = [];
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      const r = await fetch('/api', {method: 'POST', headers: {Authorization: 'Bearer ' + token},
        body: JSON.stringify({jsonrpc: '2.0', method: 'get_overview', params, id: 1})});
      await r.json();
      times.push(performance.now() - t0);
    }
    return Math.min(...times); }"""


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        daemon = Daemon(root / "state").start()
        try:
            started = time.perf_counter()
            for i in range(PROJECTS):
                (root / "data" / f"project{i}").mkdir()
            daemon.batch([("create_project", [f"project {i}", str(root / "data" / f"project{i}")])
                          for i in range(PROJECTS)])
            daemon.batch([("create_live_session", [f"P{q}", f"session {s}"])
                          for q in range(1, PROJECTS + 1) for s in range(SESSIONS_PER_PROJECT)])
            print(f"page: made {PROJECTS} projects, {PROJECTS * SESSIONS_PER_PROJECT} sessions in "
                  f"{time.perf_counter() - started:.1f} s")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                # wait_for_function evaluates its expression, which the page's CSP refuses
                page = browser.new_page(viewport={"width": 1500, "height": 900}, bypass_csp=True)
                page.goto(daemon.url + "/ui")
                api_ms = page.evaluate(FETCH_BEST_OF_3, [daemon.token, {"page_size": PAGE_ROWS, "expand": []}])
                unpaged_ms = page.evaluate(FETCH_BEST_OF_3, [daemon.token, {}])
                page.fill("#token", daemon.token)
                t0 = time.perf_counter()
                page.click("#sign-in-form button[type=submit]")
                page.wait_for_function(f"state.rows && state.rows.length === {PAGE_ROWS} && "
                                       "document.querySelector('tr.project')")
                first_render_ms = (time.perf_counter() - t0) * 1000
                page.locator("tr.project td").nth(2).click(button="right")
                t0 = time.perf_counter()
                page.click("#context-menu button[data-action=expand]")
                page.wait_for_function(f"state.rows.length === {PAGE_ROWS} && document.querySelector('tr.session')")
                expand_ms = (time.perf_counter() - t0) * 1000
                frame_ms = page.evaluate("""async () => {
                    const times = [];
                    for (let i = 0; i < 100; i++) {
                      const t = performance.now();
                      window.scrollBy(0, 400);
                      await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
                      times.push(performance.now() - t);
                    }
                    return times.sort((a, b) => a - b); }""")
                rows_in_dom = page.evaluate("document.querySelectorAll('#rows tr').length")
                t0 = time.perf_counter()
                page.evaluate("goToPage(state.overview.pages)")
                page.wait_for_function(f"state.rows.some((row) => row.session && row.project.uid === 'P{PROJECTS}')")
                last_page_ms = (time.perf_counter() - t0) * 1000
                browser.close()
        finally:
            daemon.stop()
    print(f"page: get_overview fetched by the browser (best of 3): the page's first page {api_ms:.0f} ms, the old "
          f"unpaged call {unpaged_ms:.0f} ms | sign-in to first rows {first_render_ms:.0f} ms = "
          f"{first_render_ms / api_ms:.2f}x the page's call | expand all {expand_ms:.0f} ms | to the last page "
          f"{last_page_ms:.0f} ms | scroll frames median {frame_ms[len(frame_ms) // 2]:.0f} ms, worst "
          f"{frame_ms[-1]:.0f} ms ({rows_in_dom} rows in the DOM)")


if __name__ == "__main__":
    main()
