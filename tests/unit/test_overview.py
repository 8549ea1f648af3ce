"""get_overview searched, filtered and paged on the server: the rows of each page at the edges, the filters
alone and combined, the index following every kind of change, and totals right after them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from livedm.server.auth import Authenticator
from livedm.server.domain import DATATYPES
from livedm.server.overview import Overview, overview_query
from livedm.server.overview_index import OverviewIndex
from livedm.server.services import Services
from livedm.server.sessions import Sessions
from livedm.server.store import Store
from testkit.cryosparc_tree import SessionSpec, build_cryosparc_project
from testkit.facility import category_status, fill, session_bytes, session_doc, session_status
from tests.support.config import make_config
from tests.support.waiting import wait_until

PROJECTS, SESSIONS = 4, 5


@pytest.fixture
def overview(mock_store: Store, mock_service: Sessions) -> Overview:
    fill(mock_store, projects=PROJECTS, sessions_per_project=SESSIONS)
    return Overview(mock_store, mock_service, OverviewIndex(mock_store))


def get(overview: Overview, **params: Any) -> dict[str, Any]:
    return overview.get(overview_query(**params))


def rows_of(answer: dict[str, Any]) -> list[str]:
    """The page's rows as the table shows them: a project's uid (a continued one in brackets), its sessions."""
    rows = []
    for project in answer["projects"]:
        rows.append(f"({project['uid']})" if project["continued"] else project["uid"])
        rows += [f"{project['uid']}/{s['uid']}" for s in project["sessions"]]
    return rows


def session_keys(answer: dict[str, Any]) -> list[str]:
    return [f"{p['uid']}/{s['uid']}" for p in answer["projects"] for s in p["sessions"]]


def every_key(admit: Any) -> list[str]:
    return [f"P{p}/S{s}" for p in range(1, PROJECTS + 1) for s in range(1, SESSIONS + 1) if admit(p, s)]


def test_no_parameters_give_the_whole_table_as_before(overview: Overview) -> None:
    answer = get(overview)
    assert [p["uid"] for p in answer["projects"]] == [f"P{n}" for n in range(1, PROJECTS + 1)]
    assert session_keys(answer) == every_key(lambda p, s: True)
    assert (answer["rows"], answer["first_row"], answer["last_row"]) == (24, 1, 24)
    assert (answer["page"], answer["page_size"], answer["pages"]) == (1, None, 1)
    p2 = answer["projects"][1]
    assert p2["session_count"] == SESSIONS and p2["matched_sessions"] == SESSIONS and p2["expanded"]
    assert p2["data_management"]["raw"]["size"] == sum(session_bytes(2, s, "raw") for s in range(1, SESSIONS + 1))
    s3 = p2["sessions"][2]
    assert s3["title"] == "grid 3 of P2" and s3["data_management"]["particles"]["status"] == category_status(2, 3)
    assert s3["data_management"]["raw"]["alert"] is None
    facility = answer["facility"]
    assert (facility["project_count"], facility["session_count"]) == (PROJECTS, PROJECTS * SESSIONS)
    assert facility["data_management"]["metadata"]["size"] == sum(
        session_bytes(p, s, "metadata") for p in range(1, PROJECTS + 1) for s in range(1, SESSIONS + 1))


def test_an_empty_facility_has_no_rows(mock_store: Store, mock_service: Sessions) -> None:
    empty = Overview(mock_store, mock_service, OverviewIndex(mock_store))
    answer = get(empty, page_size=50)
    assert answer["projects"] == [] and (answer["rows"], answer["first_row"], answer["last_row"]) == (0, 0, 0)
    assert answer["pages"] == 1 and answer["facility"]["session_count"] == 0
    assert answer["facility"]["data_management"] == {dt: {"size": 0, "file_count": 0} for dt in DATATYPES}


def test_collapsed_projects_page_at_the_edges(overview: Overview) -> None:
    one_page = get(overview, expand=False, page_size=PROJECTS)
    assert rows_of(one_page) == ["P1", "P2", "P3", "P4"] and one_page["pages"] == 1
    assert all(p["sessions"] == [] and p["matched_sessions"] == SESSIONS for p in one_page["projects"])
    last = get(overview, expand=False, page_size=3, page=2)
    assert rows_of(last) == ["P4"] and (last["first_row"], last["last_row"], last["pages"]) == (4, 4, 2)
    past = get(overview, expand=False, page_size=3, page=3)
    assert past["projects"] == [] and (past["rows"], past["first_row"], past["last_row"]) == (4, 0, 0)


def test_expanded_rows_page_through_projects_and_their_sessions(overview: Overview) -> None:
    pages = [get(overview, page_size=4, page=n, expand=["P1", "P2"]) for n in (1, 2, 3, 4)]
    assert [rows_of(p) for p in pages] == [
        ["P1", "P1/S1", "P1/S2", "P1/S3"],
        ["(P1)", "P1/S4", "P1/S5", "P2", "P2/S1"],
        ["(P2)", "P2/S2", "P2/S3", "P2/S4", "P2/S5"],
        ["P3", "P4"],
    ]
    assert [(p["first_row"], p["last_row"]) for p in pages] == [(1, 4), (5, 8), (9, 12), (13, 14)]
    assert {p["rows"] for p in pages} == {14} and {p["pages"] for p in pages} == {4}
    collapsed = get(overview, page_size=50, collapse=["P2", "P3"])
    assert rows_of(collapsed).count("P2/S1") == 0 and "P4/S5" in rows_of(collapsed) and collapsed["rows"] == 14


def test_a_page_size_above_the_cap_is_served_as_the_cap(overview: Overview) -> None:
    answer = get(overview, page_size=10**12)
    assert answer["page_size"] == 500 and answer["last_row"] == 24


def test_search_and_session_status_combined(overview: Overview) -> None:
    expected = every_key(lambda p, s: s in (1, 10, 11) and session_status(p, s) == "running")  # "grid 1" of S1
    answer = get(overview, search="GRID 1 ", session_status="running")
    assert session_keys(answer) == expected and answer["matched_sessions"] == len(expected) > 0
    assert answer["matched_projects"] == len({k.split("/")[0] for k in expected})
    both = get(overview, session_status=["running", "paused"], category_status="archived")
    assert session_keys(both) == every_key(
        lambda p, s: session_status(p, s) != "completed" and category_status(p, s) == "archived")


def test_owner_and_project_fields_are_searched_too(overview: Overview) -> None:
    user3 = get(overview, search="User3")
    assert session_keys(user3) == every_key(lambda p, s: s % 11 == 3)
    apoferritin = get(overview, search="apoferritin", expand=False)  # project titles: P3 is apoferritin
    assert rows_of(apoferritin) == ["P3"] and apoferritin["projects"][0]["matched_sessions"] == SESSIONS
    owner = get(overview, search="owner4")
    assert session_keys(owner) == every_key(lambda p, s: p == 4)


def test_search_text_is_literal_never_a_pattern(overview: Overview, mock_store: Store) -> None:
    mock_store.set_session_fields("P2", "S4", {"title": "grid (4)+.*[x] $1 \\d"})
    assert session_keys(get(overview, search="(4)+.*[x] $1 \\d")) == ["P2/S4"]
    assert session_keys(get(overview, search=".*")) == ["P2/S4"]
    assert get(overview, search="^grid")["matched_sessions"] == 0


def test_filters_that_match_nothing_give_an_empty_page(overview: Overview) -> None:
    answer = get(overview, search="no such thing", page_size=10)
    assert answer["projects"] == [] and (answer["rows"], answer["matched_sessions"]) == (0, 0)
    assert answer["facility"]["session_count"] == PROJECTS * SESSIONS, "the facility's totals are not filtered"


def test_a_project_without_sessions_shows_unless_a_status_is_asked_for(overview: Overview, mock_store: Store) -> None:
    fill(mock_store, projects=1, sessions_per_project=0, first_project=PROJECTS + 1)
    assert rows_of(get(overview, expand=False))[-1] == "P5"
    assert rows_of(get(overview, search="P5", expand=False)) == ["P5"]
    assert "P5" not in rows_of(get(overview, session_status="running", expand=False))


def test_the_index_follows_every_kind_of_change(overview: Overview, mock_store: Store) -> None:
    get(overview)  # the index is read whole here; what follows reaches it by its changes
    mock_store.set_measures("P1", "S1", {"raw": {"size": 7, "file_count": 1, "updated_at": "2026-03-01T00:00:00Z"}})
    changed = mock_store.set_session_status("P1", "S1", expect=session_status(1, 1), status="completed", at="x")
    assert changed is not None
    mock_store.set_category_status("P1", "S2", "particles", expect_status=category_status(1, 2),
                                   fields={"status": "deleting"})
    mock_store.insert_session({**session_doc(1, 6), "title": "the newest"})
    mock_store.set_project_fields("P4", {"title": "renamed to kryptonite"})
    answer = get(overview, search="P1", expand=["P1"], page_size=50)
    p1 = answer["projects"][0]
    assert p1["session_count"] == 6 and p1["data_management"]["raw"]["size"] == 7 + sum(
        session_bytes(1, s, "raw") for s in range(2, SESSIONS + 1)) + session_bytes(1, 6, "raw")
    assert [s["uid"] for s in p1["sessions"]][-1] == "S6"
    assert session_keys(get(overview, category_status="deleting")) == ["P1/S2"]
    assert "P1/S1" in session_keys(get(overview, session_status="completed"))
    assert session_keys(get(overview, search="newest")) == ["P1/S6"]
    assert rows_of(get(overview, search="KRYPTONITE", expand=False)) == ["P4"]


def test_another_daemons_writes_are_seen(overview: Overview, mock_store: Store) -> None:
    get(overview)
    other = Store(mock_store.client, mock_store.db.name)  # a second livedmd on the same database
    other.set_session_fields("P3", "S2", {"title": "written elsewhere"})
    assert session_keys(get(overview, search="written elsewhere")) == ["P3/S2"]


def test_a_write_landing_late_is_read_within_the_lag_and_by_the_periodic_full_read(
        mock_store: Store, mock_service: Sessions) -> None:
    fill(mock_store, projects=1, sessions_per_project=2)
    index = OverviewIndex(mock_store, lag_s=30.0, full_reload_s=3600.0)
    late = Overview(mock_store, mock_service, index)
    get(late)
    now_s = time.time()
    # stamped before the last look (a stalled write), within the lag: read at the next look
    mock_store.db.sessions.update_one({"_id": "P1/S1"}, {"$set": {"title": "late", "changed_s": now_s - 20}})
    assert session_keys(get(late, search="late")) == ["P1/S1"]
    # stamped long before (a clock far behind): missed by the looks, read by the periodic full read
    mock_store.db.sessions.update_one({"_id": "P1/S2"}, {"$set": {"title": "very late", "changed_s": now_s - 999}})
    assert session_keys(get(late, search="very late")) == []
    index.full_reload_s = 0.0
    get(late)  # starts the full read in the background
    wait_until(lambda: session_keys(get(late, search="very late")) == ["P1/S2"], 10, "the periodic full read")


def test_a_restore_is_read_whole_again(overview: Overview, mock_store: Store) -> None:
    get(overview)
    sessions = list(mock_store.db.sessions.find({}))
    for doc in sessions:
        doc["title"] = f"restored {doc['uid']}"  # with the stamps the backup had: older than any look
    assert mock_store.begin_restore("r", time.time())
    mock_store.stage_documents("r", "projects", list(mock_store.db.projects.find({})), now_s=time.time())
    mock_store.stage_documents("r", "sessions", sessions, now_s=time.time())
    mock_store.switch_restore("r", {"projects": PROJECTS, "sessions": len(sessions)}, time.time())
    assert get(overview, search="restored")["matched_sessions"] == len(sessions)


async def test_totals_after_a_deletion_and_a_discovery_pass(mock_store: Store, tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    config = make_config(tmp_path / "state", data_roots=str(root), discover_roots=str(root))
    services = Services.build(mock_store, config, Authenticator(mock_store, 2))
    movies = tmp_path / "movies"
    movies.mkdir()
    built = build_cryosparc_project(root, "P12", "Apoferritin", [SessionSpec(status="completed", exposures=3),
                                                                 SessionSpec(status="running", exposures=2)],
                                    movies_dir=movies)
    services.queue.enqueue_single("discover", {}, "admin")
    await services.workers(1).run_until_idle()
    answer = services.overview.get(overview_query(page_size=50))
    project = answer["projects"][0]
    assert project["uid"] == "P12" and project["sessions_by_status"] == {"completed": 1, "running": 1}
    assert {dt: c["size"] for dt, c in project["data_management"].items()} == built.bytes_by_datatype()
    admin = {"name": "admin", "role": "admin", "live_data_management": True}
    services.deletions.request(admin, "P12", "S1", datatype="particles", filepaths=None, user_id=None,
                               confirm_digest=None)
    await services.workers(1).run_until_idle()
    project = services.overview.get(overview_query(page_size=50))["projects"][0]
    assert project["data_management"]["particles"]["size"] == built.sessions["S2"].bytes_by_datatype["particles"]
    assert services.overview.get(overview_query(category_status="deleted"))["matched_sessions"] == 1
