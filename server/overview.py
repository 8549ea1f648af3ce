"""The Data Management table as get_overview answers it: searched, filtered and paged on the server.

The index (overview_index.py) decides which rows a page holds and counts the matches; only that page's
projects and sessions are then read from the store, fresh, with their totals as kept on each project.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .domain import CATEGORY_STATUSES, SESSION_STATUSES, now_iso
from .errors import invalid_params
from .overview_index import Filters, Match, OverviewIndex, Window
from .sessions import Sessions
from .store import Store, session_key

MAX_PAGE_SIZE = 500  # rows; a larger page_size is served as this many (the answer says so)
MAX_SEARCH_CHARS = 200
MAX_KEYS_READ_BY_ID = 2000  # a page with more sessions than this reads them all in one scan instead


@dataclass(frozen=True)
class OverviewQuery:
    filters: Filters
    page: int
    page_size: int | None
    expand_all: bool
    expanded: frozenset[str]
    collapsed: frozenset[str]

    def window(self) -> Window:
        first = 0 if self.page_size is None else (self.page - 1) * self.page_size
        return Window(first_row=first, row_count=self.page_size, expand_all=self.expand_all,
                      expanded=self.expanded, collapsed=self.collapsed)


def _statuses(name: str, value: str | list[str] | None, allowed: tuple[str, ...]) -> frozenset[str]:
    given = [] if value is None else [value] if isinstance(value, str) else value
    unknown = [v for v in given if v not in allowed]
    if unknown:
        raise invalid_params(f"get_overview: {name} {unknown[0][:40]!r} is not one of {', '.join(allowed)}",
                             argument=name)
    return frozenset(given)


def overview_query(*, search: str | None = None, session_status: str | list[str] | None = None,
                   category_status: str | list[str] | None = None, expand: bool | list[str] = True,
                   collapse: list[str] | None = None, page: int = 1, page_size: int | None = None) -> OverviewQuery:
    """get_overview's parameters checked (their types are checked before, by rpc.py): -32602 for a value
    out of range, before anything is read."""
    if search is not None and len(search) > MAX_SEARCH_CHARS:
        raise invalid_params(f"get_overview: search may be at most {MAX_SEARCH_CHARS} characters, got "
                             f"{len(search)}", argument="search")
    if page < 1:
        raise invalid_params(f"get_overview: page counts from 1, got {page}", argument="page")
    if page_size is not None and page_size < 1:
        raise invalid_params(f"get_overview: page_size must be at least 1, got {page_size}", argument="page_size")
    if page_size is None and page != 1:
        raise invalid_params("get_overview: page needs a page_size (without one, the answer is every row)",
                             argument="page")
    filters = Filters(search=(search or "").strip().casefold(),
                      statuses=_statuses("session_status", session_status, SESSION_STATUSES),
                      category_statuses=_statuses("category_status", category_status, CATEGORY_STATUSES))
    return OverviewQuery(filters=filters, page=page,
                         page_size=None if page_size is None else min(page_size, MAX_PAGE_SIZE),
                         expand_all=expand is True, expanded=frozenset(expand) if isinstance(expand, list) else
                         frozenset(), collapsed=frozenset(collapse or ()))


class Overview:
    def __init__(self, store: Store, sessions: Sessions, index: OverviewIndex) -> None:
        self.store = store
        self.sessions = sessions
        self.index = index

    def get(self, query: OverviewQuery) -> dict[str, Any]:
        as_of = now_iso()
        match = self.index.query(query.filters, query.window())
        projects = self.store.get_projects([s.uid for s in match.projects])
        sessions = self._sessions([key for s in match.projects for key in s.session_keys])
        rows = []
        for piece in match.projects:
            project = projects.get(piece.uid)
            if project is None:  # in the index, not in the store: a restore under way
                continue
            rows.append({**self.sessions.project_row(project), "matched_sessions": piece.matched_sessions,
                         "expanded": piece.expanded, "continued": piece.continued,
                         "sessions": [sessions[key] for key in piece.session_keys if key in sessions]})
        return {"projects": rows, "as_of": as_of, **_paging(query, match)}

    def _sessions(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """{key: the session as the API shows it} for these sessions, fresh from the store."""
        if not keys:
            return {}
        if len(keys) > MAX_KEYS_READ_BY_ID:
            wanted = set(keys)
            docs = [s for s in self.store.list_sessions() if session_key(s["project_uid"], s["uid"]) in wanted]
        else:
            found = self.store.get_sessions(keys)
            docs = [found[key] for key in keys if key in found]
        return {session_key(s["project_uid"], s["uid"]): s for s in self.sessions.with_alerts(docs)}


def _paging(query: OverviewQuery, match: Match) -> dict[str, Any]:
    """Where the page lies in the table: rows counted from 1, and how many match."""
    first = 0 if query.page_size is None else (query.page - 1) * query.page_size
    last = match.rows if query.page_size is None else min(match.rows, first + query.page_size)
    return {"page": query.page, "page_size": query.page_size,
            "pages": 1 if not query.page_size else max(1, math.ceil(match.rows / query.page_size)),
            "rows": match.rows, "first_row": first + 1 if last > first else 0, "last_row": last if last > first else 0,
            "matched_projects": match.matched_projects, "matched_sessions": match.matched_sessions,
            "facility": match.facility}
