"""What the Data Management table is searched, filtered, counted and paged by, held in memory for every
session and project, so that a page of 50,000 sessions costs a scan of this and a read of its own rows.

The index is kept current by reading only what changed: every write of a session or a project stamps its
`changed_s` (store.py), and each look reads the documents stamped since the previous look, less SYNC_LAG_S
(a write whose stamp was taken a little before it landed, or another daemon's clock a little behind, is
still read). What a restore replaces is read whole again (the store counts restores), and so is everything,
in the background, every FULL_RELOAD_S: a change missed anyway is not missed for long.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .domain import DATATYPES
from .store import Store, empty_totals

log = logging.getLogger(__name__)

SYNC_LAG_S = 10.0
FULL_RELOAD_S = 3600.0
_NUMBER = re.compile(r"(\d+)")


def _natural(uid: str) -> tuple[Any, ...]:
    """S2 before S10; P3 before krios-P1."""
    return tuple(int(part) if part.isdigit() else part for part in _NUMBER.split(uid))


def _haystack(*fields: Any) -> str:
    return "\n".join(str(value) for value in fields if value).casefold()


@dataclass(frozen=True, slots=True)
class SessionEntry:
    key: str
    project_uid: str
    order: tuple[Any, ...]
    haystack: str  # uid, title and owner, case-folded
    status: str
    category_statuses: frozenset[str]


@dataclass(frozen=True, slots=True)
class ProjectEntry:
    uid: str
    order: tuple[Any, ...]
    haystack: str  # uid, title and owner, case-folded
    totals: dict[str, Any]


def session_entry(doc: dict[str, Any]) -> SessionEntry:
    categories = doc.get("data_management") or {}
    return SessionEntry(
        key=doc["_id"], project_uid=doc["project_uid"], order=(doc.get("created_at") or "", _natural(doc["uid"])),
        haystack=_haystack(doc["uid"], doc.get("title"), doc.get("created_by_user_id")),
        status=str(doc.get("status")),
        category_statuses=frozenset(str(c.get("status")) for c in categories.values() if isinstance(c, dict)))


def project_entry(doc: dict[str, Any], totals: dict[str, Any]) -> ProjectEntry:
    return ProjectEntry(uid=doc["uid"], order=(doc.get("created_at") or "", _natural(doc["uid"])),
                        haystack=_haystack(doc["uid"], doc.get("title"), doc.get("owner_user_id")), totals=totals)


@dataclass(frozen=True)
class Filters:
    """search: case-folded text that a session's or its project's uid, title or owner holds; statuses: the
    session's status is one of them; category_statuses: one of its categories has one of them. Empty: all."""

    search: str = ""
    statuses: frozenset[str] = frozenset()
    category_statuses: frozenset[str] = frozenset()

    def admits(self, session: SessionEntry, *, searched: bool) -> bool:
        """`searched`: the search is met already (by the project)."""
        return ((searched or self.search in session.haystack)
                and (not self.statuses or session.status in self.statuses)
                and (not self.category_statuses or not self.category_statuses.isdisjoint(session.category_statuses)))


@dataclass(frozen=True)
class Window:
    """Which rows of the table: a project's row, then (when it is expanded) one row per matching session.
    `first_row` counts from 0; `row_count` None: all from there."""

    first_row: int = 0
    row_count: int | None = None
    expand_all: bool = True
    expanded: frozenset[str] = frozenset()
    collapsed: frozenset[str] = frozenset()

    def shows_sessions(self, project_uid: str) -> bool:
        if project_uid in self.collapsed:
            return False
        return self.expand_all or project_uid in self.expanded


@dataclass
class ProjectSlice:
    uid: str
    matched_sessions: int
    expanded: bool
    continued: bool  # its own row is on an earlier page
    session_keys: list[str] = field(default_factory=list)


@dataclass
class Match:
    projects: list[ProjectSlice]
    rows: int
    matched_projects: int
    matched_sessions: int
    facility: dict[str, Any]


def facility_totals(projects: Iterable[ProjectEntry]) -> dict[str, Any]:
    total = {**empty_totals(), "project_count": 0}
    for project in projects:
        total["project_count"] += 1
        total["session_count"] += int(project.totals.get("session_count") or 0)
        for status, n in (project.totals.get("sessions_by_status") or {}).items():
            total["sessions_by_status"][status] = total["sessions_by_status"].get(status, 0) + int(n)
        for dt in DATATYPES:
            category = (project.totals.get("data_management") or {}).get(dt) or {}
            total["data_management"][dt]["size"] += int(category.get("size") or 0)
            total["data_management"][dt]["file_count"] += int(category.get("file_count") or 0)
    return total


class _Snapshot:
    """Every session and project as the index holds them, with the orders the table shows them in."""

    def __init__(self) -> None:
        self.sessions: dict[str, SessionEntry] = {}
        self.projects: dict[str, ProjectEntry] = {}
        self.by_project: dict[str, list[SessionEntry]] = {}
        self.project_order: list[ProjectEntry] = []
        self.unsorted: set[str] = set()  # projects whose session list needs sorting
        self.projects_unsorted = False

    def put_session(self, entry: SessionEntry) -> None:
        old = self.sessions.get(entry.key)
        self.sessions[entry.key] = entry
        listed = self.by_project.setdefault(entry.project_uid, [])
        if old is None:
            listed.append(entry)
        else:
            listed[listed.index(old)] = entry
        if old is None or old.order != entry.order:
            self.unsorted.add(entry.project_uid)

    def put_project(self, entry: ProjectEntry) -> None:
        self.projects[entry.uid] = entry
        self.projects_unsorted = True  # a few thousand projects sort in a millisecond

    def sorted_view(self) -> list[ProjectEntry]:
        for uid in self.unsorted:
            self.by_project[uid].sort(key=lambda s: s.order)
        self.unsorted.clear()
        if self.projects_unsorted:
            self.project_order = sorted(self.projects.values(), key=lambda p: p.order)
            self.projects_unsorted = False
        return self.project_order


class OverviewIndex:
    def __init__(self, store: Store, *, lag_s: float = SYNC_LAG_S, full_reload_s: float = FULL_RELOAD_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.lag_s = lag_s
        self.full_reload_s = full_reload_s
        self.clock = clock
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._restores = -1
        self._synced_s = 0.0  # the reads before this time are in the snapshot
        self._loaded_s = 0.0  # when the snapshot was read whole
        self._reloading = False

    def query(self, filters: Filters, window: Window) -> Match:
        with self._lock:
            snapshot = self._sync()
            return _match(snapshot, filters, window)

    def warm(self) -> None:
        """Read it all now (at start), so that the first page does not wait for it."""
        with self._lock:
            self._sync()

    def _sync(self) -> _Snapshot:
        started_s = self.clock()
        restores = self.store.restore_count()
        if self._snapshot is None or restores != self._restores:
            self._snapshot, self._restores = self._read_whole(), restores
            self._synced_s = self._loaded_s = started_s
            return self._snapshot
        since = self._synced_s - self.lag_s
        self._apply(self._snapshot, self.store.overview_sessions(since), self.store.overview_projects(since))
        self._synced_s = started_s
        if started_s - self._loaded_s > self.full_reload_s and not self._reloading:
            self._reloading = True
            threading.Thread(target=self._reload, args=(restores,), name="overview-reload", daemon=True).start()
        return self._snapshot

    def _read_whole(self) -> _Snapshot:
        snapshot = _Snapshot()
        self._apply(snapshot, self.store.overview_sessions(), self.store.overview_projects())
        return snapshot

    def _apply(self, snapshot: _Snapshot, sessions: list[dict[str, Any]], projects: list[dict[str, Any]]) -> None:
        for doc in sessions:
            snapshot.put_session(session_entry(doc))
        for doc in projects:
            totals = doc.get("totals")
            if totals is None:  # a project from before totals were kept, until the reconciliation reaches it
                totals = self.store.recompute_project_totals(doc["uid"]) or empty_totals()
            snapshot.put_project(project_entry(doc, totals))

    def _reload(self, restores: int) -> None:
        """The whole read again beside the one in use, then put in its place; the changes made meanwhile
        are read again at the next look."""
        try:
            started_s = self.clock()
            snapshot = self._read_whole()
            with self._lock:
                if restores == self._restores:
                    self._snapshot, self._synced_s, self._loaded_s = snapshot, started_s, started_s
        except Exception:
            log.exception("the overview's periodic full read failed; the index goes on from what it holds")
        finally:
            self._reloading = False


def _match(snapshot: _Snapshot, filters: Filters, window: Window) -> Match:
    start = window.first_row
    stop = float("inf") if window.row_count is None else window.first_row + window.row_count
    filtering = bool(filters.search or filters.statuses or filters.category_statuses)
    slices: list[ProjectSlice] = []
    rows = matched_projects = matched_sessions = 0
    for project in snapshot.sorted_view():
        sessions = snapshot.by_project.get(project.uid, [])
        if filtering:
            searched = not filters.search or filters.search in project.haystack
            matched = [s for s in sessions if filters.admits(s, searched=searched)]
            if not matched and (filters.statuses or filters.category_statuses or not searched):
                continue
        else:
            matched = sessions
        matched_projects += 1
        matched_sessions += len(matched)
        expanded = window.shows_sessions(project.uid)
        project_rows = 1 + (len(matched) if expanded else 0)
        if rows < stop and rows + project_rows > start:
            shown = matched[max(0, start - rows - 1):max(0, int(min(stop, rows + project_rows)) - rows - 1)]
            slices.append(ProjectSlice(project.uid, len(matched), expanded, continued=rows < start,
                                       session_keys=[s.key for s in shown] if expanded else []))
        rows += project_rows
    return Match(slices, rows, matched_projects, matched_sessions, facility_totals(snapshot.projects.values()))
