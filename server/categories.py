"""Category state changes ("mark as archiving/archived/active/deleted"): one conditional update each."""

from __future__ import annotations

import logging
from typing import Any

from .audit import Audit
from .domain import check_mark, now_iso
from .errors import conflict
from .hooks import Hooks
from .service import Service

log = logging.getLogger(__name__)


class Categories:
    def __init__(self, sessions: Service, audit: Audit, hooks: Hooks) -> None:
        self.sessions = sessions
        self.audit = audit
        self.hooks = hooks

    def change_state(self, actor: str, project_uid: str, session_uid: str, datatype: str,
                     status: str) -> tuple[dict[str, Any], bool]:
        """(data_management, changed). Setting the status a category has already changes nothing."""
        session = self.sessions.session(project_uid, session_uid)
        current = check_mark(session, datatype, status)
        if current == status:
            return session["data_management"], False
        prefix = f"data_management.{datatype}"
        updated = self.sessions.store.update_session(
            project_uid, session_uid, {"status": "completed", f"{prefix}.status": current},
            {"$set": {f"{prefix}.status": status, f"{prefix}.prev_status": current,
                      f"{prefix}.status_changed_at": now_iso(), f"{prefix}.status_changed_by": actor}})
        if updated is None:
            raise conflict(f"{datatype} of {project_uid} {session_uid} changed while this request was made; "
                           "get_session() shows its state now")
        self.audit.record(actor, "state_changed", project_uid=project_uid, session_uid=session_uid,
                          datatype=datatype, old_status=current, status=status)
        log.info("%s: %s %s %s %s -> %s", actor, project_uid, session_uid, datatype, current, status)
        self.hooks.on_state_change(actor, project_uid, session_uid, datatype, status)
        return updated["data_management"], True
