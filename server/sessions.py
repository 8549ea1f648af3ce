"""The rules of projects, sessions and their files, between the API and the store. Blocking: the API
runs every call in a worker thread."""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from . import files
from .alerts import category_alert
from .coalesce import Coalescer
from .config import Config
from .dirwalk import Totals
from .domain import (
    DATATYPES,
    DISCOVERED,
    LIVEDM_ACTOR,
    MISSING_FROM,
    TRANSIENT_STATUSES,
    check_datatype,
    check_project_uid,
    check_session_uid,
    check_title,
    new_data_management,
    now_iso,
    session_status_after,
    status_after_measure,
)
from .errors import ApiError, conflict, invalid_params, not_found
from .session_walks import SessionWalks
from .states import BY_REFRESH, BY_REPAIR, VISIBLE, CategoryStates
from .store import Store, empty_totals

log = logging.getLogger(__name__)

_PUBLIC_SESSION_FIELDS = ("project_uid", "uid", "title", "status", "session_dir", "created_at", "started_at",
                          "paused_at", "completed_at", "data_management", "measured_at",
                          # what discovery read from cryoSPARC's files (null for sessions made by hand)
                          "cryosparc_status", "workspace_uid", "created_by_user_id", "raw_data_dirs", "exposures",
                          "left_cryosparc_at")
_MEASURE_RETRIES = 5
RESERVE_ATTEMPTS = 100  # optimistic reservations of dirs: each loss means another creation went through
RESERVE_BACKOFF_S = 0.005
CALCULATING_STALE_S = 6 * 3600.0  # longer than any measure: a category calculating this long was left so
LIVEDM = LIVEDM_ACTOR  # the actor livedm's own changes are audited as


_PROJECT_NUMBER = re.compile(r"P[1-9][0-9]{0,8}")  # what check_project_uid accepts of an unlabelled uid
_PROJECT_BOOKKEEPING = ("totals", "totals_version", "sessions_version", "changed_s")  # the store's, not shown


def public_session(session: dict[str, Any]) -> dict[str, Any]:
    return {field: session.get(field) for field in _PUBLIC_SESSION_FIELDS}


def cryosparc_session(session: dict[str, Any]) -> dict[str, Any]:
    exposures = session.get("exposures") or {}
    return {"uid": session.get("workspace_uid") or session["uid"], "session_uid": session["uid"],
            "project_uid": session["project_uid"], "workspace_type": "live", "title": session["title"],
            "status": session.get("cryosparc_status") or session["status"], "session_dir": session["session_dir"],
            "created_at": session["created_at"], "paused_at": session["paused_at"],
            "completed_at": session["completed_at"], "created_by_user_id": session.get("created_by_user_id"),
            "deleted": False,
            "stats": {"total_exposures": exposures.get("total"), "total_accepted": exposures.get("accepted"),
                      "total_rejected": exposures.get("rejected")},
            "data_management": {dt: {"status": c["status"], "prev_status": c.get("prev_status"),
                                     "size": c["size"]} for dt, c in session["data_management"].items()}}


def _refuse_if_discovered(project: dict[str, Any], why: str) -> None:
    if project.get("source") == DISCOVERED:
        raise conflict(f"project {project['uid']} was discovered in cryoSPARC's files; {why}")


class Sessions:
    def __init__(self, store: Store, config: Config, states: CategoryStates) -> None:
        self.store = store
        self.config = config
        self.states = states
        self._refreshes = Coalescer()
        self.walks = SessionWalks(store, config)

    # --- lookups ---------------------------------------------------------------------------------

    def project(self, project_uid: str) -> dict[str, Any]:
        project = self.store.get_project(check_project_uid(project_uid))
        if project is None:
            raise not_found(f"project {project_uid} does not exist; `livedm ls` shows the projects")
        return project

    def session(self, project_uid: str, session_uid: str) -> dict[str, Any]:
        self.project(project_uid)
        session = self.store.get_session(project_uid, check_session_uid(session_uid))
        if session is None:
            raise not_found(f"session {project_uid} {session_uid} does not exist; "
                            f"`livedm ls {project_uid}` shows its sessions")
        return session

    # --- projects --------------------------------------------------------------------------------

    @property
    def guarded_dirs(self) -> list[str]:
        """livedm's own directories: no project may hold them or lie inside them."""
        return [self.config.state_dir, str(self.config.hook_logs)]

    def check_project_location(self, project_dir: str) -> None:
        files.check_project_location(project_dir, self.config.data_roots, self.guarded_dirs)

    def create_project(self, title: str, project_dir: str) -> dict[str, Any]:
        title = check_title(title)
        project_dir = files.check_project_dir(project_dir)
        self.check_project_location(project_dir)
        real = os.path.realpath(project_dir)
        self._check_project_dir_free(self._project_dirs()[1], real, project_dir)
        pin = files.dir_pin(project_dir)
        for _attempt in range(RESERVE_ATTEMPTS):  # a number discovery took meanwhile is skipped
            uid = f"P{self.store.next_number('projects')}"
            if self.store.get_project(uid) is None:
                break
        if not _PROJECT_NUMBER.fullmatch(uid):
            raise conflict(f"no project uid is left ({uid} would not be one); nothing was made")
        self._reserve_project_dir(uid, real, project_dir)
        project = {"uid": uid, "title": title, "project_dir": project_dir, "created_at": now_iso(),
                   "dir_pin": pin, "session_dirs": {}, "dirs_version": 0}
        if not self.store.insert_project(project):
            self._release_project_dir(uid)
            raise conflict(f"project {uid} was discovered while this one was being made; try again")
        log.info("created project %s (%s) at %s", uid, title, project_dir)
        return self.get_project(uid)

    def _project_dirs(self, adding: tuple[str, str] | None = None) -> tuple[int | None, dict[str, str]]:
        """(version, {project uid: real dir}) of the facility's projects; without the reservation of `adding`
        (uid, real dir) when it is that very one and the project was never recorded (a livedmd died between
        the two: the project is being added again)."""
        version, dirs = self.store.project_dirs()
        if dirs is None:  # projects from before the map was kept
            dirs = {p["uid"]: os.path.realpath(p["project_dir"]) for p in self.store.list_projects()}
        if adding is not None and dirs.get(adding[0]) == adding[1] and self.store.get_project(adding[0]) is None:
            dirs = {uid: d for uid, d in dirs.items() if uid != adding[0]}
        return version, dirs

    @staticmethod
    def _check_project_dir_free(dirs: dict[str, str], real: str, shown: str) -> None:
        for other_uid, other in dirs.items():
            if files.dirs_overlap(real, other):
                raise conflict(f"{shown} is, holds or lies inside project {other_uid}'s directory ({other}); each "
                               "project needs a directory of its own")

    def _reserve_project_dir(self, uid: str, real: str, shown: str) -> None:
        """Of two projects created at once on overlapping dirs, one wins and the other checks again."""
        for _attempt in range(RESERVE_ATTEMPTS):
            version, dirs = self._project_dirs(adding=(uid, real))
            if uid in dirs:
                raise conflict(f"project {uid} exists already (at {dirs[uid]})")
            self._check_project_dir_free(dirs, real, shown)
            if self.store.reserve_project_dirs(version, {**dirs, uid: real}):
                return
            time.sleep(random.uniform(0, RESERVE_BACKOFF_S))  # lost a race: let the winners through
        raise conflict("projects kept being created while this one was; try again")

    def _release_project_dir(self, uid: str) -> None:
        for _attempt in range(RESERVE_ATTEMPTS):
            version, dirs = self._project_dirs()
            if uid not in dirs or self.store.reserve_project_dirs(version, {k: v for k, v in dirs.items() if k != uid}):
                return
            time.sleep(random.uniform(0, RESERVE_BACKOFF_S))

    def pin_projects(self) -> int:
        """Projects made before directories were pinned get their pin now (at start): from then on a
        directory swapped under them is refused."""
        pinned = 0
        for project in self.store.list_projects():
            if project.get("dir_pin") is None and os.path.isdir(project["project_dir"]) \
                    and not os.path.islink(project["project_dir"]):
                self.store.set_project_fields(project["uid"], {"dir_pin": files.dir_pin(project["project_dir"])})
                pinned += 1
        return pinned

    def check_project_identity(self, project: dict[str, Any]) -> None:
        """Refuse to act on a project whose path now leads to another directory. A path that is simply
        gone is not refused here: its categories show missing."""
        if not os.path.lexists(project["project_dir"]):
            return
        if project.get("dir_pin") is None:  # made before pins, and its dir was away at the last start
            self.pin_projects()
            project = self.project(project["uid"])
        try:
            files.check_pinned(project["project_dir"], project.get("dir_pin") or {"dev": -1, "ino": -1})
        except files.ProjectDirChanged as exc:
            raise conflict(f"project {project['uid']}: {exc}; nothing was done. An admin must check what "
                           "happened to it") from None

    def project_row(self, project: dict[str, Any]) -> dict[str, Any]:
        """The project as the API shows it: with its totals as kept (store.py keeps them as sessions change)."""
        totals = project.get("totals") or self.store.recompute_project_totals(project["uid"]) or empty_totals()
        row = {k: v for k, v in project.items() if k not in _PROJECT_BOOKKEEPING}
        return {**row, "session_count": totals["session_count"], "sessions_by_status": totals["sessions_by_status"],
                "data_management": totals["data_management"]}

    def get_project(self, project_uid: str) -> dict[str, Any]:
        return self.project_row(self.project(project_uid))

    def list_projects(self) -> list[dict[str, Any]]:
        return [self.project_row(project) for project in self.store.list_projects()]

    def with_alerts(self, sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The sessions as the API shows them, each category with its `alert` (null when all is well)."""
        jobs = self.store.get_jobs([c["job_id"] for s in sessions for c in s["data_management"].values()
                                    if c.get("status") == "deleting" and c.get("job_id")])
        now_s = time.time()
        shown = []
        for session in sessions:
            public = public_session(session)
            public["data_management"] = {
                dt: {**c, "alert": category_alert(c, jobs.get(c.get("job_id") or ""), now_s)}
                for dt, c in session["data_management"].items()}
            shown.append(public)
        return shown

    # --- sessions --------------------------------------------------------------------------------

    def session_dirs(self, project: dict[str, Any]) -> dict[str, str]:
        """{session uid: its dir relative to the project, symlinks resolved} for every session."""
        dirs = project.get("session_dirs")
        if dirs is None:  # a project from before the map was kept
            dirs = {s["uid"]: self._real_session_dir(project, s["session_dir"])
                    for s in self.store.list_sessions(project["uid"])}
        return dict(dirs)

    @staticmethod
    def _real_session_dir(project: dict[str, Any], session_dir: str) -> str:
        real_project = os.path.realpath(project["project_dir"])
        return os.path.relpath(os.path.realpath(os.path.join(project["project_dir"], session_dir)), real_project)

    @staticmethod
    def _check_session_dir_free(dirs: dict[str, str], session_dir: str, shown: str) -> None:
        for other_uid, other in dirs.items():
            if files.dirs_overlap(session_dir, other):
                raise conflict(f"session dir {shown} is, holds or lies inside session {other_uid}'s directory "
                               f"({other}); each session needs a directory of its own")

    def _check_no_registered_files_inside(self, project_uid: str, session_dir: str, shown: str) -> None:
        """A new session's directory may not hold files registered (by API) to another session: they
        would belong to two sessions."""
        keys = [f"{project_uid}/{s['uid']}" for s in self.store.list_sessions(project_uid)]
        for key, paths in self.store.api_registrations(keys).items():
            inside = next((p for p in paths if files.dirs_overlap(p, session_dir)), None)
            if inside is not None:
                raise conflict(f"session dir {shown} holds {inside}, a file registered to session "
                               f"{key.split('/')[1]}; each session needs a directory of its own")

    def _reserve_session_dir(self, project_uid: str, session_uid: str, session_dir: str, *, shown: str) -> None:
        for _attempt in range(RESERVE_ATTEMPTS):
            project = self.project(project_uid)
            dirs = self.session_dirs(project)
            self._check_session_dir_free(dirs, session_dir, shown)
            if self.store.reserve_session_dir(project_uid, project.get("dirs_version"),
                                              {**dirs, session_uid: session_dir}):
                return
            time.sleep(random.uniform(0, RESERVE_BACKOFF_S))  # lost a race: let the winners through
        raise conflict(f"sessions of {project_uid} kept being created while this one was; try again")

    def create_live_session(self, project_uid: str, title: str, session_dir: str | None = None) -> dict[str, Any]:
        project = self.project(project_uid)
        _refuse_if_discovered(project, "its sessions are cryoSPARC's: discovery adds them")
        title = check_title(title)
        if session_dir is not None:
            session_dir = files.check_session_dir(session_dir)
            files.check_session_root(project["project_dir"], session_dir)
            self._check_session_dir_free(self.session_dirs(project), self._real_session_dir(project, session_dir),
                                         session_dir)
        uid = f"S{self.store.next_number('sessions:' + project_uid)}"
        session_dir = session_dir or uid
        files.check_session_root(project["project_dir"], session_dir)
        real_dir = self._real_session_dir(project, session_dir)
        self._reserve_session_dir(project_uid, uid, real_dir, shown=session_dir)
        try:
            self._check_no_registered_files_inside(project_uid, real_dir, session_dir)
        except ApiError:
            self.store.release_session_dir(project_uid, uid)
            raise
        session: dict[str, Any] = {"project_uid": project_uid, "uid": uid, "title": title, "status": "paused",
                   "session_dir": session_dir, "created_at": now_iso(), "started_at": None, "paused_at": [],
                   "completed_at": None, "data_management": new_data_management(),
                   "scan_gen": None, "scan_digest": None}
        self.store.insert_session(session)
        log.info("created session %s %s (%s) in %s", project_uid, uid, title, session_dir)
        return public_session(session)

    def cryosparc_sessions(self, project_uid: str) -> list[dict[str, Any]]:
        """The sessions as cryoSPARC v4's rtp get_all_sessions_in_project answers them."""
        self.project(project_uid)
        return [cryosparc_session(s) for s in self.store.list_sessions(project_uid)]

    def get_session(self, project_uid: str, session_uid: str) -> dict[str, Any]:
        return self.with_alerts([self.session(project_uid, session_uid)])[0]

    def list_sessions(self, project_uid: str) -> list[dict[str, Any]]:
        self.project(project_uid)
        return self.with_alerts(self.store.list_sessions(project_uid))

    def change_session_status(self, project_uid: str, session_uid: str, action: str) -> dict[str, Any]:
        _refuse_if_discovered(self.project(project_uid), "cryoSPARC sets its sessions' status: discovery follows it")
        session = self.session(project_uid, session_uid)
        target = session_status_after(session["status"], action)
        changed = self.store.set_session_status(project_uid, session_uid, expect=session["status"], status=target,
                                                at=now_iso())
        if changed is None:
            raise conflict(f"session {project_uid} {session_uid} changed status meanwhile; try again")
        log.info("session %s %s is now %s", project_uid, session_uid, target)
        if target in ("paused", "completed"):  # as cryoSPARC >= 3.3.2 does
            self.refresh_session(project_uid, session_uid)
        return self.get_session(project_uid, session_uid)

    # --- discovered projects and sessions (discovery.py decides; the directory rules are these) ------

    def add_discovered_project(self, uid: str, project_dir: str, fields: dict[str, Any],
                               expect_pin: dict[str, int] | None = None) -> None:
        """A cryoSPARC project discovery found, under the uid it gives: checked, reserved and pinned as
        create_project does, and only if it is still the directory whose files were read (`expect_pin`).
        ApiError (conflict, forbidden) if its directory may not be a project's."""
        check_project_uid(uid)
        project_dir = files.check_project_dir(project_dir)
        self.check_project_location(project_dir)
        real = os.path.realpath(project_dir)
        self._check_project_dir_free(self._project_dirs(adding=(uid, real))[1], real, project_dir)
        pin = files.dir_pin(project_dir)
        if expect_pin is not None and pin != expect_pin:
            raise conflict(f"{project_dir} is no longer the directory whose project.json was read (moved or "
                           "replaced meanwhile); nothing was recorded: it is read again next pass")
        self._reserve_project_dir(uid, real, project_dir)
        project = {"created_at": now_iso(), **fields, "uid": uid, "project_dir": project_dir, "dir_pin": pin,
                   "session_dirs": {}, "dirs_version": 0, "source": DISCOVERED}
        if not self.store.insert_project(project):  # recorded meanwhile, reserved as this one was: kept
            raise conflict(f"project {uid} exists already")

    def add_discovered_sessions(self, project_uid: str, new: dict[str, dict[str, Any]]) -> dict[str, str]:
        """cryoSPARC Live sessions of one project, under cryoSPARC's uids and session dirs, checked as
        create_live_session checks one and reserved in one update. {session uid: why it was refused}."""
        refused: dict[str, str] = {}
        for _attempt in range(RESERVE_ATTEMPTS):
            project = self.project(project_uid)
            dirs = self.session_dirs(project)
            stale = [uid for uid in new if uid in dirs and self.store.get_session(project_uid, uid) is None]
            for uid in stale:  # reserved by a livedmd that died before recording them: added again now
                del dirs[uid]
            taken: dict[str, tuple[str, dict[str, Any]]] = {}
            for session_uid, fields in new.items():
                if session_uid in refused:
                    continue
                try:
                    session_dir = files.check_session_dir(fields["session_dir"])
                    files.check_session_root(project["project_dir"], session_dir)
                    real_dir = self._real_session_dir(project, session_dir)
                    self._check_session_dir_free({**dirs, **{u: d for u, (d, _) in taken.items()}}, real_dir,
                                                 session_dir)
                    if check_session_uid(session_uid) in dirs:
                        raise conflict(f"session {project_uid} {session_uid} exists already")
                except ApiError as exc:
                    refused[session_uid] = exc.message
                    continue
                taken[session_uid] = (real_dir, {**fields, "session_dir": session_dir})
            if not taken:
                return refused
            if self.store.reserve_session_dir(project_uid, project.get("dirs_version"),
                                              {**dirs, **{u: d for u, (d, _) in taken.items()}}):
                break
            time.sleep(random.uniform(0, RESERVE_BACKOFF_S))
        else:
            raise conflict(f"sessions of {project_uid} kept being created while these were; the next pass tries again")
        sessions = [{"started_at": None, "paused_at": [], "completed_at": None, **fields, "project_uid": project_uid,
                     "uid": uid, "data_management": new_data_management(), "scan_gen": None, "scan_digest": None,
                     "measured_at": None} for uid, (_, fields) in taken.items()]
        inserted = set(self.store.insert_sessions(sessions))
        for uid in taken.keys() - inserted:  # recorded meanwhile: the reservation is that session's, kept
            refused[uid] = f"session {project_uid} {uid} exists already"
        return refused

    def mark_missing(self, project_uid: str, session_uid: str, reason: str) -> int:
        """Missing is not empty: the session's categories show missing, their last figures kept, until
        it is measured again where it was. How many categories changed."""
        changed = 0
        for dt, category in self.session(project_uid, session_uid)["data_management"].items():
            if category["status"] in MISSING_FROM:
                changed += self.states.change(project_uid=project_uid, session_uid=session_uid, datatype=dt,
                                              expect=category["status"], to="missing", actor=LIVEDM, by=BY_REFRESH,
                                              reason=reason) is not None
        return changed

    # --- files -----------------------------------------------------------------------------------

    def register_files(self, project_uid: str, session_uid: str, datatype: str,
                       *, paths: list[str]) -> dict[str, Any]:
        check_datatype(datatype)
        session = self.session(project_uid, session_uid)
        project_dir = self.project(project_uid)["project_dir"]
        if not paths:
            raise invalid_params("paths is empty; give one or more file paths")
        registry = self.store.read_registry(project_uid, session_uid, session.get("scan_gen"))
        owner = {path: dt for source in registry.values() for dt, ps in source.items() for path in ps}
        all_dirs = self.session_dirs(self.project(project_uid))
        other_dirs = {uid: d for uid, d in all_dirs.items() if uid != session_uid}
        raw_trees = self.raw_trees(all_dirs.values())
        new: list[str] = []
        seen: set[str] = set()
        for index, path in enumerate(paths):
            rel = files.project_relative(project_dir, path)
            files.check_registrable(project_dir, rel)
            if datatype != "raw" and any(files.dirs_overlap(rel, tree) for tree in raw_trees):
                raise invalid_params(f"{path} lies in a session's raw data directory: it is raw data, never "
                                     f"{datatype}", index=index)
            for other_uid, other_dir in other_dirs.items():
                if files.dirs_overlap(rel, other_dir):
                    raise invalid_params(f"{path} lies in session {other_uid}'s directory; a file belongs to one "
                                         "session", index=index)
            registered_as = owner.get(rel)
            if registered_as is not None and registered_as != datatype and rel not in registry["scan"][datatype]:
                raise invalid_params(f"{path} is already registered as {registered_as}; a file belongs to one "
                                     "datatype", index=index)
            if registered_as is None and rel not in seen:
                seen.add(rel)
                new.append(rel)
        other_keys = [f"{project_uid}/{uid}" for uid in other_dirs]
        for path, key in self.store.api_path_owners(other_keys, new).items():
            raise invalid_params(f"{path} is registered to session {key.split('/')[1]} already; a file belongs to "
                                 "one session", index=new.index(path))
        self.store.add_api_paths(project_uid, session_uid, datatype, paths=new)
        log.info("registered %d file(s) as %s in %s %s", len(new), datatype, project_uid, session_uid)
        self.refresh_session(project_uid, session_uid)
        return {"registered": len(new), "already_registered": len(paths) - len(new),
                "data_management": self.session(project_uid, session_uid)["data_management"][datatype]}

    def raw_trees(self, session_dirs: Iterable[str]) -> list[str]:
        """The sessions' raw layout dirs (import_movies/), relative to the project."""
        raw_layout = [directory for directory, datatype in self.config.layout if datatype == "raw"]
        return [f"{d}/{r}" for d in session_dirs for r in raw_layout]

    def registered_paths(self, project_uid: str, session_uid: str) -> dict[str, list[str]]:
        session = self.session(project_uid, session_uid)
        registry = self.store.read_registry(project_uid, session_uid, session.get("scan_gen"))
        return {dt: sorted(set(registry["scan"][dt]) | set(registry["api"][dt])) for dt in DATATYPES}

    def file_paths(self, project_uid: str, session_uid: str, datatypes: tuple[str, ...]) -> dict[str, list[str]]:
        """{datatype: absolute paths}. Raw gives the movies its links lead to, and under "missing" those they
        should lead to but that are gone: an archiver copies what is there and reports the rest."""
        project_dir = self.project(project_uid)["project_dir"]
        merged = self.registered_paths(project_uid, session_uid)
        listed = {dt: files.absolute_paths(project_dir, merged[dt], resolve_links=False)
                  for dt in datatypes if dt != "raw"}
        if "raw" in datatypes:
            listed["raw"], listed["missing"] = files.movie_paths(project_dir, merged["raw"])
        return {key: listed[key] for key in (*datatypes, "missing") if key in listed}

    def get_datatype_file_paths(self, project_uid: str, session_uid: str, datatype: str) -> dict[str, list[str]]:
        if check_datatype(datatype) == "thumbnails":
            raise invalid_params("file lists are not offered for thumbnails (as in cryoSPARC)")
        return self.file_paths(project_uid, session_uid, (datatype,))

    def get_project_file_paths(self, project_uid: str) -> dict[str, dict[str, list[str]]]:
        self.project(project_uid)
        return {s["uid"]: self.file_paths(project_uid, s["uid"], DATATYPES)
                for s in self.store.list_sessions(project_uid)}

    # --- sizes -----------------------------------------------------------------------------------

    def refresh_session(self, project_uid: str, session_uid: str, *, full: bool | None = False) -> dict[str, Any]:
        """Scan the session dir by the layout rules, measure every datatype, store it; the new
        data_management. `full`: stat every file (True), only what changed since the last walk (False), or
        as the schedule says (None; session_walks.py). Refreshes of one session asked at once share their
        walks."""
        return self._refreshes.run((project_uid, session_uid, full),
                                   lambda: self._refresh(project_uid, session_uid, full=full))

    def _refresh(self, project_uid: str, session_uid: str, *, full: bool | None) -> dict[str, Any]:
        project = self.project(project_uid)
        self.check_project_identity(project)
        project_dir = project["project_dir"]
        session = self.session(project_uid, session_uid)
        if project.get("gone_at") or session.get("left_cryosparc_at"):  # missing until discovery finds it again
            return session["data_management"]
        current_id = files.session_dir_id(project_dir, session["session_dir"])
        pinned_id = session.get("dir_id")
        if pinned_id is not None and current_id != pinned_id:
            return self._mark_unreachable(project_uid, session_uid, session, replaced=current_id is not None)
        if pinned_id is None and current_id is None:  # never there: never measured, not 0 B
            return session["data_management"]
        if pinned_id is None and current_id is not None:
            self._pin_session_dir(project_uid, session_uid, session["session_dir"], identity=current_id)
        before = self._begin_measure(project_uid, session_uid, session)
        try:
            # the walk state is written behind: the new figures are stored and answered first
            with self.walks.measuring(project_uid, session_uid, session, project_dir, full=full,
                                      behind=True) as measured:
                return self._store_measures(project_uid, session_uid, session, measures=measured.totals,
                                            before=before)
        except BaseException:
            self._end_measure(project_uid, session_uid, before)
            raise

    def _end_measure(self, project_uid: str, session_uid: str, before: dict[str, str]) -> None:
        """A measure that failed: the categories go back to what they were."""
        for dt, status in before.items():
            self.states.change(project_uid=project_uid, session_uid=session_uid, datatype=dt, expect="calculating",
                               to=status, actor=LIVEDM, by=BY_REFRESH, quiet=True)

    def check_session_identity(self, project: dict[str, Any], session: dict[str, Any]) -> None:
        """Refuse to act on a session whose directory is not the one it was measured in (or is another
        session's)."""
        current = files.session_dir_id(project["project_dir"], session["session_dir"])
        pinned = session.get("dir_id")
        if pinned is not None and current is not None and current != pinned:
            raise conflict(f"the directory of {project['uid']} {session['uid']} ({session['session_dir']}) is not "
                           "the one it was measured in (moved or replaced); nothing was done")
        if pinned is None and current is not None:
            owner = self.store.session_with_dir_id(current)
            if owner is not None and owner != (project["uid"], session["uid"]):
                raise conflict(f"the directory of {project['uid']} {session['uid']} is the one session {owner[0]} "
                               f"{owner[1]} was measured in (moved here?); nothing was done")

    def _pin_session_dir(self, project_uid: str, session_uid: str, session_dir: str, *, identity: str) -> None:
        """The first time a session's directory is measured, it is pinned: a deletion later refuses to go
        into another directory put in its place. A directory pinned by another session is refused."""
        owner = self.store.session_with_dir_id(identity)
        if owner is not None and owner != (project_uid, session_uid):
            raise conflict(f"{session_dir} of {project_uid} {session_uid} is the directory session {owner[0]} "
                           f"{owner[1]} was measured in (moved or renamed here?); nothing was measured. Move it "
                           "back, or give this session its own directory")
        self.store.pin_session_dir(project_uid, session_uid, identity)

    def _mark_unreachable(self, project_uid: str, session_uid: str, session: dict[str, Any],
                          *, replaced: bool) -> dict[str, Any]:
        """Missing is not empty: a session dir that is gone (or is another directory now) keeps its last
        figures, and its categories show missing, until the directory it was measured in is back."""
        why = "replaced by another directory" if replaced else "gone (unmounted, moved or removed)"
        log.warning("%s %s: the session dir %s is %s; its categories show missing", project_uid, session_uid,
                    session["session_dir"], why)
        self.mark_missing(project_uid, session_uid, f"session dir {why}")
        return self.session(project_uid, session_uid)["data_management"]

    def _begin_measure(self, project_uid: str, session_uid: str, session: dict[str, Any]) -> dict[str, str]:
        """The categories being measured show calculating (as cryoSPARC's do); {datatype: status before}."""
        before = {dt: c["status"] for dt, c in session["data_management"].items()
                  if c["status"] not in TRANSIENT_STATUSES}  # a deletion's keeps its status
        if self.states.change_quietly(project_uid=project_uid, session_uid=session_uid, actor=LIVEDM,
                                      changes={dt: (status, "calculating", status) for dt, status in before.items()}):
            return before
        before = {}
        for dt, category in self.session(project_uid, session_uid)["data_management"].items():
            if category["status"] in TRANSIENT_STATUSES:
                continue
            if self.states.change(project_uid=project_uid, session_uid=session_uid, datatype=dt,
                                  expect=category["status"], to="calculating", actor=LIVEDM, by=BY_REFRESH,
                                  quiet=True) is not None:
                before[dt] = category["status"]
        return before

    def _store_measures(self, project_uid: str, session_uid: str, session: dict[str, Any],
                        *, measures: dict[str, Totals], before: dict[str, str]) -> dict[str, Any]:
        """Sizes first; then each category goes back from calculating, or to or from missing when all
        its files went (or came back). A status changed by someone meanwhile wins."""
        now = now_iso()
        updated = self.store.set_measures(project_uid, session_uid, {
            dt: {"size": m.size, "file_count": m.present, "updated_at": now} for dt, m in measures.items()},
            session_fields={"measured_at": now, "dir_stamp": files.dir_stamp(
                self.project(project_uid)["project_dir"], session["session_dir"])})
        after: dict[str, tuple[str, str | None]] = {}
        for dt, m in measures.items():
            category = updated["data_management"][dt]
            measuring = dt in before and category["status"] == "calculating"
            was = {**category, "status": before[dt]} if measuring else category
            after[dt] = status_after_measure(was, m.registered, m.present)
        back = {dt: ("calculating", status, prev) for dt, (status, prev) in after.items()
                if dt in before and updated["data_management"][dt]["status"] == "calculating" and status == before[dt]}
        if back and self.states.change_quietly(project_uid=project_uid, session_uid=session_uid, changes=back,
                                               actor=LIVEDM):
            after = {dt: change for dt, change in after.items() if dt not in back}
        for dt, (status, prev) in after.items():
            category = updated["data_management"][dt]
            measuring = dt in before and category["status"] == "calculating"
            if measuring:
                self.states.change(project_uid=project_uid, session_uid=session_uid, datatype=dt,
                                   expect="calculating", to=status, prev_status=prev, actor=LIVEDM,
                                   by=BY_REFRESH, quiet=status == before[dt], was=before[dt])
            elif status != category["status"] and category["status"] not in TRANSIENT_STATUSES:
                self.states.change(project_uid=project_uid, session_uid=session_uid, datatype=dt,
                                   expect=category["status"], to=status, prev_status=prev, actor=LIVEDM,
                                   by=BY_REFRESH)
        return self.session(project_uid, session_uid)["data_management"]

    def repair_calculating(self, stale_s: float = CALCULATING_STALE_S) -> int:
        """Categories left calculating by a livedmd that died mid-measure go back to their status."""
        cutoff = datetime.fromtimestamp(time.time() - stale_s, UTC).isoformat(timespec="milliseconds")
        repaired = 0
        for datatype in DATATYPES:
            for session in self.store.sessions_with_status(datatype, "calculating"):
                category = session["data_management"][datatype]
                if (category.get("status_changed_at") or "") > cutoff.replace("+00:00", "Z"):
                    continue
                back = category.get("prev_status") if category.get("prev_status") in VISIBLE else "active"
                repaired += self.states.change(project_uid=session["project_uid"], session_uid=session["uid"],
                                               datatype=datatype, expect="calculating", to=back, actor=LIVEDM,
                                               by=BY_REPAIR, quiet=True) is not None
        return repaired

    def sessions_due(self, refresh_interval_s: float) -> list[tuple[str, str]]:
        """The sessions a scheduled refresh measures: running and paused ones last measured longer ago than
        the interval, completed ones whose directory changed (or never measured), none that is gone."""
        cutoff = datetime.fromtimestamp(time.time() - refresh_interval_s, UTC).isoformat(timespec="milliseconds")
        cutoff = cutoff.replace("+00:00", "Z")
        projects = {p["uid"]: p for p in self.store.list_projects()}
        due: list[tuple[str, str]] = []
        for session in self.store.list_sessions():
            project = projects.get(session["project_uid"])
            if project is None or project.get("gone_at") or session.get("left_cryosparc_at"):
                continue
            measured = session.get("measured_at")
            if session["status"] != "completed":
                if measured is None or measured < cutoff:
                    due.append((session["project_uid"], session["uid"]))
            elif measured is None or files.dir_stamp(project["project_dir"], session["session_dir"]) \
                    != session.get("dir_stamp"):
                due.append((session["project_uid"], session["uid"]))
        return due

    def refresh_due(self, refresh_interval_s: float, progress: Callable[..., None]) -> dict[str, int]:
        """The scheduled refresh: every session due, one after another; a session that cannot be measured
        now (its directory replaced, say) is counted and left to the next one."""
        due = self.sessions_due(refresh_interval_s)
        refreshed = failed = 0
        for index, (project_uid, session_uid) in enumerate(due):
            progress(done=index, total=len(due))
            try:
                self.refresh_session(project_uid, session_uid, full=None)
                refreshed += 1
            except ApiError as exc:
                failed += 1
                log.warning("scheduled refresh of %s %s: %s", project_uid, session_uid, exc.message)
        progress(force=True, done=len(due), total=len(due))
        return {"due": len(due), "refreshed": refreshed, "failed": failed}

    def refresh_project(self, project_uid: str, progress: Callable[..., None],
                        only: str | None = None, *, full: bool = False) -> dict[str, int]:
        """Refresh every session of the project (or `only` that one); {session_uid: total bytes}. Safe to
        run again."""
        sessions = [s for s in self.store.list_sessions(check_project_uid(project_uid)) if only in (None, s["uid"])]
        totals: dict[str, int] = {}
        for index, session in enumerate(sessions):
            progress(done=index, total=len(sessions))
            data_management = self.refresh_session(project_uid, session["uid"], full=full)
            totals[session["uid"]] = sum(int(c["size"]) for c in data_management.values())
        progress(force=True, done=len(sessions), total=len(sessions))
        return totals

    def update_session_datatype_sizes(self, project_uid: str, session_uid: str, *, full: bool = False) -> int:
        data_management = self.refresh_session(project_uid, session_uid, full=full)
        return sum(int(category["size"]) for category in data_management.values())

    def get_data_management_stats(self, project_uid: str) -> dict[str, dict[str, Any]]:
        self.project(project_uid)
        return {s["uid"]: s["data_management"] for s in self.store.list_sessions(project_uid)}
