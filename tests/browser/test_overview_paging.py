"""The table searched, filtered and paged by livedmd, in Chromium: pages of an expanded table, a search and
a status filter typed and chosen from the keyboard, nothing matching, and a page that still fits 1280 px."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.browser_site import Site, fits_the_screen, shot, start_site
from tests.support.daemon_sessions import stop_when_idle

BULK = 130  # sessions of P3: with the site's three, 136 rows expanded, two pages of 100


@pytest.fixture(scope="module")
def bulk_site(tmp_path_factory: pytest.TempPathFactory, embedded_uri: str) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("bulk-site")
    site = start_site(root, embedded_uri)
    (root / "bulk").mkdir()
    site.daemon.call("create_project", ["Bulk", str(root / "bulk")])
    site.daemon.batch([("create_live_session", ["P3", f"bulk session {n}"]) for n in range(1, BULK + 1)])
    yield site
    stop_when_idle(site.daemon)


def api_rows(site: Site, **params: object) -> list[str]:
    """The session rows of a page as the API gives them (sessions made at once are in creation order)."""
    answer = site.daemon.call("get_overview", params)
    return [f"{p['uid']}-{s['uid']}" for p in answer["projects"] for s in p["sessions"]]


def session_rows(page: Page) -> list[str]:
    """The page's session rows (those scrolled far away are not in the DOM: the table renders what is near)."""
    return page.evaluate("state.rows.filter((row) => row.session)"
                         ".map((row) => `${row.project.uid}-${row.session.uid}`)")


def test_an_expanded_table_pages_on_the_server(bulk_site: Site, browser: Browser) -> None:
    page = bulk_site.page(browser, bulk_site.daemon.token)
    expect(page.locator("#pager-status")).to_have_text("Rows 1–3 of 3")
    expect(page.locator("#next-page")).to_be_disabled()
    expect(page.locator("#summary .total")).to_contain_text(f"3 projects, {BULK + 3} sessions")
    page.locator("tr.project td", has_text="Bulk").click(button="right")
    page.locator("#context-menu button", has_text="Expand all").click()
    expect(page.locator("#pager-status")).to_have_text(f"Rows 1–100 of {BULK + 6}")
    assert page.evaluate("state.rows.length") == 100, "one page of rows, never the whole table"
    assert page.locator("#rows tr:not(.spacer)").count() <= 100
    first = session_rows(page)
    assert first == api_rows(bulk_site, page_size=100) and len(first) == 97  # and three project rows
    page.click("#next-page")
    expect(page.locator("#pager-status")).to_have_text(f"Rows 101–{BULK + 6} of {BULK + 6}")
    expect(page.locator("tr.project.continued[data-uid='P3']")).to_contain_text("continued")
    second = session_rows(page)
    assert second == api_rows(bulk_site, page_size=100, page=2)
    assert sorted(first + second) == sorted(["P1-S1", "P1-S2", "P2-S1", *(f"P3-S{n}" for n in range(1, BULK + 1))])
    expect(page.locator("#next-page")).to_be_disabled()
    shot(page, "17-overview-second-page")
    page.locator("tr.project[data-uid='P3'] button[aria-expanded=true]").click()  # collapse P3 on its own
    expect(page.locator("#pager-status")).to_have_text("Rows 1–6 of 6")  # one page now: back to its first
    assert session_rows(page) == ["P1-S1", "P1-S2", "P2-S1"]
    assert not page.errors  # type: ignore[attr-defined]


def test_search_and_status_filters_from_the_keyboard(bulk_site: Site, browser: Browser) -> None:
    page = bulk_site.page(browser, bulk_site.daemon.token)
    expect(page.locator("#pager-status")).to_have_text("Rows 1–3 of 3")
    page.keyboard.press("/")
    expect(page.locator("#search")).to_be_focused()
    page.keyboard.type("Bulk Session 12")
    expect(page.locator("#pager-status")).to_have_text("Rows 1–12 of 12 · 11 sessions in 1 project match")
    titles = page.evaluate("state.rows.filter((row) => row.session).map((row) => row.session.title)")
    assert sorted(titles) == sorted(f"bulk session {n}" for n in (12, *range(120, 130)))  # uids: as made at once
    page.keyboard.press("Tab")  # to the session status
    expect(page.locator("#session-status")).to_be_focused()
    page.select_option("#session-status", "completed")
    expect(page.locator("#pager-status")).to_have_text("Nothing matches")
    expect(page.locator("#no-match")).to_be_visible()
    shot(page, "18-overview-nothing-matches")
    page.select_option("#session-status", "paused")
    expect(page.locator("#pager-status")).to_contain_text("Rows 1–12 of 12")
    page.fill("#search", "(.*")  # taken literally, never as a pattern
    expect(page.locator("#pager-status")).to_have_text("Nothing matches")
    page.focus("#search")
    page.keyboard.press("Escape")  # clears the search; the status filter stays
    expect(page.locator("#pager-status")).to_have_text(
        f"Rows 1–100 of {BULK + 1} · {BULK} sessions in 1 project match")
    fit = fits_the_screen(page)
    assert fit["page"] <= fit["screen"] and fit["cut"] == [], fit
    page.select_option("#session-status", "")
    expect(page.locator("#pager-status")).to_have_text("Rows 1–3 of 3")  # collapsed again, as before the filters
    assert not page.errors  # type: ignore[attr-defined]


def test_a_category_cell_opens_its_menu_from_the_keyboard(bulk_site: Site, browser: Browser) -> None:
    page = bulk_site.page(browser, bulk_site.daemon.token)
    page.fill("#search", "grid P1/S1")
    cell = page.locator("tr[data-uid='P1-S1'] td.category[data-datatype='particles']")
    cell.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#menu")).to_be_visible()
    expect(page.locator("#menu button").first).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.locator("#menu")).to_be_hidden()


def test_the_page_asks_for_one_page_of_rows(bulk_site: Site, browser: Browser) -> None:
    """The page asks for one page of rows, whatever the facility holds."""
    page = bulk_site.page(browser)
    with page.expect_request(lambda r: r.url.endswith("/api") and "get_overview" in (r.post_data or "")) as asked:
        page.fill("#token", bulk_site.daemon.token)
        page.click("#sign-in-form button[type=submit]")
    params = asked.value.post_data_json["params"]
    assert params["page_size"] == 100 and params["page"] == 1 and params["expand"] == []
