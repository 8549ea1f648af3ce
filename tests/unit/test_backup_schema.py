"""The restore's checks, one refusal at a time, and the store's staged switch with its crash recovery."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bson import json_util
from bson.code import Code
from bson.objectid import ObjectId

from livedm.server import backup, restore, routes
from livedm.server.app import create_app
from livedm.server.backup_check import BackupChecker
from livedm.server.errors import ApiError
from livedm.server.restore import Upload
from livedm.server.store import COLLECTIONS, Store
from tests.support import mock_mongo
from tests.support.config import make_config

TS = "2026-01-31T10:00:00.000Z"
ADMIN_HASH = hashlib.sha256(b"ldm_admin").hexdigest()
Entries = list[dict[str, Any]]


def category(status: str = "active", prev_status: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"status": status, "prev_status": prev_status, "size": 10, "file_count": 1, "updated_at": TS, **extra}


def job(job_id: str, kind: str, state: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"_id": job_id, "id": job_id, "kind": kind, "params": params, "state": state, "attempts": 1, "owner": None,
            "lease_until": 0.0, "not_before": 0.0, "progress": {"done": 1}, "result": {"deleted": 1}, "error": None,
            "created_by": "admin", "created_at": TS, "created_ts": 1.5, "started_at": TS, "finished_at": TS}


def valid_entries(data_root: Path) -> Entries:
    """A small backup holding one of everything livedm writes."""
    delete = {"project_uid": "P1", "session_uid": "S1", "datatype": "particles", "user_id": "admin",
              "whole_category": True, "file_count": 1, "digest": "a" * 64}
    docs = {
        "projects": [{"_id": "P1", "uid": "P1", "title": "p", "project_dir": str(data_root / "data" / "proj"),
                      "created_at": TS, "dir_pin": {"dev": 1, "ino": 2}, "session_dirs": {"S1": "S1", "S2": "grids/2"},
                      "dirs_version": 2}],
        "sessions": [
            {"_id": "P1/S1", "project_uid": "P1", "uid": "S1", "title": "grid 1", "status": "completed",
             "session_dir": "S1", "created_at": TS, "started_at": None, "paused_at": [TS], "completed_at": TS,
             "data_management": {**{dt: category() for dt in ("raw", "micrographs", "thumbnails", "particles",
                                                               "metadata")},
                                 "raw": category("archiving", "active", hook={
                                     "job_id": "J7", "job_n": 7, "status": "archiving", "state": "failed",
                                     "error": "hook exited with status 1", "finished_at": TS, "exit_status": 1}),
                                 "particles": category(note="deletion J1: 1 file(s) could not be deleted",
                                                       note_job_id="J1")},
             "scan_gen": "b" * 32, "scan_digest": "c" * 64, "a_newer_field": {"note": "tolerated"}},
            {"_id": "P1/S2", "project_uid": "P1", "uid": "S2", "title": "grid 2", "status": "paused",
             "session_dir": "grids/2", "created_at": TS, "started_at": TS, "paused_at": [], "completed_at": None,
             "data_management": {dt: category() for dt in ("raw", "micrographs", "thumbnails", "particles",
                                                             "metadata")}}],
        "registry": [
            {"_id": ObjectId(), "key": "P1/S1", "source": "scan", "datatype": "micrographs", "gen": "b" * 32,
             "paths": ["S1/motioncorrected/a.mrc", b"S1/motioncorrected/\xff.mrc"]},
            {"_id": ObjectId(), "key": "P1/S1", "source": "api", "datatype": "metadata", "paths": ["notes/x.txt"]},
            {"_id": ObjectId(), "key": "P1/S2", "source": "api", "datatype": "raw",
             "paths": ["grids/2/import_movies/m.tif", "movies/m2.tif"]},
            {"_id": ObjectId(), "key": "J1", "source": "job", "datatype": "job", "paths": ["S1/extract/p.mrc"]}],
        "counters": [{"_id": "projects", "n": 1}, {"_id": "sessions:P1", "n": 2}, {"_id": "jobs", "n": 1},
                     {"_id": "project_dirs", "version": 1, "dirs": {"P1": str(data_root / "data" / "proj")}}],
        "users": [{"_id": "admin", "name": "admin", "role": "admin", "live_data_management": True, "created_at": TS},
                  {"_id": "hook", "name": "hook", "role": "user", "live_data_management": True, "created_at": TS}],
        "tokens": [{"_id": ADMIN_HASH, "user": "admin", "created_at": TS, "expires_at": None, "scope": None},
                   {"_id": "d" * 64, "user": "hook", "created_at": TS, "expires_at": 2e9,
                    "scope": {"project_uid": "P1", "session_uid": "S1", "datatype": "raw"}}],
        "jobs": [job("J1", "delete", "done", delete),
                 job("J7", "hook", "queued", {"script": "/bin/sh", "anything": "goes: it is never read"})],
        "audit": [{"_id": ObjectId(), "at": TS, "actor": "admin", "action": "state_changed", "project_uid": "P1",
                   "old_status": "active", "status": "archived"}],
    }
    return recount([{"livedm_backup": 2}, *({"collection": c, "doc": d} for c in COLLECTIONS for d in docs[c])])


def recount(entries: Entries) -> Entries:
    """The end line agreeing with the documents, as an attacker would leave it."""
    body = [e for e in entries if backup.END_KEY not in e]
    counts = {c: sum(1 for e in body if e.get("collection") == c) for c in COLLECTIONS}
    return [*body, {backup.END_KEY: {"counts": counts}}]


def to_bytes(entries: Entries) -> bytes:
    return b"".join((json_util.dumps(e, json_options=json_util.CANONICAL_JSON_OPTIONS) + "\n").encode()
                    for e in entries)


def checker_for(tmp_path: Path, **kwargs: Any) -> BackupChecker:
    return BackupChecker((str(tmp_path / "data"),), (str(tmp_path / "state"), str(tmp_path / "state" / "hook-logs")),
                         **kwargs)


def check(tmp_path: Path, raw: bytes, **kwargs: Any) -> BackupChecker:
    checker = checker_for(tmp_path, **kwargs)
    for line in raw.split(b"\n"):
        checker.line(line)
    checker.finish()
    return checker


def doc(entries: Entries, collection: str, index: int = 0) -> dict[str, Any]:
    return [e["doc"] for e in entries if e.get("collection") == collection][index]


def test_a_valid_backup_passes_and_says_what_it_leaves_out(tmp_path: Path) -> None:
    entries = valid_entries(tmp_path)
    doc(entries, "sessions")["data_management"]["particles"] = category("deleting", "archived", job_id="J9")
    checker = check(tmp_path, to_bytes(recount(entries)))
    assert checker.kept_counts == {"projects": 1, "sessions": 2, "registry": 3, "counters": 4, "users": 2,
                                   "tokens": 1, "jobs": 1, "audit": 1}
    assert checker.left_out == {"queued_or_running_jobs": 1, "job_file_lists": 1, "hook_tokens": 1}
    assert checker.settled_categories == 1


def test_a_deleting_category_comes_back_as_its_previous_status() -> None:
    session = {"data_management": {"particles": category("deleting", "archived", job_id="J9"),
                                    "metadata": category("calculating", "deleting"), "raw": category()}}
    settled, count = backup.settle_transient(session)
    assert count == 2
    assert settled["data_management"]["particles"] == category("archived", None, job_id=None)
    assert settled["data_management"]["metadata"]["status"] == "active"
    assert session["data_management"]["particles"]["status"] == "deleting"  # the input is left alone


Mutation = Callable[[Entries, Path], Any]


def _set(collection: str, index: int, **fields: Any) -> Mutation:
    return lambda entries, root: doc(entries, collection, index).update(fields)


def _category(**fields: Any) -> Mutation:
    return lambda entries, root: doc(entries, "sessions")["data_management"]["raw"].update(fields)


def _add(collection: str, new: dict[str, Any]) -> Mutation:
    def add(entries: Entries, root: Path) -> None:
        at = max(i for i, e in enumerate(entries) if e.get("collection") in COLLECTIONS[:COLLECTIONS.index(collection)
                                                                                         + 1])
        entries.insert(at + 1, {"collection": collection, "doc": new})
    return add


def _drop(collection: str, field: str) -> Mutation:
    return lambda entries, root: doc(entries, collection).pop(field)


REFUSED: dict[str, tuple[Mutation, str]] = {
    "unknown collection": (lambda e, r: e.insert(1, {"collection": "system.js", "doc": {"_id": 1}}),
                           "not a livedm document"),
    "missing required field": (_drop("projects", "project_dir"), "has no 'project_dir'"),
    "unknown project field": (_set("projects", 0, script="/bin/sh"), "fields livedm does not write"),
    "wrong type": (_category(size="10"), "'size' must be bytes"),
    "negative size": (_category(size=-1), "'size' must be bytes"),
    "bool for an int": (_category(file_count=True), "'file_count' must be"),
    "bad project uid": (_set("projects", 0, _id="P0", uid="P0"), "project uid"),
    "uid with a newline": (_set("projects", 0, _id="P1\n", uid="P1\n"), "project uid"),
    "session _id not its key": (_set("sessions", 0, _id="P1/S9"), "its _id is not 'P1/S1'"),
    "unknown datatype": (lambda e, r: doc(e, "sessions")["data_management"].update(movies=category()),
                         "exactly these datatypes"),
    "unknown category status": (_category(status="gone"), "'status' must be one of"),
    "a hook run without its job": (_category(hook={"state": "failed", "status": "archiving", "finished_at": TS}),
                                   "'hook' must be"),
    "a hook run in an odd state": (_category(hook={"job_id": "J7", "job_n": 7, "status": "archiving",
                                                   "state": "exploded", "error": None, "finished_at": TS}),
                                   "'hook' must be"),
    "a note's job not a job id": (_category(note="x", note_job_id="rm -rf"), "'note_job_id' must be"),
    "unknown session status": (_set("sessions", 0, status="finished"), "'status' must be one of"),
    "duplicate _id": (_add("sessions", {"_id": "P1/S1"}), "in the backup twice"),
    "role other than admin or user": (_set("users", 0, role="root"), "'role' must be one of admin, user"),
    "hook user as admin": (_set("users", 1, role="admin"), "must have the role 'user'"),
    "short token hash": (_set("tokens", 0, _id="abc"), "64 lower-case hex"),
    "upper-case token hash": (_set("tokens", 0, _id=ADMIN_HASH.upper()), "64 lower-case hex"),
    "token of nobody": (_set("tokens", 1, user="mallory"), "is not in the backup"),
    "odd token scope": (_set("tokens", 1, scope={"project_uid": "P1"}), "'scope' must be"),
    "project at /": (_set("projects", 0, project_dir="/"), "system directory"),
    "project at /etc": (_set("projects", 0, project_dir="/etc"), "system directory"),
    "project under /usr": (_set("projects", 0, project_dir="/usr/local/x"), "system directory"),
    "project outside the data roots": (lambda e, r: doc(e, "projects").update(project_dir=str(r / "elsewhere")),
                                       "outside the data roots"),
    "project holding the state dir": (lambda e, r: doc(e, "projects").update(project_dir=str(r)), "livedm's own"),
    "project inside the state dir": (lambda e, r: doc(e, "projects").update(project_dir=str(r / "state" / "p")),
                                     "livedm's own"),
    "relative project dir": (_set("projects", 0, project_dir="data/proj"), "absolute, normalised"),
    "project dir with ..": (lambda e, r: doc(e, "projects").update(project_dir=f"{r}/data/proj/../../../etc"),
                            "absolute, normalised"),
    "two projects in one dir": (_add("projects", {"_id": "P2", "uid": "P2", "title": "q", "created_at": TS,
                                                  "project_dir": "PLACEHOLDER"}), "each project needs its own"),
    "session dir with ..": (_set("sessions", 0, session_dir="../P2"), "'session_dir' must be"),
    "absolute session dir": (_set("sessions", 0, session_dir="/etc"), "'session_dir' must be"),
    "nested session dirs": (_set("sessions", 1, session_dir="S1/inner"), "share a directory"),
    "session of no project": (_set("sessions", 0, project_uid="P2", _id="P2/S1"), "is not in the backup"),
    "registry path with ..": (lambda e, r: doc(e, "registry", 1)["paths"].append("S1/../../x"), "'paths' must be"),
    "absolute registry path": (lambda e, r: doc(e, "registry", 1)["paths"].append("/etc/passwd"), "'paths' must be"),
    "bytes registry path with ..": (lambda e, r: doc(e, "registry", 1)["paths"].append(b"../\xff"), "'paths' must be"),
    "scanned path outside its session": (lambda e, r: doc(e, "registry")["paths"].append("S2/a.mrc"),
                                         "not inside its session dir"),
    "registry of no session": (_set("registry", 1, key="P1/S9"), "is not in the backup"),
    "job list path with ..": (lambda e, r: doc(e, "registry", 3)["paths"].append("../../etc/passwd"),
                              "'paths' must be"),
    "unknown job kind": (_set("jobs", 0, kind="shell"), "'kind' must be one of"),
    "unknown job state": (_set("jobs", 1, state="paused"), "'state' must be one of"),
    "job _id not its id": (_set("jobs", 0, _id="J2"), "its _id is not its id"),
    "delete job of raw": (lambda e, r: doc(e, "jobs")["params"].update(datatype="raw"), "deletable datatype"),
    "delete job with escaping paths": (lambda e, r: doc(e, "jobs")["params"].update(paths=["/etc/passwd"]),
                                       "params: 'paths' must be"),
    "unknown job param": (lambda e, r: doc(e, "jobs")["params"].update(script="/bin/sh"), "params: it has fields"),
    "relative hook script": (_set("jobs", 0, kind="hook", params={
        "project_uid": "P1", "session_uid": "S1", "datatype": "raw", "status": "archived", "script": "sh"}),
        "params: 'script' must be an absolute path"),
    "API path in another session's dir": (_set("registry", 1, paths=["grids/2/motioncorrected/victim.mrc"]),
                                          "'grids/2/motioncorrected/victim.mrc' lies in session S2's directory"),
    "API path that is another session's dir": (_set("registry", 1, paths=["grids/2"]), "lies in session S2's"),
    "API path holding another session's dir": (_set("registry", 1, paths=["grids"]), "holds session S2's"),
    "API metadata in its own raw layout dir": (_set("registry", 1, paths=["S1/import_movies/m.tif"]),
                                               "lies in session S1's raw layout dir S1/import_movies"),
    "API particles in a raw layout dir": (_set("registry", 2, datatype="particles"),
                                          "lies in session S2's raw layout dir grids/2/import_movies"),
    "API metadata that is a raw layout dir": (_set("registry", 1, paths=["S1/import_movies"]),
                                              "lies in session S1's raw layout dir S1/import_movies"),
    "API metadata holding a raw layout dir": (_set("registry", 1, paths=["S1"]),
                                              "holds or lies in session S1's raw layout dir S1/import_movies"),
    "API path registered to two sessions": (_set("registry", 2, paths=["notes/x.txt"], datatype="metadata"),
                                            "registered to sessions S1 and S2"),
    "empty session_dirs": (_set("projects", 0, session_dirs={}), "names the sessions [] but the backup holds"),
    "session_dirs missing a session": (_set("projects", 0, session_dirs={"S1": "S1"}), "['S1', 'S2']"),
    "session_dirs naming a session not in the backup": (
        _set("projects", 0, session_dirs={"S1": "S1", "S2": "grids/2", "S3": "S3"}), "names the sessions"),
    "session_dirs with another dir": (_set("projects", 0, session_dirs={"S1": "S1", "S2": "grids/3"}),
                                      "gives S2 the dir 'grids/3', but that session's dir is 'grids/2'"),
    "session_dirs not normalised": (_set("projects", 0, session_dirs={"S1": "S1", "S2": "grids//2"}),
                                    "'session_dirs' must be"),
    "session_dirs that nest": (_set("projects", 0, session_dirs={"S1": "S1", "S2": "S1/2"}), "share a directory"),
    "session_dirs without dirs_version": (_drop("projects", "dirs_version"), "come together"),
    "dirs_version without session_dirs": (_set("projects", 0, session_dirs=None), "come together"),
    "dirs_version as a string": (_set("projects", 0, dirs_version="2"), "'dirs_version' must be an integer"),
    "negative dirs_version": (_set("projects", 0, dirs_version=-1), "'dirs_version' must be an integer"),
    "token scope with an extra key": (_set("tokens", 0, scope={"project_uid": "P1", "session_uid": "S1",
                                                               "datatype": "raw", "admin": True}), "'scope' must be"),
    "token scope of no datatype": (_set("tokens", 0, scope={"project_uid": "P1", "session_uid": "S1",
                                                            "datatype": "all"}), "'scope' must be"),
    "token scope with an operator": (_set("tokens", 0, scope={"project_uid": {"$ne": ""}, "session_uid": "S1",
                                                              "datatype": "raw"}), "'scope' must be"),
    "token scope as a list": (_set("tokens", 0, scope=["P1", "S1", "raw"]), "'scope' must be"),
    "project_dirs map without the project": (_set("counters", 3, dirs={}), "names the projects [] but"),
    "project_dirs map with another dir": (lambda e, r: doc(e, "counters", 3).update(dirs={"P1": str(r / "data")}),
                                          "gives P1 the dir"),
    "session dir_id that is not one": (_set("sessions", 0, dir_id="../x"), "'dir_id' must be"),
    "counter behind its documents": (_set("counters", 1, n=1), "new uids would collide"),
    "no jobs counter": (_set("counters", 2, _id="other"), "'jobs'"),
    "no admin left with a token": (_set("tokens", 0, scope={"project_uid": "P1", "session_uid": "S1",
                                                            "datatype": "raw"}), "lock every admin out"),
    "lone surrogate in a string": (_set("audit", 0, actor="admin", note="\udc80"), "cannot be stored"),
    "extra field of a BSON-only type": (_set("audit", 0, code=Code("while(1){}")), "holds a value livedm never stores"),
    "extra field with a $ key": (_set("sessions", 0, extra={"$where": "1"}), "holds a value livedm never stores"),
    "timestamp that is not one": (_set("audit", 0, at="yesterday"), "ISO 8601"),
    "collections out of order": (lambda e, r: e.append(e.pop(next(i for i, x in enumerate(e)
                                                                  if x.get("collection") == "counters"))),
                                 "counters comes after audit"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_each_tampering_is_refused(tmp_path: Path, name: str) -> None:
    mutate, message = REFUSED[name]
    entries = copy.deepcopy(valid_entries(tmp_path))
    mutate(entries, tmp_path)
    if name == "two projects in one dir":
        doc(entries, "projects", 1)["project_dir"] = str(tmp_path / "data" / "proj" / "inner")
    with pytest.raises(ApiError) as refused:
        check(tmp_path, to_bytes(recount(entries)))
    assert message in refused.value.message and "nothing was restored" in refused.value.message


@pytest.mark.parametrize(("name", "cut"), [
    ("empty", lambda raw: b""),
    ("header only", lambda raw: raw.split(b"\n")[0] + b"\n"),
    ("cut mid-line", lambda raw: raw[:len(raw) * 2 // 3]),
    ("cut at a line", lambda raw: b"\n".join(raw.split(b"\n")[:-3]) + b"\n"),
    ("end line that lies", lambda raw: b"\n".join([*raw.split(b"\n")[:-3], raw.split(b"\n")[-2]]) + b"\n"),
    ("two joined", lambda raw: raw + raw),
    ("not JSON", lambda raw: raw.replace(b'"collection"', b"collection", 1)),
    ("nested a thousand deep", lambda raw: raw.replace(b"\n", b"\n" + b"[" * 100_000 + b"\n", 1)),
    ("a newer format", lambda raw: raw.replace(b'"livedm_backup": {"$numberInt": "2"}', b'"livedm_backup": 3', 1)),
])
def test_an_incomplete_or_broken_file_is_refused(tmp_path: Path, name: str, cut: Callable[[bytes], bytes]) -> None:
    raw = to_bytes(valid_entries(tmp_path))
    with pytest.raises(ApiError) as refused:
        check(tmp_path, cut(raw))
    assert "nothing was restored" in refused.value.message


def test_no_token_of_the_hook_user_is_loaded(tmp_path: Path) -> None:
    entries = valid_entries(tmp_path)
    doc(entries, "tokens", 1).update(expires_at=None, scope=None)  # as if it could do all the hook user may
    path = tmp_path / "backup.ndjson"
    path.write_bytes(to_bytes(entries))
    checker = check(tmp_path, path.read_bytes())
    assert checker.left_out["hook_tokens"] == 1 and checker.kept_counts["tokens"] == 1
    assert [d["user"] for c, d in backup.documents(path) if c == "tokens"] == ["admin"]


def test_a_project_from_before_the_session_map_passes_without_one(tmp_path: Path) -> None:
    entries = valid_entries(tmp_path)
    for name in ("session_dirs", "dirs_version"):
        doc(entries, "projects").pop(name)
    assert check(tmp_path, to_bytes(entries)).kept_counts["projects"] == 1


def test_session_dirs_may_hold_a_session_dir_resolved(tmp_path: Path) -> None:
    """sessions.py keeps a session dir with its symlinks resolved: S2's dir 'grids/2' is a link to 'real/2'."""
    project = tmp_path / "data" / "proj"
    (project / "real" / "2").mkdir(parents=True)
    (project / "grids").mkdir()
    (project / "grids" / "2").symlink_to(project / "real" / "2")
    entries = valid_entries(tmp_path)
    doc(entries, "projects")["session_dirs"] = {"S1": "S1", "S2": "real/2"}
    check(tmp_path, to_bytes(entries))
    doc(entries, "registry", 1)["paths"] = ["real/2/motioncorrected/victim.mrc"]  # S2's, by its resolved dir
    with pytest.raises(ApiError) as refused:
        check(tmp_path, to_bytes(entries))
    assert "lies in session S2's directory" in refused.value.message


def test_the_raw_layout_dirs_are_the_configured_ones(tmp_path: Path) -> None:
    entries = valid_entries(tmp_path)
    doc(entries, "registry", 1)["paths"] = ["S1/movies/m.tif"]  # metadata in S1's raw dir, by this layout
    assert check(tmp_path, to_bytes(entries)).kept_counts["registry"] == 3  # not raw by default
    with pytest.raises(ApiError) as refused:
        check(tmp_path, to_bytes(entries), raw_dirs=("movies",))
    assert "raw layout dir S1/movies" in refused.value.message


def test_format_1_cannot_prove_it_is_whole_so_it_needs_the_admins_word(tmp_path: Path) -> None:
    entries = [{"livedm_backup": 1}, *(e for e in valid_entries(tmp_path)[1:] if backup.END_KEY not in e)]
    with pytest.raises(ApiError) as refused:
        check(tmp_path, to_bytes(entries))
    assert "--unverified" in refused.value.message
    assert check(tmp_path, to_bytes(entries), unverified_ok=True).kept_counts["projects"] == 1


def test_lines_split_across_chunks_are_read_whole(tmp_path: Path) -> None:
    raw = to_bytes(valid_entries(tmp_path))
    checker = checker_for(tmp_path)
    with open(tmp_path / "upload", "w+b") as file:
        upload = Upload(file, checker, max_bytes=len(raw))
        for start in range(0, len(raw), 7):
            upload.feed(raw[start:start + 7])
        upload.close()
    assert (tmp_path / "upload").read_bytes() == raw
    assert checker.kept_counts["sessions"] == 2


def test_the_size_limit_and_the_line_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = to_bytes(valid_entries(tmp_path))
    with open(tmp_path / "upload", "w+b") as file:
        with pytest.raises(ApiError) as too_large:
            Upload(file, checker_for(tmp_path), max_bytes=100).feed(raw)
        assert too_large.value.data["http_status"] == 413 and "max_restore_bytes" in too_large.value.message
        monkeypatch.setattr(restore, "MAX_LINE_BYTES", 1000)
        with pytest.raises(ApiError) as too_long:
            Upload(file, checker_for(tmp_path), max_bytes=1 << 20).feed(b"x" * 2000)
        assert "longer than 1000 bytes" in too_long.value.message


def test_uploads_left_by_a_restore_that_died_are_removed_at_start(tmp_path: Path) -> None:
    left = [tmp_path / f"{restore.UPLOAD_PREFIX}{pid}-abc.ndjson" for pid in (1, os.getpid())]
    for path in left:
        path.write_bytes(b"x" * 1000)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep")
    (tmp_path / f"{restore.UPLOAD_PREFIX}link.ndjson").symlink_to(outside)
    (tmp_path / "admin.token").write_text("t")

    assert restore.remove_stale_uploads(str(tmp_path)) == 3  # at start, this process's pid was an earlier one's

    assert sorted(p.name for p in tmp_path.iterdir()) == ["admin.token", "outside.txt"]
    assert outside.read_bytes() == b"keep"  # the link went, not its target
    assert restore.remove_stale_uploads(str(tmp_path)) == 0


def test_a_restore_spares_its_own_process_uploads(tmp_path: Path) -> None:
    ours, stale = (tmp_path / f"{restore.UPLOAD_PREFIX}{pid}-abc.ndjson" for pid in (os.getpid(), 1))
    ours.write_bytes(b"another restore of this livedmd, under way")
    stale.write_bytes(b"old")
    assert restore.remove_stale_uploads(str(tmp_path), spare_pid=os.getpid()) == 1
    assert ours.exists() and not stale.exists()


def test_the_upload_is_private_and_always_removed(tmp_path: Path) -> None:
    stale = tmp_path / f"{restore.UPLOAD_PREFIX}1-abc.ndjson"  # pid 1 is never livedmd: an earlier run's
    stale.write_bytes(b"old")
    with pytest.raises(RuntimeError), restore.upload_file(str(tmp_path)) as (file, path):
        file.write(b"secret")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert not stale.exists()
        raise RuntimeError("the client went away")
    assert not list(tmp_path.glob(restore.UPLOAD_PREFIX + "*"))


async def test_the_route_refuses_a_body_over_the_limit_before_reading_it(aiohttp_client: Any,
                                                                        tmp_path: Path) -> None:
    config = make_config(tmp_path / "state", max_restore_bytes="10")
    client = await aiohttp_client(create_app(config, mongo_client=mock_mongo.MongoClient()))
    token = config.admin_token_path.read_text().strip()
    response = await client.post("/admin/restore?confirm=yes", data=b"x" * 100,
                                 headers={"Authorization": f"Bearer {token}"})
    assert response.status == 413 and "max_restore_bytes" in (await response.json())["error"]["message"]


# --- the store: staged load, switch, crash recovery ------------------------------------------------


def live(store: Store) -> dict[str, list[Any]]:
    return {c: sorted(d["_id"] for d in store.dump(c)) for c in ("projects", "sessions")}


def restore_docs(store: Store, owner: str, docs: dict[str, list[dict[str, Any]]]) -> None:
    assert store.begin_restore(owner, time.time())
    for collection, items in docs.items():
        store.stage_documents(owner, collection, items, now_s=time.time())
    store.switch_restore(owner, {c: len(items) for c, items in docs.items()}, time.time())


NEW = {"projects": [{"_id": "P7"}, {"_id": "P8"}], "sessions": [{"_id": "P7/S1"}]}


@pytest.fixture(params=["real_store", "mock_store"])
def old_store(request: pytest.FixtureRequest) -> Store:
    """A store holding P1 and its S1: on the embedded store (what livedmd runs) and on the mongomock double
    (tests/support/mock_mongo.py)."""
    store: Store = request.getfixturevalue(request.param)
    store.db.projects.insert_one({"_id": "P1"})
    store.db.sessions.insert_one({"_id": "P1/S1"})
    return store


def test_a_restore_switches_every_collection_and_can_run_again(old_store: Store) -> None:
    restore_docs(old_store, "a", NEW)
    assert live(old_store) == {"projects": ["P7", "P8"], "sessions": ["P7/S1"]}
    restore_docs(old_store, "b", {"projects": [{"_id": "P9"}]})  # a staging name is never used twice
    assert live(old_store) == {"projects": ["P9"], "sessions": []}
    assert not [n for n in old_store.db.list_collection_names() if Store.STAGING_MARK in n]
    assert old_store.db[Store.RESTORE_JOURNAL].count_documents({}) == 0
    assert any(i["key"].get("project_uid") for i in old_store.db.sessions.list_indexes())  # indexes made again


def test_a_duplicate_id_in_staging_changes_nothing(old_store: Store) -> None:
    assert old_store.begin_restore("a", time.time())
    with pytest.raises(ValueError, match="two projects documents have the _id 'P7'"):
        old_store.stage_documents("a", "projects", [{"_id": "P7"}, {"_id": "P7"}], now_s=time.time())
    old_store.abandon_restore("a")
    assert live(old_store) == {"projects": ["P1"], "sessions": ["P1/S1"]}
    assert not [n for n in old_store.db.list_collection_names() if Store.STAGING_MARK in n]
    assert old_store.begin_restore("b", time.time())  # the journal was released


def test_a_count_that_does_not_match_switches_nothing(old_store: Store) -> None:
    assert old_store.begin_restore("a", time.time())
    old_store.stage_documents("a", "projects", NEW["projects"], now_s=time.time())
    with pytest.raises(ValueError, match="2 projects documents were loaded, 3 expected"):
        old_store.switch_restore("a", {"projects": 3}, time.time())
    assert live(old_store) == {"projects": ["P1"], "sessions": ["P1/S1"]}


def test_a_crash_in_the_middle_of_the_switch_is_completed_at_start(old_store: Store,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real_rename = old_store._rename_over
    renamed: list[str] = []

    def crash_after_the_first(source: str, target: str) -> None:
        if renamed:
            raise RuntimeError("power cut")
        renamed.append(target)
        real_rename(source, target)

    monkeypatch.setattr(old_store, "_rename_over", crash_after_the_first)
    with pytest.raises(RuntimeError):
        restore_docs(old_store, "a", NEW)
    assert live(old_store) == {"projects": ["P7", "P8"], "sessions": ["P1/S1"]}  # half switched
    monkeypatch.undo()

    assert "completed" in (old_store.finish_interrupted_restore(time.time()) or "")
    assert live(old_store) == {"projects": ["P7", "P8"], "sessions": ["P7/S1"]}
    assert old_store.finish_interrupted_restore(time.time()) is None


def test_a_restore_that_died_loading_is_rolled_back_once_stale(old_store: Store) -> None:
    assert old_store.begin_restore("a", time.time())
    old_store.stage_documents("a", "projects", NEW["projects"], now_s=time.time())
    assert not old_store.begin_restore("b", time.time())  # "a" is still loading, for all "b" knows
    assert old_store.finish_interrupted_restore(time.time()) is None
    assert "rolled back" in (old_store.finish_interrupted_restore(time.time() + Store.RESTORE_STALE_S + 1) or "")
    assert live(old_store) == {"projects": ["P1"], "sessions": ["P1/S1"]}
    assert not [n for n in old_store.db.list_collection_names() if Store.STAGING_MARK in n]
    with pytest.raises(ValueError, match="lost its journal"):
        old_store.stage_documents("a", "sessions", NEW["sessions"], now_s=time.time())


def test_at_start_the_embedded_store_rolls_back_at_once(old_store: Store) -> None:
    assert old_store.begin_restore("a", time.time())
    assert "rolled back" in (old_store.finish_interrupted_restore(time.time(), stale_s=0) or "")
    assert old_store.begin_restore("b", time.time())


async def test_the_routes_round_trip_in_process(populated: Any) -> None:
    api = populated
    headers = {"Authorization": f"Bearer {api.token}"}
    before = api.snapshot()
    made = await api.client.get("/admin/backup", headers=headers)
    assert made.status == 200
    raw = await made.read()
    assert raw.endswith(b"\n") and backup.END_KEY.encode() in raw.splitlines()[-1]
    restored = await api.client.post("/admin/restore?confirm=yes", data=raw, headers=headers)
    assert restored.status == 200, await restored.text()
    assert (await restored.json())["left_out"] == {"queued_or_running_jobs": 0, "job_file_lists": 0, "hook_tokens": 0}
    assert {k: v for k, v in api.snapshot().items() if k in COLLECTIONS} == \
        {k: v for k, v in before.items() if k in COLLECTIONS}


async def test_an_upload_that_stops_sending_is_given_up(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes, "UPLOAD_IDLE_S", 0.3)
    reader, writer = await asyncio.open_connection(api.client.host, api.client.port)
    writer.write(f"POST /admin/restore?confirm=yes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.token}\r\n"
                 "Content-Length: 100000\r\n\r\n{\"livedm_backup\": 2}\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    assert b" 400 " in answer.split(b"\r\n")[0] and b"stalled" in answer
