"""Attacks on discovery against real livedmd processes: hostile files under a root (FIFOs, /dev/zero, a 2 GB
sparse workspaces.json, nesting 100,000 deep, 100,000 empty directories) never stop a pass nor slow
/healthz and the API; the report's paths stay with those who manage data, whichever call asks; a hook's
scoped token reads and nothing more; two daemons on one database run one pass at a time, and a daemon
killed mid-pass leaves no duplicate, no stuck category and no lost session."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from livedm.server.embedded import EmbeddedStore
from testkit.cryosparc_tree import SessionSpec, build_cryosparc_project, build_facility
from testkit.daemon import Daemon
from tests.support.daemon_sessions import hook_env
from tests.support.hook_scripts import executable
from tests.support.waiting import wait_until


def idle(daemon: Daemon) -> bool:
    return not any(daemon.call("list_jobs", {"state": state}) for state in ("queued", "running"))


def run_pass(daemon: Daemon) -> dict[str, Any]:
    job_id = daemon.call("discover")
    job = wait_until(lambda: (j := daemon.call("get_job", [job_id]))["state"] in ("done", "failed") and j, 60,
                     "the discovery pass")
    assert job["state"] == "done", job
    wait_until(lambda: idle(daemon), 60, "the refresh jobs the pass queued")
    return dict(job)


def user_token(daemon: Daemon, name: str, manage: bool = False) -> str:
    token = str(daemon.call("create_user", [name])["token"])
    if manage:
        daemon.call("set_user_data_management_permission", [name, True])
    return token


def result_of(daemon: Daemon, method: str, params: Any, token: str) -> Any:
    reply = daemon.rpc(method, params, token=token)
    assert "error" not in reply, reply
    return reply["result"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Path]]:
    """One daemon for the module, its discovery root holding real projects and hostile files."""
    base = tmp_path_factory.mktemp("discovery-attack")
    root = base / "data"
    movies = base / "movies"
    movies.mkdir()
    build_cryosparc_project(root / "groupA", "P12", "Apoferritin", [SessionSpec(), SessionSpec(status="running")],
                            movies_dir=movies)
    build_cryosparc_project(root / "groupA", "P13", "Other lab", [SessionSpec()], movies_dir=movies)
    hook = executable(base / "hook.sh", (  # on archiving: what a hook's scoped token can do
        "#!/bin/sh\n[ \"$4\" = archiving ] || exit 0\n"
        f"out={base}/hook-results\n"
        "for call in \"get_all_sessions_in_project('P12')\" \"get_all_sessions_in_project('P13')\" "
        "\"discover()\" \"discover(dry_run=True)\" \"delete_live_datatype('P13', 'S1', 'particles')\"; do\n"
        "  livedm rtpcli \"$call\" > /dev/null 2>&1; echo \"$call=$?\" >> $out\ndone\n"))
    daemon = Daemon(base / "state", env={"LIVEDM_DATA_ROOTS": str(root), "LIVEDM_DISCOVER_DEPTH": "4",
                                         **hook_env(hook)}).start()
    try:
        yield daemon, root
    finally:
        daemon.stop()


# --- the report's paths ------------------------------------------------------------------------------------

def test_no_call_shows_the_reports_paths_to_a_user_without_the_permission(site: tuple[Daemon, Path]) -> None:
    daemon, root = site
    secret = root / "groupB" / "alice-private"
    secret.mkdir(parents=True)
    (secret / "project.json").write_text("{not json")  # reported as unreadable, with its path
    job = run_pass(daemon)
    assert str(secret) in json.dumps(job["result"]), "the manager's report names it"
    bob = user_token(daemon, "bob")
    report = result_of(daemon, "get_discovery_report", [], bob)
    assert report["job_id"] == job["id"] and report["counts"]["unreadable"] >= 1
    assert str(root) not in json.dumps(report)
    for method, params in (("get_job", [job["id"]]), ("list_jobs", {"kind": "discover"}), ("list_jobs", {}),
                           ("get_audit_log", {})):
        shown = json.dumps(result_of(daemon, method, params, bob))
        assert "alice-private" not in shown, (method, shown[:2000])
    assert daemon.rpc("discover", {"dry_run": True}, token=bob)["error"]["code"] == -32002


def test_a_hooks_scoped_token_reads_sessions_and_cannot_discover_or_delete(site: tuple[Daemon, Path]) -> None:
    daemon, _root = site
    run_pass(daemon)
    daemon.call("change_session_data_management_state", ["P12", "S1", "micrographs", "archiving"])
    results = daemon.state_dir.parent / "hook-results"
    wait_until(lambda: results.exists() and len(results.read_text().split("\n")) > 5, 30, "the hook's calls")
    codes = dict(line.rsplit("=", 1) for line in results.read_text().splitlines())
    assert codes == {"get_all_sessions_in_project('P12')": "0", "get_all_sessions_in_project('P13')": "0",
                     "discover()": "1", "discover(dry_run=True)": "1",
                     "delete_live_datatype('P13', 'S1', 'particles')": "1"}, codes
    assert daemon.call("get_session", ["P13", "S1"])["data_management"]["particles"]["status"] == "active"
    jobs = daemon.call("list_jobs", {"kind": "discover", "limit": 500})
    assert all(j["created_by"] != "hook" for j in jobs)


# --- hostile files and trees -------------------------------------------------------------------------------

EMPTY_DIRS = 20_000  # 100,000 take ~6 s to walk here (one lstat and one scandir each); this shows the shape


def plant_hostile_files(root: Path, movies: Path) -> dict[str, Path]:
    """Files no cryoSPARC writes, each where discovery looks; {what: the path the report should name}."""
    hostile = root / "hostile"
    planted: dict[str, Path] = {}
    fifo = hostile / "fifo-project"
    fifo.mkdir(parents=True)
    os.mkfifo(fifo / "project.json")
    planted["a FIFO as project.json"] = fifo
    fifo_ws = build_cryosparc_project(hostile, "P31", "FIFO workspaces", [], movies_dir=movies)
    os.mkfifo(fifo_ws.project_dir / "workspaces.json.fifo")
    os.replace(fifo_ws.project_dir / "workspaces.json.fifo", fifo_ws.project_dir / "workspaces.json")
    planted["a FIFO as workspaces.json"] = fifo_ws.project_dir / "workspaces.json"
    zero = build_cryosparc_project(hostile, "P32", "dev zero", [SessionSpec(status="running")], movies_dir=movies)
    bson_path = zero.project_dir / "S1" / "exposures.bson"
    bson_path.unlink()
    bson_path.symlink_to("/dev/zero")
    planted["/dev/zero as exposures.bson"] = bson_path
    fifo_bson = build_cryosparc_project(hostile, "P33", "FIFO bson", [SessionSpec(status="running")],
                                        movies_dir=movies)
    fifo_bson_path = fifo_bson.project_dir / "S1" / "exposures.bson"
    fifo_bson_path.unlink()
    os.mkfifo(fifo_bson_path)
    planted["a FIFO as exposures.bson"] = fifo_bson_path
    huge = build_cryosparc_project(hostile, "P34", "Huge workspaces", [], movies_dir=movies)
    with open(huge.project_dir / "workspaces.json", "r+b") as f:
        f.truncate(2 * 1024**3)  # 2 GB, sparse
    planted["a 2 GB workspaces.json"] = huge.project_dir / "workspaces.json"
    deep = hostile / "deep"
    deep.mkdir()
    (deep / "project.json").write_text('{"uid": "P35", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    planted["JSON nested 100,000 deep"] = deep / "project.json"
    deep_ws = build_cryosparc_project(hostile, "P36", "Deep workspaces", [], movies_dir=movies)
    (deep_ws.project_dir / "workspaces.json").write_text("[" * 1_000_000 + "]" * 1_000_000)
    planted["workspaces.json nested 1,000,000 deep"] = deep_ws.project_dir / "workspaces.json"
    (hostile / "dir-project" / "project.json").mkdir(parents=True)
    planted["a directory as project.json"] = hostile / "dir-project"
    (hostile / "loop").symlink_to(hostile)
    (hostile / "zero-project").mkdir()
    (hostile / "zero-project" / "project.json").symlink_to("/dev/zero")
    planted["/dev/zero as project.json"] = hostile / "zero-project"
    return planted


@pytest.fixture(scope="module")
def empty_dirs(site: tuple[Daemon, Path]) -> Path:
    """EMPTY_DIRS empty directories under the root: every pass (and dry run) walks them."""
    empty = site[1] / "empty-dirs"
    if not empty.exists():
        empty.mkdir()
        for i in range(EMPTY_DIRS):
            os.mkdir(empty / f"d{i}")
    return empty


def timed(call: Any) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def test_hostile_files_never_stop_a_pass_nor_slow_the_api(site: tuple[Daemon, Path], empty_dirs: Path) -> None:
    daemon, root = site
    planted = plant_hostile_files(root, daemon.state_dir.parent / "movies")
    health = daemon.url + "/healthz"
    job_id = daemon.call("discover")
    worst = {"healthz": 0.0, "whoami": 0.0}
    while daemon.call("get_job", [job_id])["state"] in ("queued", "running"):
        worst["healthz"] = max(worst["healthz"], timed(lambda: urllib.request.urlopen(health, timeout=10).read()))
        worst["whoami"] = max(worst["whoami"], timed(lambda: daemon.call("whoami")))
    job = daemon.call("get_job", [job_id])
    assert job["state"] == "done", job
    assert worst["healthz"] < 1.0 and worst["whoami"] < 1.0, worst
    reported = json.dumps(job["result"]["unreadable"])
    missing = {what: str(path) for what, path in planted.items() if json.dumps(str(path))[1:-1] not in reported}
    assert missing == {}, (missing, reported[:3000])
    assert {"P12", "P13"} <= {p["uid"] for p in daemon.call("list_projects")}


def test_a_flood_of_dry_runs_waits_its_turn_and_never_starves_other_calls(site: tuple[Daemon, Path],
                                                                          empty_dirs: Path) -> None:
    """A manager's script asks for dry runs, 40 at once (more than asyncio's default threads on any machine);
    each walks the whole root."""
    daemon, _root = site
    alone = timed(lambda: daemon.call("discover", {"dry_run": True}))
    flood = [threading.Thread(target=daemon.rpc, args=("discover", {"dry_run": True})) for _ in range(40)]
    for thread in flood:
        thread.start()
    time.sleep(min(0.5, alone / 2))
    worst = max(timed(lambda: daemon.call("whoami")) for _ in range(5))
    for thread in flood:
        thread.join()
    assert worst < max(1.0, alone), (worst, alone)


# --- two daemons on one database; one killed mid-pass -------------------------------------------------------

def discover_jobs(daemon: Daemon) -> list[dict[str, Any]]:
    return list(daemon.call("list_jobs", {"kind": "discover", "limit": 500}))


def test_two_daemons_run_one_pass_at_a_time_and_a_kill_mid_pass_loses_nothing(tmp_path: Path) -> None:
    movies = tmp_path / "movies"
    movies.mkdir()
    facility = build_facility(tmp_path / "data", 60, 2, movies_dir=movies)
    store = EmbeddedStore(tmp_path / "db")
    uri = store.start()
    env = {"LIVEDM_MONGO_URI": uri, "LIVEDM_DATA_ROOTS": str(tmp_path / "data"), "LIVEDM_JOB_LEASE_S": "2s",
           "LIVEDM_DISCOVER_INTERVAL": "1h", "LIVEDM_WORKERS": "1"}
    first = Daemon(tmp_path / "a", env=env).start()
    second = Daemon(tmp_path / "b", env=env).start()
    second.token_file = first.token_file  # one database: one admin
    try:
        # both daemons' schedules and many requests at once: one pass queued or running at any time
        asked: list[str] = []
        callers = [threading.Thread(target=lambda d=d: asked.append(d.call("discover"))) for d in (first, second) * 8]
        for thread in callers:
            thread.start()
        for thread in callers:
            thread.join()
        # the pass each daemon queues at start may have ended before the calls came (a loaded machine, or a
        # quick one): it is left out here, and the intervals checked at the end keep it to its turn
        jobs = [j for j in discover_jobs(first) if j["id"] in asked or j["state"] in ("queued", "running")]
        assert len(jobs) == 1 and set(asked) == {jobs[0]["id"]}, (asked, jobs)
        running = wait_until(lambda: (j := first.call("get_job", [jobs[0]["id"]]))["state"] == "running" and
                             j["progress"].get("phase") == "recording projects" and
                             j["progress"].get("done", 0) >= 5 and j, 30, "the pass to record projects")
        pid = int(running["owner"].split(":")[1])  # host:pid:worker
        victim, survivor = (first, second) if first.process and first.process.pid == pid else (second, first)
        assert victim.process is not None and victim.process.pid == pid
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(10)
        victim.process = None
        job = wait_until(lambda: (j := survivor.call("get_job", [running["id"]]))["state"] in ("done", "failed")
                         and j, 60, "the pass taken over after the lease ran out")
        assert job["state"] == "done" and job["attempts"] == 2, job
        victim.start()  # restarted: it must not redo or duplicate anything
        wait_until(lambda: idle(survivor), 60, "the refresh jobs the pass queued")
        projects = survivor.call("list_projects")
        assert sorted(p["uid"] for p in projects) == sorted(p.uid for p in facility)
        for built in facility:
            sessions = survivor.call("list_sessions", [built.uid])
            assert sorted(s["uid"] for s in sessions) == sorted(built.sessions), built.uid
            assert all(c["status"] == "active" for s in sessions for c in s["data_management"].values()), built.uid
        again = run_pass(survivor)
        assert again["result"]["counts"]["added"] == 0 and again["result"]["counts"]["conflicts"] == 0
        intervals = sorted((j["started_at"], j["finished_at"]) for j in discover_jobs(survivor))
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(intervals)), intervals
    finally:
        for daemon in (first, second):
            if daemon.process is not None:
                daemon.stop()
        store.stop()

