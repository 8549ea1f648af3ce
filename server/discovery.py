"""Discovery: the facility's cryoSPARC projects and Live sessions, found in the files cryoSPARC writes
under the discovery roots (cryosparc_files.py reads them), and kept current in livedm's records.

A pass surveys first (read-only: the dry run is a survey) and then applies: it adds what is new,
updates what changed, and marks missing what is gone. It never merges and never guesses: a uid held by
another directory, or a directory held by another uid, is a conflict, reported with both paths, and
nothing of either is changed. A project whose files did not change since the last pass (their mtimes
and sizes) is not read again and costs no write. livedm never writes into a project directory here.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import cryosparc_files as cs
from .audit import Audit
from .config import Config
from .domain import DISCOVERED, now_iso, session_status_from_cryosparc
from .errors import ApiError
from .jobs import JobFailed, JobRun, Queue, Released
from .sessions import LIVEDM, Sessions
from .store import Store, StoreUnavailable

log = logging.getLogger(__name__)

MAX_LISTED = 500  # conflicts and unreadable files listed in a report (all are counted)
_CRYOSPARC_SESSION_DIR = re.compile(r"S[1-9][0-9]{0,8}")  # cryoSPARC names a Live session's directory so
# Hand-made projects number above the unlabelled uids discovered, up to this one: a project.json anybody may
# write saying P999999999 would otherwise leave them no uid (P1000000000 is not one); 900 million stay.
MAX_NUMBER_FOLLOWED = 99_999_999
GONE_ROOT = "its discovery root {root} is not reachable ({why})"
GONE_PROJECT = "its project directory is gone from {root}"
LEFT_WORKSPACES = "cryoSPARC no longer lists it in workspaces.json"
NOT_PINNED = ("the directory is not the one livedm recorded for this project (moved or replaced); nothing of it "
              "was recorded: an admin must check what happened to it")
PATHS_HIDDEN = "the pass failed; why (it names paths) is shown to those with the live data management permission"
SWAPPED = ("the directory was moved or replaced while its files were read, or since (by whom?); nothing of it was "
           "recorded: it is read again next pass")


@dataclass
class Found:
    """A project directory found in this pass."""

    label: str
    root: str
    project_dir: str
    record: cs.Project | None = None  # None: unchanged since the last pass, not read again
    uid: str = ""
    pin: dict[str, int] | None = None  # the directory whose files were read (device, inode)


@dataclass
class Survey:
    roots: list[dict[str, Any]] = field(default_factory=list)
    added: list[Found] = field(default_factory=list)
    changed: list[Found] = field(default_factory=list)
    unchanged: list[Found] = field(default_factory=list)
    gone: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (project, why)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    held: set[str] = field(default_factory=set)  # projects whose directory is there, giving another uid now

    def report(self) -> dict[str, Any]:
        return {"roots": self.roots,
                "added": [_found_row(f) for f in self.added[:MAX_LISTED]],
                "changed": [_found_row(f) for f in self.changed[:MAX_LISTED]],
                "gone": [{"project_uid": p["uid"], "project_dir": p["project_dir"], "why": why}
                         for p, why in self.gone[:MAX_LISTED]],
                "conflicts": self.conflicts[:MAX_LISTED], "unreadable": self.unreadable[:MAX_LISTED],
                "counts": {"added": len(self.added), "changed": len(self.changed), "unchanged": len(self.unchanged),
                           "gone": len(self.gone), "conflicts": len(self.conflicts),
                           "unreadable": len(self.unreadable),
                           "projects": len(self.added) + len(self.changed) + len(self.unchanged),
                           "sessions": sum(len(f.record.sessions) for f in (*self.added, *self.changed)
                                           if f.record is not None)}}


def shown_job(job: dict[str, Any], with_paths: bool) -> dict[str, Any]:
    """A job as a caller may see it: a discovery pass's paths (its report's lists, its roots, why it failed)
    tell who works on what, and are for those who manage the data (get_job and list_jobs show them too)."""
    if job.get("kind") != "discover" or with_paths:
        return job
    report = job.get("result")
    if isinstance(report, dict):
        report = {**report, **{key: [] for key in ("added", "changed", "gone", "conflicts", "unreadable")},
                  "roots": [{k: v for k, v in r.items() if k != "path"} for r in report.get("roots") or []
                            if isinstance(r, dict)]}
    error = None if job.get("error") is None else PATHS_HIDDEN
    return {**job, "result": report, "error": error}


def _found_row(found: Found) -> dict[str, Any]:
    row: dict[str, Any] = {"project_uid": found.uid, "project_dir": found.project_dir}
    if found.record is not None:
        row.update(title=found.record.title, sessions=len(found.record.sessions))
    return row


def _innermost_root(path: str, roots: tuple[tuple[str, str], ...]) -> str:
    inside = [root for _, root in roots if path == root or path.startswith(root.rstrip("/") + "/")]
    return max(inside, key=len)


def livedm_uid(label: str, cryosparc_uid: str) -> str:
    return f"{label}-{cryosparc_uid}" if label else cryosparc_uid


class Discovery:
    def __init__(self, sessions: Sessions, store: Store, queue: Queue, audit: Audit, config: Config) -> None:
        self.sessions = sessions
        self.store = store
        self.queue = queue
        self.audit = audit
        self.config = config

    # --- the survey (read-only) --------------------------------------------------------------------

    def survey(self, progress: Callable[..., None] = lambda **_: None) -> Survey:
        survey = Survey()
        projects = self.store.list_projects()
        discovered = [p for p in projects if p.get("source") == DISCOVERED]
        by_uid = {p["uid"]: p for p in projects}
        by_real_dir = {os.path.realpath(p["project_dir"]): p for p in projects}
        found: list[Found] = []
        roots = self.config.discovery_roots
        known_dirs = [p["project_dir"] for p in projects]
        for label, root in roots:
            found.extend(f for f in self._search_root(survey, label, root, discovered, known_dirs)
                         if _innermost_root(f.project_dir, roots) == root)  # a root inside another is its own
        for index, item in enumerate(found):
            if index % 50 == 0:
                progress(done=index, total=len(found), phase="reading project files")
            self._read(survey, item, by_real_dir)
        self._classify(survey, [f for f in found if f.uid], by_uid, by_real_dir)
        seen = {f.uid for f in (*survey.added, *survey.changed, *survey.unchanged)}
        conflicted = {c["project_uid"] for c in survey.conflicts}
        reached = {r["path"]: r for r in survey.roots}
        for project in discovered:
            if project["uid"] in seen or project["uid"] in conflicted or project["uid"] in survey.held \
                    or project.get("gone_at"):
                continue
            root = project.get("discover_root", "")
            state = reached.get(root)
            if state is None:  # its root is no longer searched: left as it was
                continue
            if not state["reached"]:
                survey.gone.append((project, GONE_ROOT.format(root=root, why=state["reason"])))
            else:
                survey.gone.append((project, GONE_PROJECT.format(root=root)))
        return survey

    def _search_root(self, survey: Survey, label: str, root: str, discovered: list[dict[str, Any]],
                     known_dirs: list[str]) -> list[Found]:
        found: list[Found] = []
        state: dict[str, Any] = {"path": root, "label": label, "reached": True, "reason": None, "projects": 0}
        survey.roots.append(state)
        try:
            for item in cs.find_project_dirs(root, self.config.discover_depth, known_dirs):
                if isinstance(item, cs.Unreadable):
                    survey.unreadable.append({"path": item.path, "reason": item.reason})
                else:
                    found.append(Found(label, root, item))
        except cs.Unreadable as exc:
            state.update(reached=False, reason=exc.reason)
            return []
        known_here = [p for p in discovered if p.get("discover_root") == root and not p.get("gone_at")]
        if not found and known_here:  # an empty mount point where projects were: not mounted, not emptied
            state.update(reached=False, reason=f"no project directory found where {len(known_here)} were "
                                               "(an empty mount point?)")
            return []
        state["projects"] = len(found)
        return found

    def _read(self, survey: Survey, item: Found, by_real_dir: dict[str, dict[str, Any]]) -> None:
        known = by_real_dir.get(os.path.realpath(item.project_dir))
        if known is not None and known.get("source") == DISCOVERED and not known.get("gone_at") \
                and known.get("fingerprint") == cs.files_fingerprint(item.project_dir):
            item.uid = known["uid"]  # unchanged: not read again
            return
        try:
            pin = _pin(item.project_dir)
            item.record = cs.read_project(item.project_dir)
        except cs.Unreadable as exc:
            survey.unreadable.append({"path": exc.path, "reason": exc.reason})
            return
        if pin is None or _pin(item.project_dir) != pin:  # what was read may be another directory's
            survey.unreadable.append({"path": item.project_dir, "reason": SWAPPED})
            item.record = None
            return
        item.pin = pin
        item.uid = livedm_uid(item.label, item.record.uid)
        survey.unreadable.extend({"path": p.path, "reason": p.reason} for p in item.record.problems)

    def _classify(self, survey: Survey, found: list[Found], by_uid: dict[str, dict[str, Any]],
                  by_real_dir: dict[str, dict[str, Any]]) -> None:
        by_found_uid: dict[str, list[Found]] = {}
        for item in found:
            by_found_uid.setdefault(item.uid, []).append(item)
        for uid, items in sorted(by_found_uid.items()):
            known = by_uid.get(uid)
            for item in items:  # a known directory that gives another uid now is there: never gone
                holder = by_real_dir.get(os.path.realpath(item.project_dir))
                if holder is not None and holder["uid"] != uid:
                    survey.held.add(holder["uid"])
            if len(items) > 1:  # two directories give one uid (two instances sharing the storage?)
                same = [i for i in items if known is not None and _same_dir(known["project_dir"], i.project_dir)]
                survey.conflicts.append(_conflict(uid, [i.project_dir for i in items], "two directories hold "
                                        "cryoSPARC project " + uid + ": label their roots (discover_roots "
                                        "label=/path) to tell the instances apart"))
                if len(same) == 1:  # the one livedm has is kept as it is
                    survey.unchanged.append(same[0])
                continue
            item = items[0]
            holder = by_real_dir.get(os.path.realpath(item.project_dir))
            if holder is not None and holder["uid"] != uid:
                survey.conflicts.append(_conflict(uid, [holder["project_dir"], item.project_dir],
                                                  f"the directory is livedm's project {holder['uid']} already"))
            elif known is None:
                survey.added.append(item)
            elif known.get("source") != DISCOVERED or not _same_dir(known["project_dir"], item.project_dir):
                survey.conflicts.append(_conflict(uid, [known["project_dir"], item.project_dir],
                                                  f"livedm's project {uid} is another directory"))
            elif item.record is None:
                survey.unchanged.append(item)
            else:
                survey.changed.append(item)

    def last_report(self, with_paths: bool) -> dict[str, Any]:
        """The last finished pass's report, with its job's id, state and end; the one under way, if any."""
        job = self.store.last_finished_job("discover")
        active = [j["id"] for state in ("running", "queued") for j in self.store.list_jobs(kind="discover",
                                                                                          state=state, limit=1)]
        if job is None:
            return {"job_id": None, "state": None, "finished_at": None, "active_job_id": next(iter(active), None)}
        job = shown_job(job, with_paths)
        return {"job_id": job["id"], "state": job["state"], "finished_at": job.get("finished_at"),
                "error": job.get("error"), "active_job_id": next(iter(active), None), **(job.get("result") or {})}

    # --- the pass --------------------------------------------------------------------------------

    def dry_run(self) -> dict[str, Any]:
        """The survey, and the exposures.bson files a pass would read (their problems too), changing nothing."""
        survey = self.survey()
        for item in [*survey.added, *survey.changed]:
            assert item.record is not None
            known = {s["uid"]: s for s in self.store.list_sessions(item.uid)}
            for live in item.record.sessions:
                if not live.deleted:
                    self._counts_if_changed(survey, item.project_dir, live, known.get(live.session_uid))
        return {"dry_run": True, **survey.report()}

    def run(self, run: JobRun) -> dict[str, Any]:
        if run.params:
            raise JobFailed("not a valid discovery job; nothing was done")
        survey = self.survey(run.progress)
        total = len(survey.added) + len(survey.changed) + len(survey.gone)
        done = 0
        to_measure: list[str] = []
        for item in [*survey.added, *survey.changed]:
            run.progress(done=done, total=total, phase="recording projects")
            done += 1
            try:
                if self._apply(survey, item):
                    to_measure.append(item.uid)
            except (StoreUnavailable, Released):
                raise
            except Exception as exc:  # one project's files must not stop the pass for every other project
                log.exception("discovery: project %s (%s) could not be recorded", item.uid, item.project_dir)
                survey.unreadable.append({"path": item.project_dir, "reason": f"could not be recorded "
                                          f"({type(exc).__name__}: {str(exc)[:200]}); the pass went on"})
        for project, why in survey.gone:
            run.progress(done=done, total=total, phase="marking what is gone")
            done += 1
            self._gone(project, why)
        self._exposure_counts(survey, survey.unchanged)
        for uid in to_measure:
            self.queue.enqueue("refresh_sizes", {"project_uid": uid}, LIVEDM)
        report = survey.report()
        counts = report["counts"]
        self.audit.record(LIVEDM, "discovery_pass", added=counts["added"], changed=counts["changed"],
                          gone=counts["gone"], conflicts=counts["conflicts"], unreadable=counts["unreadable"])
        log.info("discovery: %s", counts)
        return report

    def _apply(self, survey: Survey, item: Found) -> bool:
        """Record an added or changed project and its sessions; False if it could not be recorded."""
        assert item.record is not None
        record = item.record
        # no fingerprint until its sessions are recorded too: a pass that dies half-way reads it again
        fields = {"title": _title(record.title, record.uid), "instance": item.label, "cryosparc_uid": record.uid,
                  "created_at": record.created_at or now_iso(),
                  "owner_user_id": record.owner_user_id, "cryosparc_created_at": record.created_at,
                  "archived": record.archived, "detached": record.detached, "discover_root": item.root,
                  "fingerprint": None, "seen_at": now_iso(), "gone_at": None, "gone_reason": None}
        if item in survey.added:
            try:
                self.sessions.add_discovered_project(item.uid, item.project_dir, {**fields, "discovered_at": now_iso()},
                                                     expect_pin=item.pin)
            except ApiError as exc:
                survey.conflicts.append(_conflict(item.uid, [item.project_dir], exc.message))
                return False
            if not item.label and int(record.uid[1:]) <= MAX_NUMBER_FOLLOWED:  # hand-made ones take numbers above
                self.store.raise_counter("projects", int(record.uid[1:]))
            self.audit.record(LIVEDM, "project_discovered", project_uid=item.uid, project_dir=item.project_dir,
                              cryosparc_uid=record.uid)
        else:
            project = self.store.get_project(item.uid)
            if project is None or _pin(item.project_dir) != item.pin:  # swapped since the read
                survey.conflicts.append(_conflict(item.uid, [item.project_dir], SWAPPED))
                return False
            if project.get("dir_pin") not in (None, item.pin):  # None: pinned by its next measure
                survey.conflicts.append(_conflict(item.uid, [item.project_dir], NOT_PINNED))
                return False
            self.store.set_project_fields(item.uid, fields)
        self._sync_sessions(survey, item)
        self.store.set_project_fields(item.uid, {"fingerprint": record.fingerprint})
        return True

    def _sync_sessions(self, survey: Survey, item: Found) -> None:
        assert item.record is not None
        known = {s["uid"]: s for s in self.store.list_sessions(item.uid)}
        listed = {s.session_uid: s for s in item.record.sessions if not s.deleted}
        new: dict[str, dict[str, Any]] = {}
        for session_uid, live in listed.items():
            if session_uid not in known and not _CRYOSPARC_SESSION_DIR.fullmatch(live.session_dir.rsplit("/", 1)[-1]):
                survey.unreadable.append({"path": os.path.join(item.project_dir, "workspaces.json"), "reason": (
                    f"session {session_uid}'s session_dir {live.session_dir!r} does not end in cryoSPARC's own S<n>: "
                    "not taken (anyone who may write workspaces.json could name any directory of the project)")})
                continue
            fields = _session_fields(live)
            fields.update(self._counts_if_changed(survey, item.project_dir, live, known.get(session_uid)))
            if session_uid not in known:
                new[session_uid] = fields
            else:
                fields.pop("session_dir")  # the dir a session was reserved and measured in stays its own
                self.store.set_session_fields(item.uid, session_uid, {**fields, "left_cryosparc_at": None})
        try:
            refused = self.sessions.add_discovered_sessions(item.uid, new)
        except ApiError as exc:
            refused = dict.fromkeys(new, exc.message)
        for session_uid, why in refused.items():
            survey.conflicts.append(_conflict(f"{item.uid} {session_uid}", [item.project_dir], why))
        self.audit.record_many(LIVEDM, "session_discovered", [
            {"project_uid": item.uid, "session_uid": uid, "session_dir": new[uid]["session_dir"]}
            for uid in new if uid not in refused])
        for session_uid, session in known.items():
            if session_uid not in listed and not session.get("left_cryosparc_at"):
                self.sessions.mark_missing(item.uid, session_uid, LEFT_WORKSPACES)  # first: a pass may die here
                self.store.set_session_fields(item.uid, session_uid, {"left_cryosparc_at": now_iso()})

    def _gone(self, project: dict[str, Any], why: str) -> None:
        log.warning("discovery: project %s (%s): %s; its sessions show missing", project["uid"],
                    project["project_dir"], why)
        self.store.set_project_fields(project["uid"], {"fingerprint": None})
        for session in self.store.list_sessions(project["uid"]):
            self.sessions.mark_missing(project["uid"], session["uid"], why)
        self.store.set_project_fields(project["uid"], {"gone_at": now_iso(), "gone_reason": why})  # last: see survey

    def _counts_if_changed(self, survey: Survey, project_dir: str, live: cs.LiveSession,
                           known: dict[str, Any] | None) -> dict[str, Any]:
        """The exposure counts of exposures.bson when the file changed since they were read (or from the
        workspace's stats when there is no file, or it cannot be read: that is reported)."""
        stats = {} if live.stats is None else {"exposures": _counts_row(live.stats, "workspaces.json")}
        path = os.path.join(project_dir, live.session_dir, "exposures.bson")
        try:  # never through a symlink: a session dir swapped for a link to somebody else's is not read
            dir_fd = cs.open_session_dir(project_dir, live.session_dir)
        except cs.Unreadable:
            return stats
        try:
            st = os.stat("exposures.bson", dir_fd=dir_fd, follow_symlinks=False)
            stamp = f"{st.st_mtime_ns}:{st.st_size}"
            if known is not None and known.get("exposures_stamp") == stamp:
                return {}
            counts = cs.read_exposure_counts(path, dir_fd=dir_fd)
        except OSError:
            return stats
        except cs.Unreadable as exc:
            survey.unreadable.append({"path": exc.path, "reason": exc.reason})
            return {**stats, "exposures_stamp": stamp, "exposures_problem": exc.reason}
        finally:
            os.close(dir_fd)
        return {"exposures": _counts_row(counts, "exposures.bson"), "exposures_stamp": stamp,
                "exposures_problem": None}

    def _exposure_counts(self, survey: Survey, unchanged: list[Found]) -> None:
        """Sessions cryoSPARC is still working on add exposures without touching workspaces.json: their
        exposures.bson is looked at (one stat) on every pass."""
        dirs = {item.uid: item.project_dir for item in unchanged}
        for session in self.store.sessions_in_progress() if dirs else []:
            project_dir = dirs.get(session["project_uid"])
            if project_dir is None or session.get("left_cryosparc_at"):
                continue
            live = cs.LiveSession(session_uid=session["uid"], workspace_uid=None, title="",
                                  session_dir=session["session_dir"], status="", created_at=None, completed_at=None,
                                  paused_at=[], created_by_user_id=None, deleted=False, raw_dirs=(), stats=None)
            fields = self._counts_if_changed(survey, project_dir, live, session)
            if fields:
                self.store.set_session_fields(session["project_uid"], session["uid"], fields)


def _session_fields(live: cs.LiveSession) -> dict[str, Any]:
    return {"title": _title(live.title, live.session_uid), "session_dir": live.session_dir,
            "status": session_status_from_cryosparc(live.status), "cryosparc_status": live.status,
            "workspace_uid": live.workspace_uid, "created_by_user_id": live.created_by_user_id,
            "created_at": live.created_at or now_iso(), "started_at": None, "paused_at": list(live.paused_at),
            "completed_at": live.completed_at, "raw_data_dirs": list(live.raw_dirs)}


def _counts_row(counts: cs.ExposureCounts, source: str) -> dict[str, Any]:
    return {"total": counts.total, "accepted": counts.accepted, "rejected": counts.rejected,
            "failed": counts.failed, "source": source}


def _title(title: str, uid: str) -> str:
    return title.strip() or uid


def _pin(project_dir: str) -> dict[str, int] | None:
    """The directory's identity (as a project's dir_pin), None if it is not a plain directory now."""
    try:
        st = os.lstat(project_dir)
    except OSError:
        return None
    return {"dev": st.st_dev, "ino": st.st_ino} if stat.S_ISDIR(st.st_mode) else None


def _same_dir(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _conflict(uid: str, paths: list[str], reason: str) -> dict[str, Any]:
    return {"project_uid": uid, "paths": sorted(set(paths)), "reason": reason}
