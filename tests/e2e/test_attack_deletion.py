"""Attacks that try to steer a deletion, as a hostile local user or a careless admin would, against real
livedmd processes (issue 8: high 2, 3 and 4, medium 6, 7 and 9). Each shows the attack failing with
nothing deleted outside the confirmed list."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from testkit.daemon import Daemon
from testkit.sessiontree import build_session_tree
from tests.support.daemon_sessions import finished_job
from tests.support.disk import data_state


@pytest.fixture(scope="module")
def daemon(shared_daemon: Daemon) -> Daemon:
    """The tests here that take `daemon` share one: each makes its own projects and reads back their uids."""
    return shared_daemon


def error_code(reply: dict[str, Any]) -> int:
    assert "error" in reply, reply
    return int(reply["error"]["code"])


def completed(daemon: Daemon, project_dir: Path, project_uid: str, title: str = "s",
              session_dir: str | None = None) -> None:
    daemon.call("create_live_session", {"project_uid": project_uid, "title": title, "session_dir": session_dir})
    sessions = daemon.call("list_sessions", [project_uid])
    daemon.call("mark_session_completed", [project_uid, sessions[-1]["uid"]])


@contextmanager
def queueing_only(tmp_path: Path) -> Iterator[Daemon]:
    """livedmd with no workers: a job it queues waits (while the test tampers) until run_by_a_worker."""
    daemon = Daemon(tmp_path / "state", args=["--workers", "0"]).start()
    try:
        yield daemon
    finally:
        daemon.stop()


@contextmanager
def run_by_a_worker(tmp_path: Path, job_id: str) -> Iterator[tuple[Daemon, dict[str, Any]]]:
    """livedmd started again on the same state dir, with its workers: the queued job, once it has ended."""
    worker = Daemon(tmp_path / "state").start()
    try:
        yield worker, finished_job(worker, job_id)
    finally:
        worker.stop()


def category(daemon: Daemon, project_uid: str, session_uid: str, datatype: str) -> dict[str, Any]:
    return daemon.call("get_session", [project_uid, session_uid])["data_management"][datatype]


# --- high 2: a project dir swapped for a symlink -------------------------------------------------------

def test_a_project_dir_swapped_for_a_link_to_another_project_deletes_nothing(daemon: Daemon, tmp_path: Path) -> None:
    p3 = build_session_tree(tmp_path / "data" / "P3dir", exposures=2)
    p4 = build_session_tree(tmp_path / "data" / "P4dir", exposures=2)
    p1 = daemon.call("create_project", ["three", str(p3.project_dir)])["uid"]
    p2 = daemon.call("create_project", ["four", str(p4.project_dir)])["uid"]
    completed(daemon, p3.project_dir, p1)
    completed(daemon, p4.project_dir, p2)
    before = data_state(tmp_path)
    # the attack: P3's directory moved away and replaced by a link to P4's
    p3.project_dir.rename(tmp_path / "data" / "P3moved")
    p3.project_dir.symlink_to(p4.project_dir)
    reply = daemon.rpc("delete_live_datatype", [p1, "S1", "micrographs"])
    assert error_code(reply) == -32003
    assert "no longer the directory" in reply["error"]["message"] or "symlink" in reply["error"]["message"]
    assert error_code(daemon.rpc("update_session_datatype_sizes", [p1, "S1"])) == -32003
    after = data_state(tmp_path)
    p4_files = {p: d for p, d in before.items() if p.startswith(str(p4.project_dir))}
    assert {p: after[p] for p in p4_files} == p4_files, "P4's files are untouched"
    assert category(daemon, p1, "S1", "micrographs")["status"] == "active"
    assert category(daemon, p2, "S1", "micrographs")["status"] == "active"


def test_a_swap_between_the_request_and_the_job_is_refused_by_the_job(tmp_path: Path) -> None:
    p3 = build_session_tree(tmp_path / "data" / "P3dir", exposures=2)
    p4 = build_session_tree(tmp_path / "data" / "P4dir", exposures=2)
    with queueing_only(tmp_path) as daemon:
        daemon.call("create_project", ["three", str(p3.project_dir)])
        daemon.call("create_project", ["four", str(p4.project_dir)])
        completed(daemon, p3.project_dir, "P1")
        job_id = daemon.call("delete_live_datatype", ["P1", "S1", "micrographs"])
        before = data_state(p4.project_dir)
        p3.project_dir.rename(tmp_path / "data" / "P3moved")
        p3.project_dir.symlink_to(p4.project_dir)  # swapped while the job waits in the queue
    with run_by_a_worker(tmp_path, job_id) as (worker, job):
        assert job["state"] == "failed" and "nothing was deleted" in job["error"]
        assert data_state(p4.project_dir) == before
        moved = tmp_path / "data" / "P3moved" / "S1" / "motioncorrected"
        assert len(list(moved.iterdir())) == len(p3.paths_by_datatype["micrographs"])
        settled = category(worker, "P1", "S1", "micrographs")
        assert settled["status"] == "active"
        assert settled["note"].startswith(f"deletion {job_id} stopped:") and settled["note_job_id"] == job_id
        assert "not the one it was measured in" in settled["note"]


def test_a_project_dir_that_is_a_symlink_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    real = tmp_path / "data" / "real"
    real.mkdir(parents=True)
    link = tmp_path / "data" / "link"
    link.symlink_to(real)
    before = daemon.call("list_projects")
    reply = daemon.rpc("create_project", ["p", str(link)])
    assert error_code(reply) == -32602 and "symlink" in reply["error"]["message"]
    assert daemon.call("list_projects") == before


# --- high 3: plain users cannot steer deletions --------------------------------------------------------

def test_plain_users_cannot_create_projects_or_register_files(daemon: Daemon, tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "data" / "proj", exposures=1)
    p1 = daemon.call("create_project", ["p", str(tree.project_dir)])["uid"]
    daemon.call("create_live_session", [p1, "s"])
    plain = daemon.call("create_user", [f"mallory-{p1.lower()}"])["token"]
    before = daemon.call("list_projects")
    other = tmp_path / "data" / "other"
    other.mkdir()
    assert error_code(daemon.rpc("create_project", ["x", str(other)], token=plain)) == -32002
    micrograph = tree.paths_by_datatype["micrographs"][0]
    assert error_code(daemon.rpc("register_files", [p1, "S1", "particles", [micrograph]], token=plain)) == -32002
    assert daemon.call("list_projects") == before


@pytest.mark.parametrize("session_dir", ["S1", "S1/motioncorrected", "S1/../S1", "S1/import_movies"])
def test_a_session_dir_may_not_be_or_nest_in_another_sessions(daemon: Daemon, tmp_path: Path,
                                                              session_dir: str) -> None:
    tree = build_session_tree(tmp_path / "data" / "proj", exposures=1)
    p1 = daemon.call("create_project", ["p", str(tree.project_dir)])["uid"]
    daemon.call("create_live_session", [p1, "running one"])
    reply = daemon.rpc("create_live_session", [p1, "hostile", session_dir])
    assert error_code(reply) == -32003 and "directory of its own" in reply["error"]["message"]
    assert [s["uid"] for s in daemon.call("list_sessions", [p1])] == ["S1"]


def test_a_session_dir_around_others_and_a_link_into_one_are_refused(daemon: Daemon, tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "data" / "proj", "runs/S1", exposures=1)
    p1 = daemon.call("create_project", ["p", str(tree.project_dir)])["uid"]
    daemon.call("create_live_session", [p1, "first", "runs/S1"])
    assert error_code(daemon.rpc("create_live_session", [p1, "around", "runs"])) == -32003
    (tree.project_dir / "alias").symlink_to(tree.session_path)
    assert error_code(daemon.rpc("create_live_session", [p1, "alias", "alias"])) == -32003
    assert error_code(daemon.rpc("create_live_session", [p1, "project itself", "."])) == -32602


def test_concurrent_sessions_on_one_dir_one_wins(daemon: Daemon, tmp_path: Path) -> None:
    project = tmp_path / "data" / "proj"
    project.mkdir(parents=True)
    p1 = daemon.call("create_project", ["p", str(project)])["uid"]
    replies: list[dict[str, Any]] = []

    def create(i: int) -> None:
        replies.append(daemon.rpc("create_live_session", [p1, f"racer {i}", "shared"]))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum("result" in r for r in replies) == 1
    assert all(error_code(r) == -32003 for r in replies if "error" in r)
    assert [s["session_dir"] for s in daemon.call("list_sessions", [p1])] == ["shared"]


def test_a_file_belongs_to_one_session(daemon: Daemon, tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "data" / "proj", exposures=1)
    build_session_tree(tree.project_dir, "S2", exposures=1)
    shared = tree.project_dir / "shared.star"
    shared.write_text("data_\n")
    p1 = daemon.call("create_project", ["p", str(tree.project_dir)])["uid"]
    daemon.call("create_live_session", [p1, "one"])
    daemon.call("create_live_session", [p1, "two"])
    micrograph = tree.paths_by_datatype["micrographs"][0]  # S1's
    reply = daemon.rpc("register_files", [p1, "S2", "micrographs", [micrograph]])
    assert error_code(reply) == -32602 and "session S1" in reply["error"]["message"]
    daemon.call("register_files", [p1, "S1", "metadata", [str(shared)]])
    reply = daemon.rpc("register_files", [p1, "S2", "metadata", [str(shared)]])
    assert error_code(reply) == -32602 and "registered to session S1" in reply["error"]["message"]
    assert str(shared) not in daemon.call("get_datatype_file_paths", [p1, "S2", "metadata"])["metadata"]


def test_raw_movies_inside_the_project_are_never_deleted_through_another_session(daemon: Daemon,
                                                                                 tmp_path: Path) -> None:
    project = tmp_path / "data" / "proj"
    tree = build_session_tree(project, exposures=2, movies_dir=project / "movies")  # movies in the project
    p1 = daemon.call("create_project", ["p", str(project)])["uid"]
    completed(daemon, project, p1)
    completed(daemon, project, p1, "claims the movies", "movies")  # its "metadata" are S1's movies
    listed = daemon.call("get_datatype_file_paths", [p1, "S2", "metadata"])["metadata"]
    assert sorted(listed) == sorted(tree.paths_by_datatype["raw"])
    before = data_state(project / "movies")
    job = daemon.call("delete_live_datatype", {"project_uid": p1, "session_uid": "S2", "datatype": "metadata",
                                               "asynchronous": False})
    assert job["state"] == "done" and job["result"]["deleted"] == 0
    assert job["result"]["refused"] == len(tree.paths_by_datatype["raw"])
    assert data_state(project / "movies") == before
    assert category(daemon, p1, "S2", "metadata")["status"] == "active"


def test_files_registered_after_the_dry_run_are_not_deleted(tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "data" / "proj", exposures=3)
    extra = tree.project_dir / "later"
    extra.mkdir()
    with queueing_only(tmp_path) as daemon:
        daemon.call("create_project", ["p", str(tree.project_dir)])
        completed(daemon, tree.project_dir, "P1")
        dry = daemon.call("delete_live_datatype", {"project_uid": "P1", "session_uid": "S1", "datatype": "particles",
                                                   "dry_run": True})
        assert dry["file_count"] == 3
        (extra / "a.mrc").write_bytes(b"a")
        daemon.call("register_files", ["P1", "S1", "particles", [str(extra / "a.mrc")]])
        stale = daemon.rpc("delete_live_datatype", {"project_uid": "P1", "session_uid": "S1",
                                                     "datatype": "particles", "confirm_digest": dry["confirm_digest"]})
        assert error_code(stale) == -32003 and "changed since the dry run" in stale["error"]["message"]
        assert category(daemon, "P1", "S1", "particles")["status"] == "active"
        job_id = daemon.call("delete_live_datatype", ["P1", "S1", "particles"])  # confirms the 4 there now
        (extra / "b.mrc").write_bytes(b"b")  # registered after the request: not in its list
        daemon.call("register_files", ["P1", "S1", "particles", [str(extra / "b.mrc")]])
    with run_by_a_worker(tmp_path, job_id) as (worker, job):
        assert job["state"] == "done" and job["result"]["deleted"] == 4
        assert (extra / "b.mrc").exists() and not (extra / "a.mrc").exists()
        settled = category(worker, "P1", "S1", "particles")
        assert settled["status"] == "active" and "kept" in settled["note"]
        assert settled["file_count"] == 1


# --- high 4: livedm's own database and the system are never project dirs -------------------------------

def test_projects_at_root_system_or_state_dirs_are_refused(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", env={"LIVEDM_DATA_ROOTS": ""}, args=["--trial"]).start()
    try:
        for hostile in ("/", "/etc", "/usr/lib", "/var", str(tmp_path), str(tmp_path / "state"),
                        str(tmp_path / "state" / "embedded")):
            reply = daemon.rpc("create_project", ["hostile", hostile])
            assert error_code(reply) == -32002, (hostile, reply)
        assert daemon.call("list_projects") == []
        ok = tmp_path / "data"
        ok.mkdir()
        assert daemon.call("create_project", ["fine", str(ok)])["uid"] == "P1"
    finally:
        daemon.stop()
    assert (tmp_path / "state" / "admin.token").exists()


def test_an_over_long_path_is_invalid_params_not_an_internal_error(daemon: Daemon, tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "data" / "proj", exposures=1)
    p1 = daemon.call("create_project", ["p", str(tree.project_dir)])["uid"]
    daemon.call("create_live_session", [p1, "s"])
    long_path = str(tree.session_path) + ("/" + "x" * 255) * 20 + "/f.mrc"
    assert error_code(daemon.rpc("register_files", [p1, "S1", "metadata", [long_path]])) == -32602
    assert error_code(daemon.rpc("create_project", ["q", "/" + "y" * 5000])) == -32602
    daemon.call("mark_session_completed", [p1, "S1"])
    assert error_code(daemon.rpc("delete_live_datatype", {"project_uid": p1, "session_uid": "S1",
                                                           "datatype": "metadata", "dry_run": True,
                                                           "filepaths_to_delete": [long_path]})) == -32602


# --- medium 6: names that are not UTF-8 ------------------------------------------------------------------

def test_a_file_name_that_is_not_utf8_is_scanned_listed_and_deleted(daemon: Daemon, tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "data" / "proj", exposures=1)
    odd = os.fsencode(tree.session_path / "extract") + b"/caf\xe9-\xff.mrc"
    with open(odd, "wb") as fh:
        fh.write(b"x" * 123)
    p1 = daemon.call("create_project", ["p", str(tree.project_dir)])["uid"]
    completed(daemon, tree.project_dir, p1)
    particles = category(daemon, p1, "S1", "particles")
    assert particles["file_count"] == 2 and particles["size"] == tree.bytes_by_datatype["particles"] + 123
    listed = daemon.call("get_datatype_file_paths", [p1, "S1", "particles"])["particles"]
    assert os.fsdecode(odd) in listed  # the same surrogate-escaped name Python gives the bytes
    job = daemon.call("delete_live_datatype", {"project_uid": p1, "session_uid": "S1", "datatype": "particles",
                                               "asynchronous": False})
    assert job["state"] == "done" and job["result"]["deleted"] == 2
    assert not os.path.lexists(odd)
    assert category(daemon, p1, "S1", "particles")["status"] == "deleted"


# --- medium 7: one undeletable file ---------------------------------------------------------------------

def _chattr(flag: str, path: Path) -> bool:
    return shutil.which("chattr") is not None and subprocess.run(
        ["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_one_undeletable_file_does_not_stop_the_others(daemon: Daemon, tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "data" / "proj", exposures=4)
    stuck = Path(tree.paths_by_datatype["micrographs"][1])
    if not _chattr("+i", stuck):
        pytest.skip("chattr +i is not available on this file system (needs root and ext4/xfs)")
    try:
        p1 = daemon.call("create_project", ["p", str(tree.project_dir)])["uid"]
        completed(daemon, tree.project_dir, p1)
        daemon.call("change_session_data_management_state", [p1, "S1", "micrographs", "archived"])
        job = daemon.call("delete_live_datatype", {"project_uid": p1, "session_uid": "S1",
                                                   "datatype": "micrographs", "asynchronous": False})
        assert job["state"] == "done"
        assert job["result"]["deleted"] == len(tree.paths_by_datatype["micrographs"]) - 1
        assert job["result"]["failed"] == 1
        assert job["result"]["failed_paths"] == [f"{stuck.relative_to(tree.project_dir)}: Operation not permitted"]
        assert stuck.exists()
        settled = category(daemon, p1, "S1", "micrographs")
        assert settled["status"] == "archived", "back to what it was: not everything went"
        assert (settled["file_count"], settled["size"]) == (1, stuck.stat().st_size)
        assert "could not be deleted" in settled["note"]
        audit = next(e for e in daemon.call("get_audit_log", {"project_uid": p1}) if e["action"] == "deleted")
        assert audit["failed"] == 1 and audit["files"] == len(tree.paths_by_datatype["micrographs"]) - 1
    finally:
        _chattr("-i", stuck)


# --- medium 9: one request cannot freeze the daemon -------------------------------------------------------

def test_a_batch_of_refreshes_of_a_huge_tree_does_not_freeze_the_daemon(daemon: Daemon, tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "data" / "proj", exposures=1)
    bulk = tree.session_path / "extract" / "bulk"
    bulk.mkdir(parents=True)
    for i in range(30_000):
        (bulk / f"p{i:05d}.mrc").write_bytes(b"p")
    p1 = daemon.call("create_project", ["p", str(tree.project_dir)])["uid"]
    daemon.call("create_live_session", [p1, "s"])
    started = time.monotonic()
    daemon.call("update_session_datatype_sizes", [p1, "S1"])
    one_walk_s = time.monotonic() - started
    batch = json.dumps([{"jsonrpc": "2.0", "method": "update_session_datatype_sizes", "params": [p1, "S1"],
                         "id": i} for i in range(100)]).encode()
    outcome: dict[str, Any] = {}

    def send_batch() -> None:
        request = urllib.request.Request(daemon.url + "/api", data=batch,
                                         headers={"Authorization": f"Bearer {daemon.token}"})
        began = time.monotonic()
        with urllib.request.urlopen(request, timeout=300) as response:
            outcome["replies"] = json.loads(response.read())
        outcome["seconds"] = time.monotonic() - began

    sender = threading.Thread(target=send_batch)
    sender.start()
    time.sleep(0.2)
    slowest_health_s = 0.0
    while sender.is_alive():
        began = time.monotonic()
        with urllib.request.urlopen(daemon.url + "/healthz", timeout=30) as response:
            assert response.status == 200
        daemon.call("get_datatype_size", [p1, "S1", "particles"])
        slowest_health_s = max(slowest_health_s, time.monotonic() - began)
        time.sleep(0.05)
    sender.join()
    assert all(r["result"] == outcome["replies"][0]["result"] for r in outcome["replies"])
    assert slowest_health_s < 1.0, f"/healthz and a read took {slowest_health_s:.2f} s during the batch"
    # coalesced: 100 refreshes cost a few walks, not 100
    assert outcome["seconds"] < 10 * one_walk_s + 2, (outcome["seconds"], one_walk_s)


# --- the second attack pass: session dirs swapped, movies reached from elsewhere --------------------------

def _micrographs(tree_dir: Path) -> list[Path]:
    return sorted((tree_dir / "motioncorrected").iterdir())


def test_a_session_dir_renamed_into_a_new_session_is_not_measured_nor_deleted(daemon: Daemon,
                                                                            tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "data" / "proj", exposures=3)
    p1 = daemon.call("create_project", ["p", str(tree.project_dir)])["uid"]
    completed(daemon, tree.project_dir, p1)  # S1 measured: its directory is pinned
    daemon.call("create_live_session", [p1, "mallory's"])  # S2, whose directory does not exist yet
    before = data_state(tree.session_path)
    (tree.project_dir / "S1").rename(tree.project_dir / "S2")  # the victim's directory under S2's name
    reply = daemon.rpc("mark_session_completed", [p1, "S2"])
    assert error_code(reply) == -32003 and f"session {p1} S1 was measured in" in reply["error"]["message"]
    reply = daemon.rpc("delete_live_datatype", [p1, "S2", "micrographs"])
    assert error_code(reply) == -32003 and f"session {p1} S1 was measured in" in reply["error"]["message"]
    (tree.project_dir / "S2").rename(tree.project_dir / "S1")
    assert data_state(tree.session_path) == before
    s1 = category(daemon, p1, "S1", "micrographs")
    assert s1["size"] == tree.bytes_by_datatype["micrographs"]


def test_a_swap_of_measured_session_dirs_before_the_job_deletes_nothing(tmp_path: Path) -> None:
    project = tmp_path / "data" / "proj"
    victim = build_session_tree(project, "S1", exposures=2)
    build_session_tree(project, "S2", exposures=2)  # the attacker's, same names
    with queueing_only(tmp_path) as daemon:
        daemon.call("create_project", ["p", str(project)])
        completed(daemon, project, "P1")
        completed(daemon, project, "P1", "attacker's")
        dry = daemon.call("delete_live_datatype", {"project_uid": "P1", "session_uid": "S2",
                                                   "datatype": "micrographs", "dry_run": True})
        job_id = daemon.call("delete_live_datatype", {"project_uid": "P1", "session_uid": "S2",
                                                      "datatype": "micrographs",
                                                      "confirm_digest": dry["confirm_digest"]})
        before = data_state(victim.session_path)
        (project / "S2").rename(project / "tmp")
        (project / "S1").rename(project / "S2")  # the victim's directory now answers to S2
        (project / "tmp").rename(project / "S1")
    with run_by_a_worker(tmp_path, job_id) as (_worker, job):
        assert job["state"] == "failed" and "not the one it was measured in" in job["error"]
        assert "nothing was deleted" in job["error"]
        assert data_state(project / "S2") == {p.replace("/S1/", "/S2/"): d for p, d in before.items()}


def test_a_directory_inside_the_session_swapped_for_a_link_before_the_job_is_refused(tmp_path: Path) -> None:
    """Mid-path: extract/blob (above the particles' own directory) swapped for a link to a copy outside the
    project after the request. The job deletes what it still reaches safely and refuses the rest, naming it."""
    tree = build_session_tree(tmp_path / "data" / "proj", exposures=3)
    blob = tree.session_path / "extract" / "blob"
    decoy = tmp_path / "decoy"
    shutil.copytree(blob, decoy)
    with queueing_only(tmp_path) as daemon:
        daemon.call("create_project", ["p", str(tree.project_dir)])
        completed(daemon, tree.project_dir, "P1")
        (tree.session_path / "extract" / "keep.mrc").write_bytes(b"k" * 5)
        daemon.call("update_session_datatype_sizes", ["P1", "S1"])
        job_id = daemon.call("delete_live_datatype", ["P1", "S1", "particles"])
        decoy_before = data_state(decoy)
        blob.rename(tmp_path / "moved")
        blob.symlink_to(decoy)
    with run_by_a_worker(tmp_path, job_id) as (worker, job):
        particles = tree.paths_by_datatype["particles"]
        assert job["state"] == "done", job
        assert (job["result"]["deleted"], job["result"]["refused"]) == (1, len(particles))
        assert sorted(job["result"]["refused_paths"]) == sorted(
            str(Path(p).relative_to(tree.project_dir)) for p in particles)
        assert data_state(decoy) == decoy_before
        assert len(list((tmp_path / "moved" / "256").iterdir())) == len(particles)
        assert not (tree.session_path / "extract" / "keep.mrc").exists()
        settled = category(worker, "P1", "S1", "particles")
        assert settled["status"] == "active" and "refused as unsafe" in settled["note"]


def test_movies_are_not_deleted_through_a_project_made_over_their_directory(daemon: Daemon,
                                                                           tmp_path: Path) -> None:
    movies = tmp_path / "data" / "movies"
    tree = build_session_tree(tmp_path / "data" / "P1", exposures=2, movies_dir=movies)
    p1 = daemon.call("create_project", ["real", str(tree.project_dir)])["uid"]
    completed(daemon, tree.project_dir, p1)
    mallory = daemon.call("create_user", [f"mallory-{p1.lower()}"])["token"]
    daemon.call("set_user_data_management_permission", [f"mallory-{p1.lower()}", True])
    p2 = daemon.rpc("create_project", ["movies", str(movies)], token=mallory)["result"]["uid"]
    assert "result" in daemon.rpc("create_live_session", [p2, "x", "x"], token=mallory)
    assert "result" in daemon.rpc("register_files", [p2, "S1", "metadata", tree.paths_by_datatype["raw"]],
                           token=mallory)
    assert "result" in daemon.rpc("mark_session_completed", [p2, "S1"], token=mallory)
    before = data_state(movies)
    reply = daemon.rpc("delete_live_datatype", {"project_uid": p2, "session_uid": "S1", "datatype": "metadata",
                                                 "asynchronous": False}, token=mallory)
    job = reply["result"]
    assert job["state"] == "done" and job["result"]["deleted"] == 0
    assert job["result"]["refused"] == len(tree.paths_by_datatype["raw"])
    assert data_state(movies) == before
    assert category(daemon, p1, "S1", "raw")["status"] == "active"


def test_a_file_in_a_raw_directory_is_raw_whatever_it_is_registered_as(daemon: Daemon, tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "data" / "proj", exposures=1)
    copied = tree.session_path / "import_movies" / "copied.tif"
    copied.write_bytes(b"a movie copied, not linked")
    p1 = daemon.call("create_project", ["p", str(tree.project_dir)])["uid"]
    daemon.call("create_live_session", [p1, "s"])
    reply = daemon.rpc("register_files", [p1, "S1", "metadata", [str(copied)]])
    assert error_code(reply) == -32602 and "raw data" in reply["error"]["message"]
    daemon.call("mark_session_completed", [p1, "S1"])
    job = daemon.call("delete_live_datatype", {"project_uid": p1, "session_uid": "S1", "datatype": "metadata",
                                               "asynchronous": False})
    assert job["state"] == "done" and copied.read_bytes() == b"a movie copied, not linked"


def test_a_new_session_may_not_take_a_directory_holding_another_sessions_files(daemon: Daemon,
                                                                               tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "data" / "proj", exposures=1)
    planted = tree.project_dir / "S2" / "motioncorrected" / "mov1_aligned.mrc"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"planted")
    p1 = daemon.call("create_project", ["p", str(tree.project_dir)])["uid"]
    daemon.call("create_live_session", [p1, "attacker's"])
    daemon.call("register_files", [p1, "S1", "metadata", [str(planted)]])  # S2 is no session yet
    reply = daemon.rpc("create_live_session", [p1, "victim's"])  # would be S2, in S2/
    assert error_code(reply) == -32003 and "registered to session S1" in reply["error"]["message"]
    assert [s["uid"] for s in daemon.call("list_sessions", [p1])] == ["S1"]
    assert "result" in daemon.rpc("create_live_session", [p1, "victim's", "victim"])  # elsewhere it is fine


def test_projects_created_at_once_on_nested_dirs_one_wins(daemon: Daemon, tmp_path: Path) -> None:
    outer = tmp_path / "data" / "A"
    inner = outer / "B"
    inner.mkdir(parents=True)
    replies: list[dict[str, Any]] = []
    before = len(daemon.call("list_projects"))

    def create(directory: Path) -> None:
        replies.append(daemon.rpc("create_project", ["racer", str(directory)]))

    threads = [threading.Thread(target=create, args=(d,)) for d in (outer, inner, outer, inner, outer, inner)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum("result" in r for r in replies) == 1, replies
    assert all(error_code(r) == -32003 for r in replies if "error" in r)
    assert len(daemon.call("list_projects")) == before + 1


def test_a_session_dir_that_went_away_is_missing_not_empty(daemon: Daemon, tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "data" / "proj", exposures=2)
    p1 = daemon.call("create_project", ["p", str(tree.project_dir)])["uid"]
    completed(daemon, tree.project_dir, p1)
    before = daemon.call("get_session", [p1, "S1"])["data_management"]
    listed = daemon.call("get_datatype_file_paths", [p1, "S1", "particles"])
    tree.session_path.rename(tmp_path / "data" / "unmounted")  # as an unmount would
    daemon.call("update_session_datatype_sizes", [p1, "S1"])
    gone = daemon.call("get_session", [p1, "S1"])["data_management"]
    for datatype, was in before.items():
        if was["file_count"]:
            assert gone[datatype]["status"] == "missing", datatype
            assert (gone[datatype]["size"], gone[datatype]["file_count"]) == (was["size"], was["file_count"])
    assert daemon.call("get_datatype_file_paths", [p1, "S1", "particles"]) == listed
    reply = daemon.rpc("delete_live_datatype", [p1, "S1", "particles"])
    assert error_code(reply) == -32003 and "missing" in reply["error"]["message"]
    (tmp_path / "data" / "unmounted").rename(tree.session_path)
    daemon.call("update_session_datatype_sizes", [p1, "S1"])
    back = daemon.call("get_session", [p1, "S1"])["data_management"]
    assert {dt: c["status"] for dt, c in back.items()} == {dt: c["status"] for dt, c in before.items()}
    changes = [e for e in daemon.call("get_audit_log", {"project_uid": p1})
               if e["action"] == "state_changed" and e["by"] == "refresh"]
    assert {e["status"] for e in changes} == {"missing", "active"}
