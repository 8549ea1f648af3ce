"""Backup and restore of livedm's own database, whichever store it runs on, as NDJSON in MongoDB Extended
JSON (types survive the round trip). Served at GET /admin/backup and POST /admin/restore to admins.

Format 2: a header line `{"livedm_backup": 2, ...}`, one `{"collection": ..., "doc": ...}` line per document
with the collections in the order of store.COLLECTIONS, and an end line `{"livedm_backup_end": {"counts":
{collection: documents}}}` that proves the file is whole.

A restore trusts nothing in the file (SPEC §5: "a restored backup never brings back queued work"): the
upload streams to a private file in the state dir and every document is checked against its collection's
schema as it arrives, and against the rules livedm keeps when it writes (a registered file belongs to one
session; a project's map of session dirs names its sessions); only then is the new database loaded beside
the live one (store: staging collections) and switched in. Any refusal or failure before the switch
leaves the database as it was. Queued and running jobs, deletion file lists and the hook user's tokens
are left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import bson
from aiohttp import web
from bson import json_util
from bson.objectid import ObjectId

from . import __version__, files
from .config import Config
from .domain import CATEGORY_STATUSES, DATATYPES, TRANSIENT_STATUSES, now_iso
from .errors import CONFLICT, FORBIDDEN, INTERNAL_ERROR, INVALID_REQUEST, UNAUTHENTICATED, ApiError
from .jobs import KINDS, STATES
from .rpc import error_object
from .store import COLLECTIONS, Store, StoreUnavailable
from .users import ROLES

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
HEADER_KEY = "livedm_backup"
END_KEY = "livedm_backup_end"
UNVERIFIED_VERSIONS = (1,)  # no end line: restored only when the admin vouches the file is whole
MAX_LINE_BYTES = 64 << 20  # one document is at most 16 MiB of BSON; its Extended JSON may be a few times that
MAX_DOC_BYTES = 16 << 20
CHUNK_BYTES = 1 << 20
UPLOAD_IDLE_S = 120.0
BATCH_DOCS = 1000
FREE_SPACE_MARGIN_BYTES = 64 << 20
UPLOAD_PREFIX = ".restore-upload-"
BUSY = "jobs are running; restore when the queue is idle (livedm jobs --state running); nothing was restored"
_JSON_OPTIONS = json_util.CANONICAL_JSON_OPTIONS

HOOK_USER = "hook"  # hooks.HOOK_USER: its tokens are a hook run's, never an admin's, and never restored
DEFAULT_RAW_DIRS = ("import_movies",)  # the layout setting's raw dirs by default; a restore passes its own
PROJECT_DIRS_COUNTER = "project_dirs"  # the facility's map of project dirs, kept among the counters
LEFT_OUT = {"jobs": "queued_or_running_jobs", "registry": "job_file_lists", "tokens": "hook_tokens"}
SESSION_STATUSES = ("running", "paused", "completed")
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


# --- the schema ------------------------------------------------------------------------------------
# What livedm itself writes (service.py, store.py, users.py, auth.py, jobs.py, audit.py, deletion.py,
# categories.py, hooks.py). Strict where a value steers deletion, execution or sign-in; extra fields
# are tolerated (as plain JSON values) only in sessions, categories, finished jobs and audit entries,
# which nothing that deletes or runs reads beyond the fields checked here.

Check = Callable[[Any], bool]

_PROJECT_UID = re.compile(r"P[1-9][0-9]{0,8}")
_SESSION_UID = re.compile(r"S[1-9][0-9]{0,8}")
_SESSION_KEY = re.compile(r"(P[1-9][0-9]{0,8})/(S[1-9][0-9]{0,8})")
_JOB_ID = re.compile(r"J[1-9][0-9]{0,11}")
_USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,63}")  # what users.create_user accepts
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_COUNTER = re.compile(r"[a-z_]{1,32}(:[A-Za-z0-9_]{1,32})?")  # projects, jobs, sessions:P3, and later ones
_ACTION = re.compile(r"[a-z_]{1,64}")
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


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
    return isinstance(value, dict) and set(value) == {"dev", "ino"} and all(_count(v) for v in value.values())


def _session_dirs(value: Any) -> bool:
    return isinstance(value, dict) and all(
        _SESSION_UID.fullmatch(k) and session_dir_shape(v) for k, v in value.items())


def _scope(value: Any) -> bool:
    return (isinstance(value, dict) and set(value) == {"project_uid", "session_uid", "datatype"}
            and _matches(_PROJECT_UID)(value["project_uid"]) and _matches(_SESSION_UID)(value["session_uid"])
            and _one_of(DATATYPES)(value["datatype"]))


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


_TS = Field(True, _matches(_TIMESTAMP), "an ISO 8601 time like '2026-01-31T10:00:00.000Z'")
_TS_OR_NONE = Field(True, _or_none(_matches(_TIMESTAMP)), "an ISO 8601 time or null")
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
    "dirs_version": Field(False, _or_none(_count), "an integer >= 0 or null"),
}
PROJECT_DIRS_FIELDS = {  # the counters document store.reserve_project_dirs keeps
    "_id": Field(True, _one_of((PROJECT_DIRS_COUNTER,)), repr(PROJECT_DIRS_COUNTER)),
    "version": Field(True, lambda v: _count(v) and v >= 1, "an integer >= 1"),
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
}
CATEGORY_FIELDS = {
    "status": Field(True, _one_of(CATEGORY_STATUSES), f"one of {', '.join(CATEGORY_STATUSES)}"),
    "prev_status": Field(True, _or_none(_one_of(CATEGORY_STATUSES)), "a category status or null"),
    "size": Field(True, _count, "bytes, an integer >= 0"),
    "file_count": Field(True, _count, "an integer >= 0"),
    "updated_at": _TS_OR_NONE,
    "job_id": Field(False, _or_none(_matches(_JOB_ID)), "a job id like 'J12' or null"),
    "status_changed_at": Field(False, _or_none(_matches(_TIMESTAMP)), "an ISO 8601 time or null"),
    "status_changed_by": Field(False, _or_none(_text), "a name or null"),
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
    "n": Field(True, _count, "an integer >= 0"),
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
    "attempts": Field(False, _count, "an integer >= 0"),
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
        "file_count": Field(False, _count, "an integer >= 0"),
        "digest": Field(False, _matches(_HEX64), "64 hex digits"),
    },
    "hook": {
        "project_uid": _PROJECT, "session_uid": _SESSION, "datatype": _DATATYPE,
        "status": Field(True, _one_of(CATEGORY_STATUSES), "a category status"),
        "script": Field(False, abs_path, "an absolute path"),
        "log_path": Field(False, abs_path, "an absolute path"),
    },
    "refresh_sizes": {"project_uid": _PROJECT},
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


def _reject(line_no: int, message: str) -> ApiError:
    return ApiError(INVALID_REQUEST, f"backup line {line_no}: {message}; nothing was restored")


def _parse(raw: bytes, line_no: int) -> Any:
    try:
        return json_util.loads(raw)
    except Exception as exc:  # json_util raises many types (ValueError, TypeError, bson errors) on bad input
        raise _reject(line_no, f"not valid Extended JSON ({type(exc).__name__})") from None


def _ancestors(path: str) -> list[str]:
    """'a/b/c' -> ['a', 'a/b']: the directories a relative path lies in."""
    parts = path.split("/")
    return ["/".join(parts[:end]) for end in range(1, len(parts))]


def resolved_session_dir(real_project: str, session_dir: str) -> str | None:
    """The session dir as sessions.py keeps it in a project's `session_dirs` (symlinks resolved, relative to
    the resolved project dir) as the disk has it now; None if it now leads out of the project."""
    resolved = os.path.relpath(os.path.realpath(os.path.join(real_project, session_dir)), real_project)
    return resolved if session_dir_shape(resolved) else None


@dataclass
class SessionDirs:
    """One project's session dirs (as written and resolved), to tell where a registered path lies."""

    raw_names: tuple[str, ...]
    owners: dict[str, set[str]] = field(default_factory=dict)  # session dir -> session uids
    raw: dict[str, set[str]] = field(default_factory=dict)  # a session's raw layout dir -> session uids
    around: dict[str, set[str]] = field(default_factory=dict)  # a dir holding a session dir -> session uids
    around_raw: set[str] = field(default_factory=set)  # the dirs holding a raw layout dir

    def add(self, session_uid: str, directory: str) -> None:
        self.owners.setdefault(directory, set()).add(session_uid)
        for parent in _ancestors(directory):
            self.around.setdefault(parent, set()).add(session_uid)
        for name in self.raw_names:
            self.raw.setdefault(f"{directory}/{name}", set()).add(session_uid)
            self.around_raw.update(_ancestors(f"{directory}/{name}"))

    def other_session(self, path: str, session_uid: str) -> tuple[str, str] | None:
        """(session uid, how) for a session other than `session_uid` whose dir `path` lies in or holds
        (files.dirs_overlap)."""
        for place in (*_ancestors(path), path):
            other = sorted(self.owners.get(place, set()) - {session_uid})
            if other:
                return other[0], "lies in"
        around = sorted(self.around.get(path, set()) - {session_uid})
        return (around[0], "holds") if around else None

    def raw_dir_of(self, path: str) -> tuple[str, str] | None:
        """(raw layout dir, its session uid) if `path` is, lies in or holds a session's raw layout dir (as
        sessions.register_files, files.dirs_overlap)."""
        for place in (*_ancestors(path), path):
            if place in self.raw:
                return place, sorted(self.raw[place])[0]
        held = sorted(raw for raw in self.raw if raw.startswith(path + "/")) if path in self.around_raw else []
        return (held[0], sorted(self.raw[held[0]])[0]) if held else None


# --- checking a backup as it streams in ------------------------------------------------------------


@dataclass
class BackupChecker:
    """Checks a backup line by line (no document is kept), then as a whole (`finish`)."""

    data_roots: tuple[str, ...]
    guarded: tuple[str, ...]
    unverified_ok: bool = False
    raw_dirs: tuple[str, ...] = DEFAULT_RAW_DIRS  # the layout's raw dirs (import_movies) inside each session
    line_no: int = 0
    version: int | None = None
    end_counts: dict[str, Any] | None = None
    position: int = -1  # index in COLLECTIONS of the collection being read
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLLECTIONS, 0))
    kept_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLLECTIONS, 0))
    ids: dict[str, set[Any]] = field(default_factory=lambda: {c: set() for c in COLLECTIONS})
    project_dirs: dict[str, str] = field(default_factory=dict)  # project uid -> its real path
    project_paths: dict[str, str] = field(default_factory=dict)  # project uid -> its project_dir as written
    dir_maps: dict[str, dict[str, str]] = field(default_factory=dict)  # project uid -> its session_dirs
    project_dir_map: dict[str, str] | None = None  # the counters' project_dirs map, if the backup has one
    session_dirs: dict[str, str] = field(default_factory=dict)  # session key -> session dir
    placed: dict[str, SessionDirs] = field(default_factory=dict)  # project uid -> where its sessions are
    api_owners: dict[tuple[str, str], str] = field(default_factory=dict)  # (project, API path) -> session uid
    max_session: dict[str, int] = field(default_factory=dict)  # project uid -> highest session number
    counters: dict[str, int] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    signed_in_admins: set[str] = field(default_factory=set)
    max_job: int = 0
    left_out: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LEFT_OUT.values(), 0))
    settled_categories: int = 0

    def line(self, raw: bytes) -> None:
        self.line_no += 1
        if not raw.strip():
            return
        entry = _parse(raw, self.line_no)
        if self.version is None:
            self._header(entry)
        elif self.end_counts is not None:
            raise _reject(self.line_no, "there is more after the end line (two backups joined?)")
        elif isinstance(entry, dict) and END_KEY in entry:
            self._end(entry)
        else:
            self._entry(entry)

    def finish(self) -> None:
        """The checks that need the whole file: it is complete, and its documents agree with each other."""
        if self.version is None:
            raise ApiError(INVALID_REQUEST, "the file is empty: not a livedm backup; nothing was restored")
        if self.version not in UNVERIFIED_VERSIONS:
            self._check_complete()
        self._collections_read(len(COLLECTIONS))
        self._check_counters()
        self._check_project_dir_map()
        if not self.signed_in_admins:
            raise ApiError(INVALID_REQUEST, "the backup has no admin with a token: restoring it would lock every "
                                            "admin out; nothing was restored")

    # --- lines ---

    def _header(self, entry: Any) -> None:
        version = entry.get(HEADER_KEY) if isinstance(entry, dict) else None
        if not _is_int(version):
            raise _reject(self.line_no, "not a livedm backup (the first line is not the backup header)")
        if version in UNVERIFIED_VERSIONS and not self.unverified_ok:
            raise _reject(self.line_no, f"this backup is format {version}, written by an older livedm: it has no end "
                                        "line, so a copy cut short cannot be told from a whole one. Make a new backup "
                                        "if you can; if this file is all there is and you know it is whole, restore "
                                        "it with `livedm admin restore FILE --yes --unverified`")
        if version not in (*UNVERIFIED_VERSIONS, FORMAT_VERSION):
            raise _reject(self.line_no, f"backup format {version} is not one this livedmd ({__version__}) reads "
                                        f"(format {FORMAT_VERSION}); restore it with the livedm that wrote it")
        self.version = version

    def _end(self, entry: dict[str, Any]) -> None:
        end = entry[END_KEY]
        counts = end.get("counts") if isinstance(end, dict) else None
        if set(entry) != {END_KEY} or not isinstance(counts, dict) or not all(map(_count, counts.values())):
            raise _reject(self.line_no, "the end line is malformed")
        self.end_counts = counts

    def _entry(self, entry: Any) -> None:
        if (not isinstance(entry, dict) or set(entry) != {"collection", "doc"}
                or entry["collection"] not in COLLECTIONS or not isinstance(entry["doc"], dict)):
            raise _reject(self.line_no, 'not a livedm document (expected {"collection": <one of '
                                        f'{", ".join(COLLECTIONS)}>, "doc": {{...}}}})')
        collection, doc = entry["collection"], entry["doc"]
        position = COLLECTIONS.index(collection)
        if position < self.position:
            raise _reject(self.line_no, f"{collection} comes after {COLLECTIONS[self.position]}; livedm writes "
                                        f"the collections in this order: {', '.join(COLLECTIONS)}")
        self._collections_read(position)
        problem = self._problem(collection, doc)
        if problem is not None:
            raise _reject(self.line_no, f"{collection} document {_name(doc)}: {problem}")
        self.counts[collection] += 1
        if kept(collection, doc):
            self.kept_counts[collection] += 1
        else:
            self.left_out[LEFT_OUT[collection]] += 1

    def _collections_read(self, position: int) -> None:
        """The file has reached COLLECTIONS[position]: the collections before it are whole; check what
        needs all of one."""
        for index in range(max(self.position, 0), position):
            if COLLECTIONS[index] == "sessions":
                self._sessions_read()
        self.position = max(self.position, position)

    def _problem(self, collection: str, doc: dict[str, Any]) -> str | None:
        ident = doc.get("_id")
        try:
            if ident in self.ids[collection]:
                return f"its _id {ident!r} is in the backup twice"
        except TypeError:
            return "its _id is not a plain value"
        check = getattr(self, f"_{collection}")
        problem = check(doc)
        if problem is None and kept(collection, doc):
            problem = _encoding_problem(doc)
        if problem is None:
            self.ids[collection].add(ident)
        return problem

    # --- one method per collection: what is wrong with a document, or None ---

    def _projects(self, doc: dict[str, Any]) -> str | None:
        problem = fields_problem(doc, PROJECT_FIELDS, extras=False)
        if problem is None and doc["_id"] != doc["uid"]:
            problem = "its _id is not its uid"
        problem = problem or _dir_map_problem(doc) or self._project_dir_problem(doc["project_dir"])
        if problem is None:
            self.project_dirs[doc["uid"]] = os.path.realpath(doc["project_dir"])
            self.project_paths[doc["uid"]] = doc["project_dir"]
            if doc.get("session_dirs") is not None:
                self.dir_maps[doc["uid"]] = doc["session_dirs"]
        return problem

    def _project_dir_problem(self, project_dir: str) -> str | None:
        try:
            files.check_project_location(project_dir, self.data_roots, self.guarded)
        except ApiError as exc:
            return f"refused: {exc.message}"
        real = os.path.realpath(project_dir)
        other = next((uid for uid, d in self.project_dirs.items() if files.dirs_overlap(real, d)), None)
        if other is not None:
            return f"its directory is, holds or lies inside project {other}'s; each project needs its own"
        return None

    def _sessions(self, doc: dict[str, Any]) -> str | None:
        problem = fields_problem(doc, SESSION_FIELDS, extras=True)
        if problem is not None:
            return problem
        key = f"{doc['project_uid']}/{doc['uid']}"
        if doc["_id"] != key:
            return f"its _id is not {key!r}"
        if doc["project_uid"] not in self.ids["projects"]:
            return f"its project {doc['project_uid']} is not in the backup"
        problem = _data_management_problem(doc["data_management"])
        if problem is None:
            self.session_dirs[key] = doc["session_dir"]
            number = int(doc["uid"][1:])
            self.max_session[doc["project_uid"]] = max(number, self.max_session.get(doc["project_uid"], 0))
            self.settled_categories += settle_transient(doc)[1]
        return problem

    def _registry(self, doc: dict[str, Any]) -> str | None:
        if doc.get("source") == "job":
            return fields_problem(doc, JOB_LIST_FIELDS, extras=False)
        problem = fields_problem(doc, REGISTRY_FIELDS, extras=False)
        if problem is not None:
            return problem
        if doc["key"] not in self.session_dirs:
            return f"its session {doc['key']} is not in the backup"
        if (doc["source"] == "scan") != ("gen" in doc):
            return "a scanned chunk has a 'gen' and an API one has none"
        if doc["source"] == "scan":
            prefix = self.session_dirs[doc["key"]] + "/"
            outside = next((p for p in doc["paths"] if not os.fsdecode(p).startswith(prefix)), None)
            if outside is not None:
                return f"the scanned path {outside!r} is not inside its session dir {prefix}"
            return None
        return self._api_paths_problem(doc)

    def _api_paths_problem(self, doc: dict[str, Any]) -> str | None:
        """sessions.register_files' rules: a file registered by API lies in no other session's dir, in no
        session's raw layout dir unless it is raw, and belongs to one session."""
        project_uid, session_uid = doc["key"].split("/")
        placed = self.placed.get(project_uid) or SessionDirs(self.raw_dirs)
        for path in map(os.fsdecode, doc["paths"]):
            other = placed.other_session(path, session_uid)
            if other is not None:
                return (f"the path {path!r} {other[1]} session {other[0]}'s directory, but is registered to "
                        f"{session_uid}; livedm registers a file to one session only")
            raw = placed.raw_dir_of(path) if doc["datatype"] != "raw" else None
            if raw is not None:
                return (f"the {doc['datatype']} path {path!r} is, holds or lies in session {raw[1]}'s raw layout dir "
                        f"{raw[0]}; livedm registers nothing but raw files there")
            owner = self.api_owners.setdefault((project_uid, path), session_uid)
            if owner != session_uid:
                return (f"the path {path!r} is registered to sessions {owner} and {session_uid}; a file belongs to one "
                        "session")
        return None

    def _counters(self, doc: dict[str, Any]) -> str | None:
        if doc.get("_id") == PROJECT_DIRS_COUNTER:
            problem = fields_problem(doc, PROJECT_DIRS_FIELDS, extras=False)
            if problem is None:
                self.project_dir_map = doc["dirs"]
            return problem
        problem = fields_problem(doc, COUNTER_FIELDS, extras=False)
        if problem is None:
            self.counters[doc["_id"]] = doc["n"]
        return problem

    def _users(self, doc: dict[str, Any]) -> str | None:
        problem = fields_problem(doc, USER_FIELDS, extras=False)
        if problem is None and doc["_id"] != doc["name"]:
            problem = "its _id is not its name"
        if problem is None and doc["name"] == HOOK_USER and doc["role"] != "user":
            problem = f"the {HOOK_USER!r} user (whose tokens hook scripts get) must have the role 'user'"
        if problem is None:
            self.roles[doc["name"]] = doc["role"]
        return problem

    def _tokens(self, doc: dict[str, Any]) -> str | None:
        problem = fields_problem(doc, TOKEN_FIELDS, extras=False)
        if problem is None and doc["user"] not in self.roles:
            problem = f"its user {doc['user']!r} is not in the backup"
        if problem is None and self.roles[doc["user"]] == "admin" and doc.get("scope") is None \
                and doc.get("expires_at") is None:
            self.signed_in_admins.add(doc["user"])
        return problem

    def _jobs(self, doc: dict[str, Any]) -> str | None:
        if not kept("jobs", doc):  # left out: only what says so is read
            problem = fields_problem({k: doc.get(k) for k in JOB_ENVELOPE_FIELDS}, JOB_ENVELOPE_FIELDS, extras=False)
        else:
            problem = fields_problem(doc, JOB_FIELDS, extras=True)
            if problem is None:
                params_problem = fields_problem(doc["params"], JOB_PARAMS[doc["kind"]], extras=False)
                problem = params_problem and f"params: {params_problem}"
        if problem is None and doc["_id"] != doc["id"]:
            problem = "its _id is not its id"
        if problem is None and kept("jobs", doc):
            self.max_job = max(self.max_job, int(doc["id"][1:]))
        return problem

    def _audit(self, doc: dict[str, Any]) -> str | None:
        return fields_problem(doc, AUDIT_FIELDS, extras=True)

    # --- the whole file ---

    def _check_complete(self) -> None:
        if self.end_counts is None:
            raise ApiError(INVALID_REQUEST, f"the backup ends at line {self.line_no} without its end line: it was cut "
                                            "short (a copy or download that did not finish); nothing was restored")
        expected = {c: self.end_counts.get(c, 0) for c in COLLECTIONS}
        if set(self.end_counts) - set(COLLECTIONS) or expected != self.counts:
            raise ApiError(INVALID_REQUEST, f"the backup holds {self.counts} documents but its end line says "
                                            f"{self.end_counts}: lines are missing or were added; nothing was restored")

    def _sessions_read(self) -> None:
        """Every session is known: their dirs are their own, each project's map of them says exactly that,
        and registered paths can be placed."""
        _check_dirs_apart(self.session_dirs)
        for project_uid, dir_map in self.dir_maps.items():
            _check_dirs_apart({f"{project_uid}/{uid}": d for uid, d in dir_map.items()})
            self._check_dir_map(project_uid, dir_map)
        for key, directory in self.session_dirs.items():
            project_uid, session_uid = key.split("/")
            placed = self.placed.setdefault(project_uid, SessionDirs(self.raw_dirs))
            for form in self._session_dir_forms(key, directory):
                placed.add(session_uid, form)

    def _session_dir_forms(self, key: str, directory: str) -> set[str]:
        """A session's dir as written and resolved as the disk has it now (its project's map holds one of
        the two: _check_dir_map)."""
        resolved = resolved_session_dir(self.project_dirs[key.split("/")[0]], directory)
        return {directory} if resolved is None else {directory, resolved}

    def _check_dir_map(self, project_uid: str, dir_map: dict[str, str]) -> None:
        """sessions.py checks a new session's dir against this map only: it must name every session of the
        project, and nothing else, with its dir (as written, or resolved)."""
        sessions = {key.split("/")[1]: d for key, d in self.session_dirs.items() if key.split("/")[0] == project_uid}
        if set(dir_map) != set(sessions):
            raise ApiError(INVALID_REQUEST, f"project {project_uid}'s session_dirs names the sessions "
                                            f"{sorted(dir_map, key=_uid_number)} but the backup holds its sessions "
                                            f"{sorted(sessions, key=_uid_number)}; livedm keeps one entry per session "
                                            "(a new session's dir is checked against them): make a new backup; "
                                            "nothing was restored")
        for session_uid, directory in dir_map.items():
            written = sessions[session_uid]
            if directory != written and directory != resolved_session_dir(self.project_dirs[project_uid], written):
                raise ApiError(INVALID_REQUEST, f"project {project_uid}'s session_dirs gives {session_uid} the dir "
                                                f"{directory!r}, but that session's dir is {written!r}; nothing was "
                                                "restored")

    def _check_project_dir_map(self) -> None:
        """Like a project's session_dirs: new projects are checked against this map only."""
        if self.project_dir_map is None:
            return
        if set(self.project_dir_map) != set(self.project_dirs):
            raise ApiError(INVALID_REQUEST, f"the counter {PROJECT_DIRS_COUNTER!r} names the projects "
                                            f"{sorted(self.project_dir_map, key=_uid_number)} but the backup holds "
                                            f"{sorted(self.project_dirs, key=_uid_number)}; livedm keeps one entry "
                                            "per project: make a new backup; nothing was restored")
        for uid, directory in self.project_dir_map.items():
            if directory not in (self.project_dirs[uid], self.project_paths[uid]):
                raise ApiError(INVALID_REQUEST, f"the counter {PROJECT_DIRS_COUNTER!r} gives {uid} the dir "
                                                f"{directory!r}, but that project's dir is "
                                                f"{self.project_paths[uid]!r}; nothing was restored")

    def _check_counters(self) -> None:
        """A counter behind its documents would hand out a uid twice."""
        needed = {"projects": max((int(p[1:]) for p in self.ids["projects"]), default=0), "jobs": self.max_job}
        needed.update({f"sessions:{p}": n for p, n in self.max_session.items()})
        for name, highest in needed.items():
            if self.counters.get(name, 0) < highest:
                raise ApiError(INVALID_REQUEST, f"the backup's counter {name!r} is {self.counters.get(name, 0)} but "
                                                f"it holds number {highest}: new uids would collide; nothing was "
                                                "restored")


def _check_dirs_apart(dirs: dict[str, str]) -> None:
    """SPEC §5: session directories never coincide with or nest in another session's ({session key: dir})."""
    by_project: dict[str, list[tuple[str, str]]] = {}
    for key, directory in dirs.items():
        by_project.setdefault(key.split("/")[0], []).append((key, directory))
    for sessions in by_project.values():
        for (key, directory), (other_key, other) in itertools.combinations(sessions, 2):
            if files.dirs_overlap(directory, other):
                raise ApiError(INVALID_REQUEST, f"sessions {key} and {other_key} share a directory ({directory}, "
                                                f"{other}): each session needs its own; nothing was restored")


def _dir_map_problem(project: dict[str, Any]) -> str | None:
    """A project has both its session_dirs and its dirs_version (sessions.py writes them together), or
    neither (a project from before the map was kept)."""
    if (project.get("session_dirs") is None) != (project.get("dirs_version") is None):
        return "'session_dirs' and 'dirs_version' come together: both set, or both absent"
    return None


def _uid_number(uid: str) -> int:
    return int(uid[1:])


def _name(doc: dict[str, Any]) -> str:
    ident = doc.get("_id")
    return repr(ident)[:80] if isinstance(ident, str | int) else str(ident)[:80]


def _data_management_problem(data_management: dict[str, Any]) -> str | None:
    if set(data_management) != set(DATATYPES):
        return f"'data_management' must have exactly these datatypes: {', '.join(DATATYPES)}"
    for datatype, category in data_management.items():
        if not isinstance(category, dict):
            return f"data_management.{datatype} must be an object"
        problem = fields_problem(category, CATEGORY_FIELDS, extras=True)
        if problem is not None:
            return f"data_management.{datatype}: {problem}"
    return None


def _encoding_problem(doc: dict[str, Any]) -> str | None:
    """What the database would refuse: strings that are not UTF-8, keys with NUL, a document over 16 MiB."""
    try:
        size_bytes = len(bson.encode(doc))
    except (ValueError, bson.errors.BSONError) as exc:
        return f"it cannot be stored ({exc})"
    return None if size_bytes <= MAX_DOC_BYTES else f"it is {size_bytes} bytes; a document is at most {MAX_DOC_BYTES}"


# --- the upload ------------------------------------------------------------------------------------


@dataclass
class Upload:
    """The request body on its way into a private file, checked line by line as it arrives."""

    file: BinaryIO
    checker: BackupChecker
    max_bytes: int
    size_bytes: int = 0
    partial: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes) -> None:
        self.size_bytes += len(chunk)
        if self.size_bytes > self.max_bytes:
            raise _too_large(self.max_bytes)
        self.file.write(chunk)
        self.partial += chunk
        start = 0
        while (end := self.partial.find(b"\n", start)) != -1:
            self.checker.line(bytes(self.partial[start:end]))
            start = end + 1
        del self.partial[:start]
        if len(self.partial) > MAX_LINE_BYTES:
            raise _reject(self.checker.line_no + 1, f"longer than {MAX_LINE_BYTES} bytes")

    def close(self) -> None:
        if self.partial:  # a last line without its newline: a file cut short, most likely
            self.checker.line(bytes(self.partial))
            self.partial.clear()
        self.file.flush()
        self.checker.finish()


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(INVALID_REQUEST, f"the backup is larger than {max_bytes} bytes, the most a restore accepts "
                                     "(max_restore_bytes); nothing was restored", {"http_status": 413})


def remove_stale_uploads(state_dir: str, spare_pid: int | None = None) -> int:
    """Remove the uploads an earlier livedmd left in the state dir when it died mid-restore (each up to
    max_restore_bytes); how many went. At start (one livedmd per state dir, the lock held) every upload
    is stale; during a restore, `spare_pid` spares this process's own, which may be other restores'.
    Links and directories of that name are not followed: a link goes as a link, a directory stays."""
    removed = 0
    for path in Path(state_dir).glob(UPLOAD_PREFIX + "*"):
        if spare_pid is not None and path.name.startswith(f"{UPLOAD_PREFIX}{spare_pid}-"):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    if removed:
        log.info("removed %d upload(s) left in %s by a restore that did not finish", removed, state_dir)
    return removed


@contextlib.contextmanager
def _upload_file(state_dir: str) -> Iterator[tuple[BinaryIO, Path]]:
    """A new file only livedmd's user may read (mkstemp: mode 0600), removed afterwards whatever happens."""
    remove_stale_uploads(state_dir, spare_pid=os.getpid())
    fd, name = tempfile.mkstemp(prefix=f"{UPLOAD_PREFIX}{os.getpid()}-", suffix=".ndjson", dir=state_dir)
    try:
        with os.fdopen(fd, "w+b") as upload:
            yield upload, Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _check_free_space(state_dir: str, expected_bytes: int | None) -> None:
    if expected_bytes is None:
        return
    free_bytes = shutil.disk_usage(state_dir).free
    if free_bytes < expected_bytes + FREE_SPACE_MARGIN_BYTES:
        raise ApiError(INVALID_REQUEST, f"the state dir {state_dir} has {free_bytes} bytes free; the restore keeps the "
                                        f"{expected_bytes}-byte upload there while it checks it: free some space",
                       {"http_status": 507})


async def receive(request: web.Request, upload: Upload) -> None:
    """Stream the body into the upload; the checks run in a thread, off the event loop. An upload has no
    overall deadline (a big backup takes its time), but one that stops sending is given up."""
    while True:
        try:
            chunk = await asyncio.wait_for(request.content.read(CHUNK_BYTES), UPLOAD_IDLE_S)
        except TimeoutError:
            raise ApiError(INVALID_REQUEST, f"the upload stalled (no data for {UPLOAD_IDLE_S:g} s); nothing was "
                                            "restored") from None
        if not chunk:
            break
        await asyncio.to_thread(upload.feed, chunk)
    await asyncio.to_thread(upload.close)


# --- loading and switching -------------------------------------------------------------------------


def documents(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The (collection, document) pairs of a checked backup file, as they will be restored."""
    with open(path, "rb") as backup_file:
        lines = (raw for raw in backup_file if raw.strip())
        next(lines, None)  # the header
        for number, raw in enumerate(lines, 2):
            entry = _parse(raw, number)
            if END_KEY in entry:
                return
            collection, doc = entry["collection"], entry["doc"]
            if not kept(collection, doc):
                continue
            yield collection, settle_transient(doc)[0] if collection == "sessions" else doc


def load(store: Store, path: Path, counts: dict[str, int], owner: str) -> None:
    """Load the checked file into the staging collections and switch them in; on any failure before the
    switch the staging is dropped and the live database was never touched."""
    try:
        for collection, group in itertools.groupby(documents(path), key=lambda pair: pair[0]):
            docs = (doc for _, doc in group)
            while batch := list(itertools.islice(docs, BATCH_DOCS)):
                store.stage_documents(owner, collection, batch, time.time())
        if store.count_jobs("running"):
            raise ApiError(CONFLICT, BUSY)
        store.switch_restore(owner, counts, time.time())
    except ValueError as exc:
        store.abandon_restore(owner)
        raise ApiError(INVALID_REQUEST, f"{exc}; nothing was restored") from None
    except BaseException:
        store.abandon_restore(owner)
        raise


# --- the routes ------------------------------------------------------------------------------------


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"error": error_object(code, message)}, status=status)


async def _admin(request: web.Request, user_for: Any) -> web.Response | None:
    try:
        user = await user_for(request)
    except ApiError as exc:
        return _error(401, UNAUTHENTICATED, exc.message)
    if user.get("token_scope") is not None:
        return _error(403, FORBIDDEN, "a scoped token (a hook run's) may not back up or restore; use an admin's token")
    if user.get("role") != "admin":
        return _error(403, FORBIDDEN, "backup and restore need an admin")
    return None


async def backup(request: web.Request, store: Store, user_for: Any) -> web.StreamResponse:
    refused = await _admin(request, user_for)
    if refused is not None:
        return refused
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    lines = backup_lines(store)
    sent = 0
    while batch := await asyncio.to_thread(lambda: list(itertools.islice(lines, BATCH_DOCS))):
        await response.write(b"".join(batch))
        sent += len(batch)
    await response.write_eof()
    log.info("backup of %d documents sent", sent - 2)
    return response


async def restore(request: web.Request, store: Store, user_for: Any, restored: Any,
                  config: Config, lift_deadline: Callable[[], None] | None = None) -> web.Response:
    """`restored` is called once the new database is in place; `lift_deadline` once the caller is known to
    be an admin (the request deadline suits API calls, not a multi-gigabyte upload)."""
    refused = await _admin(request, user_for)
    if refused is not None:
        return refused
    if request.query.get("confirm") != "yes":
        return _error(400, INVALID_REQUEST, "restore replaces livedm's whole database: add ?confirm=yes")
    if lift_deadline is not None:
        lift_deadline()
    try:
        summary = await _restore(request, store, config)
    except ApiError as exc:
        log.warning("restore refused: %s", exc.message)
        return _error(exc.data.get("http_status") or (409 if exc.code == CONFLICT else 400), exc.code, exc.message)
    except StoreUnavailable as exc:
        log.error("restore failed: %s", exc)
        return _error(503, INTERNAL_ERROR, f"{exc}; if the restore had begun to switch collections it completes when "
                                           "livedmd starts again, otherwise nothing was restored")
    restored()
    log.warning("database restored from a backup: %s", summary)
    return web.json_response(summary)


async def _restore(request: web.Request, store: Store, config: Config) -> dict[str, Any]:
    await _check_idle(store)
    if request.content_length is not None and request.content_length > config.max_restore_bytes:
        raise _too_large(config.max_restore_bytes)
    _check_free_space(config.state_dir, request.content_length)
    checker = BackupChecker(config.data_roots, (config.state_dir, str(config.hook_logs)),
                            unverified_ok=request.query.get("unverified") == "yes",
                            raw_dirs=tuple(directory for directory, datatype in config.layout if datatype == "raw"))
    with _upload_file(config.state_dir) as (upload_file, path):
        try:
            await receive(request, Upload(upload_file, checker, config.max_restore_bytes))
        except OSError as exc:
            raise ApiError(INVALID_REQUEST, f"the upload could not be kept in the state dir ({exc}); "
                                            "nothing was restored") from None
        owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        if not await asyncio.to_thread(store.begin_restore, owner, time.time()):
            raise ApiError(CONFLICT, "another restore is under way; wait for it to finish, then try again")
        await asyncio.to_thread(load, store, path, checker.kept_counts, owner)
    return {"restored": checker.kept_counts, "format": checker.version, "left_out": checker.left_out,
            "settled_categories": checker.settled_categories}


async def _check_idle(store: Store) -> None:
    if await asyncio.to_thread(store.count_jobs, "running"):
        raise ApiError(CONFLICT, BUSY)
