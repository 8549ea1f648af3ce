"""The check of a backup before a restore (SPEC §5: "a restored backup never brings back queued work"): every
document against its collection's schema (backup_schema.py) as it arrives, then the file as a whole
against the rules livedm keeps when it writes (a registered file belongs to one session; a project's map of
session dirs names its sessions; the file is complete)."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any

import bson

from . import __version__, files
from .backup import (
    END_KEY,
    FORMAT_VERSION,
    HEADER_KEY,
    HOOK_USER,
    LEFT_OUT,
    UNVERIFIED_VERSIONS,
    kept,
    parse,
    reject,
    settle_transient,
)
from .backup_schema import (
    AUDIT_FIELDS,
    CATEGORY_FIELDS,
    COUNTER_FIELDS,
    JOB_ENVELOPE_FIELDS,
    JOB_FIELDS,
    JOB_LIST_FIELDS,
    JOB_PARAMS,
    PROJECT_DIRS_COUNTER,
    PROJECT_DIRS_FIELDS,
    PROJECT_FIELDS,
    REGISTRY_FIELDS,
    SESSION_FIELDS,
    TOKEN_FIELDS,
    USER_FIELDS,
    count,
    fields_problem,
    is_int,
    session_dir_shape,
)
from .domain import DATATYPES, DISCOVERED
from .errors import INVALID_REQUEST, ApiError
from .store import COLLECTIONS

MAX_DOC_BYTES = 16 << 20
DEFAULT_RAW_DIRS = ("import_movies",)  # the layout setting's raw dirs by default; a restore passes its own


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
    discovered: set[str] = field(default_factory=set)  # the uids of projects discovery found
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
        entry = parse(raw, self.line_no)
        if self.version is None:
            self._header(entry)
        elif self.end_counts is not None:
            raise reject(self.line_no, "there is more after the end line (two backups joined?)")
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
        if not is_int(version):
            raise reject(self.line_no, "not a livedm backup (the first line is not the backup header)")
        if version in UNVERIFIED_VERSIONS and not self.unverified_ok:
            raise reject(self.line_no, f"this backup is format {version}, written by an older livedm: it has no end "
                                        "line, so a copy cut short cannot be told from a whole one. Make a new backup "
                                        "if you can; if this file is all there is and you know it is whole, restore "
                                        "it with `livedm admin restore FILE --yes --unverified`")
        if version not in (*UNVERIFIED_VERSIONS, FORMAT_VERSION):
            raise reject(self.line_no, f"backup format {version} is not one this livedmd ({__version__}) reads "
                                        f"(format {FORMAT_VERSION}); restore it with the livedm that wrote it")
        self.version = version

    def _end(self, entry: dict[str, Any]) -> None:
        end = entry[END_KEY]
        counts = end.get("counts") if isinstance(end, dict) else None
        if set(entry) != {END_KEY} or not isinstance(counts, dict) or not all(map(count, counts.values())):
            raise reject(self.line_no, "the end line is malformed")
        self.end_counts = counts

    def _entry(self, entry: Any) -> None:
        if (not isinstance(entry, dict) or set(entry) != {"collection", "doc"}
                or entry["collection"] not in COLLECTIONS or not isinstance(entry["doc"], dict)):
            raise reject(self.line_no, 'not a livedm document (expected {"collection": <one of '
                                        f'{", ".join(COLLECTIONS)}>, "doc": {{...}}}})')
        collection, doc = entry["collection"], entry["doc"]
        position = COLLECTIONS.index(collection)
        if position < self.position:
            raise reject(self.line_no, f"{collection} comes after {COLLECTIONS[self.position]}; livedm writes "
                                        f"the collections in this order: {', '.join(COLLECTIONS)}")
        self._collections_read(position)
        problem = self._problem(collection, doc)
        if problem is not None:
            raise reject(self.line_no, f"{collection} document {_name(doc)}: {problem}")
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
            if doc.get("source") == DISCOVERED:
                self.discovered.add(doc["uid"])
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
            if doc["project_uid"] not in self.discovered:  # cryoSPARC numbers those: no counter of ours
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
        unlabelled = (p for p in self.ids["projects"] if "-" not in p)  # discovery raises the counter past those
        needed = {"projects": max((_uid_number(p) for p in unlabelled), default=0), "jobs": self.max_job}
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
    return int(uid.rpartition("-")[2][1:])


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


