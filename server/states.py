"""A category's status: the one table of allowed changes and the one function that makes them.

Every change is one conditional update in the store (it names the status it expects, so of two
racing changes one wins), one audit entry naming who or what made it, and — for a status people
see — the state-change hook. No other module writes a category's status.
"""

from __future__ import annotations

import logging
from typing import Any

from .audit import Audit
from .hooks import Hooks
from .store import Store

log = logging.getLogger(__name__)

# Who or what makes a change, as the audit log names it.
BY_USER, BY_DELETION, BY_REFRESH, BY_REPAIR = "user", "deletion", "refresh", "repair"

# The statuses the hook runs for (SPEC §4): not the transitional deleting and calculating.
VISIBLE = ("active", "archiving", "archived", "deleted", "missing")

# status: the statuses it may change to.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "active": ("archiving", "archived", "deleted", "deleting", "missing", "calculating"),
    "archiving": ("active", "archived", "deleted", "deleting", "missing", "calculating"),
    "archived": ("active", "archiving", "deleted", "deleting", "missing", "calculating"),
    "deleted": ("active", "archiving", "archived", "deleting", "calculating"),
    "missing": ("active", "archiving", "archived", "deleted", "deleting", "calculating"),
    "deleting": ("active", "archiving", "archived", "deleted", "missing"),
    "calculating": ("active", "archiving", "archived", "deleted", "missing"),
}

_UNSET = object()


class IllegalTransition(ValueError):
    """A change the table does not allow: a bug in the caller, never the user's input."""


def markdown_table() -> str:
    """The README's table of allowed changes (a test keeps them equal)."""
    statuses = list(TRANSITIONS)
    lines = ["| from \\ to | " + " | ".join(statuses) + " |", "|---" * (len(statuses) + 1) + "|"]
    for source, targets in TRANSITIONS.items():
        cells = ["yes" if target in targets else "" for target in statuses]
        lines.append(f"| **{source}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class CategoryStates:
    def __init__(self, store: Store, audit: Audit, hooks: Hooks) -> None:
        self.store = store
        self.audit = audit
        self.hooks = hooks

    def change_quietly(self, *, project_uid: str, session_uid: str, changes: dict[str, tuple[str, str, str | None]],
                       actor: str) -> dict[str, Any] | None:
        """A refresh's round trip through calculating for several categories in one write, all or none:
        {datatype: (expect, to, prev_status)}; neither audited nor hooked. None: one was no longer `expect`
        (the caller then changes them one by one)."""
        for expect, to, _ in changes.values():
            if to not in TRANSITIONS.get(expect, ()):
                raise IllegalTransition(f"a category cannot go from {expect} to {to}")
        if not changes:
            return None
        items = [(dt, (expect, {"status": to, "prev_status": prev, "status_changed_by": actor}))
                 for dt, (expect, to, prev) in changes.items()]
        first, (expect_status, fields) = items[0]
        return self.store.set_category_status(project_uid, session_uid, first, expect_status=expect_status,
                                              fields=fields, also=dict(items[1:]))

    def change(self, *, project_uid: str, session_uid: str, datatype: str, expect: str, to: str, actor: str,
               by: str, prev_status: Any = _UNSET, job_id: Any = _UNSET, expect_job_id: Any = _UNSET,
               note: Any = _UNSET, note_job_id: Any = _UNSET, session_completed: bool = False, quiet: bool = False,
               **details: Any) -> dict[str, Any] | None:
        """Change the category from `expect` to `to`; the session after it, or None when the category
        was no longer `expect` (or the job, or the session's completion, no longer as expected).

        prev_status defaults to `expect` (the status a transitional one returns to); job_id, note (what went
        wrong, for the table) and note_job_id (the job it went wrong in) are set when given; expect_job_id
        and session_completed narrow the condition. `quiet`: a refresh's round trip through calculating back
        to the status it had is neither audited nor hooked."""
        if to not in TRANSITIONS.get(expect, ()):
            raise IllegalTransition(f"a category cannot go from {expect} to {to}")
        fields: dict[str, Any] = {"status": to, "prev_status": expect if prev_status is _UNSET else prev_status,
                                  "status_changed_by": actor}
        if job_id is not _UNSET:
            fields["job_id"] = job_id
        if note is not _UNSET:
            fields["note"] = note
        if note_job_id is not _UNSET:
            fields["note_job_id"] = note_job_id
        updated = self.store.set_category_status(
            project_uid, session_uid, datatype, expect_status=expect, fields=fields,
            expect_job_id=None if expect_job_id is _UNSET else expect_job_id,
            check_job_id=expect_job_id is not _UNSET, session_completed=session_completed)
        if updated is None or quiet:
            return updated
        expect = details.pop("was", expect)  # the status shown before a refresh's calculating
        self.audit.record(actor, "state_changed", by=by, project_uid=project_uid, session_uid=session_uid,
                          datatype=datatype, old_status=expect, status=to, **details)
        log.info("%s (%s): %s %s %s %s -> %s", actor, by, project_uid, session_uid, datatype, expect, to)
        if to in VISIBLE:
            self.hooks.on_state_change(actor, project_uid, session_uid, datatype=datatype, status=to)
        return updated
