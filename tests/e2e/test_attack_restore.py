"""Issue 8, High 5: a tampered backup neither runs a command nor deletes a file, and a bad one changes
nothing. Each attack is a backup livedm wrote, edited as an attacker would (the end line recounted),
restored into a real livedmd. And `livedm admin backup` writes its file for its owner only, through
nothing someone else planted."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bson import json_util
from bson.objectid import ObjectId

from testkit.daemon import Daemon, start_together
from testkit.sessiontree import SessionTree, build_session_tree
from tests.support.daemon_sessions import finished_job

Entry = dict[str, Any]
END = "livedm_backup_end"
Lab = tuple[Daemon, SessionTree, Path, str]  # the daemon, the session on disk, a good backup, the project uid


def load_entries(path: Path) -> list[Entry]:
    return [json_util.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def dump_entries(entries: list[Entry]) -> bytes:
    return b"".join((json_util.dumps(e, json_options=json_util.CANONICAL_JSON_OPTIONS) + "\n").encode()
                    for e in entries)


def recounted(entries: list[Entry]) -> list[Entry]:
    """What an attacker does after editing: make the end line agree with the documents."""
    counts: dict[str, int] = {}
    for entry in entries:
        if "collection" in entry:
            counts[entry["collection"]] = counts.get(entry["collection"], 0) + 1
    body = [e for e in entries if END not in e]
    return [*body, {END: {"counts": {c: counts.get(c, 0) for c in (
        "projects", "sessions", "registry", "counters", "users", "tokens", "jobs", "audit")}}}]


def craft(path: Path, entries: list[Entry]) -> Path:
    path.write_bytes(dump_entries(recounted(entries)))
    return path


def with_jobs(entries: list[Entry], jobs: list[Entry]) -> list[Entry]:
    """Job lines go where livedm writes them: after the tokens, before the audit log."""
    at = next(i for i, e in enumerate(entries) if e.get("collection") == "audit" or END in e)
    return [*entries[:at], *({"collection": "jobs", "doc": job} for job in jobs), *entries[at:]]


def job(job_id: str, kind: str, state: str, params: dict[str, Any]) -> Entry:
    return {"_id": job_id, "id": job_id, "kind": kind, "params": params, "state": state, "attempts": 0,
            "owner": "elsewhere:1:0" if state == "running" else None, "lease_until": 0.0, "not_before": 0.0,
            "progress": {}, "result": None, "error": None, "created_by": "admin",
            "created_at": "2026-01-01T00:00:00.000Z", "created_ts": 0.0, "started_at": None, "finished_at": None}


def doc_of(entries: list[Entry], collection: str, ident: Any) -> Entry:
    return next(e["doc"] for e in entries if e.get("collection") == collection and e["doc"]["_id"] == ident)


def database(daemon: Daemon, path: Path) -> list[bytes]:
    """The whole database as a backup writes it, without the header (which carries the time)."""
    made = daemon.livedm("admin", "backup", str(path))
    assert made.returncode == 0, made.stderr
    return path.read_bytes().splitlines()[1:]


def restore(daemon: Daemon, path: Path, *flags: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"LIVEDM_TOKEN": token} if token else None
    return daemon.livedm("--json", "admin", "restore", str(path), "--yes", *flags, env=env)


def with_docs(entries: list[Entry], collection: str, docs: list[Entry]) -> list[Entry]:
    """Lines of a collection go after its last one (or where it would start), as livedm writes them."""
    order = ("projects", "sessions", "registry", "counters", "users", "tokens", "jobs", "audit")
    later = order[order.index(collection) + 1:]
    at = next(i for i, e in enumerate(entries) if e.get("collection") in later or END in e)
    return [*entries[:at], *({"collection": collection, "doc": doc} for doc in docs), *entries[at:]]


def active_jobs(daemon: Daemon) -> list[dict[str, Any]]:
    return [j for state in ("queued", "running") for j in daemon.call("list_jobs", {"state": state})]


def after_the_workers_looked(daemon: Daemon, project_uid: str) -> None:
    """Return once the workers have claimed jobs since now: a job queued now has run (and with it, in queue
    order, any job that was due before it). Instead of sleeping for a few of their polls."""
    finished_job(daemon, daemon.call("update_all_sessions_datatype_sizes", [project_uid]))


@pytest.fixture(scope="module")
def daemon(shared_daemon: Daemon) -> Daemon:
    """The tests here that take `daemon` share one: each makes its own project (its uid is in its lab), backs
    up the whole database and restores it, edited, over itself."""
    return shared_daemon


def make_lab(daemon: Daemon, tmp_path: Path) -> Lab:
    tree = build_session_tree(tmp_path / "data" / "proj", exposures=2)
    project = daemon.call("create_project", ["p", str(tree.project_dir)])["uid"]
    daemon.call("create_live_session", [project, "grid 1"])
    daemon.call("mark_session_completed", [project, "S1"])
    good = tmp_path / "good.ndjson"
    assert daemon.livedm("admin", "backup", str(good)).returncode == 0
    return daemon, tree, good, project


@pytest.fixture
def lab(daemon: Daemon, tmp_path: Path) -> Lab:
    """A project with a completed session on disk, and a good backup of the database with it."""
    return make_lab(daemon, tmp_path)


def test_a_queued_hook_job_naming_bin_sh_is_left_out_and_never_runs(
        lab: Lab, tmp_path: Path) -> None:
    daemon, _tree, good, p = lab
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "pwned"
    (evil / p).write_text(f"touch {marker}\n")  # `/bin/sh <project uid> ...` run in the log dir runs this
    subprocess.run(["/bin/sh", p, "S1", "raw", "archived"], cwd=evil, check=True)
    assert marker.exists()  # the payload is live
    marker.unlink()
    params = {"project_uid": p, "session_uid": "S1", "datatype": "raw", "status": "archived",
              "script": "/bin/sh", "log_path": str(evil / "hook.log")}
    entries = load_entries(good)
    jobs = sum(1 for e in entries if e.get("collection") == "jobs")
    attack = craft(tmp_path / "attack.ndjson", with_jobs(entries, [
        job("J9041", "hook", "queued", params), job("J9042", "hook", "running", params)]))  # lease long expired
    before = [(j["id"], j["state"]) for j in daemon.call("list_jobs", {"limit": 500})]

    done = restore(daemon, attack)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["left_out"]["queued_or_running_jobs"] == 2 and result["restored"]["jobs"] == jobs
    assert active_jobs(daemon) == [] and [(j["id"], j["state"]) for j in daemon.call("list_jobs", {"limit": 500})] \
        == before
    after_the_workers_looked(daemon, p)
    assert active_jobs(daemon) == []
    assert daemon.rpc("get_job", ["J9041"])["error"]["name"] == "NotFound"
    assert not marker.exists() and not (evil / "hook.log").exists()


def test_crafted_delete_jobs_are_left_out_and_no_file_is_deleted(
        lab: Lab, tmp_path: Path) -> None:
    daemon, tree, good, p = lab
    outside = tmp_path / "data" / "outside"  # inside the data roots, outside every project
    outside.mkdir()
    victim = outside / "victim.mrc"
    victim.write_bytes(b"keep me")
    entries = load_entries(good)
    session = doc_of(entries, "sessions", f"{p}/S1")
    session["data_management"]["micrographs"].update(status="deleting", prev_status="archived", job_id="J9043")
    delete = {"project_uid": p, "session_uid": "S1", "datatype": "micrographs", "user_id": "admin"}
    attack = craft(tmp_path / "attack.ndjson", with_jobs(entries, [
        job("J9043", "delete", "queued", {**delete, "paths": None}),
        job("J9044", "delete", "queued", {**delete, "paths": ["../outside/victim.mrc"]}),
        job("J9045", "delete", "running", {**delete, "paths": ["/etc/passwd", str(victim)]})]))

    done = restore(daemon, attack)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["left_out"]["queued_or_running_jobs"] == 3 and result["settled_categories"] == 1
    after_the_workers_looked(daemon, p)
    assert active_jobs(daemon) == []
    assert victim.read_bytes() == b"keep me"
    assert all(Path(p).exists() for paths in tree.paths_by_datatype.values() for p in paths)
    micrographs = daemon.call("get_session", [p, "S1"])["data_management"]["micrographs"]
    assert micrographs["status"] == "archived" and micrographs.get("job_id") is None


@pytest.mark.parametrize("where", ["/", "/etc", "outside the data roots", "the state dir", "around the state dir"])
def test_a_project_dir_livedm_must_never_manage_refuses_the_whole_backup(
        lab: Lab, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, where: str) -> None:
    daemon, _tree, good, p = lab
    elsewhere = tmp_path_factory.getbasetemp().parent / f"{tmp_path_factory.getbasetemp().name}-elsewhere"
    project_dir = {"outside the data roots": str(elsewhere),  # the data root is the base temp dir
                   "the state dir": str(daemon.state_dir),
                   "around the state dir": str(daemon.state_dir.parent)}.get(where, where)
    before = database(daemon, tmp_path / "before.ndjson")
    entries = load_entries(good)
    doc_of(entries, "projects", p)["project_dir"] = project_dir

    refused = restore(daemon, craft(tmp_path / "attack.ndjson", entries))

    assert refused.returncode == 1 and "refused" in refused.stderr and "nothing was restored" in refused.stderr
    assert database(daemon, tmp_path / "after.ndjson") == before


def _cut_mid_line(entries: list[Entry], raw: bytes) -> bytes:
    return raw[:len(raw) // 2]


def _cut_at_a_line(entries: list[Entry], raw: bytes) -> bytes:
    return b"".join(line + b"\n" for line in raw.splitlines()[:-2])


def _header_only(entries: list[Entry], raw: bytes) -> bytes:
    return raw.splitlines(keepends=True)[0]


def _empty(entries: list[Entry], raw: bytes) -> bytes:
    return b""


def _duplicate_id(entries: list[Entry], raw: bytes) -> bytes:
    at = next(i for i, e in enumerate(entries) if e.get("collection") == "sessions")
    return dump_entries(recounted([*entries[:at + 1], entries[at], *entries[at + 1:]]))


def _wrong_type_deep_in_the_file(entries: list[Entry], raw: bytes) -> bytes:
    last_audit = max(i for i, e in enumerate(entries) if e.get("collection") == "audit")
    entries[last_audit]["doc"]["at"] = 20260101
    return dump_entries(recounted(entries))


def _escaping_registry_path(entries: list[Entry], raw: bytes) -> bytes:
    chunk = next(e["doc"] for e in entries if e.get("collection") == "registry")
    chunk["paths"].append("S1/../../outside/victim.mrc")
    return dump_entries(recounted(entries))


def _finished_delete_job_with_escaping_paths(entries: list[Entry], raw: bytes) -> bytes:
    project = next(e["doc"]["_id"] for e in entries if e.get("collection") == "projects")
    params = {"project_uid": project, "session_uid": "S1", "datatype": "particles", "user_id": "admin",
              "paths": ["/etc/passwd"]}
    return dump_entries(recounted(with_jobs(entries, [job("J9001", "delete", "done", params)])))


def _end_line_that_lies(entries: list[Entry], raw: bytes) -> bytes:
    lines = raw.splitlines(keepends=True)
    return b"".join([*lines[:-2], lines[-1]])  # the last document dropped, the end line kept


def _two_backups_joined(entries: list[Entry], raw: bytes) -> bytes:
    return raw + raw


def _an_unknown_collection(entries: list[Entry], raw: bytes) -> bytes:
    return dump_entries([entries[0], {"collection": "system.js", "doc": {"_id": "x"}}, *entries[1:]])


BROKEN: list[Callable[[list[Entry], bytes], bytes]] = [
    _cut_mid_line, _cut_at_a_line, _header_only, _empty, _duplicate_id, _wrong_type_deep_in_the_file,
    _escaping_registry_path, _finished_delete_job_with_escaping_paths, _end_line_that_lies, _two_backups_joined,
    _an_unknown_collection]


def test_a_broken_or_tampered_file_is_refused_whole_and_changes_nothing(
        lab: Lab, tmp_path: Path) -> None:
    daemon, _tree, _good, p = lab
    daemon.call("change_session_data_management_state", [p, "S1", "raw", "archived"])  # an audit entry
    before = database(daemon, tmp_path / "before.ndjson")
    raw = (tmp_path / "before.ndjson").read_bytes()
    for breaking in BROKEN:
        broken = tmp_path / f"{breaking.__name__}.ndjson"
        broken.write_bytes(breaking(load_entries(tmp_path / "before.ndjson"), raw))
        refused = restore(daemon, broken)
        assert refused.returncode == 1, (breaking.__name__, refused.stdout)
        assert "nothing was restored" in refused.stderr, (breaking.__name__, refused.stderr)
    assert database(daemon, tmp_path / "after.ndjson") == before
    assert not list(daemon.state_dir.glob(".restore-upload-*"))  # every upload was removed


def test_a_good_round_trip_keeps_finished_jobs_as_history(tmp_path: Path) -> None:
    # its own livedmd (the counts below are of a database with one lab), and a new one to restore into
    daemon, fresh = Daemon(tmp_path / "state"), Daemon(tmp_path / "fresh-state")
    start_together(daemon, fresh)  # two databases: each has its own admin token
    try:
        make_lab(daemon, tmp_path)
        deleted = daemon.call("delete_live_datatype", {"project_uid": "P1", "session_uid": "S1",
                                                       "datatype": "particles", "asynchronous": False})
        assert deleted["state"] == "done"
        backup_file = tmp_path / "history.ndjson"
        made = daemon.livedm("--json", "admin", "backup", str(backup_file))
        assert made.returncode == 0, made.stderr
        documents = json.loads(made.stdout)["documents"]
        assert documents == len(backup_file.read_bytes().splitlines()) - 2  # header and end line
        before = {m: daemon.call(m, p) for m, p in [("list_jobs", {}), ("get_overview", []), ("list_users", [])]}
        before["get_overview"].pop("as_of")

        for token in (fresh.token, daemon.token):  # over an empty database, then over the restored one
            done = restore(fresh, backup_file, token=token)
            assert done.returncode == 0, done.stderr
            result = json.loads(done.stdout)
            assert result["left_out"] == {"queued_or_running_jobs": 0, "job_file_lists": 1,  # the deletion's list
                                          "hook_tokens": 0}
            assert sum(result["restored"].values()) == documents - 1
        fresh.token_file = daemon.token_file  # the backup's tokens are in force now
        after = {m: fresh.call(m, p) for m, p in [("list_jobs", {}), ("get_overview", []), ("list_users", [])]}
        after["get_overview"].pop("as_of")
        assert after == before
        assert fresh.call("list_projects")[0]["uid"] == "P1"  # the database still serves after two switches
    finally:
        daemon.stop()
        fresh.stop()


def test_a_format_1_backup_needs_unverified(lab: Lab, tmp_path: Path) -> None:
    daemon, _tree, good, _p = lab
    entries = [e for e in load_entries(good) if END not in e]
    entries[0] = {"livedm_backup": 1}
    old = tmp_path / "v1.ndjson"
    old.write_bytes(dump_entries(entries))

    refused = restore(daemon, old)
    assert refused.returncode == 1 and "--unverified" in refused.stderr

    done = restore(daemon, old, "--unverified")
    assert done.returncode == 0 and json.loads(done.stdout)["format"] == 1, done.stderr


def test_a_scoped_token_may_neither_back_up_nor_restore(lab: Lab,
                                                        tmp_path: Path) -> None:
    daemon, _tree, good, p = lab
    scoped = "ldm_" + "s" * 43
    entries = load_entries(good)
    at = max(i for i, e in enumerate(entries) if e.get("collection") == "tokens") + 1
    entries.insert(at, {"collection": "tokens", "doc": {
        "_id": hashlib.sha256(scoped.encode()).hexdigest(), "user": "admin", "created_at": "2026-01-01T00:00:00Z",
        "expires_at": None, "scope": {"project_uid": p, "session_uid": "S1", "datatype": "raw"}}})
    assert restore(daemon, craft(tmp_path / "scoped.ndjson", entries)).returncode == 0

    refused = restore(daemon, good, token=scoped)
    assert refused.returncode == 1 and "scoped" in refused.stderr
    request = urllib.request.Request(daemon.url + "/admin/backup", headers={"Authorization": f"Bearer {scoped}"})
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(request, timeout=10)
    assert denied.value.code == 403


# --- registry lines, session maps and tokens livedm never writes (attack pass 2, medium 1) --------------


TwoSessions = tuple[Daemon, dict[str, SessionTree], Path, str]  # ..., the project uid, a plain user's name


@pytest.fixture
def two_sessions(daemon: Daemon, tmp_path: Path) -> TwoSessions:
    """A project with two completed sessions on disk (S1, S2), a file outside both registered to S2 by
    API, a plain user, and a good backup of the database with all that."""
    project_dir = tmp_path / "data" / "proj"
    trees = {uid: build_session_tree(project_dir, uid, exposures=2) for uid in ("S1", "S2")}
    project = daemon.call("create_project", ["p", str(project_dir)])["uid"]
    for uid in trees:
        daemon.call("create_live_session", [project, f"grid {uid}"])
        daemon.call("mark_session_completed", [project, uid])
    shared = project_dir / "shared" / "notes.txt"
    shared.parent.mkdir()
    shared.write_text("S2's notes")
    daemon.call("register_files", [project, "S2", "metadata", [str(shared)]])
    daemon.call("create_user", {"name": f"alice-{project.lower()}"})
    good = tmp_path / "good.ndjson"
    assert daemon.livedm("admin", "backup", str(good)).returncode == 0
    return daemon, trees, good, project


def _file_of(trees: dict[str, SessionTree], uid: str, datatype: str) -> Path:
    return Path(trees[uid].paths_by_datatype[datatype][0])


def _raw_link(trees: dict[str, SessionTree], uid: str) -> Path:
    return next((trees[uid].session_path / "import_movies").iterdir())


# (the victim's path, relative to the project dir; what the refusal says)
STEERING_LINES: dict[str, tuple[Callable[[dict[str, SessionTree]], Path], str]] = {
    "another session's file": (lambda trees: _file_of(trees, "S2", "micrographs"), "lies in session S2's directory"),
    "its own raw link as metadata": (lambda trees: _raw_link(trees, "S1"),
                                     "is, holds or lies in session S1's raw layout dir S1/import_movies"),
    "a file registered to another session": (lambda trees: trees["S2"].project_dir / "shared" / "notes.txt",
                                             "is registered to sessions S2 and S1"),
}


@pytest.mark.parametrize("attack", STEERING_LINES)
def test_an_api_line_steering_a_deletion_is_refused_and_the_deletion_keeps_to_its_session(
        two_sessions: TwoSessions, tmp_path: Path, attack: str) -> None:
    daemon, trees, good, p = two_sessions
    victim_of, message = STEERING_LINES[attack]
    victim = victim_of(trees)
    rel = str(victim.relative_to(trees["S1"].project_dir))
    victim_bytes = os.readlink(victim) if victim.is_symlink() else victim.read_bytes()
    before = database(daemon, tmp_path / "before.ndjson")
    line = {"_id": ObjectId(), "key": f"{p}/S1", "source": "api", "datatype": "metadata", "paths": [rel]}

    refused = restore(daemon, craft(tmp_path / "attack.ndjson", with_docs(load_entries(good), "registry", [line])))

    assert refused.returncode == 1, refused.stdout
    assert f"{rel!r} {message}" in refused.stderr and "nothing was restored" in refused.stderr
    assert database(daemon, tmp_path / "after.ndjson") == before
    deleted = daemon.call("delete_live_datatype", {"project_uid": p, "session_uid": "S1", "datatype": "metadata",
                                                   "asynchronous": False})
    assert deleted["state"] == "done" and deleted["result"]["deleted"] == len(trees["S1"].paths_by_datatype["metadata"])
    assert (os.readlink(victim) if victim.is_symlink() else victim.read_bytes()) == victim_bytes
    assert all(Path(p).exists() for tree in (trees["S2"],) for paths in tree.paths_by_datatype.values() for p in paths)


@pytest.mark.parametrize("session_dirs", [{}, {"S1": "S1"}, {"S1": "S1", "S2": "elsewhere"}],
                         ids=["empty", "without S2", "S2 elsewhere"])
def test_a_project_map_that_frees_a_session_dir_is_refused_and_the_dir_stays_taken(
        two_sessions: TwoSessions, tmp_path: Path,
        session_dirs: dict[str, str]) -> None:
    daemon, _trees, good, p = two_sessions
    alice = daemon.call("issue_token", {"user": f"alice-{p.lower()}"})["token"]
    before = database(daemon, tmp_path / "before.ndjson")
    entries = load_entries(good)
    doc_of(entries, "projects", p)["session_dirs"] = session_dirs

    refused = restore(daemon, craft(tmp_path / "attack.ndjson", entries))

    assert refused.returncode == 1 and f"project {p}'s session_dirs" in refused.stderr, refused.stderr
    assert "nothing was restored" in refused.stderr
    assert database(daemon, tmp_path / "after.ndjson") == before
    duplicate = daemon.rpc("create_live_session", [p, "dup", "S2"], token=alice)
    assert duplicate["error"]["name"] == "Conflict" and "session S2's directory" in duplicate["error"]["message"]
    assert [s["uid"] for s in daemon.call("list_sessions", [p])] == ["S1", "S2"]


def test_a_token_of_the_hook_user_never_comes_back(lab: Lab, tmp_path: Path) -> None:
    daemon, tree, good, p = lab
    stolen = "ldm_" + "h" * 43
    entries = load_entries(good)
    tokens = sum(1 for e in entries if e.get("collection") == "tokens")
    unscoped = {"_id": hashlib.sha256(stolen.encode()).hexdigest(), "user": "hook",
                "created_at": "2026-01-01T00:00:00Z", "expires_at": None, "scope": None}

    done = restore(daemon, craft(tmp_path / "attack.ndjson", with_docs(entries, "tokens", [unscoped])))

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["left_out"]["hook_tokens"] == 1 and result["restored"]["tokens"] == tokens
    denied = daemon.rpc("delete_live_datatype", {"project_uid": p, "session_uid": "S1", "datatype": "particles",
                                                  "asynchronous": False}, token=stolen)
    assert denied["error"]["name"] == "Unauthenticated", denied
    assert all(Path(p).exists() for paths in tree.paths_by_datatype.values() for p in paths)
    told = daemon.livedm("admin", "restore", str(tmp_path / "attack.ndjson"), "--yes")
    assert told.returncode == 0 and "left out 1 token(s) of the hook user" in told.stdout, told.stderr


# --- the backup file (attack pass 2, medium 2: a careless admin backing up into a shared dir) -----------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_link_planted_at_the_partial_file_is_refused_and_its_target_unchanged(
        lab: Lab, tmp_path: Path) -> None:
    daemon, _tree, _good, _p = lab
    target = tmp_path / "root-only"
    target.write_bytes(b"root's secret")
    target.chmod(0o600)
    backup_file = tmp_path / "shared" / "livedm.ndjson"
    backup_file.parent.mkdir()
    partial = backup_file.with_name("livedm.ndjson.partial")
    partial.symlink_to(target)

    made = daemon.livedm("admin", "backup", str(backup_file))

    assert made.returncode == 1 and f"remove it (rm {partial})" in made.stderr, made.stderr
    assert target.read_bytes() == b"root's secret" and _mode(target) == 0o600
    assert partial.is_symlink() and os.readlink(partial) == str(target)
    assert not backup_file.exists()


def test_a_partial_file_someone_created_first_is_refused_and_the_old_backup_kept(
        lab: Lab, tmp_path: Path) -> None:
    daemon, _tree, good, _p = lab
    backup_file = tmp_path / "shared" / "livedm.ndjson"
    backup_file.parent.mkdir()
    backup_file.write_bytes(good.read_bytes())
    partial = backup_file.with_name("livedm.ndjson.partial")
    partial.write_bytes(b"")
    partial.chmod(0o666)  # as another user would leave it, for them to read what lands there

    made = daemon.livedm("admin", "backup", str(backup_file))

    assert made.returncode == 1 and "already exists" in made.stderr and f"rm {partial}" in made.stderr
    assert partial.read_bytes() == b"" and _mode(partial) == 0o666  # not ours: left for the admin to look at
    assert backup_file.read_bytes() == good.read_bytes()


def test_a_backup_is_its_owners_alone_and_replaces_a_link_at_its_name(
        lab: Lab, tmp_path: Path) -> None:
    daemon, _tree, _good, _p = lab
    target = tmp_path / "root-only"
    target.write_bytes(b"root's secret")
    backup_file = tmp_path / "livedm.ndjson"
    backup_file.symlink_to(target)
    umask = os.umask(0)  # the client inherits it: the mode must not depend on it
    try:
        made = daemon.livedm("--json", "admin", "backup", str(backup_file))
    finally:
        os.umask(umask)

    assert made.returncode == 0, made.stderr
    assert not backup_file.is_symlink() and _mode(backup_file) == 0o600
    assert target.read_bytes() == b"root's secret"
    assert json.loads(made.stdout)["bytes"] == backup_file.stat().st_size
    assert not backup_file.with_name("livedm.ndjson.partial").exists()
