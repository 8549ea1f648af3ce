"""What a restored document may hold: for each collection, the fields livedm itself writes and the check
on each. Strict where a value steers deletion, execution or sign-in; extra fields are tolerated (as plain
JSON values) only in sessions, categories, finished jobs and audit entries, which nothing that deletes or
runs reads beyond the fields checked here."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bson.objectid import ObjectId

from . import files
from .domain import CATEGORY_STATUSES, DATATYPES, DISCOVERED, PROJECT_UID_PATTERN, SESSION_STATUSES
from .errors import ApiError
from .jobs import KINDS, STATES
from .users import ROLES

PROJECT_DIRS_COUNTER = "project_dirs"  # the facility's map of project dirs, kept among the counters

Check = Callable[[Any], bool]

_PROJECT_UID = re.compile(PROJECT_UID_PATTERN)
_SESSION_UID = re.compile(r"S[1-9][0-9]{0,8}")
_SESSION_KEY = re.compile(rf"({PROJECT_UID_PATTERN})/(S[1-9][0-9]{{0,8}})")
_JOB_ID = re.compile(r"J[1-9][0-9]{0,11}")
_USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,63}")  # what users.create_user accepts
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_COUNTER = re.compile(r"[a-z_]{1,32}(:[A-Za-z0-9_-]{1,32})?")  # projects, jobs, sessions:P3, and later ones
_ACTION = re.compile(r"[a-z_]{1,64}")
_INSTANCE = re.compile(r"[a-z][a-z0-9]{0,15}")
_DIR_ID = re.compile(r"[0-9]{1,20}:[0-9]{1,20}")  # files.dir_id: device and inode
_MAX_PATH_CHARS = 4096
_MAX_PLAIN_DEPTH = 32


@dataclass(frozen=True)
class Field:
    required: bool
    check: Check
    what: str


def _is_str(value: Any) -> bool:
    """A string, not one of bson's str subclasses (Code is JavaScript the database could run)."""
    return type(value) is str


def _matches(pattern: re.Pattern[str]) -> Check:
    return lambda value: _is_str(value) and pattern.fullmatch(value) is not None


def _one_of(choices: tuple[str, ...]) -> Check:
    return lambda value: _is_str(value) and value in choices


def _or_none(check: Check) -> Check:
    return lambda value: value is None or check(value)


def _list_of(check: Check) -> Check:
    return lambda value: isinstance(value, list) and all(check(item) for item in value)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def count(value: Any) -> bool:
    return is_int(value) and value >= 0


def _number(value: Any) -> bool:
    return is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _text(value: Any) -> bool:
    return _is_str(value) and len(value) <= 10_000


def _title(value: Any) -> bool:
    return _is_str(value) and len(value.strip()) > 0 and len(value) <= 200


def _object_id(value: Any) -> bool:
    return isinstance(value, ObjectId)


def rel_path(value: Any) -> bool:
    """A registry path: relative to the project dir, no '..', '.' or empty part, no NUL (bytes: a
    non-UTF-8 file name)."""
    if type(value) is bytes:  # BSON binary subtype 0, as store.py keeps a non-UTF-8 name
        value = os.fsdecode(value)
    if not _is_str(value) or not 0 < len(value) <= _MAX_PATH_CHARS or "\x00" in value:
        return False
    return not value.startswith("/") and all(part not in ("", ".", "..") for part in value.split("/"))


def abs_path(value: Any) -> bool:
    return (_is_str(value) and 0 < len(value) <= _MAX_PATH_CHARS and "\x00" not in value
            and os.path.isabs(value) and os.path.normpath(value) == value)


def session_dir_shape(value: Any) -> bool:
    """files.check_session_dir's rule, and already in its normal form."""
    try:
        return _is_str(value) and files.check_session_dir(value) == value and rel_path(value)
    except ApiError:
        return False


def _dir_pin(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"dev", "ino"} and all(count(v) for v in value.values())


def _session_dirs(value: Any) -> bool:
    return isinstance(value, dict) and all(
        _SESSION_UID.fullmatch(k) and session_dir_shape(v) for k, v in value.items())


def _scope(value: Any) -> bool:
    return (isinstance(value, dict) and set(value) == {"project_uid", "session_uid", "datatype"}
            and _matches(_PROJECT_UID)(value["project_uid"]) and _matches(_SESSION_UID)(value["session_uid"])
            and _one_of(DATATYPES)(value["datatype"]))


def _hook_run(value: Any) -> bool:
    """A category's last hook run, as hooks.py records it (more fields, plain, are tolerated)."""
    return (isinstance(value, dict) and plain(value) and _matches(_JOB_ID)(value.get("job_id"))
            and count(value.get("job_n")) and value.get("state") in ("done", "failed")
            and value.get("status") in CATEGORY_STATUSES and _or_none(_text)(value.get("error"))
            and _matches(_TIMESTAMP)(value.get("finished_at")))


def plain(value: Any, depth: int = 0) -> bool:
    """A JSON value as livedm stores it: no BSON-only types, no '$' or '.' in keys, not nested deeper
    than _MAX_PLAIN_DEPTH. What a tolerated extra field may hold."""
    if value is None or _is_str(value) or isinstance(value, bool) or _number(value):
        return True
    if depth >= _MAX_PLAIN_DEPTH:
        return False
    if isinstance(value, list):
        return all(plain(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and k and not k.startswith("$") and "." not in k and plain(v, depth + 1)
                   for k, v in value.items())
    return False


def _seconds(value: Any) -> bool:
    return _number(value) and value >= 0


def _totals(value: Any) -> bool:
    """A project's totals as store.py keeps them; their figures are summed again at the restore."""
    return (isinstance(value, dict) and set(value) == {"session_count", "sessions_by_status", "data_management"}
            and count(value["session_count"]) and isinstance(value["sessions_by_status"], dict)
            and all(k in SESSION_STATUSES and count(n) for k, n in value["sessions_by_status"].items())
            and isinstance(value["data_management"], dict) and set(value["data_management"]) <= set(DATATYPES)
            and all(isinstance(c, dict) and set(c) == {"size", "file_count"} and count(c["size"])
                    and count(c["file_count"]) for c in value["data_management"].values()))


_TS = Field(True, _matches(_TIMESTAMP), "an ISO 8601 time like '2026-01-31T10:00:00.000Z'")
_TS_OR_NONE = Field(True, _or_none(_matches(_TIMESTAMP)), "an ISO 8601 time or null")
_TS_OR_NONE_OPTIONAL = Field(False, _or_none(_matches(_TIMESTAMP)), "an ISO 8601 time or null")
_PROJECT = Field(True, _matches(_PROJECT_UID), "a project uid like 'P3'")
_SESSION = Field(True, _matches(_SESSION_UID), "a session uid like 'S12'")
_DATATYPE = Field(True, _one_of(DATATYPES), f"one of {', '.join(DATATYPES)}")
_USER = Field(True, _matches(_USER_NAME), "a user name")

PROJECT_FIELDS = {
    "_id": _PROJECT, "uid": _PROJECT,
    "title": Field(True, _title, "a title of 1-200 characters"),
    "project_dir": Field(True, abs_path, "an absolute, normalised path"),
    "created_at": _TS,
    "dir_pin": Field(False, _or_none(_dir_pin), '{"dev": int, "ino": int} or null'),
    "session_dirs": Field(False, _or_none(_session_dirs), "{session uid: relative session dir}"),
    "dirs_version": Field(False, _or_none(count), "an integer >= 0 or null"),
    # a project discovery found (source "cryosparc"): what cryoSPARC's project.json said, and when seen
    "source": Field(False, _one_of((DISCOVERED,)), repr(DISCOVERED)),
    "instance": Field(False, lambda v: _is_str(v) and (v == "" or _INSTANCE.fullmatch(v) is not None),
                      "an instance label or ''"),
    "cryosparc_uid": Field(False, _matches(re.compile(r"P[1-9][0-9]{0,8}")), "a cryoSPARC project uid like 'P12'"),
    "owner_user_id": Field(False, _or_none(_text), "a cryoSPARC user id or null"),
    "cryosparc_created_at": _TS_OR_NONE_OPTIONAL,
    "archived": Field(False, lambda v: isinstance(v, bool), "true or false"),
    "detached": Field(False, lambda v: isinstance(v, bool), "true or false"),
    "discover_root": Field(False, abs_path, "an absolute, normalised path"),
    "fingerprint": Field(False, _or_none(_text), "a text or null"),
    "discovered_at": _TS_OR_NONE_OPTIONAL, "seen_at": _TS_OR_NONE_OPTIONAL, "gone_at": _TS_OR_NONE_OPTIONAL,
    "gone_reason": Field(False, _or_none(_text), "a text or null"),
    # the totals store.py keeps as sessions change (a restore sums them again from the sessions restored)
    "totals": Field(False, _totals, '{"session_count", "sessions_by_status", "data_management"}'),
    "totals_version": Field(False, count, "an integer >= 0"),
    "sessions_version": Field(False, count, "an integer >= 0"),
    "changed_s": Field(False, _seconds, "seconds since the epoch"),
}
PROJECT_DIRS_FIELDS = {  # the counters document store.reserve_project_dirs keeps
    "_id": Field(True, _one_of((PROJECT_DIRS_COUNTER,)), repr(PROJECT_DIRS_COUNTER)),
    "version": Field(True, lambda v: count(v) and v >= 1, "an integer >= 1"),
    "dirs": Field(True, lambda v: isinstance(v, dict) and all(_PROJECT_UID.fullmatch(k) and abs_path(d)
                                                              for k, d in v.items()),
                  "{project uid: absolute, normalised project dir}"),
}
SESSION_FIELDS = {
    "_id": Field(True, _matches(_SESSION_KEY), "'<project uid>/<session uid>'"),
    "project_uid": _PROJECT, "uid": _SESSION,
    "title": Field(True, _title, "a title of 1-200 characters"),
    "status": Field(True, _one_of(SESSION_STATUSES), f"one of {', '.join(SESSION_STATUSES)}"),
    "session_dir": Field(True, session_dir_shape, "a normalised relative path inside the project dir, without '..'"),
    "created_at": _TS, "started_at": _TS_OR_NONE, "completed_at": _TS_OR_NONE,
    "paused_at": Field(True, _list_of(_matches(_TIMESTAMP)), "a list of ISO 8601 times"),
    "data_management": Field(True, lambda v: isinstance(v, dict), "an object with one entry per datatype"),
    "scan_gen": Field(False, _or_none(_matches(_HEX32)), "32 hex digits or null"),
    "scan_digest": Field(False, _or_none(_matches(_HEX64)), "64 hex digits or null"),
    "dir_id": Field(False, _or_none(_matches(_DIR_ID)), "'<device>:<inode>' or null"),
    "raw_dirs": Field(False, _or_none(_list_of(_matches(_DIR_ID))), "a list of '<device>:<inode>' or null"),
    "changed_s": Field(False, _seconds, "seconds since the epoch"),
}
CATEGORY_FIELDS = {
    "status": Field(True, _one_of(CATEGORY_STATUSES), f"one of {', '.join(CATEGORY_STATUSES)}"),
    "prev_status": Field(True, _or_none(_one_of(CATEGORY_STATUSES)), "a category status or null"),
    "size": Field(True, count, "bytes, an integer >= 0"),
    "file_count": Field(True, count, "an integer >= 0"),
    "updated_at": _TS_OR_NONE,
    "job_id": Field(False, _or_none(_matches(_JOB_ID)), "a job id like 'J12' or null"),
    "status_changed_at": Field(False, _or_none(_matches(_TIMESTAMP)), "an ISO 8601 time or null"),
    "status_changed_by": Field(False, _or_none(_text), "a name or null"),
    # what went wrong, for the table: a deletion's note and its job; the last hook run (hooks.py)
    "note": Field(False, _or_none(_text), "a text or null"),
    "note_job_id": Field(False, _or_none(_matches(_JOB_ID)), "a job id like 'J12' or null"),
    "hook": Field(False, _hook_run, '{"job_id", "job_n", "status", "state" (done or failed), '
                  '"error", "finished_at", ...}'),
}
REGISTRY_FIELDS = {
    "_id": Field(True, _object_id, "an ObjectId"),
    "key": Field(True, _matches(_SESSION_KEY), "'<project uid>/<session uid>'"),
    "source": Field(True, _one_of(("scan", "api")), "scan or api"),
    "datatype": _DATATYPE,
    "paths": Field(True, _list_of(rel_path), "a list of paths relative to the project dir, without '..'"),
    "gen": Field(False, _matches(_HEX32), "32 hex digits"),
}
JOB_LIST_FIELDS = {  # a deletion job's confirmed file list (store.save_job_paths), checked though never restored
    "_id": Field(True, _object_id, "an ObjectId"),
    "key": Field(True, _matches(_JOB_ID), "a job id like 'J12'"),
    "source": Field(True, _one_of(("job",)), "job"),
    "datatype": Field(True, _one_of(("job",)), "job"),
    "paths": Field(True, _list_of(rel_path), "a list of paths relative to the project dir, without '..'"),
}
COUNTER_FIELDS = {
    "_id": Field(True, _matches(_COUNTER), "a counter name like 'projects' or 'sessions:P3'"),
    "n": Field(True, count, "an integer >= 0"),
}
USER_FIELDS = {
    "_id": _USER, "name": _USER,
    "role": Field(True, _one_of(ROLES), f"one of {', '.join(ROLES)}"),
    "live_data_management": Field(True, lambda v: isinstance(v, bool), "true or false"),
    "created_at": _TS_OR_NONE,
}
TOKEN_FIELDS = {
    "_id": Field(True, _matches(_HEX64), "a SHA-256 token hash: 64 lower-case hex digits"),
    "user": _USER,
    "created_at": _TS,
    "expires_at": Field(False, _or_none(_number), "a time in seconds or null"),
    "scope": Field(False, _or_none(_scope), 'null or {"project_uid", "session_uid", "datatype"}'),
}
JOB_ENVELOPE_FIELDS = {
    "_id": Field(True, _matches(_JOB_ID), "a job id like 'J12'"),
    "id": Field(True, _matches(_JOB_ID), "a job id like 'J12'"),
    "kind": Field(True, _one_of(KINDS), f"one of {', '.join(KINDS)}"),
    "state": Field(True, _one_of(STATES), f"one of {', '.join(STATES)}"),
}
JOB_FIELDS = {
    **JOB_ENVELOPE_FIELDS,
    "params": Field(True, lambda v: isinstance(v, dict), "an object"),
    "created_by": _USER,
    "created_at": _TS,
    "attempts": Field(False, count, "an integer >= 0"),
    "owner": Field(False, _or_none(_text), "a worker name or null"),
    "lease_until": Field(False, _number, "a time in seconds"),
    "not_before": Field(False, _number, "a time in seconds"),
    "created_ts": Field(False, _number, "a time in seconds"),
    "progress": Field(False, lambda v: isinstance(v, dict) and plain(v), "an object"),
    "result": Field(False, plain, "a JSON value"),
    "error": Field(False, _or_none(_text), "a message or null"),
    "started_at": Field(False, _or_none(_matches(_TIMESTAMP)), "an ISO 8601 time or null"),
    "finished_at": Field(False, _or_none(_matches(_TIMESTAMP)), "an ISO 8601 time or null"),
}
JOB_PARAMS = {
    "delete": {
        "project_uid": _PROJECT, "session_uid": _SESSION,
        "datatype": Field(True, _one_of(tuple(d for d in DATATYPES if d != "raw")), "a deletable datatype (not raw)"),
        "user_id": _USER,
        "paths": Field(False, _or_none(_list_of(rel_path)), "null or paths relative to the project dir, without '..'"),
        "whole_category": Field(False, lambda v: isinstance(v, bool), "true or false"),
        "file_count": Field(False, count, "an integer >= 0"),
        "digest": Field(False, _matches(_HEX64), "64 hex digits"),
    },
    "hook": {
        "project_uid": _PROJECT, "session_uid": _SESSION, "datatype": _DATATYPE,
        "status": Field(True, _one_of(CATEGORY_STATUSES), "a category status"),
        "script": Field(False, abs_path, "an absolute path"),
        "log_path": Field(False, abs_path, "an absolute path"),
    },
    "refresh_sizes": {"project_uid": _PROJECT, "session_uid": Field(False, _or_none(_matches(_SESSION_UID)),
                                                                    "a session uid like 'S12' or null"),
                      "full": Field(False, lambda v: isinstance(v, bool), "true or false")},
    "discover": {},
    "refresh_due": {},
}
AUDIT_FIELDS = {
    "_id": Field(True, _object_id, "an ObjectId"),
    "at": _TS,
    "actor": _USER,
    "action": Field(True, _matches(_ACTION), "an action name like 'state_changed'"),
}


def fields_problem(doc: dict[str, Any], fields: dict[str, Field], extras: bool) -> str | None:
    """What is wrong with a document's fields, or None. `extras`: unknown fields are tolerated (plain)."""
    for name, spec in fields.items():
        if name not in doc:
            if spec.required:
                return f"it has no {name!r}"
        elif not spec.check(doc[name]):
            return f"{name!r} must be {spec.what}"
    unknown = [name for name in doc if name not in fields]
    if unknown and not extras:
        return f"it has fields livedm does not write ({', '.join(map(repr, unknown[:5]))})"
    odd = next((name for name in unknown if not plain(doc[name])), None)
    return None if odd is None else f"{odd!r} holds a value livedm never stores"

