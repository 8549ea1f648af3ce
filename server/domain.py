"""What livedm's words mean: datatypes, statuses and which action is allowed when. Pure, no I/O."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from .errors import conflict, invalid_params

DATATYPES: tuple[str, ...] = ("raw", "micrographs", "thumbnails", "particles", "metadata")

# Who acts besides people: livedm itself (refreshes, deletion jobs, repairs, discovery) and the `hook`
# account whose short-lived, category-scoped tokens hook runs get. Neither is a person: no one signs in as
# them, the user lists leave them out, and no admin may change, remove or give tokens to them.
LIVEDM_ACTOR = "livedm"
HOOK_USER = "hook"
INTERNAL_ACTORS: dict[str, str] = {
    LIVEDM_ACTOR: "livedm itself",
    HOOK_USER: "livedm's hook run",
}
SESSION_STATUSES = ("running", "paused", "completed")
CATEGORY_STATUSES = ("active", "archiving", "archived", "deleted", "deleting", "missing", "calculating")
TRANSIENT_STATUSES = ("deleting", "calculating")
MARKABLE_STATUSES = ("active", "archiving", "archived", "deleted")

# A category whose files are all gone becomes "missing" from these, and returns when they come back.
MISSING_FROM = ("active", "archiving", "archived")

# P12, or krios-P12 for a project discovered under a root labelled "krios" (config: discover_roots)
PROJECT_UID_PATTERN = r"(?:[a-z][a-z0-9]{0,15}-)?P[1-9][0-9]{0,8}"
_PROJECT_UID = re.compile(f"^{PROJECT_UID_PATTERN}$")
_SESSION_UID = re.compile(r"^S[1-9][0-9]{0,8}$")


def now_iso() -> str:
    """Timestamps are stored and sent as ISO 8601 UTC strings: sortable, JSON-ready."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_project_uid(uid: str) -> str:
    if not _PROJECT_UID.match(uid):
        raise invalid_params(f"project_uid {uid!r} is not a project uid like 'P3' (or 'krios-P3')")
    return uid


def check_session_uid(uid: str) -> str:
    if not _SESSION_UID.match(uid):
        raise invalid_params(f"session_uid {uid!r} is not a session uid like 'S12'")
    return uid


DISCOVERED = "cryosparc"  # a project's `source` when discovery found it (its uids are cryoSPARC's)

# cryoSPARC's session statuses (v4, v5) → livedm's: category actions need "completed", so a session
# cryoSPARC is still working on (compacting, restoring) counts as running; anything unknown as paused.
CRYOSPARC_SESSION_STATUSES = {"running": "running", "paused": "paused", "completed": "completed",
                              "compacting": "running", "compacted": "completed", "restoring": "running",
                              "restoration_failed": "paused"}


def session_status_from_cryosparc(cryosparc_status: str) -> str:
    return CRYOSPARC_SESSION_STATUSES.get(cryosparc_status, "paused")


def check_datatype(datatype: str) -> str:
    if datatype not in DATATYPES:
        raise invalid_params(f"datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    return datatype


def check_title(title: str) -> str:
    title = title.strip()
    if not title or len(title) > 200:
        raise invalid_params("title must be 1-200 characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in title):
        raise invalid_params("a title is one line of text: no newlines, tabs or other control characters")
    return title


def new_category() -> dict[str, Any]:
    return {"status": "active", "prev_status": None, "size": 0, "file_count": 0, "updated_at": None}


def new_data_management() -> dict[str, dict[str, Any]]:
    return {datatype: new_category() for datatype in DATATYPES}


def datatype_size(session: dict[str, Any], datatype: str) -> int:
    return int(session["data_management"][check_datatype(datatype)]["size"])


def check_mark(session: dict[str, Any], datatype: str, status: str) -> str:
    """May this category be marked `status` now? Its current status, or why not (as cryoSPARC rules)."""
    check_datatype(datatype)
    if status not in MARKABLE_STATUSES:
        raise invalid_params(f"status {status!r} is not one of {', '.join(MARKABLE_STATUSES)}")
    if datatype == "thumbnails":
        raise invalid_params("thumbnails cannot be marked (as in cryoSPARC): they go with the micrographs")
    if session["status"] != "completed":
        raise conflict(f"session {session['project_uid']} {session['uid']} is {session['status']}; category "
                       f"actions need a completed session (`livedm session complete {session['project_uid']} "
                       f"{session['uid']}`)")
    current = session["data_management"][datatype]["status"]
    if current in TRANSIENT_STATUSES and current != status:
        raise conflict(f"{datatype} of {session['project_uid']} {session['uid']} is {current}; wait for that "
                       "to finish (`livedm jobs` shows it)")
    return current


def session_status_after(current: str, action: str) -> str:
    """The status a session moves to on start/pause/complete; a completed session stays completed."""
    target = {"start": "running", "pause": "paused", "complete": "completed"}[action]
    if current == "completed":
        raise conflict(f"the session is already completed; it cannot be {target} again")
    if current == target:
        raise conflict(f"the session is already {target}")
    return target


def status_after_measure(category: dict[str, Any], registered: int, present: int) -> tuple[str, str | None]:
    """(status, prev_status) of a category after its files were measured on disk."""
    status, prev = category["status"], category.get("prev_status")
    if status in MISSING_FROM and registered > 0 and present == 0:
        return "missing", status
    if status == "missing" and (present > 0 or registered == 0):  # back, or nothing of it was ever lost
        return prev if prev in MISSING_FROM else "active", None
    return status, prev
