"""Deleting a category's files (SPEC §5): checked whole before anything goes, run as a durable job.

Only files registered to that session's category, inside the project dir, are deleted; a request
naming anything else is refused before any file is touched. The category is `deleting` while the
job runs; the job skips files already gone, so it can run again after a crash; at the end the
session is rescanned (sizes and registry match the disk) and the category is `deleted` (whole
category) or back to its previous status (a subset). A category left `deleting` without a live job
is repaired by `repair_stuck`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from . import files
from .audit import Audit
from .domain import DATATYPES, check_datatype, check_project_uid, check_session_uid
from .errors import ApiError, conflict, forbidden, invalid_params, not_found
from .jobs import JobFailed, JobRun, Queue
from .sessions import LIVEDM, Sessions
from .states import BY_DELETION, BY_REPAIR, BY_USER, TRANSITIONS, CategoryStates
from .store import DamagedRegistry
from .unlink_pool import UnlinkPool
from .unlinker import Outcome, Unlinker, by_directory

log = logging.getLogger(__name__)

BATCH_FILES = 100  # unlinked between two looks at the job (progress, shutdown, a lost lease)
SAVE_COUNTS_FILES = 2000  # deleted and not counted in a saved progress, at most: what a resumed job misses
UNLINK_THREADS = 4  # directories unlinked at once
QUEUE_GRACE_S = 60  # between marking a category deleting and queueing its job


def _back(category: dict[str, Any]) -> str:
    """The status a category that was deleting returns to."""
    prev = category.get("prev_status")
    return prev if prev in TRANSITIONS["deleting"] else "active"


@dataclass(frozen=True)
class Plan:
    """A checked deletion request: exactly which registry paths would go."""

    project_uid: str
    session_uid: str
    datatype: str
    project_dir: str
    paths: list[str]
    whole: bool
    on_behalf: str
    status: str  # the category's status when it was checked

    @cached_property
    def digest(self) -> str:
        digest = hashlib.sha256(f"{self.project_uid}\0{self.session_uid}\0{self.datatype}\0".encode())
        if self.paths:  # each path's bytes and a NUL, as they were hashed one by one before: the same digest
            digest.update(os.fsencode("\0".join(sorted(self.paths)) + "\0"))
        return digest.hexdigest()


def _checked_params(params: Any) -> dict[str, Any]:
    """A deletion job's document, checked before anything is touched: a job that did not come from
    Deletions.request (or an older livedm) fails and deletes nothing."""
    try:
        checked = {"project_uid": check_project_uid(params["project_uid"]),
                   "session_uid": check_session_uid(params["session_uid"]),
                   "datatype": check_datatype(params["datatype"]), "whole_category": params["whole_category"],
                   "user_id": params["user_id"]}
    except (KeyError, TypeError, ApiError) as exc:
        raise JobFailed(f"not a valid deletion job ({exc}); nothing was deleted") from None
    if checked["datatype"] == "raw" or not isinstance(checked["whole_category"], bool) \
            or not isinstance(checked["user_id"], str):
        raise JobFailed("not a valid deletion job; nothing was deleted")
    return checked


@dataclass
class _Tally:
    """What a deletion did, over every attempt of its job (an attempt after a crash goes on counting)."""

    deleted: int = 0
    freed: int = 0
    gone: int = 0
    earlier_deleted: int = 0  # files an earlier attempt deleted: this one finds them gone
    refused_paths: list[str] = field(default_factory=list)
    failed_paths: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def resumed(cls, progress: dict[str, Any]) -> _Tally:
        deleted = int(progress.get("deleted") or 0)
        return cls(deleted=deleted, freed=int(progress.get("bytes_freed") or 0), earlier_deleted=deleted)

    @property
    def kept_paths(self) -> list[str]:
        return self.refused_paths + [path for path, _ in self.failed_paths]

    def add(self, outcome: Outcome, job_id: str) -> None:
        self.deleted += outcome.deleted
        self.freed += outcome.freed
        self.gone += outcome.gone
        if outcome.refused:
            self.refused_paths.extend(path for path, _ in outcome.refused)
            path, why = outcome.refused[0]
            log.warning("job %s: not deleting %d file(s), first %s: %s", job_id, len(outcome.refused),
                        files.shown(path), why)
        if outcome.failed:
            self.failed_paths.extend(outcome.failed)
            path, why = outcome.failed[0]
            log.warning("job %s: cannot delete %d file(s), first %s: %s", job_id, len(outcome.failed),
                        files.shown(path), why)

    def progress(self) -> dict[str, int]:
        return {"deleted": self.deleted, "bytes_freed": self.freed, "failed": len(self.failed_paths)}

    def result(self) -> dict[str, Any]:
        return {"deleted": self.deleted, "already_gone": max(0, self.gone - self.earlier_deleted),
                "bytes_freed": self.freed, "refused": len(self.refused_paths), "failed": len(self.failed_paths),
                "refused_paths": [files.shown(p) for p in self.refused_paths[:100]],
                "failed_paths": [f"{files.shown(p)}: {why}" for p, why in self.failed_paths[:100]]}

    def note(self, job_id: str, remaining: int) -> str | None:
        parts = []
        if self.failed_paths:
            path, why = self.failed_paths[0]
            parts.append(f"{len(self.failed_paths)} file(s) could not be deleted (first: {files.shown(path)}: {why})")
        if self.refused_paths:
            parts.append(f"{len(self.refused_paths)} file(s) refused as unsafe (a symlinked directory?)")
        if remaining and not parts:
            parts.append(f"{remaining} file(s) registered after the deletion was confirmed were kept")
        return f"deletion {job_id}: " + "; ".join(parts) if parts else None


class Deletions:
    def __init__(self, sessions: Sessions, queue: Queue, audit: Audit, *, states: CategoryStates) -> None:
        self.sessions = sessions
        self.queue = queue
        self.audit = audit
        self.states = states

    # --- the request -----------------------------------------------------------------------------

    def _registered(self, session: dict[str, Any], datatype: str, *, sources: tuple[str, ...] = ("scan", "api")
                    ) -> set[str]:
        """The category's registered paths now (only its own registry chunks are read)."""
        registry = self.sessions.store.read_registry(session["project_uid"], session["uid"], session.get("scan_gen"),
                                                     sources=sources, datatypes=(datatype,))
        inside = session["session_dir"] + "/"
        stray = next((p for p in registry["scan"][datatype] if not p.startswith(inside)), None)
        if stray is not None:  # a walk only registers what it found below the session dir: the store was altered
            raise DamagedRegistry(f"the scanned registry of {session['project_uid']} {session['uid']} holds {stray!r}, "
                                  f"which is not in the session dir; nothing was deleted. `livedm refresh "
                                  f"{session['project_uid']} {session['uid']} --full` writes it again")
        return {path for source in sources for path in registry[source][datatype]}

    def _targets(self, project_dir: str, registered: set[str], datatype: str,
                 *, filepaths: dict[str, Any] | list[Any] | None) -> list[str] | None:
        """The registry paths a request names (None: the whole category), or refuse it whole."""
        if filepaths is None:
            return None
        if isinstance(filepaths, dict):
            other = sorted(set(filepaths) - {datatype})
            if other:
                raise invalid_params(f"filepaths_to_delete names other datatypes ({', '.join(other)}); "
                                     f"give only {datatype}, nothing was deleted")
            filepaths = filepaths.get(datatype, [])
        if not isinstance(filepaths, list) or not all(isinstance(p, str) for p in filepaths):
            raise invalid_params("filepaths_to_delete must be a list of paths or {datatype: [paths]}")
        if not filepaths:
            raise invalid_params("filepaths_to_delete is empty; give None to delete the whole category")
        targets: list[str] = []
        for index, path in enumerate(filepaths):
            rel = files.project_relative(project_dir, path)
            if rel not in registered:
                raise invalid_params(f"{path} is not a registered {datatype} file of this session; nothing was "
                                     "deleted", index=index)
            targets.append(rel)
        return list(dict.fromkeys(targets))

    def _plan(self, user: dict[str, Any], project_uid: str, session_uid: str, *, datatype: str,
              filepaths: dict[str, Any] | list[Any] | None, user_id: str | None) -> Plan:
        check_datatype(datatype)
        if datatype == "raw":
            raise invalid_params("raw data is never deleted by livedm (as in cryoSPARC): archive the movies "
                                 "and mark raw 'deleted' once they are gone")
        on_behalf = user_id if user_id is not None else user["name"]
        if on_behalf != user["name"]:
            if user.get("role") != "admin":
                raise forbidden("only an admin may delete on behalf of another user (user_id)")
            if self.sessions.store.get_user(on_behalf) is None:
                raise not_found(f"user_id {on_behalf!r} does not exist")
        session = self.sessions.session(project_uid, session_uid)
        project = self.sessions.project(project_uid)
        self.sessions.check_project_location(project["project_dir"])
        self.sessions.check_project_identity(project)
        self.sessions.check_session_identity(project, session)
        if session["status"] != "completed":
            raise conflict(f"session {project_uid} {session_uid} is {session['status']}; deleting needs a "
                           f"completed session (`livedm session complete {project_uid} {session_uid}`)")
        current = session["data_management"][datatype]["status"]
        if current in ("deleting", "calculating"):
            raise conflict(f"{datatype} of {project_uid} {session_uid} is {current} already")
        if current == "missing":
            raise conflict(f"{datatype} of {project_uid} {session_uid} is missing: its files cannot be reached "
                           "(unmounted, moved?); nothing is deleted until they are back")
        registered = self._registered(session, datatype)
        targets = self._targets(project["project_dir"], registered, datatype, filepaths=filepaths)
        whole = targets is None
        paths = sorted(registered) if targets is None else targets
        return Plan(project_uid, session_uid, datatype, project["project_dir"], paths, whole, on_behalf, current)

    def preview(self, user: dict[str, Any], project_uid: str, session_uid: str, *, datatype: str,
                filepaths: dict[str, Any] | list[Any] | None, user_id: str | None) -> dict[str, Any]:
        """The dry run: what would go, changing nothing, and the digest that confirms exactly this list."""
        plan = self._plan(user, project_uid, session_uid, datatype=datatype, filepaths=filepaths, user_id=user_id)
        count = size = 0
        for rel in plan.paths:
            try:
                st = os.lstat(os.path.join(plan.project_dir, rel))
            except OSError:
                continue
            count += 1
            size += st.st_size
        return {"dry_run": True, "file_count": count, "bytes": size, "registered": len(plan.paths),
                "confirm_digest": plan.digest}

    def request(self, user: dict[str, Any], project_uid: str, session_uid: str, *, datatype: str,
                filepaths: dict[str, Any] | list[Any] | None, user_id: str | None,
                confirm_digest: str | None = None) -> str:
        """Queue the deletion of exactly the list the request names (or the category's registered files
        now); with confirm_digest, only if that is the list a dry run showed. The job id."""
        started_s = time.perf_counter()
        plan = self._plan(user, project_uid, session_uid, datatype=datatype, filepaths=filepaths, user_id=user_id)
        if confirm_digest is not None and confirm_digest != plan.digest:
            raise conflict(f"the files of {datatype} of {project_uid} {session_uid} changed since the dry run "
                           f"(now {len(plan.paths)} registered); nothing was deleted: run `livedm delete {project_uid} "
                           f"{session_uid} {datatype}` again and confirm what it shows")
        planned_s = time.perf_counter()
        job_id = self.queue.new_id()
        changed = self.states.change(project_uid=project_uid, session_uid=session_uid, datatype=datatype,
                                     expect=plan.status, to="deleting", job_id=job_id, note=None, note_job_id=None,
                                     actor=user["name"], by=BY_USER, session_completed=True)
        if changed is None:
            raise conflict(f"{datatype} of {project_uid} {session_uid} changed while this request was made; "
                           f"`livedm ls {project_uid}` shows its state now")
        saving_s = time.perf_counter()
        self.sessions.store.save_job_paths(job_id, plan.paths)
        saved_s = time.perf_counter()
        self.queue.enqueue("delete", {"project_uid": project_uid, "session_uid": session_uid, "datatype": datatype,
                                      "whole_category": plan.whole, "file_count": len(plan.paths),
                                      "digest": plan.digest, "user_id": plan.on_behalf}, user["name"], job_id=job_id)
        self.audit.record(user["name"], "deletion_requested", project_uid=project_uid, session_uid=session_uid,
                          datatype=datatype, job_id=job_id, user_id=plan.on_behalf, files=len(plan.paths),
                          whole_category=plan.whole)
        log.info("deletion %s requested: %d files in %.3f s (plan %.3f s, confirmed list saved %.3f s)", job_id,
                 len(plan.paths), time.perf_counter() - started_s, planned_s - started_s, saved_s - saving_s)
        return job_id

    # --- the job ---------------------------------------------------------------------------------

    def run(self, run: JobRun) -> dict[str, Any]:
        started_s = time.perf_counter()
        p = _checked_params(run.params)
        project_uid, session_uid, datatype = p["project_uid"], p["session_uid"], p["datatype"]
        session = self.sessions.session(project_uid, session_uid)
        category = session["data_management"][datatype]
        if category["status"] != "deleting" or category.get("job_id") != run.job["id"]:
            return {"note": "the category was already settled by an earlier run of this job"}
        project = self.sessions.project(project_uid)
        confirmed = self.sessions.store.read_job_paths(run.job["id"])
        registered = self._registered(session, datatype)
        targets = [rel for rel in confirmed if rel in registered]  # never more than was confirmed
        unlinkers = self._checked_unlinkers(run, category, project, session)
        tally = _Tally.resumed(run.job.get("progress") or {})
        unlinking_s = time.perf_counter()
        self._unlink_all(run, unlinkers, targets, tally)
        settling_s = time.perf_counter()
        kept = set(tally.kept_paths)
        by_api = self._registered(self.sessions.session(project_uid, session_uid), datatype, sources=("api",))
        self.sessions.store.remove_api_paths(project_uid, session_uid, datatype,
                                             paths=[rel for rel in targets if rel in by_api and rel not in kept])
        remaining = self.sessions.refresh_session(project_uid, session_uid)[datatype]["file_count"]
        complete = p["whole_category"] and not tally.kept_paths and remaining == 0
        final = "deleted" if complete else _back(category)
        note = tally.note(run.job["id"], remaining if p["whole_category"] else 0)
        settled = self.states.change(project_uid=project_uid, session_uid=session_uid, datatype=datatype,
                                     expect="deleting", to=final, job_id=None, expect_job_id=run.job["id"], note=note,
                                     note_job_id=run.job["id"] if note else None, actor=run.job["created_by"],
                                     by=BY_DELETION, deletion_job=run.job["id"])
        result = {**tally.result(), "no_longer_registered": len(confirmed) - len(targets), "status": final,
                  "note": note}
        if settled is not None:
            self.audit.record(run.job["created_by"], "deleted", project_uid=project_uid, session_uid=session_uid,
                              datatype=datatype, job_id=run.job["id"], user_id=p["user_id"],
                              files=tally.deleted, bytes_freed=tally.freed, already_gone=result["already_gone"],
                              refused=len(tally.refused_paths), failed=len(tally.failed_paths),
                              no_longer_registered=result["no_longer_registered"], status=final)
        log.info("deletion %s: %d files deleted in %.3f s (prepare %.3f s, unlink %.3f s, settle %.3f s)",
                 run.job["id"], tally.deleted, time.perf_counter() - started_s, unlinking_s - started_s,
                 settling_s - unlinking_s, time.perf_counter() - settling_s)
        return result

    def _checked_unlinkers(self, run: JobRun, category: dict[str, Any], project: dict[str, Any],
                           session: dict[str, Any]) -> list[Unlinker]:
        """Checked again at delete time (the roots may have changed, the project dir been swapped), an
        unlinker for each thread; or the category settled and the job failed, nothing deleted."""
        p = run.params
        unlinkers: list[Unlinker] = []
        try:
            if session["status"] != "completed":
                raise conflict(f"session {p['project_uid']} {p['session_uid']} is {session['status']}, not completed")
            self.sessions.check_project_location(project["project_dir"])
            self.sessions.check_session_identity(project, session)
            rules = self._unlinker_rules(project)
            while len(unlinkers) < UNLINK_THREADS:
                unlinkers.append(Unlinker(project["project_dir"], project.get("dir_pin") or {"dev": -1, "ino": -1},
                                          **rules))
        except (ApiError, files.ProjectDirChanged) as exc:
            for unlinker in unlinkers:
                unlinker.close()
            message = exc.message if isinstance(exc, ApiError) else str(exc)
            self._settle(run, category, message)
            raise JobFailed(message + "; nothing was deleted") from None
        return unlinkers

    def _unlink_all(self, run: JobRun, unlinkers: list[Unlinker], targets: list[str], tally: _Tally) -> None:
        """Directory by directory on a few threads, in batches; progress as batches finish, saved before the
        threads run out of permits (SAVE_COUNTS_FILES deleted and not saved)."""
        permits = SAVE_COUNTS_FILES // BATCH_FILES
        pool = UnlinkPool(unlinkers, batch_files=BATCH_FILES, permits=permits)
        done = unsaved = 0
        with pool.unlinking(by_directory(targets)) as batches:
            for batch in batches:
                tally.add(batch.outcome, run.job["id"])
                done += batch.files
                unsaved += 1
                save = unsaved > permits - len(unlinkers)
                run.progress(force=save, done=done, total=len(targets), **tally.progress())
                if save:
                    pool.saved(unsaved)
                    unsaved = 0
        run.progress(force=True, done=done, total=len(targets), **tally.progress())

    def _unlinker_rules(self, project: dict[str, Any]) -> dict[str, Any]:
        """What an unlinker refuses, besides symlinks: directories no longer the session dirs that were
        measured, directories raw links point into (anywhere), the sessions' raw layout dirs, and files
        that are raw movies of this project (hard links too)."""
        sessions = self.sessions.store.list_sessions(project["uid"])
        raw_layout = [directory for directory, datatype in self.sessions.config.layout if datatype == "raw"]
        return {"protected": self._raw_movies(project),
                "session_dirs": {s["session_dir"]: s.get("dir_id") or "never measured" for s in sessions},
                "movie_dirs": self.sessions.store.movie_dirs(),
                "raw_trees": tuple(f"{s['session_dir']}/{d}" for s in sessions for d in raw_layout)}

    def _raw_movies(self, project: dict[str, Any]) -> frozenset[tuple[int, int]]:
        links: list[str] = []
        for session in self.sessions.store.list_sessions(project["uid"]):
            registry = self.sessions.store.read_registry(project["uid"], session["uid"], session.get("scan_gen"),
                                                         datatypes=("raw",))
            links.extend(registry["scan"]["raw"] + registry["api"]["raw"])
        return files.raw_movies(project["project_dir"], links)

    def _settle(self, run: JobRun, category: dict[str, Any], message: str) -> None:
        """Give a category whose deletion cannot go on back its previous status, saying why."""
        p, reason = run.params, f"deleting stopped: {message}"
        self.states.change(project_uid=p["project_uid"], session_uid=p["session_uid"], datatype=p["datatype"],
                           expect="deleting", to=_back(category), job_id=None, expect_job_id=run.job["id"],
                           note=f"deletion {run.job['id']} stopped: {message}", note_job_id=run.job["id"], actor=LIVEDM,
                           by=BY_DELETION, deletion_job=run.job["id"])
        self.audit.record("livedm", "deletion_abandoned", project_uid=p["project_uid"], session_uid=p["session_uid"],
                          datatype=p["datatype"], job_id=run.job["id"], reason=reason)

    # --- repair ----------------------------------------------------------------------------------

    def repair_stuck(self) -> int:
        """Categories `deleting` whose job no longer exists or has failed go back to their previous
        status (a job that is queued or running still owns its category)."""
        repaired = 0
        cutoff = (datetime.now(UTC) - timedelta(seconds=QUEUE_GRACE_S)).isoformat(timespec="milliseconds")
        cutoff = cutoff.replace("+00:00", "Z")
        for datatype in DATATYPES:
            for session in self.sessions.store.sessions_with_status(datatype, "deleting"):
                category = session["data_management"][datatype]
                job = self.sessions.store.get_job(category.get("job_id") or "")
                if job is not None and job["state"] in ("queued", "running"):
                    continue
                if job is None and (category.get("status_changed_at") or "") > cutoff:
                    continue  # just marked: its job is being queued this moment
                back = _back(category)
                why = f"its job {job['state']}" if job is not None else "its job was never queued"
                if self.states.change(project_uid=session["project_uid"], session_uid=session["uid"],
                                      datatype=datatype, expect="deleting", to=back, job_id=None,
                                      expect_job_id=category.get("job_id"), actor=LIVEDM, by=BY_REPAIR,
                                      note=f"deletion {category.get('job_id')} was given up: {why}; nothing more "
                                           "was deleted", note_job_id=category.get("job_id"), reason=why) is not None:
                    repaired += 1
                    self.audit.record("livedm", "deletion_abandoned", project_uid=session["project_uid"],
                                      session_uid=session["uid"], datatype=datatype, job_id=category.get("job_id"),
                                      status=back, reason=why)
                    log.warning("%s %s %s was left deleting (%s); back to %s", session["project_uid"],
                                session["uid"], datatype, why, back)
        return repaired
