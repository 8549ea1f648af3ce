"""A project's totals kept on its document as its sessions change, never summed per request: right after
every kind of write, converging when two writers race, and put right by the reconciliation."""

from __future__ import annotations

import ast
import inspect
import textwrap
import time
from pathlib import Path

import pytest

from livedm.server import store as store_module
from livedm.server.backup_schema import PROJECT_FIELDS, SESSION_FIELDS, fields_problem
from livedm.server.domain import DATATYPES
from livedm.server.sessions import Sessions
from livedm.server.store import Store, empty_totals
from testkit.facility import fill, session_bytes, session_doc, session_status
from testkit.sessiontree import build_session_tree


@pytest.fixture(params=["real_store", "mock_store"])
def store(request: pytest.FixtureRequest) -> Store:
    """On the embedded store (what livedmd runs) and on the mongomock double."""
    return request.getfixturevalue(request.param)


def expected_totals(project_number: int, sessions: range) -> dict:
    totals = empty_totals()
    totals["session_count"] = len(sessions)
    for s in sessions:
        status = session_status(project_number, s)
        totals["sessions_by_status"][status] = totals["sessions_by_status"].get(status, 0) + 1
        for dt in DATATYPES:
            totals["data_management"][dt]["size"] += session_bytes(project_number, s, dt)
            totals["data_management"][dt]["file_count"] += s + 1
    return totals


def stored_totals(store: Store, project_uid: str) -> dict:
    project = store.get_project(project_uid)
    assert project is not None
    return project["totals"]


def test_inserted_sessions_are_in_their_projects_totals(store: Store) -> None:
    fill(store, projects=3, sessions_per_project=4)
    for p in (1, 2, 3):
        assert stored_totals(store, f"P{p}") == expected_totals(p, range(1, 5))
    assert store.insert_session(session_doc(2, 5))
    assert not store.insert_session(session_doc(2, 5)), "a duplicate is refused and counts once"
    assert stored_totals(store, "P2") == expected_totals(2, range(1, 6))


def test_a_project_without_sessions_has_zero_totals_and_counts_sessions_recorded_before_it(store: Store) -> None:
    fill(store, projects=1, sessions_per_project=0)
    assert stored_totals(store, "P1") == empty_totals()
    store.insert_sessions([session_doc(9, 1), session_doc(9, 2)])  # a restore's order: sessions, then project
    assert store.get_project("P9") is None
    fill(store, projects=1, sessions_per_project=0, first_project=9)
    assert stored_totals(store, "P9") == expected_totals(9, range(1, 3))


def test_measures_and_session_status_change_the_totals_and_a_category_status_does_not(store: Store) -> None:
    fill(store, projects=1, sessions_per_project=3)
    store.set_measures("P1", "S2", {"particles": {"size": 5, "file_count": 1, "updated_at": "2026-03-01T00:00:00Z"}})
    totals = stored_totals(store, "P1")
    assert totals["data_management"]["particles"] == {
        "size": session_bytes(1, 1, "particles") + 5 + session_bytes(1, 3, "particles"), "file_count": 2 + 1 + 4}
    old = session_status(1, 2)
    assert store.set_session_status("P1", "S2", expect=old, status="completed", at="2026-03-01T00:00:00Z")
    assert stored_totals(store, "P1")["sessions_by_status"].get("completed", 0) == \
        expected_totals(1, range(1, 4))["sessions_by_status"].get("completed", 0) + (old != "completed")
    version = store.get_project("P1")["totals_version"]  # type: ignore[index]
    store.set_category_status("P1", "S1", "raw", expect_status="active", fields={"status": "archived"})
    store.set_session_fields("P1", "S1", {"measured_at": "2026-03-02T00:00:00Z"})
    assert store.get_project("P1")["totals_version"] == version  # type: ignore[index]


def test_two_racing_recomputes_end_with_the_later_sum(store: Store) -> None:
    """Writer A sums the sessions before writer B's session write lands; B sums after it. Whichever of
    them writes last, the totals are B's: A's stale sum never overwrites a later one."""
    fill(store, projects=1, sessions_per_project=2)
    for a_writes_first in (True, False):
        version_a = store._draw_totals_version("P1")
        assert version_a is not None
        stale = store.sum_project_sessions("P1")
        store.db.sessions.update_one({"_id": "P1/S1"}, {"$inc": {"data_management.raw.size": 1000}})
        version_b = store._draw_totals_version("P1")
        assert version_b is not None
        fresh = store.sum_project_sessions("P1")
        assert fresh != stale
        if a_writes_first:
            assert store._write_totals("P1", stale, version=version_a)
            assert store._write_totals("P1", fresh, version=version_b)
        else:
            assert store._write_totals("P1", fresh, version=version_b)
            assert not store._write_totals("P1", stale, version=version_a), "an older sum is refused"
        assert stored_totals(store, "P1") == fresh


def test_the_reconciliation_puts_drifted_totals_right_and_leaves_right_ones_alone(store: Store) -> None:
    fill(store, projects=3, sessions_per_project=2)
    # a writer that died between its session write and its recompute:
    store.db.sessions.update_one({"_id": "P2/S1"}, {"$set": {"data_management.metadata.size": 0, "status": "paused"}})
    store.db.projects.update_one({"_id": "P3"}, {"$unset": {"totals": ""}})  # from before totals were kept
    untouched = store.get_project("P1")
    assert store.reconcile_totals() == 2
    assert store.get_project("P1") == untouched
    assert stored_totals(store, "P2") == store.sum_project_sessions("P2")
    assert stored_totals(store, "P2")["data_management"]["metadata"]["size"] == session_bytes(2, 2, "metadata")
    assert stored_totals(store, "P3") == expected_totals(3, range(1, 3))
    assert store.reconcile_totals() == 0


def test_a_restore_sums_the_totals_again_and_counts_itself(store: Store) -> None:
    fill(store, projects=1, sessions_per_project=2)
    project = {k: v for k, v in store.db.projects.find_one({"_id": "P1"}).items()}  # type: ignore[union-attr]
    project["totals"] = empty_totals()  # a backup whose totals lag its sessions
    sessions = list(store.db.sessions.find({}))
    restores = store.restore_count()
    assert store.begin_restore("a", time.time())
    store.stage_documents("a", "projects", [project], now_s=time.time())
    store.stage_documents("a", "sessions", sessions, now_s=time.time())
    store.switch_restore("a", {"projects": 1, "sessions": 2}, time.time())
    assert stored_totals(store, "P1") == expected_totals(1, range(1, 3))
    assert store.restore_count() == restores + 1


def test_a_project_row_shows_its_kept_totals_without_the_bookkeeping(mock_service: Sessions, tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "proj", exposures=2)
    mock_service.create_project("p", str(tmp_path / "proj"))
    mock_service.create_live_session("P1", "s")
    mock_service.refresh_session("P1", "S1")
    row = mock_service.get_project("P1")
    assert row["session_count"] == 1 and row["sessions_by_status"] == {"paused": 1}
    assert {dt: c["size"] for dt, c in row["data_management"].items()} == tree.bytes_by_datatype
    assert not {"totals", "totals_version", "sessions_version", "changed_s"} & set(row)
    assert mock_service.list_projects() == [row]


def test_backups_carry_the_totals_a_restore_accepts(mock_service: Sessions, tmp_path: Path) -> None:
    build_session_tree(tmp_path / "proj", exposures=1)
    mock_service.create_project("p", str(tmp_path / "proj"))
    mock_service.create_live_session("P1", "s")
    project = mock_service.store.db.projects.find_one({"_id": "P1"})
    session = mock_service.store.db.sessions.find_one({"_id": "P1/S1"})
    assert project is not None and session is not None
    assert {"totals", "totals_version", "sessions_version", "changed_s"} <= set(project)
    assert fields_problem(project, PROJECT_FIELDS, extras=False) is None
    assert fields_problem(session, SESSION_FIELDS, extras=False) is None
    assert "'totals' must be" in (fields_problem({**project, "totals": {"session_count": -1}}, PROJECT_FIELDS,
                                                 extras=False) or "")


# Every write of a session or a project, by the method of store.py that makes it. A new one must say here what
# it does to the totals and to the overview's index (the `changed_s` stamp) before it is allowed in.
SESSION_WRITERS = {
    "insert_sessions": "stamps and recomputes", "insert_session": "stamps and recomputes",
    "_update_session": "stamps, and recomputes when it sets a field the totals are made of",
    "set_category_hook": "the last hook run: in neither the totals nor the index",
    "swap_scan": "the scan's generation: in neither the totals nor the index",
    "append_scan_paths": "the scan's digest: in neither the totals nor the index",
}
PROJECT_WRITERS = {
    "insert_project": "stamps and recomputes", "set_project_fields": "stamps",
    "release_session_dir": "the dir map: in neither", "reserve_session_dir": "the dir map: in neither",
    "_draw_totals_version": "the totals' bookkeeping", "_write_totals": "the totals, stamped",
}
WRITES = {"insert_one", "insert_many", "update_one", "update_many", "find_one_and_update", "replace_one",
          "delete_one", "delete_many", "find_one_and_replace", "find_one_and_delete", "bulk_write"}


def writers_of(collection: str) -> set[str]:
    source = ast.parse(textwrap.dedent(inspect.getsource(store_module.Store)))
    found = set()
    for method in ast.walk(source):
        if isinstance(method, ast.FunctionDef):
            for node in ast.walk(method):
                if isinstance(node, ast.Attribute) and node.attr in WRITES and isinstance(node.value, ast.Attribute) \
                        and node.value.attr == collection:
                    found.add(method.name)
    return found


def test_every_writer_of_sessions_and_projects_is_known() -> None:
    assert writers_of("sessions") == set(SESSION_WRITERS)
    assert writers_of("projects") == set(PROJECT_WRITERS)
