"""The append-only audit log: who changed which category to what, what was deleted, who may do what."""

from __future__ import annotations

from typing import Any

from .domain import INTERNAL_ACTORS, check_project_uid, check_session_uid, now_iso
from .errors import invalid_params
from .store import Store

MAX_ENTRIES = 1000

# Every action the log records, with what it means (the README's list is this table).
ACTIONS: dict[str, str] = {
    "state_changed": "a category's status changed: old_status, status, by (user, deletion, refresh, repair)",
    "deletion_requested": "a deletion was confirmed and queued: job_id, files, whole_category, user_id",
    "deleted": "a deletion job ended: files, bytes_freed, already_gone, refused, failed, status",
    "deletion_abandoned": "a deletion could not go on (roots, directories changed; its job failed): reason",
    "hook_ran": "the state-change hook ran: status, job_id, exit_status, timed_out",
    "user_created": "an admin made a user: user, role",
    "token_issued": "an admin issued a token: user",
    "tokens_revoked": "an admin revoked a user's tokens: user, count",
    "permission_changed": "an admin allowed or forbade live data management: user, live_data_management",
    "role_changed": "an admin made a user an admin or a user: user, old_role, role",
    "user_removed": "an admin removed a user and their tokens (their name stays in the log): user, role, "
                    "tokens_revoked",
    "project_discovered": "discovery added a cryoSPARC project: project_uid, project_dir, cryosparc_uid",
    "session_discovered": "discovery added a cryoSPARC Live session: project_uid, session_uid, session_dir",
    "discovery_pass": "a discovery pass ended: added, changed, gone, conflicts, unreadable",
    "admin_token_reset": "livedmd --reset-admin-token made a new admin token",
}


class Audit:
    def __init__(self, store: Store) -> None:
        self.store = store

    def record(self, actor: str, action: str, **details: Any) -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}: add it to audit.ACTIONS (and so to the README)")
        self.store.append_audit({"at": now_iso(), "actor": actor, "action": action, **details})

    def record_many(self, actor: str, action: str, details: list[dict[str, Any]]) -> None:
        """Several entries of one action at once (a discovery pass adding a project's sessions)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}: add it to audit.ACTIONS (and so to the README)")
        at = now_iso()
        self.store.append_audit_many([{"at": at, "actor": actor, "action": action, **d} for d in details])

    def query(self, project_uid: str | None, session_uid: str | None, limit: int) -> list[dict[str, Any]]:
        if not 1 <= limit <= MAX_ENTRIES:
            raise invalid_params(f"limit must be 1-{MAX_ENTRIES}")
        if project_uid is not None:
            check_project_uid(project_uid)
        if session_uid is not None:
            if project_uid is None:
                raise invalid_params("session_uid needs project_uid")
            check_session_uid(session_uid)
        return [labelled(entry) for entry in self.store.find_audit(project_uid=project_uid, session_uid=session_uid,
                                                                   limit=limit)]


def labelled(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry as read: `actor_kind` says whether a person made it ("user") or livedm ("livedm": itself, or a
    hook run with its `hook` account), and `actor_label` says it in words for livedm's own."""
    label = INTERNAL_ACTORS.get(entry.get("actor", ""))
    return {**entry, "actor_kind": "user" if label is None else "livedm", **({"actor_label": label} if label else {})}
