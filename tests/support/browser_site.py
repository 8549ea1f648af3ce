"""The Data Management page's tests: a site (a real livedmd with two projects, the seed's hook on, a user
without the permission) and what a test does on a page of it: sign in, take a screenshot.
Screenshots of the main states go to screenshots/ at the repository root."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Browser, Page

from testkit.daemon import Daemon
from testkit.sessiontree import SessionTree, build_session_tree
from tests.support.daemon_sessions import hook_daemon

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "screenshots"
HOOKS = ROOT / "hooks"


@dataclass
class Site:
    daemon: Daemon
    trees: dict[str, SessionTree]
    viewer_token: str
    root: Path  # where its trees are; failing-hook.sh here is an allowed override of the hook

    def page(self, browser: Browser, token: str | None = None, fake_clock: bool = False, width: int = 1280,
             height: int = 800) -> Page:
        """A new tab on the page at a laptop's 1280x800 unless told otherwise, signed in with `token` if given.
        With fake_clock the page's timers run on Playwright's clock: time flows as usual, and
        page.clock.fast_forward() jumps ahead."""
        page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
        if fake_clock:
            page.clock.install()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.errors = errors  # type: ignore[attr-defined]
        page.goto(self.daemon.url + "/ui")
        if token is not None:
            sign_in(page, token)
        return page


def start_site(tmp_path: Path, store: str) -> Site:
    """P1 'Apoferritin' (S1 completed, S2 running) and P2 'TRPV1' (S1 completed), the seed's hook on,
    a user 'viewer' without the live data management permission; a livedmd of its own, in tmp_path, on a
    new database in `store`."""
    daemon = hook_daemon(tmp_path, HOOKS / "cryosparc-seed-example.sh", store=store,
                         LIVEDM_HOOK_ALLOWED_SCRIPTS=str(tmp_path / "failing-hook.sh"))
    try:
        trees = {"P1/S1": build_session_tree(tmp_path / "apoferritin", "S1", exposures=4),
                 "P1/S2": build_session_tree(tmp_path / "apoferritin", "S2", exposures=2),
                 "P2/S1": build_session_tree(tmp_path / "trpv1", "S1", exposures=3)}
        daemon.call("create_project", ["Apoferritin", str(tmp_path / "apoferritin")])
        daemon.call("create_project", ["TRPV1", str(tmp_path / "trpv1")])
        for key in trees:
            project, _session = key.split("/")
            daemon.call("create_live_session", [project, f"grid {key}"])
        daemon.call("mark_session_completed", ["P1", "S1"])
        daemon.call("start_session", ["P1", "S2"])
        daemon.call("update_session_datatype_sizes", ["P1", "S2"])
        daemon.call("mark_session_completed", ["P2", "S1"])
        viewer = daemon.call("create_user", {"name": "viewer"})
    except BaseException:
        daemon.stop()
        raise
    return Site(daemon, trees, viewer["token"], tmp_path)


def sign_in(page: Page, token: str) -> None:
    page.fill("#token", token)
    page.click("#sign-in-form button[type=submit]")


def fits_the_screen(page: Page) -> dict[str, object]:
    """What a test of the layout checks: the page's and the table's width against the screen's, and every
    figure (sizes, dates, times, badges) shown whole (a cut one ends in an ellipsis: its text is wider than
    its box)."""
    return page.evaluate("""() => {
        const screen = document.documentElement.clientWidth;
        const cut = [...document.querySelectorAll('#overview .figure, #overview .badges > *, #overview td.dates .line,'
            + ' #overview td.dates .sub, #overview td.measured .line, #overview td.measured .sub, #overview th')]
            .filter((e) => e.scrollWidth > e.clientWidth + 1).map((e) => e.textContent);
        return {screen, page: document.documentElement.scrollWidth, table: document.querySelector('#overview')
            .getBoundingClientRect().right, header: document.querySelector('header').getBoundingClientRect().width,
            cut};
    }""")


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
