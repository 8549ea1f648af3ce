"""The append-only audit log: who changed which category to what, what was deleted, who may do what."""

from __future__ import annotations

from typing import Any

from .domain import check_project_uid, check_session_uid, now_iso
from .errors import invalid_params
from .store import Store

MAX_ENTRIES = 1000


class Audit:
    def __init__(self, store: Store) -> None:
        self.store = store

    def record(self, actor: str, action: str, **details: Any) -> None:
        self.store.append_audit({"at": now_iso(), "actor": actor, "action": action, **details})

    def query(self, project_uid: str | None, session_uid: str | None, limit: int) -> list[dict[str, Any]]:
        if not 1 <= limit <= MAX_ENTRIES:
            raise invalid_params(f"limit must be 1-{MAX_ENTRIES}")
        if project_uid is not None:
            check_project_uid(project_uid)
        if session_uid is not None:
            if project_uid is None:
                raise invalid_params("session_uid needs project_uid")
            check_session_uid(session_uid)
        return self.store.find_audit(project_uid=project_uid, session_uid=session_uid, limit=limit)
