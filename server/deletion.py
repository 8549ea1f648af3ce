"""Deleting a category's files (SPEC §5): checked whole before anything goes, run as a durable job.

Only files registered to that session's category, inside the project dir, are deleted; a request
naming anything else is refused before any file is touched. The category is `deleting` while the
job runs; the job skips files already gone, so it can run again after a crash; at the end the
session is rescanned (sizes and registry match the disk) and the category is `deleted` (whole
category) or back to its previous status (a subset). A category left `deleting` without a live job
is repaired by `repair_stuck`.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from . import files
from .audit import Audit
from .domain import DATATYPES, check_datatype, now_iso
from .errors import ApiError, conflict, forbidden, invalid_params, not_found
from .hooks import Hooks
from .jobs import JobFailed, Queue
from .service import Service
from .worker import JobRun

log = logging.getLogger(__name__)

PROGRESS_FILES = 500
QUEUE_GRACE_S = 60  # between marking a category deleting and queueing its job


class Deletions:
    def __init__(self, sessions: Service, queue: Queue, audit: Audit, hooks: Hooks) -> None:
        self.sessions = sessions
        self.queue = queue
        self.audit = audit
        self.hooks = hooks

    # --- the request -----------------------------------------------------------------------------

    def _targets(self, project_dir: str, registered: list[str], datatype: str,
                 filepaths: dict[str, Any] | list[Any] | None) -> list[str] | None:
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
        known = set(registered)
        targets: list[str] = []
        for index, path in enumerate(filepaths):
            rel = files.project_relative(project_dir, path)
            if rel not in known:
                raise invalid_params(f"{path} is not a registered {datatype} file of this session; nothing was "
                                     "deleted", index=index)
            targets.append(rel)
        return list(dict.fromkeys(targets))

    def request(self, user: dict[str, Any], project_uid: str, session_uid: str, datatype: str,
                filepaths: dict[str, Any] | list[Any] | None, user_id: str | None,
                dry_run: bool) -> str | dict[str, Any]:
        """A job id, or with dry_run the files and bytes that would go."""
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
        project_dir = self.sessions.project(project_uid)["project_dir"]
        files.check_data_roots(project_dir, self.sessions.config.data_roots)
        if session["status"] != "completed":
            raise conflict(f"session {project_uid} {session_uid} is {session['status']}; deleting needs a "
                           "completed session (mark_session_completed)")
        current = session["data_management"][datatype]["status"]
        if current in ("deleting", "calculating"):
            raise conflict(f"{datatype} of {project_uid} {session_uid} is {current} already")
        registered = self.sessions.registered_paths(project_uid, session_uid)[datatype]
        targets = self._targets(project_dir, registered, datatype, filepaths)
        if dry_run:
            return self._dry_run(project_dir, targets if targets is not None else registered)
        job_id = self.queue.new_id()
        prefix = f"data_management.{datatype}"
        changed = self.sessions.store.update_session(
            project_uid, session_uid, {"status": "completed", f"{prefix}.status": current},
            {"$set": {f"{prefix}.status": "deleting", f"{prefix}.prev_status": current, f"{prefix}.job_id": job_id,
                      f"{prefix}.status_changed_at": now_iso(), f"{prefix}.status_changed_by": user["name"]}})
        if changed is None:
            raise conflict(f"{datatype} of {project_uid} {session_uid} changed while this request was made; "
                           "get_session() shows its state now")
        self.queue.enqueue("delete", {"project_uid": project_uid, "session_uid": session_uid, "datatype": datatype,
                                      "paths": targets, "user_id": on_behalf}, user["name"], job_id)
        self.audit.record(user["name"], "deletion_requested", project_uid=project_uid, session_uid=session_uid,
                          datatype=datatype, job_id=job_id, user_id=on_behalf,
                          files=len(targets) if targets is not None else len(registered),
                          whole_category=targets is None)
        self.hooks.on_state_change(user["name"], project_uid, session_uid, datatype, "deleting")
        return job_id

    @staticmethod
    def _dry_run(project_dir: str, rels: list[str]) -> dict[str, Any]:
        count = size = 0
        for rel in rels:
            try:
                st = os.lstat(os.path.join(project_dir, rel))
            except OSError:
                continue
            count += 1
            size += st.st_size
        return {"dry_run": True, "file_count": count, "bytes": size, "registered": len(rels)}

    # --- the job ---------------------------------------------------------------------------------

    def run(self, run: JobRun) -> dict[str, Any]:
        p = run.params
        project_uid, session_uid, datatype = p["project_uid"], p["session_uid"], p["datatype"]
        session = self.sessions.session(project_uid, session_uid)
        category = session["data_management"][datatype]
        if category["status"] != "deleting" or category.get("job_id") != run.job["id"]:
            return {"note": "the category was already settled by an earlier run of this job"}
        project_dir = self.sessions.project(project_uid)["project_dir"]
        try:  # again at delete time: the roots may have changed, or the project dir become a link elsewhere
            files.check_data_roots(project_dir, self.sessions.config.data_roots)
        except ApiError as exc:
            self._settle(run, category, "deleting stopped: " + exc.message)
            raise JobFailed(exc.message) from None
        targets = p["paths"] if p["paths"] is not None else \
            self.sessions.registered_paths(project_uid, session_uid)[datatype]
        deleted = gone = refused = freed = 0
        refused_paths: list[str] = []
        with files.Unlinker(project_dir) as unlinker:
            for index, rel in enumerate(targets):
                if index % PROGRESS_FILES == 0:
                    run.progress(done=index, total=len(targets), bytes_freed=freed)
                try:
                    nbytes = unlinker.unlink(rel)
                except files.UnsafePath as exc:
                    refused += 1
                    refused_paths.append(rel)
                    log.warning("job %s: not deleting %s: %s", run.job["id"], rel, exc)
                    continue
                if nbytes is None:
                    gone += 1
                else:
                    deleted += 1
                    freed += nbytes
        run.progress(force=True, done=len(targets), total=len(targets), bytes_freed=freed)
        kept = set(refused_paths)
        self.sessions.store.remove_api_paths(project_uid, session_uid, datatype,
                                             [rel for rel in targets if rel not in kept])
        self.sessions.refresh_session(project_uid, session_uid)
        final = "deleted" if p["paths"] is None and not refused else category.get("prev_status") or "active"
        prefix = f"data_management.{datatype}"
        settled = self.sessions.store.update_session(
            project_uid, session_uid, {f"{prefix}.status": "deleting", f"{prefix}.job_id": run.job["id"]},
            {"$set": {f"{prefix}.status": final, f"{prefix}.prev_status": "deleting", f"{prefix}.job_id": None,
                      f"{prefix}.status_changed_at": now_iso()}})
        result = {"deleted": deleted, "already_gone": gone, "refused": refused, "bytes_freed": freed,
                  "status": final, "refused_paths": refused_paths[:100]}
        if settled is not None:
            self.audit.record(run.job["created_by"], "deleted", project_uid=project_uid, session_uid=session_uid,
                              datatype=datatype, job_id=run.job["id"], user_id=p["user_id"], files=deleted,
                              bytes_freed=freed, already_gone=gone, refused=refused, status=final)
            self.hooks.on_state_change(run.job["created_by"], project_uid, session_uid, datatype, final)
        return result

    def _settle(self, run: JobRun, category: dict[str, Any], reason: str) -> None:
        """Give a category whose deletion cannot go on back its previous status."""
        p = run.params
        prefix = f"data_management.{p['datatype']}"
        self.sessions.store.update_session(
            p["project_uid"], p["session_uid"], {f"{prefix}.status": "deleting", f"{prefix}.job_id": run.job["id"]},
            {"$set": {f"{prefix}.status": category.get("prev_status") or "active", f"{prefix}.job_id": None}})
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
                prefix = f"data_management.{datatype}"
                back = category.get("prev_status") or "active"
                if self.sessions.store.update_session(
                        session["project_uid"], session["uid"],
                        {f"{prefix}.status": "deleting", f"{prefix}.job_id": category.get("job_id")},
                        {"$set": {f"{prefix}.status": back, f"{prefix}.job_id": None}}) is not None:
                    repaired += 1
                    why = f"its job {job['state']}" if job is not None else "its job was never queued"
                    self.audit.record("livedm", "deletion_abandoned", project_uid=session["project_uid"],
                                      session_uid=session["uid"], datatype=datatype, job_id=category.get("job_id"),
                                      status=back, reason=why)
                    log.warning("%s %s %s was left deleting (%s); back to %s", session["project_uid"],
                                session["uid"], datatype, why, back)
        return repaired
