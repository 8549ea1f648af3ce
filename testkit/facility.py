"""A facility's worth of projects and sessions put straight into a store (no directories, no walks): what the
overview's tests and benchmark page through. Every figure follows from the numbers, so a test can say
which sessions a filter must find."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from livedm.server.domain import DATATYPES, SESSION_STATUSES, new_data_management
from livedm.server.store import Store

CATEGORY_CYCLE = ("active", "active", "archiving", "archived", "deleted", "missing", "active")
INSERT_BATCH = 1000
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def _at(day: int, seconds: int) -> str:
    return (_EPOCH + timedelta(days=day, seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def project_doc(number: int) -> dict[str, Any]:
    uid = f"P{number}"
    return {"uid": uid, "title": f"Project {number} {'apoferritin' if number % 3 == 0 else 'spike'}",
            "project_dir": f"/data/facility/{uid}", "created_at": _at(0, number),
            "owner_user_id": f"owner{number % 7}", "session_dirs": {}, "dirs_version": 0}


def session_status(project_number: int, session_number: int) -> str:
    return SESSION_STATUSES[(project_number + session_number) % len(SESSION_STATUSES)]


def category_status(project_number: int, session_number: int) -> str:
    return CATEGORY_CYCLE[(project_number * 7 + session_number) % len(CATEGORY_CYCLE)]


def session_bytes(project_number: int, session_number: int, datatype: str) -> int:
    return (project_number * 1000 + session_number) * (DATATYPES.index(datatype) + 1)


def session_doc(project_number: int, session_number: int) -> dict[str, Any]:
    """Session S<n> of project P<m>: its particles category gets the cycle's status, every category its bytes."""
    data_management = new_data_management()
    for dt in DATATYPES:
        data_management[dt].update(size=session_bytes(project_number, session_number, dt),
                                   file_count=session_number + 1, updated_at="2026-02-01T00:00:00.000Z")
    data_management["particles"]["status"] = category_status(project_number, session_number)
    status = session_status(project_number, session_number)
    return {"project_uid": f"P{project_number}", "uid": f"S{session_number}",
            "title": f"grid {session_number} of P{project_number}", "status": status,
            "session_dir": f"S{session_number}", "created_at": _at(1, session_number),
            "started_at": None, "paused_at": [], "completed_at": None, "data_management": data_management,
            "created_by_user_id": f"user{session_number % 11}", "measured_at": "2026-02-01T00:00:00.000Z",
            "scan_gen": None, "scan_digest": None}


def fill(store: Store, *, projects: int, sessions_per_project: int, first_project: int = 1) -> None:
    """Projects P<first>.. with S1..S<n> each, inserted in batches through the Store API."""
    batch: list[dict[str, Any]] = []
    for p in range(first_project, first_project + projects):
        assert store.insert_project(project_doc(p))
        for s in range(1, sessions_per_project + 1):
            batch.append(session_doc(p, s))
            if len(batch) >= INSERT_BATCH:
                store.insert_sessions(batch)
                batch = []
    store.insert_sessions(batch)
