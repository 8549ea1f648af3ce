"""Discovery in process (mongomock, the burst worker): what a pass adds, keeps, marks gone and refuses."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from livedm.server.auth import Authenticator, ensure_admin
from livedm.server.backup import backup_lines
from livedm.server.backup_check import BackupChecker
from livedm.server.errors import ApiError
from livedm.server.services import Services
from livedm.server.store import Store
from testkit.cryosparc_tree import SessionSpec, build_cryosparc_project
from tests.support.config import make_config

ADMIN = {"name": "admin", "role": "admin", "live_data_management": True}


def services_for(store: Store, tmp_path: Path, roots: str | None = None) -> Services:
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    config = make_config(tmp_path / "state", data_roots=str(root), discover_roots=roots or "",
                         discover_interval="0", refresh_interval="0")
    return Services.build(store, config, Authenticator(store, 2))


async def run_jobs(services: Services) -> list[dict[str, Any]]:
    await services.workers(1).run_until_idle()
    return services.queue.list(None, None, None, limit=100)


async def discover(services: Services) -> dict[str, Any]:
    job_id, _ = services.queue.enqueue_single("discover", {}, "admin")
    await run_jobs(services)
    job = services.queue.get(job_id)
    assert job["state"] == "done", job
    return job["result"]


@pytest.fixture
def movies(tmp_path: Path) -> Path:
    path = tmp_path / "movies"
    path.mkdir()
    return path


async def test_a_fresh_pass_shows_every_live_session_with_exact_bytes(mock_store: Store, tmp_path: Path,
                                                                       movies: Path) -> None:
    services = services_for(mock_store, tmp_path)
    project = build_cryosparc_project(tmp_path / "data", "P12", "Apoferritin", [
        SessionSpec(status="completed", exposures=3, manual_rejected=1),
        SessionSpec(status="running", exposures=2)], movies_dir=movies)
    report = await discover(services)
    assert report["counts"]["added"] == 1 and report["counts"]["conflicts"] == 0, report
    row = services.sessions.get_project("P12")
    assert row["title"] == "Apoferritin" and row["source"] == "cryosparc" and row["cryosparc_uid"] == "P12"
    sessions = {s["uid"]: s for s in services.sessions.list_sessions("P12")}
    assert sorted(sessions) == ["S1", "S2"]
    assert sessions["S1"]["status"] == "completed" and sessions["S2"]["status"] == "running"
    assert sessions["S1"]["exposures"]["rejected"] == 1 and sessions["S1"]["exposures"]["total"] == 3
    for uid, built in project.sessions.items():
        sizes = {dt: c["size"] for dt, c in sessions[uid]["data_management"].items()}
        assert sizes == built.bytes_by_datatype, uid
        assert sessions[uid]["measured_at"] is not None


async def test_an_unchanged_second_pass_reads_and_writes_nothing(mock_store: Store, tmp_path: Path,
                                                                 movies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services = services_for(mock_store, tmp_path)
    build_cryosparc_project(tmp_path / "data", "P3", "Beta", [SessionSpec()], movies_dir=movies)
    await discover(services)
    before = mock_store.get_project("P3")
    from livedm.server import cryosparc_files
    reads: list[str] = []
    real_read = cryosparc_files.read_project
    monkeypatch.setattr(cryosparc_files, "read_project", lambda d: reads.append(str(d)) or real_read(d))
    report = await discover(services)
    assert report["counts"] == {**report["counts"], "added": 0, "changed": 0, "unchanged": 1, "gone": 0}
    assert reads == [] and mock_store.get_project("P3") == before


async def test_a_new_session_appears_and_one_that_left_shows_missing(mock_store: Store, tmp_path: Path,
                                                                     movies: Path) -> None:
    services = services_for(mock_store, tmp_path)
    project = build_cryosparc_project(tmp_path / "data", "P4", "Gamma", [SessionSpec()], movies_dir=movies)
    await discover(services)
    project.add_session(SessionSpec(status="paused"))
    report = await discover(services)
    assert report["counts"]["changed"] == 1
    assert [s["uid"] for s in services.sessions.list_sessions("P4")] == ["S1", "S2"]
    project.remove_session("S1")
    await discover(services)
    gone = services.sessions.get_session("P4", "S1")
    assert gone["left_cryosparc_at"] is not None
    assert {c["status"] for c in gone["data_management"].values()} == {"missing"}
    assert gone["data_management"]["micrographs"]["size"] > 0, "missing keeps the last figures"


async def test_an_unmounted_root_turns_its_sessions_missing_and_they_come_back(mock_store: Store, tmp_path: Path,
                                                                               movies: Path) -> None:
    root = tmp_path / "data" / "cs"
    root.mkdir(parents=True)
    services = services_for(mock_store, tmp_path, roots=str(root))
    project = build_cryosparc_project(root, "P5", "Delta", [SessionSpec()], movies_dir=movies)
    await discover(services)
    size = services.sessions.get_session("P5", "S1")["data_management"]["micrographs"]["size"]
    os.rename(root, tmp_path / "data" / "away")
    root.mkdir()  # an empty mount point where the projects were
    report = await discover(services)
    assert report["roots"][0]["reached"] is False and "empty mount point" in report["roots"][0]["reason"]
    session = services.sessions.get_session("P5", "S1")
    assert {c["status"] for c in session["data_management"].values()} == {"missing"}
    assert session["data_management"]["micrographs"]["size"] == size
    went = [e for e in mock_store.find_audit(project_uid="P5", limit=50) if e.get("status") == "missing"]
    assert len(went) == 5 and {e["by"] for e in went} == {"refresh"} and "not reachable" in went[0]["reason"]
    root.rmdir()
    os.rename(tmp_path / "data" / "away", root)
    await discover(services)
    session = services.sessions.get_session("P5", "S1")
    assert {c["status"] for c in session["data_management"].values()} == {"active"}
    assert session["data_management"]["micrographs"]["size"] == size
    assert project.sessions["S1"].bytes_by_datatype["micrographs"] == size


async def test_two_instances_with_one_uid_are_both_reported_neither_lost(mock_store: Store, tmp_path: Path,
                                                                         movies: Path) -> None:
    services = services_for(mock_store, tmp_path)
    a = build_cryosparc_project(tmp_path / "data" / "a", "P7", "From A", [SessionSpec()], movies_dir=movies)
    b = build_cryosparc_project(tmp_path / "data" / "b", "P7", "From B", [SessionSpec()], movies_dir=movies)
    report = await discover(services)
    assert report["counts"]["conflicts"] == 1 and report["counts"]["added"] == 0
    assert report["conflicts"][0]["paths"] == sorted([str(a.project_dir), str(b.project_dir)])
    assert mock_store.get_project("P7") is None, "never guess which one is P7"
    labelled = services_for(mock_store, tmp_path, roots=f"{tmp_path}/data/a:b={tmp_path}/data/b")
    report = await discover(labelled)
    assert report["counts"]["conflicts"] == 0 and report["counts"]["added"] == 2
    assert mock_store.get_project("P7")["title"] == "From A" and mock_store.get_project("b-P7")["title"] == "From B"


async def test_a_hand_made_project_keeps_its_uid_and_new_ones_skip_discovered(mock_store: Store, tmp_path: Path,
                                                                              movies: Path) -> None:
    services = services_for(mock_store, tmp_path)
    (tmp_path / "data" / "handmade").mkdir()
    assert services.sessions.create_project("by hand", str(tmp_path / "data" / "handmade"))["uid"] == "P1"
    clash = build_cryosparc_project(tmp_path / "data", "P1", "cryoSPARC one", [SessionSpec()], movies_dir=movies)
    build_cryosparc_project(tmp_path / "data", "P8", "cryoSPARC eight", [SessionSpec()], movies_dir=movies)
    report = await discover(services)
    assert [c["paths"] for c in report["conflicts"]] == [sorted([str(tmp_path / "data" / "handmade"),
                                                                 str(clash.project_dir)])]
    assert mock_store.get_project("P1")["title"] == "by hand"
    (tmp_path / "data" / "handmade2").mkdir()
    assert services.sessions.create_project("next", str(tmp_path / "data" / "handmade2"))["uid"] == "P9"
    with pytest.raises(ApiError, match="discovery adds them"):
        services.sessions.create_live_session("P8", "by hand")


async def test_bad_files_are_reported_and_the_pass_goes_on(mock_store: Store, tmp_path: Path, movies: Path) -> None:
    services = services_for(mock_store, tmp_path)
    truncated = build_cryosparc_project(tmp_path / "data", "P20", "Truncated", [SessionSpec()], movies_dir=movies)
    truncated.truncate_project_json(10)
    as_object = build_cryosparc_project(tmp_path / "data", "P21", "Object", [SessionSpec()], movies_dir=movies)
    as_object.workspaces_as_object()
    bad_bson = build_cryosparc_project(tmp_path / "data", "P22", "Bad bson", [SessionSpec()], movies_dir=movies)
    bad_bson.truncate_exposures_bson("S1", 30)
    build_cryosparc_project(tmp_path / "data", "P23", "Fine", [SessionSpec()], movies_dir=movies)
    (tmp_path / "data" / "loop").symlink_to(tmp_path / "data")
    report = await discover(services)
    reasons = {entry["path"]: entry["reason"] for entry in report["unreadable"]}
    assert str(truncated.project_json) in reasons
    assert any("object" in r for p, r in reasons.items() if p.startswith(str(as_object.project_dir)))
    assert sorted(p["uid"] for p in mock_store.list_projects()) == ["P21", "P22", "P23"]
    assert services.sessions.list_sessions("P21") == []
    bad = bad_bson.sessions["S1"].exposures_bson
    assert "runs past the end of the file" in reasons[str(bad)]
    assert services.sessions.get_session("P22", "S1")["exposures"]["source"] == "workspaces.json"
    assert mock_store.get_session("P22", "S1")["exposures_problem"] == reasons[str(bad)]


async def test_the_dry_run_changes_nothing(mock_store: Store, tmp_path: Path, movies: Path) -> None:
    services = services_for(mock_store, tmp_path)
    build_cryosparc_project(tmp_path / "data", "P30", "Dry", [SessionSpec()], movies_dir=movies)
    report = services.discovery.dry_run()
    assert report["dry_run"] is True and [a["project_uid"] for a in report["added"]] == ["P30"]
    assert mock_store.list_projects() == [] and services.queue.list(None, None, None, limit=10) == []


async def test_a_backup_of_discovered_projects_passes_the_restores_checks(mock_store: Store, tmp_path: Path,
                                                                          movies: Path) -> None:
    services = services_for(mock_store, tmp_path, roots=f"{tmp_path}/data:krios={tmp_path}/data/krios")
    (tmp_path / "data" / "krios").mkdir()
    build_cryosparc_project(tmp_path / "data" / "a", "P12", "Plain", [SessionSpec(), SessionSpec()], movies_dir=movies)
    build_cryosparc_project(tmp_path / "data" / "krios", "P3", "Labelled", [SessionSpec()], movies_dir=movies)
    await discover(services)
    assert sorted(p["uid"] for p in mock_store.list_projects()) == ["P12", "krios-P3"]
    ensure_admin(mock_store, tmp_path / "state" / "admin.token")
    checker = BackupChecker((str(tmp_path / "data"),), (str(tmp_path / "state"),))
    for line in backup_lines(mock_store):
        checker.line(line.rstrip(b"\n"))
    checker.finish()
    assert checker.kept_counts["projects"] == 2 and checker.kept_counts["sessions"] == 3
