"""The only module that speaks pymongo.

Every write is one single-document atomic operation (no multi-document transactions), so the same
code runs on mongomock, on the embedded store and on a MongoDB replica set. Dotted-path projections
and array-index update paths are avoided (the embedded store lacks them).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import re
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pymongo
from bson.binary import Binary
from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from .domain import DATATYPES, now_iso
from .walk_docs import inflated

CHUNK_PATHS = 2000  # registry paths per document: measured in DESIGN.md, ~20x faster than one per file
# A walk's registry (source "scan") is stored packed: its paths NUL-joined and compressed, at most this many
# per document, a full walk's each under its directory (`prefix`, held once). A million paths as string arrays
# cost the embedded store 4 s to write; packed, a tenth of that. Backups hold them unpacked (a `paths` list,
# like every other source): the backup format does not change.
PACKED_CHUNK_PATHS = 50_000
PACKED_CHUNK_BYTES = 8 << 20  # and at most this many bytes (deep trees have long paths)
PACKED_BYTES_MAX = 2 * PACKED_CHUNK_BYTES  # read back (a restored document holds 2000 paths of at most 4 KiB):
# more is a damaged or forged document, never inflated further
PREFIX_BYTES_MAX = 4096  # a packed document's directory (PATH_MAX)
COLLECTIONS = ("projects", "sessions", "registry", "counters", "users", "tokens", "jobs", "audit")

NO_ID = {"_id": 0}
_CATEGORY_STATUS = re.compile(r"^data_management\.[a-z]+\.status$")
# A session's fields its project's totals are made of (a session update setting one recomputes them).
_TOTALS_INPUT = re.compile(r"^(status|data_management(\.[a-z]+\.(size|file_count))?)$")
# What the overview's index reads of each session and project (overview_index.py): no file lists, no dir maps.
OVERVIEW_SESSION_FIELDS = ("project_uid", "uid", "title", "status", "created_by_user_id", "created_at",
                           "data_management", "changed_s")
OVERVIEW_PROJECT_FIELDS = ("uid", "title", "owner_user_id", "created_at", "totals", "changed_s")


class StoreUnavailable(Exception):
    """The database does not answer (the embedded store died, MongoDB is unreachable)."""


# Store methods that only read. Every other one counts as a write (write_mark), a method added later too.
READ_METHODS = frozenset({
    "ping", "get_project", "list_projects", "project_dirs", "api_registrations", "get_session", "get_sessions",
    "list_sessions", "sessions_in_progress", "session_with_dir_id", "movie_dirs", "read_registry",
    "api_path_owners", "read_job_paths", "get_user", "user_for_token", "list_users", "last_finished_job", "get_job",
    "get_jobs", "list_jobs", "count_jobs", "job_counts", "oldest_queued_job_time", "bytes_by_datatype",
    "sessions_with_status", "dump", "find_audit", "users_with_live_tokens", "load_walk", "load_walk_chunks"})

_write_marks = itertools.count(1)
_write_mark = [0]  # the latest mark of this process, whichever Store instance or thread wrote


def _unavailable_as_store_error(method: Callable[..., Any], *, writes: bool) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        if writes:  # before and after: a read kept meanwhile may predate the write (reads.py)
            _write_mark[0] = next(_write_marks)
        try:
            return method(*args, **kwargs)
        except pymongo.errors.ConnectionFailure as exc:
            raise StoreUnavailable(f"the database does not answer ({exc.__class__.__name__}: {exc})") from exc
        finally:
            if writes:
                _write_mark[0] = next(_write_marks)

    return call


def _translating_errors(cls: type) -> type:
    """Callers see StoreUnavailable, never pymongo's connection errors: nothing outside this module
    needs to know pymongo. And every method that may write leaves a new write_mark."""
    for name, member in list(vars(cls).items()):
        if callable(member) and not name.startswith("__"):
            setattr(cls, name, _unavailable_as_store_error(member, writes=name not in READ_METHODS))
    return cls


def _only(doc_id: str, condition: dict[str, Any]) -> dict[str, Any]:
    """The document of this _id if it meets `condition`. Spelt with $and: nx-27017 (0.8) applies an update
    filtered by {"_id": X, "$or": [...]} to the first document meeting the $or, whatever its _id."""
    return {"$and": [{"_id": doc_id}, condition]}


def _stored_path(path: str) -> str | Binary:
    """File names are bytes on Linux: one that is not UTF-8 (held as surrogate escapes) is stored as
    its raw bytes, losslessly."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return Binary(os.fsencode(path))
    return path


def _loaded_path(value: str | bytes) -> str:
    return os.fsdecode(bytes(value)) if isinstance(value, bytes) else value


def session_key(project_uid: str, session_uid: str) -> str:
    return f"{project_uid}/{session_uid}"


@dataclass(frozen=True)
class Piece:
    """Registry paths on their way to one packed document: `count` NUL-separated `names` in the file system's
    encoding, each under `prefix` (a session directory ending in "/", or b"" when the names are whole paths).
    `packed`: the names already compressed, when the caller has them (a full walk's chunks hold the same
    bytes): a million names are then compressed once, not once for the walk state and again here."""

    prefix: bytes
    names: bytes
    count: int
    packed: bytes | None = None

    def joined(self) -> bytes:
        """The whole paths, NUL-separated."""
        if not self.prefix:
            return self.names
        return self.prefix + self.names.replace(b"\0", b"\0" + self.prefix)


Pieces = dict[str, list[Piece]]  # per datatype


def directory_pieces(prefix: bytes, names: bytes, count: int, packed: bytes | None = None) -> Iterator[Piece]:
    """One directory's `count` files (NUL-separated `names`, compressed already as `packed` if given), in as
    many pieces as a document's limits need, counted by whole paths: one for a run of a walk's names, more
    for a directory of more files, or deeper, than one document may hold."""
    if not count:
        return
    if count <= PACKED_CHUNK_PATHS and len(names) + count * len(prefix) <= PACKED_CHUNK_BYTES:
        yield Piece(prefix, names, count, packed)
    else:
        yield from _pieces(prefix, names.split(b"\0"))


def path_pieces(paths: Iterable[str]) -> Iterator[Piece]:
    return _pieces(b"", [path.encode("utf-8", "surrogateescape") for path in paths])


def _pieces(prefix: bytes, names: list[bytes]) -> Iterator[Piece]:
    start, size = 0, 0
    for end, name in enumerate(names):
        if end > start and (end - start == PACKED_CHUNK_PATHS or
                            size + len(prefix) + len(name) + 1 > PACKED_CHUNK_BYTES):
            yield Piece(prefix, b"\0".join(names[start:end]), end - start)
            start, size = end, 0
        size += len(prefix) + len(name) + 1  # the whole paths, as they are read back
    if start < len(names):
        yield Piece(prefix, b"\0".join(names[start:]), len(names) - start)


def scan_digest(pieces: Pieces) -> str:
    """Identifies a scan's result, to skip rewriting an unchanged registry: each piece's directory and names,
    in walk order (an unchanged directory lists in the same order, in the same runs; a reordering only costs
    one needless rewrite). The whole paths are never built for it."""
    digest = hashlib.sha256()
    for datatype in DATATYPES:
        digest.update(datatype.encode() + b"\x00")
        for piece in pieces.get(datatype, ()):
            digest.update(b"%d\x00" % len(piece.prefix) + piece.prefix)
            digest.update(b"%d\x00" % len(piece.names))
            digest.update(piece.names)
        digest.update(b"\x01")
    return digest.hexdigest()


@_translating_errors
class Store:
    def __init__(self, client: pymongo.MongoClient, db_name: str) -> None:
        self.client = client
        self.db: Database = client[db_name]

    @property
    def write_mark(self) -> int:
        """A new, never repeated, value whenever a Store method that may write begins or ends in this process,
        in any thread (itertools.count is atomic): a reader that sees the same mark before and after a read knows
        that no write of this process began or ended meanwhile."""
        return _write_mark[0]

    @classmethod
    def connect(cls, uri: str, db_name: str, selection_timeout_s: float) -> Store:
        """A store on its own client; a call while the database is away fails after selection_timeout_s."""
        client: pymongo.MongoClient = pymongo.MongoClient(uri, serverSelectionTimeoutMS=int(selection_timeout_s * 1000))
        return cls(client, db_name)

    def close(self) -> None:
        self.client.close()

    # --- lifecycle -------------------------------------------------------------------------------

    def ensure_indexes(self) -> None:
        self.db.sessions.create_index([("project_uid", 1), ("created_at", 1)])
        self.db.sessions.create_index([("changed_s", 1)])  # the overview's index reads what changed since
        for datatype in DATATYPES:  # the repairs look every 30 s for categories left deleting or calculating
            self.db.sessions.create_index([(f"data_management.{datatype}.status", 1)])
        self.db.projects.create_index([("changed_s", 1)])
        self.db.registry.create_index([("key", 1), ("source", 1)])
        self.db.tokens.create_index([("user", 1)])
        self.db.audit.create_index([("at", 1)])
        self.db.jobs.create_index([("state", 1)])
        self.db.audit.create_index([("project_uid", 1), ("session_uid", 1)])
        self.db.walks.create_index([("key", 1), ("kind", 1)])

    def ping(self, timeout_s: float | None = None) -> None:
        """Raises StoreUnavailable when the database does not answer (within timeout_s, if given)."""
        try:
            if timeout_s is None:
                self.client.admin.command("ping")
            else:
                with pymongo.timeout(timeout_s):
                    self.client.admin.command("ping")
        except pymongo.errors.PyMongoError as exc:
            raise StoreUnavailable(f"the database does not answer ({exc})") from exc

    # --- uids ------------------------------------------------------------------------------------

    def next_number(self, counter: str) -> int:
        doc = self.db.counters.find_one_and_update(
            {"_id": counter}, {"$inc": {"n": 1}}, upsert=True, return_document=ReturnDocument.AFTER)
        if doc is None:  # an upsert returns the document it made; a store that does not is broken
            raise StoreUnavailable(f"the counter {counter} came back empty")
        return int(doc["n"])

    def raise_counter(self, counter: str, at_least: int) -> None:
        """Make the counter at least `at_least`: the next number it hands out is above it."""
        for _attempt in range(5):
            doc = self.db.counters.find_one({"_id": counter})
            if doc is not None and int(doc["n"]) >= at_least:
                return
            if doc is None:
                try:
                    self.db.counters.insert_one({"_id": counter, "n": at_least})
                    return
                except pymongo.errors.DuplicateKeyError:
                    continue  # made meanwhile: compare again
            if self.db.counters.update_one({"_id": counter, "n": doc["n"]}, {"$set": {"n": at_least}}).matched_count:
                return

    # --- projects --------------------------------------------------------------------------------

    def insert_project(self, project: dict[str, Any]) -> bool:
        """False when a project of that uid exists already."""
        try:
            self.db.projects.insert_one({"_id": project["uid"], **project, "changed_s": time.time()})
        except pymongo.errors.DuplicateKeyError:
            return False
        self.recompute_project_totals(project["uid"])  # sessions recorded before it (a restore's) count too
        return True

    def get_project(self, project_uid: str) -> dict[str, Any] | None:
        return self.db.projects.find_one({"_id": project_uid}, NO_ID)

    def list_projects(self) -> list[dict[str, Any]]:
        return list(self.db.projects.find({}, NO_ID).sort("created_at", 1))

    def project_dirs(self) -> tuple[int | None, dict[str, str] | None]:
        """(version, {project uid: real dir}) as last reserved; (None, None) before any reservation."""
        doc = self.db.counters.find_one({"_id": "project_dirs"})
        return (None, None) if doc is None else (int(doc["version"]), dict(doc["dirs"]))

    def reserve_project_dirs(self, version: int | None, dirs: dict[str, str]) -> bool:
        """Replace the map of project dirs if nobody changed it since `version` was read."""
        if version is None:
            try:
                self.db.counters.insert_one({"_id": "project_dirs", "version": 1, "dirs": dirs})
            except DuplicateKeyError:
                return False
            return True
        result = self.db.counters.update_one({"_id": "project_dirs", "version": version},
                                             {"$set": {"dirs": dirs, "version": version + 1}})
        return result.matched_count == 1

    def release_session_dir(self, project_uid: str, session_uid: str) -> None:
        """Take back a reservation whose session was not made after all."""
        self.db.projects.update_one({"_id": project_uid}, {"$unset": {f"session_dirs.{session_uid}": ""},
                                                           "$inc": {"dirs_version": 1}})

    def api_registrations(self, session_keys: list[str]) -> dict[str, list[str]]:
        """{session key: paths registered by API} for these sessions."""
        found: dict[str, list[str]] = {}
        for doc in self.db.registry.find({"key": {"$in": session_keys}, "source": "api"}):
            found.setdefault(doc["key"], []).extend(map(_loaded_path, doc["paths"]))
        return found

    def set_project_fields(self, project_uid: str, fields: dict[str, Any]) -> None:
        self.db.projects.update_one({"_id": project_uid}, {"$set": {**fields, "changed_s": time.time()}})

    def reserve_session_dir(self, project_uid: str, dirs_version: int | None, session_dirs: dict[str, str]) -> bool:
        """Replace the project's map of session dirs if nobody changed it since `dirs_version` was read:
        of two sessions created at once with clashing dirs, one wins and the other checks again."""
        result = self.db.projects.update_one(
            {"_id": project_uid, "dirs_version": dirs_version},
            {"$set": {"session_dirs": session_dirs, "dirs_version": (dirs_version or 0) + 1}})
        return result.matched_count == 1

    # --- sessions --------------------------------------------------------------------------------

    def insert_sessions(self, sessions: list[dict[str, Any]]) -> list[str]:
        """Insert new sessions at once; the uids that were inserted (one of the same uid existing stays)."""
        if not sessions:
            return []
        now_s = time.time()
        try:
            self.db.sessions.insert_many([{"_id": session_key(s["project_uid"], s["uid"]), **s, "changed_s": now_s}
                                          for s in sessions], ordered=False)
        except pymongo.errors.BulkWriteError as exc:
            failed = {error["index"] for error in exc.details.get("writeErrors", [])}
            inserted = [s for index, s in enumerate(sessions) if index not in failed]
        else:
            inserted = sessions
        for project_uid in sorted({s["project_uid"] for s in inserted}):
            self.recompute_project_totals(project_uid)
        return [s["uid"] for s in inserted]

    def insert_session(self, session: dict[str, Any]) -> bool:
        """False when the project has a session of that uid already."""
        key = session_key(session["project_uid"], session["uid"])
        try:
            self.db.sessions.insert_one({"_id": key, **session, "changed_s": time.time()})
        except pymongo.errors.DuplicateKeyError:
            return False
        self.recompute_project_totals(session["project_uid"])
        return True

    def get_session(self, project_uid: str, session_uid: str) -> dict[str, Any] | None:
        return self.db.sessions.find_one({"_id": session_key(project_uid, session_uid)}, NO_ID)

    def get_sessions(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """{session key: document} for the keys that exist, in one query (none for no keys: nx-27017 scans the
        whole collection for an empty $in)."""
        return {doc.pop("_id"): doc for doc in self.db.sessions.find({"_id": {"$in": keys}})} if keys else {}

    def list_sessions(self, project_uid: str | None = None) -> list[dict[str, Any]]:
        query = {} if project_uid is None else {"project_uid": project_uid}
        return list(self.db.sessions.find(query, NO_ID).sort("created_at", 1))

    def sessions_in_progress(self) -> list[dict[str, Any]]:
        """Sessions not completed (running or paused): those cryoSPARC may still add to."""
        return list(self.db.sessions.find({"status": {"$ne": "completed"}}, NO_ID))

    def _update_session(self, project_uid: str, session_uid: str, expect: dict[str, Any],
                        update: dict[str, Any], *, writes_category_status: bool = False) -> dict[str, Any] | None:
        """Apply `update` if the session still matches `expect`: the document after it, or None (nothing
        changed). Every update stamps `changed_s` (the overview's index reads what changed since), and one
        that sets a field the project's totals are made of recomputes them."""
        if not writes_category_status and any(_CATEGORY_STATUS.match(path) for path in update.get("$set", {})):
            raise AssertionError("a category's status is written only by set_category_status (states.py)")
        stamped = {**update, "$set": {**update.get("$set", {}), "changed_s": time.time()}}
        updated = self.db.sessions.find_one_and_update({"_id": session_key(project_uid, session_uid), **expect},
                                                       stamped, projection=NO_ID, return_document=ReturnDocument.AFTER)
        if updated is not None and any(_TOTALS_INPUT.match(path) for fields in update.values() for path in fields):
            self.recompute_project_totals(project_uid)
        return updated

    def set_category_status(self, project_uid: str, session_uid: str, datatype: str, *, expect_status: str,
                            fields: dict[str, Any], expect_job_id: str | None = None, check_job_id: bool = False,
                            session_completed: bool = False,
                            also: dict[str, tuple[str, dict[str, Any]]] | None = None) -> dict[str, Any] | None:
        """The only write of a category's status (states.py calls it): `fields` of the category set at
        once, if its status is still `expect_status` (and its job_id, and the session completed, when
        asked); `also` changes more categories in the same write ({datatype: (expect_status, fields)}), all
        or none. The session after it, or None."""
        expect: dict[str, Any] = {}
        update: dict[str, Any] = {}
        at = now_iso()
        for name, (status, changes) in {datatype: (expect_status, fields), **(also or {})}.items():
            prefix = f"data_management.{name}"
            expect[f"{prefix}.status"] = status
            update.update({f"{prefix}.{field}": value for field, value in changes.items()})
            update[f"{prefix}.status_changed_at"] = at
        if check_job_id:
            expect[f"data_management.{datatype}.job_id"] = expect_job_id
        if session_completed:
            expect["status"] = "completed"
        return self._update_session(project_uid, session_uid, expect, {"$set": update}, writes_category_status=True)

    def set_category_hook(self, project_uid: str, session_uid: str, datatype: str, hook: dict[str, Any]) -> bool:
        """Record a category's last hook run (`hook`, with its job_id); never its status. A run of an earlier
        job that ends after a later one's (runs overlap) is not recorded over it. False: not recorded."""
        field = f"data_management.{datatype}.hook"
        number = int(hook["job_id"][1:])
        result = self.db.sessions.update_one(
            _only(session_key(project_uid, session_uid),
                  {"$or": [{f"{field}.job_n": None}, {f"{field}.job_n": {"$lte": number}}]}),
            {"$set": {field: {**hook, "job_n": number}}})
        return result.matched_count == 1

    def pin_session_dir(self, project_uid: str, session_uid: str, identity: str) -> None:
        self._update_session(project_uid, session_uid, {"dir_id": None}, {"$set": {"dir_id": identity}})

    def session_with_dir_id(self, identity: str) -> tuple[str, str] | None:
        """(project_uid, session_uid) of the session measured in the directory of this identity."""
        doc = self.db.sessions.find_one({"dir_id": identity}, {"project_uid": 1, "uid": 1})
        return None if doc is None else (doc["project_uid"], doc["uid"])

    def set_raw_dirs(self, project_uid: str, session_uid: str, identities: list[str]) -> None:
        self._update_session(project_uid, session_uid, {}, {"$set": {"raw_dirs": identities}})

    def movie_dirs(self) -> frozenset[str]:
        """Every directory any session's raw links point into, facility-wide."""
        found: set[str] = set()
        for doc in self.db.sessions.find({"raw_dirs": {"$exists": True}}, {"raw_dirs": 1}):
            found.update(doc.get("raw_dirs") or ())
        return frozenset(found)

    def set_measures(self, project_uid: str, session_uid: str, measures: dict[str, dict[str, Any]],
                     *, session_fields: dict[str, Any] | None = None) -> dict[str, Any]:
        """Sizes and counts per category ({datatype: {size, file_count, updated_at}}), never a status; and
        top-level fields of the session (when it was measured) in the same write."""
        update = {f"data_management.{dt}.{name}": value for dt, fields in measures.items()
                  for name, value in fields.items() if name != "status"}
        if any(name == "data_management" or name.startswith("data_management.") for name in session_fields or {}):
            raise AssertionError("session_fields are top-level fields")
        update.update(session_fields or {})
        updated = self._update_session(project_uid, session_uid, {}, {"$set": update})
        if updated is None:
            raise KeyError(f"{project_uid} {session_uid}")
        return updated

    def set_session_fields(self, project_uid: str, session_uid: str, fields: dict[str, Any]) -> None:
        """Top-level fields of a session (discovery's record of it); never data_management."""
        if any(name == "data_management" or name.startswith("data_management.") for name in fields):
            raise AssertionError("data_management is written by set_measures and set_category_status")
        self._update_session(project_uid, session_uid, {}, {"$set": fields})

    def set_session_status(self, project_uid: str, session_uid: str, *, expect: str, status: str,
                           at: str) -> dict[str, Any] | None:
        """A session's own status (running, paused, completed) with the time it took it."""
        update: dict[str, Any] = {"$set": {"status": status}}
        if status == "running":
            update["$set"]["started_at"] = at
        elif status == "paused":
            update["$push"] = {"paused_at": at}
        else:
            update["$set"]["completed_at"] = at
        return self._update_session(project_uid, session_uid, {"status": expect}, update)

    # --- project totals and the overview's reads -----------------------------------------------------
    # A project's totals (sessions, sessions by status, bytes and files per datatype) live on its document,
    # recomputed from its sessions after each write that can change them. Concurrent recomputes converge:
    # each draws a number from the project's sessions_version after its session write, sums the sessions
    # after that, and writes only over totals of a lower number; the highest number saw every write before it.

    def recompute_project_totals(self, project_uid: str) -> dict[str, Any] | None:
        """The project's totals summed from its sessions now, and stored; None when there is no such project."""
        version = self._draw_totals_version(project_uid)
        if version is None:
            return None
        totals = self.sum_project_sessions(project_uid)
        self._write_totals(project_uid, totals, version=version)
        return totals

    def _draw_totals_version(self, project_uid: str) -> int | None:
        doc = self.db.projects.find_one_and_update({"_id": project_uid}, {"$inc": {"sessions_version": 1}},
                                                   projection={"sessions_version": 1},
                                                   return_document=ReturnDocument.AFTER)
        return None if doc is None else int(doc["sessions_version"])

    def _write_totals(self, project_uid: str, totals: dict[str, Any], *, version: int) -> bool:
        """Store totals summed after `version` was drawn, unless totals of a later draw are there already."""
        result = self.db.projects.update_one(
            _only(project_uid, {"$or": [{"totals_version": None}, {"totals_version": {"$lt": version}}]}),
            {"$set": {"totals": totals, "totals_version": version, "changed_s": time.time()}})
        return result.matched_count == 1

    def sum_project_sessions(self, project_uid: str) -> dict[str, Any]:
        """The project's totals from its sessions as they are now (one aggregation, nothing stored)."""
        group: dict[str, Any] = {"_id": "$status", "n": {"$sum": 1}}
        for dt in DATATYPES:
            group[f"{dt}_size"] = {"$sum": f"$data_management.{dt}.size"}
            group[f"{dt}_files"] = {"$sum": f"$data_management.{dt}.file_count"}
        rows = self.db.sessions.aggregate([{"$match": {"project_uid": project_uid}}, {"$group": group}])
        return totals_from_groups(list(rows))

    def reconcile_totals(self) -> int:
        """Recompute the totals of every project whose stored totals differ from its sessions' sums (a
        recompute cut short by a failure, or a restore): how many were put right."""
        fixed = 0
        for project in self.db.projects.find({}, {"totals": 1}):
            if project.get("totals") != self.sum_project_sessions(project["_id"]):
                fixed += self.recompute_project_totals(project["_id"]) is not None
        return fixed

    def overview_sessions(self, changed_after_s: float | None = None) -> list[dict[str, Any]]:
        """The fields the overview's index keeps of every session (or of those changed after that time)."""
        query = {} if changed_after_s is None else {"changed_s": {"$gt": changed_after_s}}
        return list(self.db.sessions.find(query, dict.fromkeys(OVERVIEW_SESSION_FIELDS, 1), batch_size=5000))

    def overview_projects(self, changed_after_s: float | None = None) -> list[dict[str, Any]]:
        """The fields the overview's index keeps of every project (or of those changed after that time)."""
        query = {} if changed_after_s is None else {"changed_s": {"$gt": changed_after_s}}
        return list(self.db.projects.find(query, dict.fromkeys(OVERVIEW_PROJECT_FIELDS, 1)))

    def get_projects(self, uids: list[str]) -> dict[str, dict[str, Any]]:
        """{uid: project} for those of the uids that exist, in one query."""
        return {doc["uid"]: doc for doc in self.db.projects.find({"_id": {"$in": uids}}, NO_ID)} if uids else {}

    def restore_count(self) -> int:
        """How many restores were switched in on this database: a cache of it is stale when this changed."""
        doc = self.db[self.RESTORES_SWITCHED].find_one({"_id": "count"})
        return 0 if doc is None else int(doc["n"])

    # --- file registry ---------------------------------------------------------------------------
    # Scanned paths live in chunks tagged with a generation; the session's `scan_gen` names the
    # current one, so a rescan that dies half-way leaves the previous registry in force.

    def read_registry(self, project_uid: str, session_uid: str, scan_gen: str | None,
                      *, sources: tuple[str, ...] = ("scan", "api"),
                      datatypes: tuple[str, ...] = DATATYPES) -> dict[str, dict[str, list[str]]]:
        """{"scan": {datatype: paths}, "api": {datatype: paths}}, reading only the given sources and
        datatypes (the others stay empty)."""
        out: dict[str, dict[str, list[str]]] = {"scan": {d: [] for d in DATATYPES},
                                                 "api": {d: [] for d in DATATYPES}}
        key = session_key(project_uid, session_uid)
        query: dict[str, Any] = {"key": key, "source": {"$in": list(sources)}}
        if datatypes != DATATYPES:
            query["datatype"] = {"$in": list(datatypes)}
        for doc in self.db.registry.find(query):
            if doc["source"] == "scan" and doc.get("gen") != scan_gen:
                continue
            out[doc["source"]][doc["datatype"]].extend(_doc_paths(doc))
        return out

    def replace_scan(self, project_uid: str, session_uid: str, old_gen: str | None,
                     *, pieces: Pieces, digest: str) -> bool:
        """Swap in a new scanned registry; False (and nothing changed) if another scan won the race."""
        new_gen = self.insert_scan(project_uid, session_uid, pieces)
        return self.swap_scan(project_uid, session_uid, old_gen, new_gen, digest=digest)

    def insert_scan(self, project_uid: str, session_uid: str, pieces: Pieces) -> str:
        """A new scanned registry's documents, under a generation of their own (returned): read by no one
        until swap_scan makes it the session's."""
        new_gen = uuid.uuid4().hex
        docs = list(_packed_docs(session_key(project_uid, session_uid), pieces, gen=new_gen))
        if docs:
            self.db.registry.insert_many(docs, ordered=False)
        return new_gen

    def swap_scan(self, project_uid: str, session_uid: str, old_gen: str | None, new_gen: str, *, digest: str) -> bool:
        """Make the inserted generation the session's registry if `old_gen` still is, and drop every other;
        False (the new one dropped, nothing else changed) if another scan won the race."""
        key = session_key(project_uid, session_uid)
        flipped = self.db.sessions.update_one(
            {"_id": key, "scan_gen": old_gen},
            {"$set": {"scan_gen": new_gen, "scan_digest": digest}})
        if flipped.matched_count == 0:
            self.db.registry.delete_many({"key": key, "source": "scan", "gen": new_gen})
            return False
        self.db.registry.delete_many({"key": key, "source": "scan", "gen": {"$ne": new_gen}})
        return True

    def api_path_owners(self, session_keys: list[str], paths: Sequence[str]) -> dict[str, str]:
        """{path: session key} for those of `paths` registered by API to one of the sessions."""
        wanted = set(paths)
        owners: dict[str, str] = {}
        for doc in self.db.registry.find({"key": {"$in": session_keys}, "source": "api",
                                          "paths": {"$in": [_stored_path(p) for p in wanted]}}):
            for value in doc["paths"]:
                path = _loaded_path(value)
                if path in wanted:
                    owners.setdefault(path, doc["key"])
        return owners

    def save_job_paths(self, job_id: str, paths: Sequence[str]) -> None:
        """The exact file list a job may act on (a deletion's confirmed list), chunked like the registry."""
        docs = list(_chunks(job_id, "job", {"job": list(paths)}))
        if docs:
            self.db.registry.insert_many(docs, ordered=True)

    def read_job_paths(self, job_id: str) -> list[str]:
        paths: list[str] = []
        for doc in self.db.registry.find({"key": job_id, "source": "job"}).sort("_id", 1):
            paths.extend(map(_loaded_path, doc["paths"]))
        return paths

    def add_api_paths(self, project_uid: str, session_uid: str, datatype: str, *, paths: Sequence[str]) -> None:
        docs = list(_chunks(session_key(project_uid, session_uid), "api", {datatype: list(paths)}))
        if docs:
            self.db.registry.insert_many(docs, ordered=True)
            self._api_paths_changed(session_key(project_uid, session_uid))

    def _api_paths_changed(self, key: str) -> None:
        """Tells the session's next walk to read its API registrations again (else it knows there are none)."""
        self.db.walks.update_one({"_id": key}, {"$inc": {"api_changes": 1}, "$set": {"kind": "session"}},
                                 upsert=True)

    # --- what the last walk of each session saw (a cache: never backed up, cleared by a restore) ----
    # Per session: one "session" document (the walk's signature, refreshes since the last full one, and
    # `dirty` while a refresh writes), one "dir" header per directory, and "chunk" documents of files that
    # headers list by id. A header is replaced only if it still holds the generation the writer read.

    def load_walk(self, key: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        session = self.db.walks.find_one({"_id": key})
        return session, list(self.db.walks.find({"key": key, "kind": "dir"}))

    def load_walk_chunks(self, chunk_ids: list[str]) -> list[dict[str, Any]] | None:
        """The chunks in the order given; None when one is gone (replaced by a concurrent walk)."""
        found = {doc["_id"]: doc for doc in self.db.walks.find({"_id": {"$in": chunk_ids}})}
        return [found[i] for i in chunk_ids] if all(i in found for i in chunk_ids) else None

    def begin_walk_write(self, key: str, sig: str) -> str:
        """The state marked dirty by this writer: the token its finish_walk_write names (a walk that began
        after it, in another process, takes the state over: this one's finish then leaves it dirty)."""
        writer = uuid.uuid4().hex
        self.db.walks.update_one({"_id": key}, {"$set": {"kind": "session", "sig": sig, "dirty": True,
                                                         "writer": writer}}, upsert=True)
        return writer

    def finish_walk_write(self, key: str, *, since_full: int, movie_dirs: list[Any], movie_stamp: str,
                          movie_feed: list[str], api_seen: tuple[int, int], writer: str) -> None:
        """`api_seen`: (the API-registration change count the walk started from, how many paths it found);
        `movie_feed`: the change feed's token per movie directory; `writer`: begin_walk_write's token (marked
        clean only if no other walk began writing since)."""
        self.db.walks.update_one({"_id": key, "writer": writer}, {"$set": {
            "dirty": False, "since_full": since_full, "movie_dirs": movie_dirs, "movie_stamp": movie_stamp,
            "movie_feed": movie_feed, "api_seen": list(api_seen)}})

    def clear_walk(self, key: str) -> None:
        """Every directory's state (the session's own document stays: it counts API registrations)."""
        self.db.walks.delete_many({"key": key})

    def insert_walk_chunks(self, docs: list[dict[str, Any]]) -> None:
        if docs:
            self.db.walks.insert_many(docs, ordered=False)

    def insert_walk_headers(self, headers: list[dict[str, Any]]) -> bool:
        """False when one was there already (another walk's)."""
        if not headers:
            return True
        try:
            self.db.walks.insert_many(headers, ordered=False)
        except pymongo.errors.BulkWriteError:
            return False
        return True

    def delete_walk_chunks(self, chunk_ids: list[str]) -> None:
        if chunk_ids:
            self.db.walks.delete_many({"_id": {"$in": chunk_ids}, "kind": "chunk"})

    def replace_walk_dir(self, header: dict[str, Any], *, expect_gen: str | None) -> bool:
        """Write a directory's header if the stored one still has `expect_gen` (None: there is none)."""
        if expect_gen is None:
            try:
                self.db.walks.insert_one(header)
            except DuplicateKeyError:
                return False
            return True
        return self.db.walks.replace_one({"_id": header["_id"], "gen": expect_gen}, header).matched_count == 1

    def delete_walk_dir(self, header_id: str, *, expect_gen: str) -> bool:
        return self.db.walks.delete_one({"_id": header_id, "gen": expect_gen}).deleted_count == 1

    def append_scan_paths(self, project_uid: str, session_uid: str, scan_gen: str | None, scan_digest: str | None,
                          *, paths_by_datatype: dict[str, list[str]]) -> bool:
        """Add paths to the current scanned registry (files new since the last walk); False (nothing added)
        when the registry was replaced or appended to since the session was read (its `scan_gen` and
        `scan_digest`): two walks that both found the same new files must not both append them. An append
        leaves a digest of its own, which no scan's paths give (the next full walk writes the registry anew)."""
        key = session_key(project_uid, session_uid)
        docs = list(_packed_docs(key, {dt: list(path_pieces(paths)) for dt, paths in paths_by_datatype.items()},
                                 gen=scan_gen))
        if not docs:
            return True
        self.db.registry.insert_many(docs, ordered=False)
        appended = self.db.sessions.update_one({"_id": key, "scan_gen": scan_gen, "scan_digest": scan_digest},
                                               {"$set": {"scan_digest": uuid.uuid4().hex * 2}})
        if appended.matched_count == 0:
            self.db.registry.delete_many({"_id": {"$in": [doc["_id"] for doc in docs]}})
            return False
        return True

    # --- users and tokens ------------------------------------------------------------------------

    def insert_user(self, user: dict[str, Any]) -> bool:
        try:
            self.db.users.insert_one({"_id": user["name"], **user})
        except DuplicateKeyError:
            return False
        return True

    def get_user(self, name: str) -> dict[str, Any] | None:
        return self.db.users.find_one({"_id": name}, NO_ID)

    def insert_token(self, token_hash: str, user: str, created_at: str, *, expires_at: float | None = None,
                     scope: dict[str, Any] | None = None) -> None:
        """`scope` narrows what the token may do (a hook run's token: one category); None: the user's rights."""
        self.db.tokens.insert_one({"_id": token_hash, "user": user, "created_at": created_at,
                                   "expires_at": expires_at, "scope": scope})

    def delete_token(self, token_hash: str) -> None:
        self.db.tokens.delete_one({"_id": token_hash})

    def user_for_token(self, token_hash: str, now: float) -> dict[str, Any] | None:
        token = self.db.tokens.find_one({"_id": token_hash})
        if token is None or (token.get("expires_at") is not None and token["expires_at"] < now):
            return None
        user = self.get_user(token["user"])
        if user is not None and token.get("scope") is not None:
            user["token_scope"] = token["scope"]
        return user

    def list_users(self) -> list[dict[str, Any]]:
        return list(self.db.users.find({}, NO_ID).sort("created_at", 1))

    def update_user(self, name: str, fields: dict[str, Any]) -> bool:
        return self.db.users.update_one({"_id": name}, {"$set": fields}).matched_count == 1

    def delete_user(self, name: str) -> bool:
        return self.db.users.delete_one({"_id": name}).deleted_count == 1

    def delete_tokens(self, user: str) -> int:
        return self.db.tokens.delete_many({"user": user}).deleted_count

    # --- jobs (the durable queue) ----------------------------------------------------------------
    # Every write after the claim names the owner: a worker whose lease was taken over changes nothing.

    def insert_job(self, job: dict[str, Any]) -> None:
        self.db.jobs.insert_one({"_id": job["id"], **job})

    def hold_single(self, name: str, job_id: str) -> str | None:
        """Make `job_id` the one active job of `name` (kept in the counters as "single:<name>"), unless another
        job that is still queued or running holds it: then that job's id. Atomic between daemons."""
        key, number = f"single:{name}", int(job_id[1:])
        for _attempt in range(10):
            doc = self.db.counters.find_one({"_id": key})
            if doc is not None and doc["n"]:
                holder = self.db.jobs.find_one({"_id": f"J{doc['n']}"}, {"state": 1})
                if holder is not None and holder["state"] in ("queued", "running"):
                    return f"J{doc['n']}"
            if doc is None:
                try:
                    self.db.counters.insert_one({"_id": key, "n": number})
                    return None
                except pymongo.errors.DuplicateKeyError:
                    continue
            if self.db.counters.update_one({"_id": key, "n": doc["n"]}, {"$set": {"n": number}}).matched_count:
                return None
        raise StoreUnavailable(f"the single-job marker {key} kept changing")

    def set_job_due(self, job_id: str, not_before: float, *, only_if_parked: float | None = None) -> None:
        """A queued job's earliest start; with only_if_parked, only if it is parked (not_before at least that)."""
        query: dict[str, Any] = {"_id": job_id, "state": "queued"}
        if only_if_parked is not None:
            query["not_before"] = {"$gte": only_if_parked}
        self.db.jobs.update_one(query, {"$set": {"not_before": not_before}})

    def delete_queued_job(self, job_id: str) -> None:
        self.db.jobs.delete_one({"_id": job_id, "state": "queued"})

    def last_finished_job(self, kind: str) -> dict[str, Any] | None:
        return self.db.jobs.find_one({"kind": kind, "state": {"$in": ["done", "failed"]}}, NO_ID,
                                     sort=[("finished_at", -1)])

    def prune_finished_jobs(self, kinds: Sequence[str], finished_before: str) -> int:
        """Forget finished jobs of these kinds that ended before then (scheduled work's history)."""
        return self.db.jobs.delete_many({"kind": {"$in": list(kinds)}, "state": {"$in": ["done", "failed"]},
                                         "finished_at": {"$lt": finished_before}}).deleted_count

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        return self.db.jobs.find_one({"_id": job_id}, NO_ID)

    def get_jobs(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """{job id: job} for those of the ids that exist, in one query."""
        return {job["id"]: job for job in self.db.jobs.find({"_id": {"$in": job_ids}}, NO_ID)} if job_ids else {}

    def list_jobs(self, *, kind: str | None = None, state: str | None = None, project_uid: str | None = None,
                  limit: int) -> list[dict[str, Any]]:
        """Newest first; each filter given narrows the list."""
        query: dict[str, Any] = {}
        if kind:
            query["kind"] = kind
        if state:
            query["state"] = state
        if project_uid:
            query["params.project_uid"] = project_uid
        return list(self.db.jobs.find(query, NO_ID).sort("created_at", -1).limit(limit))

    def claim_job(self, owner: str, now: float, lease_s: float, *, started_at: str) -> dict[str, Any] | None:
        """Take one job that is queued and due, or running with an expired lease. Atomic: of two
        claimers, one gets it."""
        return self.db.jobs.find_one_and_update(
            {"$or": [{"state": "queued", "not_before": {"$lte": now}},
                     {"state": "running", "lease_until": {"$lt": now}}]},
            {"$set": {"state": "running", "owner": owner, "lease_until": now + lease_s, "started_at": started_at},
             "$inc": {"attempts": 1}},
            projection=NO_ID, return_document=ReturnDocument.AFTER)

    def update_owned_job(self, job_id: str, owner: str, fields: dict[str, Any]) -> bool:
        """Set fields on a job this owner still holds; False if it no longer does."""
        result = self.db.jobs.update_one({"_id": job_id, "owner": owner, "state": "running"}, {"$set": fields})
        return result.matched_count == 1

    def count_jobs(self, state: str) -> int:
        return self.db.jobs.count_documents({"state": state})

    def job_counts(self, kinds: Sequence[str]) -> dict[tuple[str, str], int]:
        """{(kind, state): count}. One count per pair: the embedded store cannot group by two fields."""
        return {(kind, state): self.db.jobs.count_documents({"kind": kind, "state": state})
                for kind in kinds for state in ("queued", "running", "done", "failed")}

    def oldest_queued_job_time(self) -> float | None:
        job = self.db.jobs.find_one({"state": "queued"}, sort=[("created_ts", 1)])
        return None if job is None else job.get("created_ts")

    def bytes_by_datatype(self) -> dict[str, int]:
        group: dict[str, Any] = {"_id": None}
        group.update({dt: {"$sum": f"$data_management.{dt}.size"} for dt in DATATYPES})
        rows = list(self.db.sessions.aggregate([{"$group": group}]))
        return {dt: int(rows[0][dt]) for dt in DATATYPES} if rows else {}

    def sessions_with_status(self, datatype: str, status: str) -> list[dict[str, Any]]:
        return list(self.db.sessions.find({f"data_management.{datatype}.status": status}, NO_ID))

    def remove_api_paths(self, project_uid: str, session_uid: str, datatype: str, *, paths: list[str]) -> None:
        if paths:
            self.db.registry.update_many(
                {"key": session_key(project_uid, session_uid), "source": "api", "datatype": datatype},
                {"$pullAll": {"paths": [_stored_path(p) for p in paths]}})
            self._api_paths_changed(session_key(project_uid, session_uid))

    # --- backup and restore ------------------------------------------------------------------------
    # A restore loads every collection into a staging twin (`<name>__restore_<tag>`, a tag per restore)
    # beside the live one, then renames the twins over the live collections. One journal document makes
    # it one restore at a time (across livedmd processes) and says how far it got: "loading" (the live
    # data is untouched; a stale one is rolled back) or "switching" (all of it is loaded;
    # finish_interrupted_restore completes it). The tag is new each time because nx-27017 keeps a
    # renamed collection cached under its old name: a staging name used twice would write to the live one.

    RESTORE_JOURNAL = "restore_journal"
    STAGING_MARK = "__restore_"
    RESTORE_STALE_S = 120.0  # a journal not touched for this long belongs to a restore that died
    _JOURNAL_ID = "restore"
    RESTORES_SWITCHED = "restores_switched"  # one document counting them; never backed up nor restored itself

    def dump(self, collection: str) -> Iterable[dict[str, Any]]:
        """Every document, as a backup holds it: packed registry paths unpacked."""
        docs = self.db[collection].find({})
        return map(_unpacked, docs) if collection == "registry" else docs

    def begin_restore(self, owner: str, now_s: float) -> bool:
        """Take the journal and make empty staging collections; False: another restore is under way."""
        self.finish_interrupted_restore(now_s)
        try:
            self.db[self.RESTORE_JOURNAL].insert_one(
                {"_id": self._JOURNAL_ID, "state": "loading", "owner": owner, "beat_s": now_s})
        except DuplicateKeyError:
            return False
        self._drop_staging()
        for collection in COLLECTIONS:
            self.db.create_collection(self._staging(collection, owner))
        return True

    def stage_documents(self, owner: str, collection: str, docs: list[dict[str, Any]], *, now_s: float) -> None:
        """Add documents to a staging collection. ValueError: a document was refused (a duplicate _id),
        or this restore no longer holds the journal."""
        if docs:
            if collection == "registry":
                docs = list(map(_repacked, docs))
            try:
                self.db[self._staging(collection, owner)].insert_many(docs, ordered=True)
            except pymongo.errors.BulkWriteError as exc:
                first = (exc.details.get("writeErrors") or [{}])[0]
                if first.get("code") == 11000:
                    duplicate = (first.get("op") or {}).get("_id")
                    raise ValueError(f"two {collection} documents have the _id {duplicate!r}") from None
                raise ValueError(f"the database refused a {collection} document: {first.get('errmsg')}") from None
        self._beat(owner, now_s)

    def switch_restore(self, owner: str, counts: dict[str, int], now_s: float) -> None:
        """Put the staging collections in place of the live ones, once each holds `counts[collection]`
        documents (ValueError, nothing switched, if not)."""
        for collection in COLLECTIONS:
            found = self.db[self._staging(collection, owner)].count_documents({})
            if found != counts.get(collection, 0):
                raise ValueError(f"{found} {collection} documents were loaded, {counts.get(collection, 0)} expected")
        switched = self.db[self.RESTORE_JOURNAL].update_one(
            {"_id": self._JOURNAL_ID, "owner": owner, "state": "loading"},
            {"$set": {"state": "switching", "beat_s": now_s}})
        if switched.matched_count == 0:
            raise ValueError(self._LOST)
        self._complete_switch(owner)

    def abandon_restore(self, owner: str) -> None:
        """Roll back a restore that is still loading: the live collections were never touched."""
        if self.db[self.RESTORE_JOURNAL].find_one({"_id": self._JOURNAL_ID, "owner": owner, "state": "loading"}):
            self._drop_staging()
            self.db[self.RESTORE_JOURNAL].delete_one({"_id": self._JOURNAL_ID, "owner": owner})

    def finish_interrupted_restore(self, now_s: float, stale_s: float = RESTORE_STALE_S) -> str | None:
        """Call at start. Completes a restore that died while switching (all of it was loaded); rolls back
        one that died while loading, once its journal is older than stale_s (0 when no other process can
        share the database, as with the embedded store). What it did, or None."""
        journal = self.db[self.RESTORE_JOURNAL].find_one({"_id": self._JOURNAL_ID})
        if journal is None:
            return "dropped a restore's leftover staging collections" if self._drop_staging() else None
        if journal.get("state") == "switching":
            self._complete_switch(journal["owner"])
            return "completed a restore that was interrupted while switching collections"
        if now_s - float(journal.get("beat_s") or 0) < stale_s:
            return None
        if self.db[self.RESTORE_JOURNAL].delete_one(
                {"_id": self._JOURNAL_ID, "state": "loading", "beat_s": journal.get("beat_s")}).deleted_count:
            self._drop_staging()
            return "rolled back a restore that died while loading (the database was not changed)"
        return None

    _LOST = "the restore lost its journal (another livedmd found it stale and rolled it back)"

    def _staging(self, collection: str, owner: str) -> str:
        return f"{collection}{self.STAGING_MARK}{hashlib.sha256(owner.encode()).hexdigest()[:12]}"

    def _beat(self, owner: str, now_s: float) -> None:
        if self.db[self.RESTORE_JOURNAL].update_one({"_id": self._JOURNAL_ID, "owner": owner, "state": "loading"},
                                                    {"$set": {"beat_s": now_s}}).matched_count == 0:
            raise ValueError(self._LOST)

    def _drop_staging(self) -> int:
        staged = [c for c in self.db.list_collection_names() if self.STAGING_MARK in c]
        for name in staged:
            self.db.drop_collection(name)
        return len(staged)

    def _complete_switch(self, owner: str) -> None:
        """Idempotent: a collection already switched has no staging twin left."""
        for collection in COLLECTIONS:
            if self._staging(collection, owner) in self.db.list_collection_names():
                self._rename_over(self._staging(collection, owner), collection)
        self.db.walks.delete_many({})  # what walks saw does not match the restored registry: walk again in full
        self.ensure_indexes()  # the staging twins were made without them
        self.reconcile_totals()  # a backup's totals are put right against its sessions
        self.db[self.RESTORES_SWITCHED].update_one({"_id": "count"}, {"$inc": {"n": 1}}, upsert=True)
        self.db[self.RESTORE_JOURNAL].delete_one({"_id": self._JOURNAL_ID})

    def _rename_over(self, source: str, target: str) -> None:
        """renameCollection with dropTarget. MongoDB runs it only on the admin database (pymongo's rename
        helper), atomically; nx-27017 runs it only on the collection's own database and ignores
        dropTarget, so there the target is dropped first (again if a concurrent write re-created it)."""
        command = {"renameCollection": f"{self.db.name}.{source}", "to": f"{self.db.name}.{target}",
                   "dropTarget": True}
        for _attempt in range(5):
            try:
                self.db.command(command)
                return
            except pymongo.errors.OperationFailure as exc:
                if exc.code == 13 or "admin database" in str(exc):
                    self._rename_on_admin(source, target)
                    return
                if exc.code == 26:  # NamespaceNotFound: another process switched it already
                    return
            self.db.drop_collection(target)
        raise RuntimeError(f"could not rename {source} to {target}; the restore completes at the next start")

    def _rename_on_admin(self, source: str, target: str) -> None:
        try:
            self.db[source].rename(target, dropTarget=True)
        except pymongo.errors.OperationFailure as exc:
            if exc.code != 26:
                raise

    # --- audit log (append-only) -----------------------------------------------------------------

    def append_audit(self, entry: dict[str, Any]) -> None:
        self.db.audit.insert_one(dict(entry))

    def append_audit_many(self, entries: list[dict[str, Any]]) -> None:
        if entries:
            self.db.audit.insert_many([dict(entry) for entry in entries])

    def find_audit(self, *, project_uid: str | None = None, session_uid: str | None = None,
                   limit: int) -> list[dict[str, Any]]:
        """Newest first, of one project (and session) or of everything."""
        query: dict[str, Any] = {}
        if project_uid is not None:
            query["project_uid"] = project_uid
        if session_uid is not None:
            query["session_uid"] = session_uid
        return list(self.db.audit.find(query, NO_ID).sort("at", -1).limit(limit))

    def users_with_live_tokens(self, users: set[str], now: float) -> set[str]:
        """Which of `users` hold a token that signs in as them: unexpired and not scoped to a hook run."""
        return {t["user"] for t in self.db.tokens.find({"user": {"$in": sorted(users)}})
                if t.get("scope") is None and (t.get("expires_at") is None or t["expires_at"] >= now)}


def _chunks(key: str, source: str, paths_by_datatype: dict[str, list[str]],
            *, gen: str | None = None) -> Iterable[dict[str, Any]]:
    for datatype, paths in paths_by_datatype.items():
        for start in range(0, len(paths), CHUNK_PATHS):
            doc: dict[str, Any] = {"key": key, "source": source, "datatype": datatype,
                                   "paths": [_stored_path(p) for p in paths[start:start + CHUNK_PATHS]]}
            if gen is not None:
                doc["gen"] = gen
            yield doc


def _packed_docs(key: str, pieces: Pieces, *, gen: str | None) -> Iterator[dict[str, Any]]:
    for datatype, parts in pieces.items():
        for piece in parts:
            packed = piece.packed if piece.packed is not None else zlib.compress(piece.names, 1)
            doc: dict[str, Any] = {"key": key, "source": "scan", "datatype": datatype, "count": piece.count,
                                   "packed": Binary(packed)}
            if piece.prefix:
                doc["prefix"] = Binary(piece.prefix)
            if gen is not None:
                doc["gen"] = gen
            yield doc


class DamagedRegistry(ValueError):
    """A registry document that does not read back whole; its message says which and what repairs it."""


def _doc_paths(doc: dict[str, Any]) -> list[str]:
    """A registry document's paths, packed or not. DamagedRegistry: a packed one that does not unpack whole."""
    if "packed" not in doc:
        return list(map(_loaded_path, doc["paths"]))
    count = doc.get("count")
    repair = f"`livedm refresh {doc.get('key', '?').replace('/', ' ')} --full` writes it again"
    if type(count) is not int or count < 0:
        raise DamagedRegistry(f"registry document {doc.get('_id')} of {doc.get('key')} has no count; {repair}")
    prefix = doc.get("prefix", b"")
    if not isinstance(prefix, bytes) or b"\0" in prefix or len(prefix) > PREFIX_BYTES_MAX or (
            prefix and not prefix.endswith(b"/")):
        raise DamagedRegistry(f"registry document {doc.get('_id')} of {doc.get('key')} has a prefix that is no "
                              f"directory; {repair}")
    try:
        text = inflated(doc["packed"], PACKED_BYTES_MAX, "a packed registry document")
    except ValueError as exc:
        raise DamagedRegistry(f"registry document {doc.get('_id')} of {doc.get('key')} is damaged ({exc}); "
                              f"{repair}") from None
    what = f"registry document {doc.get('_id')} of {doc.get('key')}"
    held = text.count(b"\0") + 1 if text else 0
    if held != count:  # counted before a prefix is repeated: a forged document of many short names under a long
        # prefix would otherwise build gigabytes of paths (a walk's documents hold at most PACKED_CHUNK_BYTES)
        raise DamagedRegistry(f"{what} holds {held} paths, not {count}; {repair}")
    if prefix and len(text) + count * len(prefix) > PACKED_BYTES_MAX:
        raise DamagedRegistry(f"{what} holds more bytes of paths than a document may; {repair}")
    if prefix and text:
        text = Piece(prefix, text, count).joined()
    return text.decode("utf-8", "surrogateescape").split("\0") if text else []


def _unpacked(doc: dict[str, Any]) -> dict[str, Any]:
    """A packed registry document as a backup holds it: `count`, `prefix` and `packed` become `paths`."""
    if "packed" not in doc:
        return doc
    out: dict[str, Any] = {}
    for name, value in doc.items():
        if name == "packed":
            out["paths"] = [_stored_path(p) for p in _doc_paths(doc)]
        elif name not in ("count", "prefix"):
            out[name] = value
    return out


def _repacked(doc: dict[str, Any]) -> dict[str, Any]:
    """A restored scan document as the walk writes it (the inverse of _unpacked): one directory's paths as
    its names under their prefix."""
    if doc.get("source") != "scan" or "paths" not in doc:
        return doc
    paths = [_loaded_path(p).encode("utf-8", "surrogateescape") for p in doc["paths"]]
    directory = paths[0].rpartition(b"/")[0] if paths else b""
    if directory and not directory.startswith(b"/") and all(
            p.rpartition(b"/")[0] == directory and not p.endswith(b"/") for p in paths):  # no empty names
        piece = Piece(directory + b"/", b"\0".join(p.rpartition(b"/")[2] for p in paths), len(paths))
    else:
        piece = Piece(b"", b"\0".join(paths), len(paths))
    out: dict[str, Any] = {}
    for name, value in doc.items():
        if name == "paths":
            out["count"] = piece.count
            out["packed"] = Binary(zlib.compress(piece.names, 1))
            if piece.prefix:
                out["prefix"] = Binary(piece.prefix)
        else:
            out[name] = value
    return out


def empty_totals() -> dict[str, Any]:
    return {"session_count": 0, "sessions_by_status": {},
            "data_management": {dt: {"size": 0, "file_count": 0} for dt in DATATYPES}}


def totals_from_groups(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A project's totals from its sessions' sums grouped by session status."""
    totals = empty_totals()
    for row in rows:
        totals["session_count"] += int(row["n"])
        totals["sessions_by_status"][str(row["_id"])] = int(row["n"])
        for dt in DATATYPES:
            totals["data_management"][dt]["size"] += int(row.get(f"{dt}_size") or 0)
            totals["data_management"][dt]["file_count"] += int(row.get(f"{dt}_files") or 0)
    return totals
