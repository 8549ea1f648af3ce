"""Category state changes ("mark as archiving/archived/active/deleted"): one conditional update each."""

from __future__ import annotations

import logging
from typing import Any

from .domain import check_mark
from .errors import conflict
from .sessions import Sessions
from .states import BY_USER, CategoryStates

log = logging.getLogger(__name__)


class Categories:
    def __init__(self, sessions: Sessions, states: CategoryStates) -> None:
        self.sessions = sessions
        self.states = states

    def change_state(self, actor: str, project_uid: str, session_uid: str, *, datatype: str,
                     status: str) -> tuple[dict[str, Any], bool]:
        """(data_management, changed). Setting the status a category has already changes nothing."""
        session = self.sessions.session(project_uid, session_uid)
        current = check_mark(session, datatype, status)
        if current == status:
            return session["data_management"], False
        updated = self.states.change(project_uid=project_uid, session_uid=session_uid, datatype=datatype,
                                     expect=current, to=status, actor=actor, by=BY_USER, session_completed=True)
        if updated is None:
            raise conflict(f"{datatype} of {project_uid} {session_uid} changed while this request was made; "
                           f"`livedm ls {project_uid}` shows its state now")
        return updated["data_management"], True
