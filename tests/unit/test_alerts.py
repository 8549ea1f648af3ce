"""What went wrong with a category, as the table and `livedm ls` show it: a failed hook run, a failed or
stuck deletion; and the record of a category's last hook run, which an earlier run ending late never hides."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from livedm.server.alerts import STUCK_QUEUED_S, category_alert
from livedm.server.overview import Overview, overview_query
from livedm.server.overview_index import OverviewIndex
from livedm.server.sessions import Sessions
from livedm.server.store import Store
from testkit.sessiontree import build_session_tree

NOW_S = 1_800_000_000.0


def category(status: str = "archiving", **fields: Any) -> dict[str, Any]:
    return {"status": status, "prev_status": "active", "size": 10, "file_count": 1, "updated_at": None, **fields}


def failed_hook(status: str = "archiving", job_id: str = "J12") -> dict[str, Any]:
    return {"job_id": job_id, "status": status, "state": "failed", "error": "hook exited with status 1",
            "finished_at": "2026-11-25T10:00:00.000Z"}


def test_a_failed_hook_run_for_the_status_the_category_has() -> None:
    assert category_alert(category(hook=failed_hook()), None, NOW_S) == {
        "kind": "hook_failed", "job_id": "J12",
        "message": "the hook run J12 for archiving failed: hook exited with status 1"}
    assert category_alert(category("active", hook=failed_hook()), None, NOW_S) is None  # the status moved on
    assert category_alert(category(hook={**failed_hook(), "state": "done", "error": None}), None, NOW_S) is None
    assert category_alert(category(), None, NOW_S) is None


def test_a_deletion_that_stopped_or_left_files() -> None:
    note = "deletion J9: 2 file(s) could not be deleted (first: S1/x.mrc: Operation not permitted)"
    assert category_alert(category("active", note=note, note_job_id="J9"), None, NOW_S) == {
        "kind": "deletion_failed", "message": note, "job_id": "J9"}
    assert category_alert(category("active", note=None, note_job_id=None), None, NOW_S) is None


@pytest.mark.parametrize(("job", "words"), [
    (None, "is gone"),
    ({"id": "J5", "state": "failed", "error": "boom"}, "failed (boom)"),
    ({"id": "J5", "state": "queued", "created_ts": NOW_S - STUCK_QUEUED_S - 60}, "has waited 6 min for a worker"),
    ({"id": "J5", "state": "running", "created_ts": NOW_S - 5, "lease_until": NOW_S - 40}, "stopped answering 40 s"),
])
def test_a_deletion_that_is_stuck(job: dict[str, Any] | None, words: str) -> None:
    alert = category_alert(category("deleting", job_id="J5"), job, NOW_S)
    assert alert is not None and alert["kind"] == "deletion_stuck" and alert["job_id"] == "J5"
    assert words in alert["message"]


@pytest.mark.parametrize("job", [
    {"id": "J5", "state": "queued", "created_ts": NOW_S - 10},
    {"id": "J5", "state": "running", "created_ts": NOW_S - 3600, "lease_until": NOW_S + 20},
])
def test_a_deletion_under_way_is_no_alert(job: dict[str, Any]) -> None:
    assert category_alert(category("deleting", job_id="J5"), job, NOW_S) is None


def _store_for_hooks(store: Store) -> None:
    store.insert_session({"project_uid": "P1", "uid": "S1", "data_management": {"raw": category()}})


def test_the_last_hook_run_is_kept_whichever_ends_last(mock_store: Store) -> None:
    _store_for_hooks(mock_store)
    assert mock_store.set_category_hook("P1", "S1", "raw", failed_hook(job_id="J8"))
    assert mock_store.set_category_hook("P1", "S1", "raw", {**failed_hook(job_id="J10"), "state": "done"})
    assert not mock_store.set_category_hook("P1", "S1", "raw", failed_hook(job_id="J9"))  # ended after J10
    hook = mock_store.get_session("P1", "S1")["data_management"]["raw"]["hook"]
    assert (hook["job_id"], hook["state"]) == ("J10", "done")


@pytest.mark.slow
def test_the_last_hook_run_is_kept_on_the_embedded_store_too(real_store: Store) -> None:
    _store_for_hooks(real_store)
    assert real_store.set_category_hook("P1", "S1", "raw", failed_hook(job_id="J8"))
    assert real_store.set_category_hook("P1", "S1", "raw", {**failed_hook(job_id="J10"), "state": "done"})
    assert not real_store.set_category_hook("P1", "S1", "raw", failed_hook(job_id="J9"))
    assert real_store.get_session("P1", "S1")["data_management"]["raw"]["hook"]["job_id"] == "J10"


def test_sessions_carry_their_alerts_and_a_stuck_deletion_is_found(mock_service: Sessions, tmp_path: Path) -> None:
    build_session_tree(tmp_path / "proj", exposures=1)
    mock_service.create_project("p", str(tmp_path / "proj"))
    mock_service.create_live_session("P1", "s")
    mock_service.change_session_status("P1", "S1", "complete")
    store = mock_service.store
    store.insert_job({"id": "J3", "kind": "delete", "params": {}, "state": "queued", "attempts": 0, "owner": None,
                      "lease_until": 0.0, "not_before": 0.0, "created_ts": time.time() - 3600,
                      "created_at": "2026-01-01T00:00:00.000Z"})
    mock_service.states.change(project_uid="P1", session_uid="S1", datatype="particles", expect="active",
                               to="deleting", job_id="J3", actor="admin", by="user")
    store.set_category_hook("P1", "S1", "micrographs", failed_hook("active", "J2"))
    overview = Overview(store, mock_service, OverviewIndex(store)).get(overview_query())
    for sessions in (mock_service.list_sessions("P1"), overview["projects"][0]["sessions"],
                     [mock_service.get_session("P1", "S1")]):
        dm = sessions[0]["data_management"]
        stuck = dm["particles"]["alert"]
        assert stuck["kind"] == "deletion_stuck" and "waited 60 min" in stuck["message"]
        assert dm["micrographs"]["alert"]["kind"] == "hook_failed"
        assert dm["raw"]["alert"] is None


@pytest.mark.slow
def test_a_hook_run_is_recorded_on_its_own_session_on_the_embedded_store(real_store: Store) -> None:
    """nx-27017 applied {"_id": X, "$or": [...]} updates to the first session meeting the $or."""
    for uid in ("S1", "S2"):
        real_store.insert_session({"project_uid": "P1", "uid": uid, "data_management": {"raw": category()}})
    assert real_store.set_category_hook("P1", "S1", "raw", failed_hook(job_id="J8"))
    assert real_store.set_category_hook("P1", "S2", "raw", failed_hook(job_id="J9"))
    assert real_store.get_session("P1", "S1")["data_management"]["raw"]["hook"]["job_id"] == "J8"
    assert real_store.get_session("P1", "S2")["data_management"]["raw"]["hook"]["job_id"] == "J9"
