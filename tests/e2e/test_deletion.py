"""Deletion end to end with real livedmd processes: exactly the right files go, and a daemon killed
mid-deletion (or mid-hook) finishes the job after restart."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from testkit.daemon import Daemon
from testkit.sessiontree import build_session_tree
from tests.support.daemon_sessions import completed_session, hook_env, status_of
from tests.support.disk import data_state
from tests.support.hook_scripts import executable
from tests.support.waiting import wait_until


def test_deleting_a_category_touches_nothing_else(daemon: Daemon, tmp_path: Path) -> None:
    tree = completed_session(daemon, tmp_path, exposures=4)
    build_session_tree(tree.project_dir, "S2", exposures=2)
    daemon.call("create_live_session", ["P1", "other"])
    daemon.call("update_session_datatype_sizes", ["P1", "S2"])
    bystander = tmp_path / "outside.dat"
    bystander.write_bytes(b"untouched")
    before = data_state(tmp_path)
    gone = set(tree.paths_by_datatype["micrographs"])
    done = daemon.livedm("rtpcli", "delete_live_datatype(project_uid='P1', session_uid='S1', "
                         "datatype='micrographs', asynchronous=False)")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "done" and job["result"]["deleted"] == len(gone)
    assert job["result"]["bytes_freed"] == tree.bytes_by_datatype["micrographs"]
    after = data_state(tmp_path)
    assert set(before) - set(after) == gone
    assert all(after[path] == digest for path, digest in before.items() if path not in gone)
    category = daemon.call("get_session", ["P1", "S1"])["data_management"]["micrographs"]
    assert (category["status"], category["size"], category["file_count"]) == ("deleted", 0, 0)
    assert daemon.call("get_datatype_file_paths", ["P1", "S1", "micrographs"]) == {"micrographs": []}
    assert daemon.call("get_datatype_size", ["P1", "S2", "micrographs"]) > 0
    entry = next(e for e in daemon.call("get_audit_log", {}) if e["action"] == "deleted")
    assert (entry["files"], entry["bytes_freed"], entry["actor"]) == (len(gone), tree.bytes_by_datatype["micrographs"],
                                                                     "admin")


def test_a_deletion_killed_mid_way_finishes_after_restart(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", args=["--job-lease-s", "2"]).spawn()  # starts while the files are made
    tree = build_session_tree(tmp_path / "proj", exposures=2)
    bulk = tree.session_path / "extract" / "bulk"
    bulk.mkdir(parents=True)
    names = [f"p{i:05d}.mrc" for i in range(20_000)]
    for name in names:
        (bulk / name).write_bytes(b"p")
    daemon.wait_ready()
    daemon.call("create_project", ["p", str(tree.project_dir)])
    daemon.call("create_live_session", ["P1", "s"])
    daemon.call("mark_session_completed", ["P1", "S1"])
    others = data_state(tmp_path, skip_dirs=["extract"])  # (hashing the 20,000 files there took seconds)
    untouched_ns = bulk.stat().st_mtime_ns
    job_id = daemon.call("delete_live_datatype", {"project_uid": "P1", "session_uid": "S1", "datatype": "particles"})
    deadline = time.monotonic() + 30
    while bulk.stat().st_mtime_ns == untouched_ns and time.monotonic() < deadline:
        time.sleep(0.002)  # the first file of bulk/ goes (in the order the directory lists them) within milliseconds
    assert daemon.process is not None
    os.kill(daemon.process.pid, signal.SIGKILL)
    daemon.process.wait()
    daemon.process = None
    if not os.listdir(bulk):
        pytest.fail("the deletion finished before the kill; the test needs more files")
    daemon.start()
    job = wait_until(lambda: (j := daemon.call("get_job", [job_id]))["state"] in ("done", "failed") and j,
                     timeout_s=60, what="the resumed deletion")
    assert job["state"] == "done" and job["attempts"] == 2, job
    assert not bulk.exists() or os.listdir(bulk) == []
    assert status_of(daemon, "particles") == "deleted"
    assert daemon.call("get_session", ["P1", "S1"])["data_management"]["particles"]["size"] == 0
    assert data_state(tmp_path, skip_dirs=["extract"]) == others
    total = len(names) + len(tree.paths_by_datatype["particles"])
    audit = next(e for e in daemon.call("get_audit_log", {}) if e["action"] == "deleted")
    assert audit["files"] + audit["already_gone"] == total  # both attempts counted
    assert audit["already_gone"] <= 2000, "only files deleted after the last saved count are unknown"
    daemon.stop()


def test_a_hook_killed_with_its_daemon_runs_again_after_restart(tmp_path: Path) -> None:
    script = executable(tmp_path / "slow-hook.sh", "#!/bin/sh\necho \"start $4\"\nsleep 2\necho \"end $4\"\n")
    daemon = Daemon(tmp_path / "state", env=hook_env(script), args=["--job-lease-s", "2"]).start()
    completed_session(daemon, tmp_path, exposures=1)
    daemon.call("change_session_data_management_state", ["P1", "S1", "metadata", "archived"])
    log = wait_until(lambda: next((daemon.state_dir / "hook-logs").glob("P1_S1_metadata_J*.log"), None),
                     what="the hook's log")
    wait_until(lambda: "start archived" in log.read_text(), what="the hook to start")
    daemon.stop(signal.SIGKILL)
    daemon.start()
    job = wait_until(lambda: (js := daemon.call("list_jobs", {"kind": "hook"})) and js[0]["state"] == "done" and js[0],
                     timeout_s=30, what="the hook to run again")
    assert job["attempts"] == 2
    text = log.read_text()
    assert "attempt 1" in text and "attempt 2" in text and text.count("end archived") == 1
    assert status_of(daemon, "metadata") == "archived"
    daemon.stop()


def test_sigterm_releases_a_long_job_and_the_next_start_runs_it(tmp_path: Path) -> None:
    marker = tmp_path / "second-run"
    script = executable(tmp_path / "long-hook.sh",
                        f"#!/bin/sh\nif [ -e {marker} ]; then echo quick; exit 0; fi\ntouch {marker}\nsleep 30\n")
    daemon = Daemon(tmp_path / "state", env=hook_env(script), args=["--drain-s", "1"]).start()
    completed_session(daemon, tmp_path, exposures=1)
    job_id = daemon.call("trigger_live_data_management_script", ["P1", "S1", "particles"])
    wait_until(marker.exists, what="the hook to start")
    stopping = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - stopping < 15
    assert "released" in daemon.log()
    daemon.start()
    job = wait_until(lambda: (j := daemon.call("get_job", [job_id]))["state"] == "done" and j, what="the rerun")
    assert job["attempts"] == 1  # a release does not count as an attempt
    daemon.stop()
