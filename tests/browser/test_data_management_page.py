"""The Data Management page in headless Chromium, as facility staff use it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from playwright.sync_api import Browser, Locator, Page, expect

from tests.support.browser_site import Site, shot, sign_in
from tests.support.waiting import wait_until

CELL = "tr[data-uid='{row}'] td.category[data-datatype='{datatype}']"


def cell(page: Page, row: str, datatype: str) -> Locator:
    return page.locator(CELL.format(row=row, datatype=datatype))


def right_click_table(page: Page, choice: str) -> None:
    page.locator("tr.project td", has_text="Apoferritin").click(button="right")
    page.locator("#context-menu button", has_text=choice).click()


def open_menu(page: Page, row: str, datatype: str) -> None:
    cell(page, row, datatype).click()
    expect(page.locator("#menu")).to_be_visible()


def menu_button(page: Page, label: str) -> Locator:
    return page.locator("#menu button", has_text=label)


def row_action(page: Page, row: str, label: str) -> None:
    """An action from a row's menu (its ⋯ button)."""
    page.locator(f"tr[data-uid='{row}'] button.row-menu").click()
    menu_button(page, label).click()


def test_sign_in_with_a_bad_token_then_a_good_one(shared_site: Site, browser: Browser) -> None:
    site = shared_site  # this test changes no status, user or token
    page = site.page(browser)
    sign_in(page, "ldm_not-a-token")
    expect(page.locator("#sign-in-error")).to_contain_text("not valid")
    shot(page, "01-sign-in-refused")
    sign_in(page, site.daemon.token)
    expect(page.locator("tr.project")).to_have_count(2)
    expect(page.locator("#who-name")).to_contain_text("admin")
    expect(page.locator("#summary .total")).to_contain_text("2 projects, 3 sessions")
    shot(page, "02-overview-collapsed")
    page.reload()  # the token is kept for the tab
    expect(page.locator("tr.project")).to_have_count(2)
    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()
    assert not page.errors  # type: ignore[attr-defined]


def test_expand_all_and_collapse_all_by_right_click(shared_site: Site, browser: Browser) -> None:
    site = shared_site  # this test changes no status, user or token
    page = site.page(browser, site.daemon.token)
    expect(page.locator("tr.project")).to_have_count(2)
    expect(page.locator("tr.session")).to_have_count(0)
    right_click_table(page, "Expand all")
    expect(page.locator("tr.session")).to_have_count(3)
    tree = site.trees["P1/S1"]
    size = cell(page, "P1-S1", "particles")
    expect(size).to_have_attribute("title", re.compile(f"^{tree.bytes_by_datatype['particles']:,} bytes, measured "))
    expect(page.locator("tr[data-uid='P1-S2'] td", has_text="running")).to_be_visible()
    shot(page, "03-overview-expanded")
    right_click_table(page, "Collapse all")
    expect(page.locator("tr.session")).to_have_count(0)


def test_download_project_stats_matches_the_api(shared_site: Site, browser: Browser, tmp_path: Path) -> None:
    site = shared_site  # this test changes no status, user or token
    page = site.page(browser, site.daemon.token)
    with page.expect_download() as info:
        row_action(page, "P1", "Download project stats")
    download = info.value
    assert download.suggested_filename == "P1_project_stats.json"
    saved = tmp_path / "stats.json"
    download.save_as(saved)
    assert json.loads(saved.read_text()) == site.daemon.call("get_project_file_paths", ["P1"])


def test_mark_archiving_and_watch_the_hook_archive_it(shared_site: Site, browser: Browser) -> None:
    site = shared_site  # this test changes P2 S1's micrographs only, which no other test looks at
    page = site.page(browser, site.daemon.token, fake_clock=True)
    right_click_table(page, "Expand all")
    open_menu(page, "P2-S1", "micrographs")
    shot(page, "04-category-menu")
    menu_button(page, "Mark as archiving").click()
    # the hook (the seed's example) marks it archived; the page shows it without a reload, at its next
    # refresh: within 10 s, which the page's clock skips instead of the test waiting them out
    wait_until(lambda: site.daemon.call("get_session", ["P2", "S1"])["data_management"]["micrographs"]["status"]
               == "archived", what="the hook to archive")
    page.clock.fast_forward(10_000)
    expect(cell(page, "P2-S1", "micrographs").locator(".badge")).to_have_text("archived", timeout=25_000)
    shot(page, "05-archived-by-hook")


def test_delete_through_the_confirmation(shared_site: Site, browser: Browser) -> None:
    site = shared_site  # this test deletes P2 S1's particles only, which no other test looks at
    tree = site.trees["P2/S1"]
    page = site.page(browser, site.daemon.token)
    right_click_table(page, "Expand all")
    open_menu(page, "P2-S1", "particles")
    menu_button(page, "Delete data").click()
    dialog = page.locator("#dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#dry-run")).to_contain_text(f"{len(tree.paths_by_datatype['particles'])} files")
    ok = page.locator("#dialog-ok")
    expect(ok).to_be_disabled()
    expect(dialog).to_contain_text("Type P2 S1 to confirm")
    for not_it in ("S1", "P1 S1", "P2 S2"):  # every project has an S1: the session alone is not enough
        page.fill("#confirm-input", not_it)
        expect(ok).to_be_disabled()
    page.fill("#confirm-input", " P2  S1 ")
    expect(ok).to_be_enabled()
    shot(page, "06-delete-confirmation")
    ok.click()
    expect(page.locator(".job")).to_be_visible()
    expect(cell(page, "P2-S1", "particles").locator(".badge")).to_have_text("deleted", timeout=20_000)
    expect(page.locator(".job.done")).to_be_visible()
    shot(page, "07-deleted")
    assert not any(Path(p).exists() for p in tree.paths_by_datatype["particles"])
    assert all(Path(p).exists() for p in tree.paths_by_datatype["micrographs"])


def test_actions_are_disabled_with_a_reason(shared_site: Site, browser: Browser) -> None:
    site = shared_site  # this test changes no status, user or token
    page = site.page(browser, site.daemon.token)
    right_click_table(page, "Expand all")
    open_menu(page, "P1-S2", "micrographs")  # a running session
    expect(menu_button(page, "Mark as archiving")).to_be_disabled()
    expect(menu_button(page, "Mark as archiving")).to_contain_text("the session is running")
    expect(menu_button(page, "Delete data")).to_be_disabled()
    expect(menu_button(page, "Download file list")).to_be_enabled()
    shot(page, "08-running-session-menu")
    page.keyboard.press("Escape")
    open_menu(page, "P1-S1", "raw")
    expect(menu_button(page, "Delete data")).to_contain_text("raw data is never deleted")
    page.keyboard.press("Escape")
    open_menu(page, "P1-S1", "thumbnails")
    expect(menu_button(page, "Download file list")).to_be_disabled()
    expect(menu_button(page, "Mark as archived")).to_contain_text("not offered for thumbnails")

    viewer = site.page(browser, site.viewer_token)
    right_click_table(viewer, "Expand all")
    open_menu(viewer, "P1-S1", "micrographs")
    expect(menu_button(viewer, "Mark as archived")).to_be_disabled()
    expect(menu_button(viewer, "Mark as archived")).to_contain_text("live data management permission")
    expect(menu_button(viewer, "Delete data")).to_be_disabled()
    expect(menu_button(viewer, "Download file list")).to_be_enabled()
    expect(viewer.locator("#users-tab")).to_be_hidden()
    shot(viewer, "09-no-permission-menu")
    menu_button(viewer, "Preview deletion").click()  # a dry run is a read: no permission needed
    micrographs = len(site.trees["P1/S1"].paths_by_datatype["micrographs"])
    expect(viewer.locator("#dry-run")).to_contain_text(f"{micrographs} files")
    expect(viewer.locator("#dry-run")).to_contain_text("livedm user allow viewer")
    expect(viewer.locator("#dialog-ok")).to_have_text("Close")
    viewer.locator("#dialog-ok").click()
    assert not viewer.errors  # type: ignore[attr-defined]


def test_admin_toggles_a_users_permission(shared_site: Site, browser: Browser) -> None:
    site = shared_site  # with a user of this test's own: 'viewer' stays without the permission
    operator = site.daemon.call("create_user", {"name": "operator"})["token"]
    page = site.page(browser, site.daemon.token)
    page.click("#users-tab")
    toggle = page.locator("tr[data-user='operator'] input[type=checkbox]")
    expect(toggle).not_to_be_checked()
    toggle.check()
    expect(page.locator("tr[data-user='operator']")).not_to_contain_text("not allowed")  # the reply re-rendered it
    shot(page, "10-users")
    users = {u["name"]: u for u in site.daemon.call("list_users")}
    assert users["operator"]["live_data_management"] is True
    as_operator = site.page(browser, operator)
    right_click_table(as_operator, "Expand all")
    open_menu(as_operator, "P1-S1", "micrographs")
    expect(menu_button(as_operator, "Mark as archived")).to_be_enabled()
    changes = [e for e in site.daemon.call("get_audit_log", {"limit": 100}) if e["action"] == "permission_changed"]
    assert [(e["user"], e["live_data_management"]) for e in changes] == [("operator", True)]


def test_refresh_a_project_and_mark_a_session_completed(site: Site, browser: Browser) -> None:
    page = site.page(browser, site.daemon.token)
    row_action(page, "P2", "Refresh project stats")
    job = page.locator(".job", has_text="Refreshing P2")
    expect(job).to_be_visible()
    expect(job.locator(".job-state")).to_contain_text("done — 1/1")
    right_click_table(page, "Expand all")
    row_action(page, "P1-S1", "Refresh session stats")  # a job too, with its progress
    session_job = page.locator(".job", has_text="Refreshing P1 S1")
    expect(session_job.locator(".job-state")).to_contain_text("done — 1/1")
    row_action(page, "P1-S2", "Mark completed")
    page.locator("#dialog-ok").click()
    expect(page.locator("tr[data-uid='P1-S2'] td.status-completed")).to_be_visible()
    assert site.daemon.call("get_session", ["P1", "S2"])["status"] == "completed"
    open_menu(page, "P1-S2", "micrographs")
    expect(menu_button(page, "Mark as archiving")).to_be_enabled()


def test_tokens_issued_and_revoked_from_the_admin_view(site: Site, browser: Browser) -> None:
    viewer = site.page(browser, site.viewer_token)
    expect(viewer.locator("tr.project")).to_have_count(2)
    admin = site.page(browser, site.daemon.token)
    admin.click("#users-tab")
    admin.locator("tr[data-user='viewer'] button", has_text="Issue token").click()
    token = admin.locator("#new-token").inner_text()
    assert token.startswith("ldm_")
    admin.locator("#dialog-ok").click()
    admin.locator("tr[data-user='viewer'] button", has_text="Revoke tokens").click()
    expect(admin.locator(".toast", has_text="revoked 2 token(s) of viewer")).to_be_visible()
    right_click_table(viewer, "Refresh table")
    expect(viewer.locator("#sign-in-error")).to_contain_text("not valid")
    expect(viewer.locator("#sign-in")).to_be_visible()


def test_admin_changes_a_role_and_removes_a_user(site: Site, browser: Browser) -> None:
    page = site.page(browser, site.daemon.token)
    page.click("#users-tab")
    expect(page.locator("#users tbody tr")).to_have_count(2)  # admin and viewer; not livedm's own hook account
    expect(page.locator("tr[data-user='hook']")).to_have_count(0)
    expect(page.locator("tr[data-user='admin'] button", has_text="Remove")).to_have_count(0)  # not yourself
    page.locator("tr[data-user='viewer'] select").select_option("admin")
    expect(page.locator(".toast", has_text="viewer is an admin")).to_be_visible()
    assert {u["name"]: u["role"] for u in site.daemon.call("list_users")}["viewer"] == "admin"
    page.locator("tr[data-user='viewer'] button", has_text="Remove").click()
    ok = page.locator("#dialog-ok")
    expect(ok).to_be_disabled()
    page.fill("#confirm-input", "viewe")
    expect(ok).to_be_disabled()
    page.fill("#confirm-input", "viewer")
    ok.click()
    expect(page.locator(".toast", has_text="removed viewer (1 token(s) revoked)")).to_be_visible()
    expect(page.locator("tr[data-user='viewer']")).to_have_count(0)
    assert [u["name"] for u in site.daemon.call("list_users")] == ["admin"]
    entry = site.daemon.call("get_audit_log", {"limit": 1})[0]
    assert (entry["action"], entry["user"], entry["role"]) == ("user_removed", "viewer", "admin")
    assert not page.errors  # type: ignore[attr-defined]
