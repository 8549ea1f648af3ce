"""The Data Management page with 500 projects and 5,000 sessions in headless Chromium: time from
sign-in to the first table render and to all sessions expanded, beside the get_overview call the
page makes (fetched by the same browser) in the same run."""

from __future__ import annotations

import json
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

from testkit.chromium import CHROMIUM, CHROMIUM_ARGS
from testkit.daemon import Daemon

PROJECTS = 500
SESSIONS_PER_PROJECT = 10


BATCH_CALLS = 100  # livedmd's default max_batch_calls


def batch(daemon: Daemon, calls: list[tuple[str, list]]) -> None:
    for start in range(0, len(calls), BATCH_CALLS):
        chunk = calls[start:start + BATCH_CALLS]
        body = json.dumps([{"jsonrpc": "2.0", "method": m, "params": p, "id": i} for i, (m, p) in enumerate(chunk)])
        request = urllib.request.Request(daemon.url + "/api", data=body.encode(),
                                         headers={"Authorization": f"Bearer {daemon.token}"})
        with urllib.request.urlopen(request, timeout=600) as response:
            errors = [r for r in json.loads(response.read()) if "error" in r]
        assert not errors, errors[:3]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        daemon = Daemon(root / "state").start()
        try:
            started = time.perf_counter()
            for i in range(PROJECTS):
                (root / "data" / f"project{i}").mkdir()
            batch(daemon, [("create_project", [f"project {i}", str(root / "data" / f"project{i}")])
                           for i in range(PROJECTS)])
            for p in range(1, PROJECTS + 1, 50):
                batch(daemon, [("create_live_session", [f"P{q}", f"session {s}"])
                               for q in range(p, p + 50) for s in range(SESSIONS_PER_PROJECT)])
            print(f"page: made {PROJECTS} projects, {PROJECTS * SESSIONS_PER_PROJECT} sessions in "
                  f"{time.perf_counter() - started:.1f} s")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1500, "height": 900})
                page.goto(daemon.url + "/ui")
                api_ms = page.evaluate("""async (token) => {
                    const times = [];
                    for (let i = 0; i < 3; i++) {
                      const t0 = performance.now();
                      const r = await fetch('/api', {method: 'POST', headers: {Authorization: 'Bearer ' + token},
                        body: JSON.stringify({jsonrpc: '2.0', method: 'get_overview', params: {}, id: 1})});
                      await r.json();
                      times.push(performance.now() - t0);
                    }
                    return Math.min(...times); }""", daemon.token)
                page.fill("#token", daemon.token)
                t0 = time.perf_counter()
                page.click("#sign-in-form button[type=submit]")
                page.wait_for_function(f"state.rows && state.rows.length === {PROJECTS} && "
                                       "document.querySelector('tr.project')")
                first_render_ms = (time.perf_counter() - t0) * 1000
                page.locator("tr.project td").nth(2).click(button="right")
                t0 = time.perf_counter()
                page.click("#context-menu button[data-action=expand]")
                page.wait_for_function(f"state.rows.length === {PROJECTS * (SESSIONS_PER_PROJECT + 1)} && "
                                       "document.querySelector('tr.session')")
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
                page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
                last = f"tr[data-uid='P{PROJECTS}-S{SESSIONS_PER_PROJECT}']"
                page.wait_for_selector(last)  # the very last session is reachable by scrolling
                rows_in_dom = page.evaluate("document.querySelectorAll('#rows tr').length")
                browser.close()
        finally:
            daemon.stop()
    print(f"page: get_overview fetched by the browser (best of 3) {api_ms:.0f} ms | sign-in to first table render "
          f"{first_render_ms:.0f} ms = {first_render_ms / api_ms:.2f}x | expand all (5,000 rows) {expand_ms:.0f} ms | "
          f"scroll frames median {frame_ms[len(frame_ms) // 2]:.0f} ms, worst {frame_ms[-1]:.0f} ms "
          f"({rows_in_dom} rows in the DOM)")


if __name__ == "__main__":
    main()
