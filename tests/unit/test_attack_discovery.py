"""Attacks on discovery in process (mongomock, the burst worker), as a hostile local user who can write inside
the data roots (project.json, workspaces.json, exposures.bson, directories and symlinks) or a careless admin
would try them. Each test shows the attack failing: nothing deleted outside what SPEC §5 allows, no record
taken over or lost."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from livedm.server import cryosparc_files
from livedm.server.auth import Authenticator
from livedm.server.domain import DATATYPES
from livedm.server.errors import ApiError
from livedm.server.services import Services
from livedm.server.store import Store
from testkit.cryosparc_tree import SessionSpec, build_cryosparc_project
from tests.support.config import make_config
from tests.support.disk import data_state

ADMIN = {"name": "admin", "role": "admin", "live_data_management": True}


def services_for(store: Store, tmp_path: Path, roots: str | None = None, **flags: Any) -> Services:
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    config = make_config(tmp_path / "state", data_roots=str(root), discover_roots=roots or "",
                         discover_interval="0", refresh_interval="0", **flags)
    return Services.build(store, config, Authenticator(store, 2))


async def run_jobs(services: Services) -> None:
    await services.workers(1).run_until_idle()


async def discover(services: Services) -> dict[str, Any]:
    job_id, _ = services.queue.enqueue_single("discover", {}, "admin")
    await run_jobs(services)
    job = services.queue.get(job_id)
    assert job["state"] == "done", job
    return dict(job["result"])


async def delete_everything(services: Services, project_uid: str) -> list[dict[str, Any]]:
    """What a retention script would do: every deletable category of every completed session of the project,
    deleted whole; the finished jobs (a refused request is no job)."""
    jobs = []
    for session in services.sessions.list_sessions(project_uid):
        for datatype in DATATYPES:
            if datatype == "raw":
                continue
            try:
                job_id = services.deletions.request(ADMIN, project_uid, session["uid"], datatype=datatype,
                                                    filepaths=None, user_id=None)
            except ApiError:
                continue
            await run_jobs(services)
            jobs.append(services.queue.get(job_id))
    return jobs


def relative_state(root: Path) -> dict[str, str]:
    return {os.path.relpath(path, root): digest for path, digest in data_state(root).items()}


def reasons(report: dict[str, Any]) -> str:
    return json.dumps([*report["conflicts"], *report["unreadable"]])


@pytest.fixture
def movies(tmp_path: Path) -> Path:
    path = tmp_path / "movies"
    path.mkdir()
    return path


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """Somebody else's files: outside any project, and inside /data too."""
    path = tmp_path / "data" / "victim"
    (path / "S1" / "motioncorrected").mkdir(parents=True)
    (path / "S1" / "motioncorrected" / "precious.mrc").write_bytes(b"x" * 100)
    (path / "notes.txt").write_text("keep me")
    return path


# --- session_dir pointing anywhere but a directory of its own inside the project ---------------------------

async def test_session_dirs_that_lead_out_of_the_project_are_never_sessions(mock_store: Store, tmp_path: Path,
                                                                           movies: Path, victim: Path) -> None:
    services = services_for(mock_store, tmp_path)
    hostile = build_cryosparc_project(tmp_path / "data" / "evil", "P40", "Hostile", [SessionSpec()],
                                      movies_dir=movies)
    other = build_cryosparc_project(tmp_path / "data" / "other", "P41", "Other", [SessionSpec()], movies_dir=movies)
    project_dir = hostile.project_dir
    (project_dir / "to_victim").symlink_to(victim)
    (project_dir / "to_etc").symlink_to("/etc")
    (project_dir / "to_other_session").symlink_to(other.project_dir / "S1")
    (project_dir / "to_self").symlink_to(".")
    (project_dir / "real").mkdir()
    (project_dir / "real" / "up").symlink_to("../..")
    escapes = ["../victim", "/etc", str(victim), ".", "./", "S1/../..", "S9/../../victim", "to_victim",
               "to_victim/S1", "to_etc", "to_other_session", "to_self", "real/up", "real/up/victim", "//etc",
               "S1/../../../../../../../etc", "\u2025/victim", "S1\x00/../../victim", "~/", "$HOME"]
    for number, session_dir in enumerate(escapes, start=50):
        hostile.add_session(SessionSpec(number=number, session_dir=session_dir), session_files=False)
    before = data_state(tmp_path)
    report = await discover(services)
    known = {s["uid"]: s["session_dir"] for s in services.sessions.list_sessions("P40")}
    allowed = {"S1"} | {uid for uid, d in known.items() if d in ("\u2025/victim", "~", "$HOME")}
    assert set(known) == allowed, (known, reasons(report))
    for session in mock_store.list_sessions("P40"):
        real = os.path.realpath(project_dir / session["session_dir"])
        assert real.startswith(str(project_dir) + "/"), session
    for uid in known:
        mock_store.set_session_fields("P40", uid, {"status": "completed"})
    jobs = await delete_everything(services, "P40")
    assert sum(j["result"]["deleted"] for j in jobs) > 0, "the deletions ran (inside the project)"
    after = data_state(tmp_path)
    lost = sorted(p for p in set(before) - set(after) if not p.startswith(str(project_dir) + "/"))
    assert lost == [], lost
    assert (victim / "notes.txt").read_text() == "keep me"
    assert (victim / "S1" / "motioncorrected" / "precious.mrc").exists()
    assert other.sessions["S1"].paths_by_datatype["micrographs"]
    for rel in other.sessions["S1"].paths_by_datatype["micrographs"]:
        assert (other.project_dir / rel).exists(), rel


# --- project directories that may not be projects ----------------------------------------------------------

def plant(directory: Path, uid: str, sessions: list[dict[str, Any]] | None = None) -> None:
    """A hand-written project.json (and workspaces.json) in a directory, as a hostile user would."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "project.json").write_text(json.dumps({"uid": uid, "title": f"planted {uid}"}))
    if sessions is not None:
        (directory / "workspaces.json").write_text(json.dumps(
            [{"workspace_type": "live", "status": "completed", **s} for s in sessions]))


async def test_the_state_dir_and_dirs_around_it_are_never_projects(mock_store: Store, tmp_path: Path) -> None:
    """A careless admin put livedm's state dir under the data root; a user plants project.json above it and
    (had they access) in it."""
    data = tmp_path / "data"
    data.mkdir()
    state = data / "lab" / "livedm-state"
    roots = f"{data}:inner={state / 'x'}:out={tmp_path / 'outside'}"  # a root in the state dir, one outside
    config = make_config(state, data_roots=str(data), discover_roots=roots, hook_log_dir=str(data / "logs" / "hooks"))
    services = Services.build(mock_store, config, Authenticator(mock_store, 2))
    state.mkdir(parents=True)
    plant(data / "lab", "P1", [{"session_uid": "S1", "session_dir": "livedm-state"}])
    plant(state / "x", "P2", [{"session_uid": "S1", "session_dir": "y"}])
    plant(data / "logs", "P3", [{"session_uid": "S1", "session_dir": "hooks"}])
    plant(tmp_path / "outside" / "p", "P4", [{"session_uid": "S1", "session_dir": "S1"}])
    report = await discover(services)
    assert mock_store.list_projects() == [], reasons(report)
    assert reasons(report).count("livedm's own state") == 3, reasons(report)
    assert "outside the data roots" in reasons(report)


async def test_a_symlinked_project_dir_and_a_system_dir_are_not_projects(mock_store: Store, tmp_path: Path,
                                                                         movies: Path) -> None:
    """discover_roots = "/" by a careless admin would reach /etc: a project there (as root could plant one)
    is refused; here /etc is reached through a symlink under the root, and a project dir that is a link."""
    services = services_for(mock_store, tmp_path)
    real = build_cryosparc_project(tmp_path / "elsewhere", "P8", "Real", [SessionSpec()], movies_dir=movies)
    (tmp_path / "data" / "link-to-project").symlink_to(real.project_dir)
    (tmp_path / "data" / "link-to-etc").symlink_to("/etc")
    report = await discover(services)
    assert mock_store.list_projects() == []
    assert "symlink" in reasons(report)
    for system in ("/etc", "/usr/lib", "/var/lib/x", "/", "/home", "/tmp"):
        with pytest.raises(ApiError):
            services.sessions.add_discovered_project("P9", system, {"source": "cryosparc"})
    assert mock_store.list_projects() == []


# --- nesting: a project.json above another project, or inside one ------------------------------------------

async def test_a_project_json_planted_above_known_projects_neither_hides_nor_takes_them(
        mock_store: Store, tmp_path: Path, movies: Path) -> None:
    """A lab member who may write in the lab's shared directory plants project.json there, naming its
    projects' session dirs as sessions of a completed project of theirs."""
    services = services_for(mock_store, tmp_path)
    lab = tmp_path / "data" / "lab"
    alice = build_cryosparc_project(lab, "P3", "Alice", [SessionSpec()], movies_dir=movies)
    await discover(services)
    alice_row = services.sessions.get_session("P3", "S1")
    plant(lab, "P70", [{"session_uid": "S1", "session_dir": f"{alice.project_dir.name}/S1"}])
    report = await discover(services)
    assert mock_store.get_project("P70") is None, "the planted project is refused: it holds P3"
    assert any("P3" in c["reason"] for c in report["conflicts"]), reasons(report)
    kept = services.sessions.get_session("P3", "S1")
    assert {c["status"] for c in kept["data_management"].values()} == {"active"}, "not hidden: not missing"
    assert kept["data_management"] == alice_row["data_management"]
    assert mock_store.get_project("P3").get("gone_at") is None


async def test_a_project_json_inside_a_known_projects_session_is_never_a_project(mock_store: Store, tmp_path: Path,
                                                                                  movies: Path) -> None:
    """Planted in P12's session dir, found because a careless admin listed a root inside it too."""
    real = build_cryosparc_project(tmp_path / "data", "P12", "Real", [SessionSpec()], movies_dir=movies)
    inner = real.project_dir / "S1" / "ctfestimated"
    services = services_for(mock_store, tmp_path, roots=f"{tmp_path / 'data'}:inner={inner}")
    plant(inner / "nested", "P99", [{"session_uid": "S1", "session_dir": "x"}])
    plant(inner, "P98")
    report = await discover(services)
    assert sorted(p["uid"] for p in mock_store.list_projects()) == ["P12"], reasons(report)
    assert "inner-P98" in {c["project_uid"] for c in report["conflicts"]}


async def test_a_project_planted_first_cannot_delete_projects_made_later_inside_it(
        mock_store: Store, tmp_path: Path, movies: Path) -> None:
    """The plant comes first: the lab's shared directory is a (hostile, completed) project before anybody's
    cryoSPARC project is made in it, so the walk never reaches those (it does not enter projects). Its
    sessions' dirs hold, or lie in, the real projects made there later."""
    services = services_for(mock_store, tmp_path)
    lab = tmp_path / "data" / "lab"
    (lab / "projects").mkdir(parents=True)
    plant(lab, "P70", [{"session_uid": "S1", "session_dir": "projects"},
                       {"session_uid": "S2", "session_dir": "later/S1"}])
    report = await discover(services)
    assert sorted(s["uid"] for s in mock_store.list_sessions("P70")) == ["S2"], "a dir not named S<n> is not taken"
    assert "'projects' does not end in cryoSPARC's own S<n>" in reasons(report)
    alice = build_cryosparc_project(lab / "projects", "P3", "Alice", [SessionSpec()], movies_dir=movies)
    bob = build_cryosparc_project(lab, "P4", "Bob", [SessionSpec()], movies_dir=movies, dir_name="later")
    before = {**data_state(alice.project_dir), **data_state(bob.project_dir)}
    services.sessions.refresh_session("P70", "S2")
    jobs = await delete_everything(services, "P70")
    assert {**data_state(alice.project_dir), **data_state(bob.project_dir)} == before
    assert sum(j["result"]["refused"] for j in jobs) > 0, [j["result"] for j in jobs]
    assert any("cryoSPARC project" in (j["result"]["note"] or "") or j["result"]["refused"] for j in jobs)


# --- a pass that dies half-way ----------------------------------------------------------------------------

class Killed(BaseException):
    """livedmd killed (-9) in the middle of a pass: nothing after this point runs."""

async def kill_a_pass_then_run_it_again(services: Services, store: Store, monkeypatch: pytest.MonkeyPatch) -> str:
    """A pass dies (Killed) where the test made it; its lease runs out; the next worker runs it again."""
    job_id, _ = services.queue.enqueue_single("discover", {}, "admin")
    with pytest.raises(Killed):
        await run_jobs(services)
    monkeypatch.undo()
    store.db.jobs.update_one({"_id": job_id}, {"$set": {"lease_until": 0.0}})
    await run_jobs(services)
    return job_id



async def test_a_pass_killed_between_a_project_and_its_sessions_loses_no_session(
        mock_store: Store, tmp_path: Path, movies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services = services_for(mock_store, tmp_path)
    project = build_cryosparc_project(tmp_path / "data", "P5", "Five", [SessionSpec(), SessionSpec()],
                                      movies_dir=movies)
    real_sync = services.discovery._sync_sessions

    def die(*args: Any, **kwargs: Any) -> None:
        raise Killed()

    monkeypatch.setattr(services.discovery, "_sync_sessions", die)
    job_id, _ = services.queue.enqueue_single("discover", {}, "admin")
    with pytest.raises(Killed):
        await run_jobs(services)
    assert mock_store.get_project("P5") is not None and mock_store.list_sessions("P5") == []
    monkeypatch.setattr(services.discovery, "_sync_sessions", real_sync)
    mock_store.db.jobs.update_one({"_id": job_id}, {"$set": {"lease_until": 0.0}})  # the lease ran out
    await run_jobs(services)
    assert services.queue.get(job_id)["state"] == "done"
    assert sorted(s["uid"] for s in services.sessions.list_sessions("P5")) == sorted(project.sessions)
    assert len(mock_store.list_projects()) == 1


async def test_a_pass_killed_while_marking_a_project_gone_marks_every_session_next_time(
        mock_store: Store, tmp_path: Path, movies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services = services_for(mock_store, tmp_path)
    project = build_cryosparc_project(tmp_path / "data" / "a", "P5", "Five", [SessionSpec(), SessionSpec()],
                                      movies_dir=movies)
    build_cryosparc_project(tmp_path / "data" / "b", "P6", "Six", [SessionSpec()], movies_dir=movies)
    await discover(services)
    project.project_dir.rename(tmp_path / "moved-away")  # out of the root: gone
    real_mark = services.sessions.mark_missing
    marked: list[str] = []

    def die_after_one(project_uid: str, session_uid: str, reason: str) -> int:
        if marked:
            raise Killed()
        marked.append(session_uid)
        return real_mark(project_uid, session_uid, reason)

    monkeypatch.setattr(services.sessions, "mark_missing", die_after_one)
    await kill_a_pass_then_run_it_again(services, mock_store, monkeypatch)
    statuses = {s["uid"]: {c["status"] for c in s["data_management"].values()}
                for s in services.sessions.list_sessions("P5")}
    assert statuses == {"S1": {"missing"}, "S2": {"missing"}}, statuses


async def test_a_daemon_killed_while_queueing_a_pass_does_not_stop_discovery_for_good(
        mock_store: Store, tmp_path: Path, movies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after its parked job took the single-pass marker and before it made the job due: every later
    request (and every scheduled pass) is answered with that job's id; the job must still run."""
    services = services_for(mock_store, tmp_path)
    build_cryosparc_project(tmp_path / "data", "P6", "Six", [SessionSpec()], movies_dir=movies)

    def die(*args: Any, **kwargs: Any) -> None:
        raise Killed()

    monkeypatch.setattr(mock_store, "set_job_due", die)
    with pytest.raises(Killed):
        services.queue.enqueue_single("discover", {}, "admin")
    monkeypatch.undo()
    job_id, new = services.queue.enqueue_single("discover", {}, "admin")  # the next request, or the schedule
    await run_jobs(services)
    assert services.queue.get(job_id)["state"] == "done", (new, services.queue.get(job_id))
    assert mock_store.get_project("P6") is not None


@pytest.mark.parametrize("record", ["insert_project", "insert_sessions"])
async def test_a_pass_killed_between_reserving_a_dir_and_recording_it_loses_nothing(
        mock_store: Store, tmp_path: Path, movies: Path, monkeypatch: pytest.MonkeyPatch, record: str) -> None:
    """The directory was reserved (the project's, the session's), the record not written: the next attempt
    found the reservation in its own way (its directory "inside project P5's"), for good."""
    services = services_for(mock_store, tmp_path)
    build_cryosparc_project(tmp_path / "data", "P5", "Five", [SessionSpec()], movies_dir=movies)

    def die(*args: Any, **kwargs: Any) -> None:
        raise Killed()

    monkeypatch.setattr(mock_store, record, die)
    job_id = await kill_a_pass_then_run_it_again(services, mock_store, monkeypatch)
    assert [s["uid"] for s in services.sessions.list_sessions("P5")] == ["S1"], services.queue.get(job_id)


# --- races: a directory swapped between the survey and the apply --------------------------------------------

@pytest.mark.parametrize("when", ["while it is read", "after the survey", "after the survey, known"])
async def test_a_project_dir_swapped_after_it_was_read_is_not_recorded(mock_store: Store, tmp_path: Path,
                                                                       movies: Path, when: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The hostile user's project.json is read; before the pass records it, they rename their directory away
    and another user's (not yet known) project into its place (both in a directory they may write). Known:
    their project was recorded by an earlier pass and they changed its workspaces.json."""
    services = services_for(mock_store, tmp_path)
    lab = tmp_path / "data" / "lab"
    plant(lab / "evil", "P70", [{"session_uid": "S1", "session_dir": "S1"}])
    if when.endswith("known"):
        await discover(services)
        plant(lab / "evil", "P70", [{"session_uid": "S1", "session_dir": "S1"},
                                    {"session_uid": "S2", "session_dir": "S2"}])
    alice = build_cryosparc_project(lab, "P3", "Alice", [SessionSpec(), SessionSpec()], movies_dir=movies,
                                    dir_name="alice")

    def swap() -> None:
        (lab / "evil").rename(lab / "evil-away")
        (lab / "alice").rename(lab / "evil")

    if when == "while it is read":
        real_read = cryosparc_files.read_project

        def read_then_swap(project_dir: str) -> Any:
            record = real_read(project_dir)
            if project_dir == str(lab / "evil"):
                swap()
            return record

        monkeypatch.setattr(cryosparc_files, "read_project", read_then_swap)
    else:
        real_survey = services.discovery.survey

        def survey_then_swap(*args: Any, **kwargs: Any) -> Any:
            survey = real_survey(*args, **kwargs)
            swap()
            return survey

        monkeypatch.setattr(services.discovery, "survey", survey_then_swap)
    before = relative_state(lab / "alice")
    report = await discover(services)
    assert "moved or replaced" in reasons(report)
    for uid in ("P70", "P3"):
        if mock_store.get_project(uid) is not None:
            for session in mock_store.list_sessions(uid):
                mock_store.set_session_fields(uid, session["uid"], {"status": "completed"})
            await delete_everything(services, uid)
    assert relative_state(lab / "evil") == before, reasons(report)
    project = mock_store.get_project("P70")
    assert project is None or project["dir_pin"]["ino"] == os.lstat(lab / "evil-away").st_ino
    assert project is None or [s["uid"] for s in mock_store.list_sessions("P70")] == ["S1"]
    assert alice.sessions["S1"].paths_by_datatype["micrographs"]


async def test_a_known_project_dir_replaced_between_passes_is_not_followed(mock_store: Store, tmp_path: Path,
                                                                           movies: Path) -> None:
    """Between two passes the directory of a known project is replaced (same path, another directory) with
    a workspaces.json listing a new session: nothing of the new directory is recorded."""
    services = services_for(mock_store, tmp_path)
    project = build_cryosparc_project(tmp_path / "data", "P12", "Twelve", [SessionSpec()], movies_dir=movies)
    await discover(services)
    copy = tmp_path / "data" / "copy"
    shutil.copytree(project.project_dir, copy, symlinks=True)
    project.project_dir.rename(tmp_path / "data-old")
    copy.rename(project.project_dir)
    project.add_session(SessionSpec(number=2, session_dir="S2"), session_files=False)
    report = await discover(services)
    assert [s["uid"] for s in mock_store.list_sessions("P12")] == ["S1"]
    assert "an admin must check" in reasons(report)



# --- uids -----------------------------------------------------------------------------------------------

async def test_crafted_uids_neither_take_over_a_project_nor_break_the_numbering(mock_store: Store, tmp_path: Path,
                                                                               movies: Path) -> None:
    services = services_for(mock_store, tmp_path)
    data = tmp_path / "data"
    (data / "handmade").mkdir()
    assert services.sessions.create_project("by hand", str(data / "handmade"))["uid"] == "P1"
    build_cryosparc_project(data / "real", "P12", "Real twelve", [SessionSpec()], movies_dir=movies)
    await discover(services)
    for n, uid in enumerate(["P1", "P12", "P0", "P01", "../P1", "P1/../P2", "p5", "P\u0661", "\uff30\uff11",
                             "P1\n", " P3", "P3 ", "krios-P4", "P99999999999", 12, None, ["P6"], {"$gt": ""}]):
        plant(data / "evil" / f"u{n}", uid if isinstance(uid, str) else "P1")  # type: ignore[arg-type]
        if not isinstance(uid, str):
            (data / "evil" / f"u{n}" / "project.json").write_text(json.dumps({"uid": uid}))
    plant(data / "evil" / "big", "P999999999")
    report = await discover(services)
    assert mock_store.get_project("P1")["project_dir"] == str(data / "handmade"), "the hand-made P1 is kept"
    assert mock_store.get_project("P12")["title"] == "Real twelve"
    uids = sorted(p["uid"] for p in mock_store.list_projects())
    assert uids == ["P1", "P12", "P999999999"], (uids, reasons(report))
    assert {c["project_uid"] for c in report["conflicts"]} == {"P1", "P12"}
    (data / "handmade2").mkdir()
    made = services.sessions.create_project("next by hand", str(data / "handmade2"))
    assert made["uid"] == "P13", "numbered above the real P12, not above the planted P999999999"
    assert services.sessions.get_project(made["uid"])["title"] == "next by hand", "a made project can be used"
    mock_store.raise_counter("projects", 999_999_999)  # however it got there: no unusable uid is ever made
    (data / "handmade3").mkdir()
    with pytest.raises(ApiError, match="no project uid is left"):
        services.sessions.create_project("one too many", str(data / "handmade3"))
    assert len(mock_store.list_projects()) == 4


async def test_a_rewritten_uid_in_a_known_project_neither_moves_nor_hides_it(mock_store: Store, tmp_path: Path,
                                                                             movies: Path) -> None:
    """A lab member who may write P12's project.json gives it P13's uid (another real project), or a new one."""
    services = services_for(mock_store, tmp_path)
    twelve = build_cryosparc_project(tmp_path / "data", "P12", "Twelve", [SessionSpec()], movies_dir=movies)
    thirteen = build_cryosparc_project(tmp_path / "data", "P13", "Thirteen", [SessionSpec()], movies_dir=movies)
    await discover(services)
    for uid in ("P13", "P77"):
        twelve.set_project_field("uid", uid)
        report = await discover(services)
        assert mock_store.get_project("P12")["project_dir"] == str(twelve.project_dir)
        assert mock_store.get_project("P13")["project_dir"] == str(thirteen.project_dir)
        assert mock_store.get_project("P77") is None, reasons(report)
        for project_uid in ("P12", "P13"):
            statuses = {c["status"] for s in mock_store.list_sessions(project_uid)
                        for c in s["data_management"].values()}
            assert statuses == {"active"}, (uid, project_uid, statuses, report["gone"])
        assert any(str(twelve.project_dir) in c["paths"] for c in report["conflicts"]), reasons(report)


# --- exposures.bson: never read through a symlink -----------------------------------------------------------

async def test_exposures_bson_is_never_read_through_a_symlinked_session_dir(mock_store: Store, tmp_path: Path,
                                                                            movies: Path) -> None:
    """A running session (its exposures.bson is looked at every pass) whose directory is swapped for a link
    to somebody else's session: its exposure counts (shown to every user) must not become theirs."""
    services = services_for(mock_store, tmp_path)
    secret = build_cryosparc_project(tmp_path / "private", "P90", "Not under the roots",
                                     [SessionSpec(exposures=7, manual_rejected=3)], movies_dir=movies)
    hostile = build_cryosparc_project(tmp_path / "data", "P40", "Hostile", [SessionSpec(status="running",
                                                                                        exposures=1)],
                                      movies_dir=movies)
    await discover(services)
    assert services.sessions.get_session("P40", "S1")["exposures"]["total"] == 1
    (hostile.project_dir / "S1").rename(hostile.project_dir / "S1-away")
    (hostile.project_dir / "S1").symlink_to(secret.project_dir / "S1")
    report = await discover(services)
    exposures = services.sessions.get_session("P40", "S1")["exposures"]
    assert exposures["total"] != 7 and exposures["rejected"] != 3, (exposures, reasons(report))
    hostile.add_session(SessionSpec(number=2, session_dir="S2", status="running"), session_files=False)
    (hostile.project_dir / "S2").symlink_to(secret.project_dir / "S1")  # a new session, read before it is added
    report = await discover(services)
    assert str(secret.project_dir) not in json.dumps(report["unreadable"]).replace(
        "resolves to " + str(secret.project_dir), ""), reasons(report)
    assert all((s.get("exposures") or {}).get("total") != 7 for s in mock_store.list_sessions("P40"))


# --- swapped between discovery and a deletion -------------------------------------------------------------

@pytest.mark.parametrize("swap", ["session dir", "project dir", "session dir, never measured"])
async def test_a_discovered_session_swapped_before_its_deletion_deletes_nothing_elsewhere(
        mock_store: Store, tmp_path: Path, movies: Path, swap: str) -> None:
    services = services_for(mock_store, tmp_path)
    hostile = build_cryosparc_project(tmp_path / "data", "P40", "Hostile", [SessionSpec()], movies_dir=movies)
    other = build_cryosparc_project(tmp_path / "data", "P41", "Other", [SessionSpec()], movies_dir=movies)
    if swap.endswith("never measured"):
        hostile.add_session(SessionSpec(number=2), session_files=False)  # S2 has no directory yet
    await discover(services)
    await run_jobs(services)
    before = data_state(other.project_dir)
    if swap == "project dir":
        hostile.project_dir.rename(tmp_path / "data" / "away")
        hostile.project_dir.symlink_to(other.project_dir)
    elif swap == "session dir":
        (hostile.project_dir / "S1").rename(hostile.project_dir / "S1-away")
        (hostile.project_dir / "S1").symlink_to(other.project_dir / "S1")
    else:
        (hostile.project_dir / "S2").symlink_to(other.project_dir / "S1")
        services.sessions.refresh_session("P40", "S2")
        assert mock_store.get_session("P40", "S2")["measured_at"] is None, "a link is never measured"
    await delete_everything(services, "P40")
    assert data_state(other.project_dir) == before


# --- workspaces.json built to exhaust: memory, CPU, document size -----------------------------------------

def write_workspaces(directory: Path, entries: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "project.json").write_text(json.dumps({"uid": "P5", "title": "bomb"}))
    (directory / "workspaces.json").write_text(json.dumps(entries))


def test_a_workspaces_json_of_junk_entries_keeps_its_problems_few(tmp_path: Path) -> None:
    """200,000 entries that are not objects (each one a problem), in 600 kB: the project's problems stay
    bounded (at 64 MB, 32 million records were 15 GB of memory)."""
    write_workspaces(tmp_path / "p", [0] * 200_000)
    project = cryosparc_files.read_project(tmp_path / "p")
    assert len(project.problems) <= cryosparc_files.MAX_PROBLEMS + 1
    assert "199800 more" in project.problems[-1].reason or "more problem" in project.problems[-1].reason


def test_thousands_of_live_sessions_are_read_in_linear_time_and_bounded(tmp_path: Path) -> None:
    """10,000 live entries (780 kB) took 40 s to read (each checked against all before it); a project is read
    every pass it changes."""
    write_workspaces(tmp_path / "p", [{"workspace_type": "live", "session_uid": f"S{i}", "session_dir": f"d/S{i}",
                                       "exposure_groups": [{"file_engine_watch_path_abs": f"/m/{k}"}
                                                           for k in range(300)] if i == 1 else []}
                                      for i in range(1, 10_001)])
    started = time.perf_counter()
    project = cryosparc_files.read_project(tmp_path / "p")
    assert time.perf_counter() - started < 5
    assert len(project.sessions) == cryosparc_files.MAX_LIVE_SESSIONS
    assert len(project.sessions[0].raw_dirs) <= cryosparc_files.MAX_RAW_DIRS
    assert any("more than" in p.reason for p in project.problems)
    write_workspaces(tmp_path / "q", [{"workspace_type": "live", "session_uid": "S1", "session_dir": "a"},
                                      {"workspace_type": "live", "session_uid": "S2", "session_dir": "a/b"},
                                      {"workspace_type": "live", "session_uid": "S3", "session_dir": "c/d"},
                                      {"workspace_type": "live", "session_uid": "S4", "session_dir": "c"},
                                      {"workspace_type": "live", "session_uid": "S1", "session_dir": "e"},
                                      {"workspace_type": "live", "session_uid": "S5", "session_dir": "c/d"},
                                      {"workspace_type": "live", "session_uid": "S6", "session_dir": "cd"}])
    assert [(s.session_uid, s.session_dir) for s in cryosparc_files.read_project(tmp_path / "q").sessions] == [
        ("S1", "a"), ("S3", "c/d"), ("S6", "cd")]


async def test_a_session_too_big_to_store_stops_neither_the_pass_nor_other_projects(mock_store: Store,
                                                                                    tmp_path: Path) -> None:
    """A live entry with 800,000 paused_at dates (31 MB, under the 64 MB cap) made a 29 MB session document:
    the store refused it and every pass failed from then on, before the projects after it."""
    services = services_for(mock_store, tmp_path)
    dates = [{"$date": "2024-03-01T10:02:03.123Z"}] * 800_000
    write_workspaces(tmp_path / "data" / "a", [{"workspace_type": "live", "session_uid": "S1", "session_dir": "S1",
                                                "paused_at": dates}])
    (tmp_path / "data" / "b").mkdir()
    (tmp_path / "data" / "b" / "project.json").write_text(json.dumps({"uid": "P6"}))
    await discover(services)
    assert mock_store.get_project("P6") is not None
    session = mock_store.get_session("P5", "S1")
    assert session is not None and len(session["paused_at"]) <= cryosparc_files.MAX_DATES


async def test_a_project_that_cannot_be_recorded_does_not_stop_the_others(mock_store: Store, tmp_path: Path,
                                                                          movies: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    services = services_for(mock_store, tmp_path)
    build_cryosparc_project(tmp_path / "data", "P1", "First", [SessionSpec()], movies_dir=movies)
    build_cryosparc_project(tmp_path / "data", "P2", "Second", [SessionSpec()], movies_dir=movies)
    real_add = services.sessions.add_discovered_sessions

    def refuse_p1(project_uid: str, new: dict[str, dict[str, Any]]) -> dict[str, str]:
        if project_uid == "P1":
            raise ValueError("BSON document too large (as the store says it)")
        return real_add(project_uid, new)

    monkeypatch.setattr(services.sessions, "add_discovered_sessions", refuse_p1)
    report = await discover(services)
    assert [s["uid"] for s in mock_store.list_sessions("P2")] == ["S1"]
    assert "could not be recorded (ValueError" in reasons(report)
    monkeypatch.undo()
    await discover(services)
    assert [s["uid"] for s in mock_store.list_sessions("P1")] == ["S1"], "read again next pass"


# --- the raw movies' directory named as a session dir ----------------------------------------------------

async def test_a_session_dir_that_is_the_raw_movies_directory_deletes_no_movie(mock_store: Store,
                                                                               tmp_path: Path) -> None:
    """The movies sit inside the project (in a directory named S2); someone who may write workspaces.json adds
    a completed session S2 whose dir is that one: every movie is then its "metadata"."""
    services = services_for(mock_store, tmp_path)
    project_dir = tmp_path / "data" / "CS-inside"
    project = build_cryosparc_project(tmp_path / "data", "P8", "Movies inside", [SessionSpec(exposure_groups=2)],
                                      movies_dir=project_dir / "S2", dir_name="CS-inside")
    project.add_session(SessionSpec(number=2, session_dir="S2"), session_files=False)
    before = data_state(project_dir / "S2")
    assert len(before) == 3
    await discover(services)
    await run_jobs(services)
    assert mock_store.get_session("P8", "S2")["data_management"]["metadata"]["file_count"] == 3
    jobs = await delete_everything(services, "P8")
    assert data_state(project_dir / "S2") == before
    assert sum(j["result"]["refused"] for j in jobs) == 3
