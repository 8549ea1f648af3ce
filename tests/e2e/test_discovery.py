"""Discovery with real livedmd processes: a fresh daemon pointed at a root of cryoSPARC v4 project
directories shows their Live sessions with cryoSPARC's uids, titles, statuses and exact bytes; the
`livedm` client as a subprocess; cryoSPARC's own CommandClient for get_all_sessions_in_project."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryosparc.command import CommandClient

from testkit.cryosparc_tree import CryosparcProject, SessionSpec, build_cryosparc_project
from testkit.daemon import Daemon
from tests.support.daemon_sessions import idle
from tests.support.waiting import wait_until


def discovery_daemon(tmp_path: Path, root: Path, **env: str) -> Daemon:
    return Daemon(tmp_path / "state", env={"LIVEDM_DATA_ROOTS": str(root), **env}).start()


def discover(daemon: Daemon, *args: str) -> str:
    done = daemon.livedm("discover", *args)
    assert done.returncode == 0, done.stderr
    wait_until(lambda: idle(daemon), 60, "the refresh jobs the pass queued")
    return done.stdout


def sessions_of(daemon: Daemon, project_uid: str) -> dict[str, dict[str, Any]]:
    return {s["uid"]: s for s in daemon.call("list_sessions", [project_uid])}


def assert_exact(daemon: Daemon, project: CryosparcProject, uid: str | None = None) -> None:
    found = sessions_of(daemon, uid or project.uid)
    assert sorted(found) == sorted(project.sessions)
    for session_uid, built in project.sessions.items():
        session = found[session_uid]
        assert session["title"] == built.title and session["cryosparc_status"] == built.status
        assert {dt: c["size"] for dt, c in session["data_management"].items()} == built.bytes_by_datatype
        assert {dt: c["file_count"] for dt, c in session["data_management"].items()} == built.files_by_datatype


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "cryoem"
    path.mkdir()
    return path


def test_a_fresh_daemon_shows_the_facilitys_live_sessions_exactly(tmp_path: Path, root: Path) -> None:
    movies = tmp_path / "movies"
    movies.mkdir()
    apo = build_cryosparc_project(root / "groupA", "P12", "Apoferritin", [
        SessionSpec(status="completed", exposures=4, manual_rejected=1),
        SessionSpec(status="running", exposures=2)], movies_dir=movies)
    tau = build_cryosparc_project(root / "groupB", "P3", "Tau filaments", [SessionSpec(status="paused")],
                                  movies_dir=movies)
    daemon = discovery_daemon(tmp_path, root)
    try:
        out = discover(daemon)
        assert "added 2" in out and "+ P12 Apoferritin (2 sessions)" in out, out
        assert_exact(daemon, apo)
        assert_exact(daemon, tau)
        statuses = {s: v["status"] for s, v in sessions_of(daemon, "P12").items()}
        assert statuses == {"S1": "completed", "S2": "running"}
        listing = json.loads(daemon.livedm("--json", "ls").stdout)
        assert {p["uid"]: p["title"] for p in listing} == {"P12": "Apoferritin", "P3": "Tau filaments"}
        assert all(s["measured_at"] for p in listing for s in p["sessions"])

        cli = CommandClient(host="127.0.0.1", port=daemon.port, headers={"License-ID": daemon.token}, timeout=30)
        rtp = {s["session_uid"]: s for s in cli.get_all_sessions_in_project("P12")}
        assert sorted(rtp) == ["S1", "S2"]
        assert rtp["S1"]["uid"] == apo.sessions["S1"].workspace_uid and rtp["S1"]["status"] == "completed"
        assert rtp["S1"]["data_management"]["micrographs"]["size"] == apo.sessions["S1"].bytes_by_datatype[
            "micrographs"]
        assert rtp["S1"]["stats"]["total_rejected"] == 1 and rtp["S1"]["stats"]["total_exposures"] == 4

        again = discover(daemon)
        assert "added 0, changed 0, 2 unchanged, 0 gone" in again, again
        apo.add_session(SessionSpec(status="running", exposures=1))
        discover(daemon)
        assert_exact(daemon, apo)
    finally:
        daemon.stop()


def test_an_unmounted_root_shows_missing_with_figures_and_comes_back(tmp_path: Path, root: Path) -> None:
    movies = tmp_path / "movies"
    movies.mkdir()
    project = build_cryosparc_project(root, "P5", "Delta", [SessionSpec()], movies_dir=movies)
    daemon = discovery_daemon(tmp_path, root.parent, LIVEDM_DISCOVER_ROOTS=str(root))
    try:
        discover(daemon)
        before = sessions_of(daemon, "P5")["S1"]["data_management"]
        os.rename(root, tmp_path / "unmounted")
        root.mkdir()  # the empty mount point
        out = discover(daemon)
        assert "root not reached" in out and "empty mount point" in out, out
        gone = sessions_of(daemon, "P5")["S1"]["data_management"]
        assert {c["status"] for c in gone.values()} == {"missing"}
        assert {dt: c["size"] for dt, c in gone.items()} == {dt: c["size"] for dt, c in before.items()}
        report = daemon.call("get_discovery_report")
        assert report["roots"][0]["reached"] is False and report["counts"]["gone"] == 1
        root.rmdir()
        os.rename(tmp_path / "unmounted", root)
        discover(daemon)
        assert_exact(daemon, project)
        assert {c["status"] for c in sessions_of(daemon, "P5")["S1"]["data_management"].values()} == {"active"}
    finally:
        daemon.stop()


def test_conflicts_and_bad_files_are_reported_and_the_pass_completes(tmp_path: Path, root: Path) -> None:
    movies = tmp_path / "movies"
    movies.mkdir()
    one = build_cryosparc_project(root / "instance1", "P7", "Seven of one", [SessionSpec()], movies_dir=movies)
    two = build_cryosparc_project(root / "instance2", "P7", "Seven of two", [SessionSpec()], movies_dir=movies)
    truncated = build_cryosparc_project(root, "P20", "Truncated", [SessionSpec()], movies_dir=movies)
    truncated.truncate_project_json(12)
    not_utf8 = build_cryosparc_project(root, "P21", "Latin-1", [SessionSpec()], movies_dir=movies)
    not_utf8.break_utf8_in_title()
    as_object = build_cryosparc_project(root, "P22", "Object", [SessionSpec()], movies_dir=movies)
    as_object.workspaces_as_object()
    cut_bson = build_cryosparc_project(root, "P23", "Cut bson", [SessionSpec()], movies_dir=movies)
    cut_bson.truncate_exposures_bson("S1", 40)
    fine = build_cryosparc_project(root, "P24", "Fine", [SessionSpec(exposures=2)], movies_dir=movies)
    (root / "loop").symlink_to(root)
    elsewhere = tmp_path / "elsewhere"
    build_cryosparc_project(elsewhere, "P25", "Outside", [SessionSpec()], movies_dir=movies)
    (root / "linked-project").symlink_to(next(elsewhere.iterdir()))
    daemon = discovery_daemon(tmp_path, root)
    try:
        dry = json.loads(daemon.livedm("--json", "discover", "--dry-run").stdout)
        assert daemon.call("list_projects") == [], "a dry run changes nothing"
        out = discover(daemon)
        report = daemon.call("get_discovery_report")
        assert report["state"] == "done" and report["counts"] == {**dry["counts"]}
        assert [c["paths"] for c in report["conflicts"]] == [sorted([str(one.project_dir), str(two.project_dir)])]
        unreadable = {u["path"]: u["reason"] for u in report["unreadable"]}
        assert str(truncated.project_json) in unreadable
        assert "not valid UTF-8" in unreadable[str(not_utf8.project_json)]
        assert str(cut_bson.sessions["S1"].exposures_bson) in unreadable
        assert str(root / "linked-project") in unreadable and "symlink" in unreadable[str(root / "linked-project")]
        assert any(path.startswith(str(as_object.project_dir)) for path in unreadable)
        uids = sorted(p["uid"] for p in daemon.call("list_projects"))
        assert uids == ["P21", "P22", "P23", "P24"], "P7 twice: neither is guessed; the rest go on"
        assert_exact(daemon, fine)
        assert "! P7" in out and "could not be read" in out
    finally:
        daemon.stop()


def test_discovery_runs_on_its_interval_without_being_asked(tmp_path: Path, root: Path) -> None:
    movies = tmp_path / "movies"
    movies.mkdir()
    daemon = discovery_daemon(tmp_path, root, LIVEDM_DISCOVER_INTERVAL="1s")
    try:
        project = build_cryosparc_project(root, "P9", "Scheduled", [SessionSpec()], movies_dir=movies)
        wait_until(lambda: daemon.call("list_projects"), 60, "a scheduled pass")
        wait_until(lambda: idle(daemon) and sessions_of(daemon, "P9")["S1"]["measured_at"], 60, "its measure")
        assert_exact(daemon, project)
        passes = [j for j in daemon.call("list_jobs", {"kind": "discover", "limit": 100})]
        assert all(j["created_by"] == "livedm" for j in passes)
    finally:
        daemon.stop()
