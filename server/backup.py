"""Backup of livedm's own database, whichever store it runs on, as NDJSON in MongoDB Extended JSON (types
survive the round trip): writing the lines, and reading a checked file back. Served at GET /admin/backup
to admins (routes.py); a restore checks the file first (backup_check.py, restore.py).

Format 2: a header line `{"livedm_backup": 2, ...}`, one `{"collection": ..., "doc": ...}` line per document
with the collections in the order of store.COLLECTIONS, and an end line `{"livedm_backup_end": {"counts":
{collection: documents}}}` that proves the file is whole. Queued and running jobs, deletion file lists and
the hook user's tokens are never restored (`kept`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bson import json_util

from . import __version__
from .domain import CATEGORY_STATUSES, HOOK_USER, TRANSIENT_STATUSES, now_iso
from .errors import INVALID_REQUEST, ApiError
from .store import COLLECTIONS, Store

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
HEADER_KEY = "livedm_backup"
END_KEY = "livedm_backup_end"
UNVERIFIED_VERSIONS = (1,)  # no end line: restored only when the admin vouches the file is whole
_JSON_OPTIONS = json_util.CANONICAL_JSON_OPTIONS

# the hook user's tokens are a hook run's, never an admin's, and never restored
LEFT_OUT = {"jobs": "queued_or_running_jobs", "registry": "job_file_lists", "tokens": "hook_tokens"}
KEPT_JOB_STATES = ("done", "failed")
STABLE_STATUSES = tuple(s for s in CATEGORY_STATUSES if s not in TRANSIENT_STATUSES)


# --- writing ---------------------------------------------------------------------------------------


def _line(entry: dict[str, Any]) -> bytes:
    return (json_util.dumps(entry, json_options=_JSON_OPTIONS) + "\n").encode()


def _plain_line(entry: dict[str, Any]) -> bytes:
    """The header and the end line: plain JSON, for any tool (and the client) to read."""
    return (json.dumps(entry) + "\n").encode()


def backup_lines(store: Store) -> Iterator[bytes]:
    """The backup, line by line; the end line comes only after every document was read."""
    yield _plain_line({HEADER_KEY: FORMAT_VERSION, "livedm_version": __version__, "created_at": now_iso()})
    counts: dict[str, int] = {}
    for collection in COLLECTIONS:
        counts[collection] = 0
        for doc in store.dump(collection):
            counts[collection] += 1
            yield _line({"collection": collection, "doc": doc})
    yield _plain_line({END_KEY: {"counts": counts}})


# --- reading ---------------------------------------------------------------------------------------


def settle_transient(session: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A category `deleting` or `calculating` names a job that a restore never brings back: it goes back
    to its previous status (active if that was transient too). The session, and how many were settled."""
    settled = 0
    data_management = dict(session["data_management"])
    for datatype, category in data_management.items():
        if category["status"] in TRANSIENT_STATUSES:
            back = category.get("prev_status") if category.get("prev_status") in STABLE_STATUSES else "active"
            data_management[datatype] = {**category, "status": back, "prev_status": None, "job_id": None}
            settled += 1
    return ({**session, "data_management": data_management}, settled) if settled else (session, 0)


def kept(collection: str, doc: dict[str, Any]) -> bool:
    """Queued and running jobs are never restored: only finished ones, as history. Nor are the file lists
    deletion jobs work from (registry source "job"): no restored job runs again, and a list left behind
    would join the next job that is given its id. Nor is any token of the hook user: a hook run's token
    lives as long as the run, and no restored run goes on."""
    if collection == "jobs":
        return doc.get("state") in KEPT_JOB_STATES
    if collection == "tokens":
        return doc.get("user") != HOOK_USER
    return collection != "registry" or doc.get("source") != "job"


def reject(line_no: int, message: str) -> ApiError:
    return ApiError(INVALID_REQUEST, f"backup line {line_no}: {message}; nothing was restored")


def parse(raw: bytes, line_no: int) -> Any:
    try:
        return json_util.loads(raw)
    except Exception as exc:  # json_util raises many types (ValueError, TypeError, bson errors) on bad input
        raise reject(line_no, f"not valid Extended JSON ({type(exc).__name__})") from None


def documents(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The (collection, document) pairs of a checked backup file, as they will be restored."""
    with open(path, "rb") as backup_file:
        lines = (raw for raw in backup_file if raw.strip())
        next(lines, None)  # the header
        for number, raw in enumerate(lines, 2):
            entry = parse(raw, number)
            if END_KEY in entry:
                return
            collection, doc = entry["collection"], entry["doc"]
            if not kept(collection, doc):
                continue
            yield collection, settle_transient(doc)[0] if collection == "sessions" else doc
