"""The page on a laptop's screen (1280x800) and a large one (1920x1080), and failures shown where people
look: a failed hook run's badge and log, a deletion that left files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.browser_site import Site, fits_the_screen, shot
from tests.support.hook_scripts import executable
from tests.support.waiting import wait_until

LONG = "Apoferritin in a very long title: grid 3 of the Krios at 300 kV, K3 counting, 0.83 Å/px, 50 frames "


def add_long_titles(site: Site, tmp_path: Path) -> None:
    (tmp_path / "long").mkdir()
    site.daemon.call("create_project", [(LONG * 3)[:200], str(tmp_path / "long")])
    site.daemon.call("create_live_session", ["P3", (LONG * 3)[:200]])
    site.daemon.call("change_session_data_management_state", ["P2", "S1", "particles", "archived"])
    broken = tmp_path / "broken-project"  # the discovery line above the table then has a problem to report
    broken.mkdir()
    (broken / "project.json").write_bytes(b'{"uid": "P9", "title": "cut sh')
    job_id = site.daemon.call("discover")
    wait_until(lambda: site.daemon.call("get_job", [job_id])["state"] == "done", what="the discovery pass")


def expand_all(page: Page) -> None:
    page.locator("tr.project td").nth(2).click(button="right")
    page.locator("#context-menu button", has_text="Expand all").click()


def assert_fits(page: Page) -> None:
    fit = fits_the_screen(page)
    assert fit["page"] <= fit["screen"], f"the page scrolls sideways: {fit}"
    assert fit["table"] <= fit["screen"] and fit["header"] == fit["screen"], fit
    assert fit["cut"] == [], f"figures cut short: {fit['cut']}"


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (1920, 1080)])
def test_the_table_fits_the_screen_collapsed_and_expanded(site: Site, browser: Browser, tmp_path: Path,
                                                          width: int, height: int) -> None:
    add_long_titles(site, tmp_path)
    page = site.page(browser, site.daemon.token, width=width, height=height)
    expect(page.locator("tr.project")).to_have_count(3)
    expect(page.locator("#discovery")).to_contain_text("1 unreadable")
    assert_fits(page)
    shot(page, f"15-fits-{width}-collapsed")
    expand_all(page)
    expect(page.locator("tr.session")).to_have_count(4)
    expect(page.locator("tr[data-uid='P2-S1'] td.category[data-datatype='particles'] .badge")).to_have_text(
        "archived")
    assert_fits(page)
    long_title = page.locator("tr[data-uid='P3-S1'] td.title")
    expect(long_title).to_have_attribute("title", (LONG * 3)[:200])  # cut on the page, whole on hover
    expect(page.locator("#overview thead th", has_text="Dates")).to_contain_text("(local)")
    expect(page.locator("#as-of")).to_contain_text("times are local (")
    shot(page, f"16-fits-{width}-expanded")
    for tab in ("Jobs", "Users"):
        page.locator("nav .tab", has_text=tab).click()
        expect(page.locator(f"#{tab.lower()}-view")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth"), tab
    assert not page.errors  # type: ignore[attr-defined]


def test_a_failed_hooks_badge_and_log_are_two_clicks_away(site: Site, browser: Browser, tmp_path: Path) -> None:
    failing = executable(tmp_path / "failing-hook.sh",
                         "#!/bin/sh\necho \"archiving $3 of $1 $2\"\necho 'rsync: write failed: No space left' >&2\n"
                         "exit 7\n")
    job_id = site.daemon.call("trigger_live_data_management_script", {
        "project_uid": "P2", "session_uid": "S1", "datatype": "metadata", "script_location": str(failing)})
    wait_until(lambda: site.daemon.call("get_job", [job_id])["state"] == "failed", what="the hook to fail")
    page = site.page(browser, site.daemon.token)
    expand_all(page)
    badge = page.locator("tr[data-uid='P2-S1'] td.category[data-datatype='metadata'] button.badge.alert")
    expect(badge).to_have_text("⚠ hook failed")
    expect(badge).to_have_attribute("title", f"active: the hook run {job_id} for active failed: hook exited with "
                                    f"status 7; its log: `livedm job {job_id} --log` (P2_S1_metadata_{job_id}.log in "
                                    "the hook log dir). Click for the run's log.")
    assert_fits(page)
    shot(page, "12-hook-failed-badge")
    badge.click()  # the one click: the badge is the link to the log
    log = page.locator("#log-text")
    expect(log).to_contain_text("archiving metadata of P2 S1")
    expect(log).to_contain_text("rsync: write failed: No space left")
    expect(log).to_contain_text("=== exit status 7 after")
    shot(page, "13-hook-log")
    with page.expect_download() as info:
        page.click("#log-download")
    saved = tmp_path / "downloaded.log"
    info.value.save_as(saved)
    assert info.value.suggested_filename == f"P2_S1_metadata_{job_id}.log"
    written = site.daemon.state_dir / "hook-logs" / f"P2_S1_metadata_{job_id}.log"
    assert saved.read_bytes() == written.read_bytes()
    page.locator("#dialog-ok").click()

    viewer = site.page(browser, site.viewer_token)  # without the permission: the badge, but not the log
    expand_all(viewer)
    viewer.locator("tr[data-uid='P2-S1'] td.category[data-datatype='metadata'] button.badge.alert").click()
    expect(viewer.locator("#dialog .error")).to_contain_text("live data management permission")
    assert not page.errors and not viewer.errors  # type: ignore[attr-defined]


def test_the_jobs_tab_shows_a_runs_log(site: Site, browser: Browser, tmp_path: Path) -> None:
    failing = executable(tmp_path / "failing-hook.sh", "#!/bin/sh\necho broken >&2\nexit 7\n")
    job_id = site.daemon.call("trigger_live_data_management_script", {
        "project_uid": "P2", "session_uid": "S1", "datatype": "metadata", "script_location": str(failing)})
    page = site.page(browser, site.daemon.token)
    page.locator("nav .tab", has_text="Jobs").click()
    row = page.locator("#jobs tr", has_text=job_id)
    expect(row).to_contain_text("failed", timeout=15_000)
    expect(row).to_contain_text("exited with status 7")
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    shot(page, "11-jobs")
    row.locator("button.log").click()
    expect(page.locator("#log-text")).to_contain_text("broken")
    expect(page.locator(".log-about")).to_contain_text("All of")


def _chattr(flag: str, path: Path) -> bool:
    return shutil.which("chattr") is not None and subprocess.run(
        ["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_a_deletion_that_left_files_shows_its_badge(site: Site, browser: Browser) -> None:
    stuck = Path(site.trees["P1/S1"].paths_by_datatype["particles"][0])
    if not _chattr("+i", stuck):
        pytest.skip("chattr +i is not available on this file system (needs root and ext4/xfs)")
    try:
        job_id = site.daemon.call("delete_live_datatype", {"project_uid": "P1", "session_uid": "S1",
                                                           "datatype": "particles", "asynchronous": False})["id"]
        page = site.page(browser, site.daemon.token)
        expand_all(page)
        badge = page.locator("tr[data-uid='P1-S1'] td.category[data-datatype='particles'] button.badge.alert")
        expect(badge).to_have_text("⚠ deletion failed")
        expect(badge).to_have_attribute("title", f"active: deletion {job_id}: 1 file(s) could not be deleted "
                                        f"(first: S1/extract/blob/256/{stuck.name}: Operation not permitted). "
                                        "Click for the deletion job.")
        badge.click()
        expect(page.locator("#dialog")).to_contain_text(f"Job {job_id}: done")
        expect(page.locator("#dialog ul.problems")).to_contain_text(stuck.name)
        shot(page, "14-deletion-failed")
    finally:
        _chattr("-i", stuck)
