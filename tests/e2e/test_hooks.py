"""The state-change hook with real livedmd processes: the seed's example script, the archiver,
and scripts that fail, hang or flood their log."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from livedm.server.processes import session_members
from testkit.daemon import Daemon
from tests.support.daemon_sessions import completed_session, finished_job, hook_daemon, status_of, stop_when_idle
from tests.support.hook_scripts import executable
from tests.support.waiting import wait_until

HOOKS = Path(__file__).resolve().parents[2] / "hooks"
SEED = Path(__file__).resolve().parents[3] / "shared" / "seed" / "cryosparc-live-data-management.txt"


@pytest.fixture
def seed_daemon(tmp_path: Path, embedded_uri: str) -> Iterator[Daemon]:
    daemon = hook_daemon(tmp_path, HOOKS / "cryosparc-seed-example.sh", store=embedded_uri)
    yield daemon
    stop_when_idle(daemon)


def seed_script_lines() -> list[str]:
    """The example script as the seed prints it: numbered lines, a blank one where only a number stands."""
    lines = SEED.read_text().splitlines()
    i, number, script = lines.index("#!/bin/sh") - 1, 1, []
    while lines[i] != "Copied!":
        assert lines[i] == str(number)
        following = lines[i + 1]
        if following in (str(number + 1), "Copied!"):
            script.append("")
            i += 1
        else:
            script.append(following)
            i += 2
        number += 1
    return script


def test_the_shipped_example_is_the_seeds_but_for_two_lines() -> None:
    assert subprocess.run(["sh", "-n", str(HOOKS / "cryosparc-seed-example.sh")]).returncode == 0
    if not SEED.exists():
        pytest.skip("shared/seed is not beside this checkout")
    ours = (HOOKS / "cryosparc-seed-example.sh").read_text().splitlines()
    seed = seed_script_lines()
    assert len(ours) == len(seed) == 42
    differ = [(a, b) for a, b in zip(seed, ours, strict=True) if a != b]
    assert len(differ) == 2
    assert differ[0][0].startswith("cryosparcm=/") and differ[0][1] == "cryosparcm=livedm"
    assert differ[1][1] == differ[1][0] + ")"  # the parenthesis the seed's get_datatype_size line lacks


def test_seed_example_moves_archiving_to_archived_and_each_run_has_its_own_log(seed_daemon: Daemon,
                                                                              tmp_path: Path) -> None:
    completed_session(seed_daemon, tmp_path)
    dm = seed_daemon.call("change_session_data_management_state", ["P1", "S1", "micrographs", "archiving"])
    assert dm["micrographs"]["status"] == "archiving"
    wait_until(lambda: status_of(seed_daemon, "micrographs") == "archived", what="the hook to archive")
    changes = [e for e in seed_daemon.call("get_audit_log", {"project_uid": "P1"}) if e["action"] == "state_changed"]
    assert [(e["actor"], e["status"]) for e in changes] == [("hook", "archived"), ("admin", "archiving")]
    assert [(e["actor_kind"], e.get("actor_label")) for e in changes] == [("livedm", "livedm's hook run"),
                                                                          ("user", None)]
    # the hook's token was short-lived: it is gone once the runs are over
    jobs = wait_until(lambda: (js := seed_daemon.call("list_jobs", {"kind": "hook"})) and len(js) == 2
                      and all(j["state"] == "done" for j in js) and js, what="both hook runs")
    archived_run, archiving_run = jobs  # newest first; the archiving run triggered the archived one
    assert (archiving_run["params"]["status"], archived_run["params"]["status"]) == ("archiving", "archived")
    logs = {run["params"]["status"]: seed_daemon.state_dir / "hook-logs" / f"P1_S1_micrographs_{run['id']}.log"
            for run in jobs}
    assert sorted(p.name for p in (seed_daemon.state_dir / "hook-logs").iterdir()) == sorted(p.name for p in
                                                                                           logs.values())
    for status, run in (("archiving", archiving_run), ("archived", archived_run)):
        text = logs[status].read_text()
        lines = text.splitlines()
        # one run, whole: its header first, its footer last, nothing of the other run between them
        assert lines[0].startswith("=== ") and lines[0].endswith(f"job {run['id']} attempt 1: "
                                                                 f"{HOOKS / 'cryosparc-seed-example.sh'} P1 S1 "
                                                                 f"micrographs {status}")
        assert lines[-1].startswith("=== exit status 0 after ") and sum(ln.startswith("===") for ln in lines) == 2
        assert f"status: {status}" in lines and "Total size of micrographs datatype in P1 S1 is " in text
        assert seed_daemon.call("get_job_log", {"job_id": run["id"]})["text"] == text
    success = "SUCCESS changed data management state for micrographs in P1 S1 to 'archived'"
    assert success in logs["archiving"].read_text()
    assert "SUCCESS" not in logs["archived"].read_text() and "status: archiving" not in logs["archived"].read_text()
    hook = seed_daemon.call("get_session", ["P1", "S1"])["data_management"]["micrographs"]["hook"]
    assert (hook["job_id"], hook["status"], hook["state"]) == (archived_run["id"], "archived", "done")


def test_a_failed_hook_shows_on_its_category_and_its_log_is_read_with_the_permission(tmp_path: Path) -> None:
    script = executable(tmp_path / "failing-hook.sh", "#!/bin/sh\necho \"copying $3 of $1 $2\"\n"
                        "echo 'rsync: /archive: No space left on device' >&2\nexit 23\n")
    daemon = hook_daemon(tmp_path, script)
    try:
        completed_session(daemon, tmp_path)
        daemon.call("change_session_data_management_state", ["P1", "S1", "raw", "archiving"])
        job = finished_job(daemon, wait_until(lambda: daemon.call("list_jobs", {"kind": "hook"}))[0]["id"])
        assert job["state"] == "failed" and f"`livedm job {job['id']} --log`" in job["error"]
        alert = daemon.call("get_session", ["P1", "S1"])["data_management"]["raw"]["alert"]
        assert alert["kind"] == "hook_failed" and alert["job_id"] == job["id"] and "status 23" in alert["message"]
        listing = daemon.livedm("ls").stdout
        assert f"[archiving; hook {job['id']} failed]" in listing

        shown = daemon.livedm("job", job["id"], "--log")
        assert shown.returncode == 1  # the job failed
        assert shown.stdout.splitlines()[1:3] == ["copying raw of P1 S1", "rsync: /archive: No space left on device"]
        assert shown.stdout.splitlines()[-1].startswith("=== exit status 23 after ")
        assert f"{job['id']} hook failed" in shown.stderr
        whole = daemon.livedm("job", job["id"], "--full-log", "--json")
        assert json.loads(whole.stdout)["text"] == shown.stdout
        viewer = daemon.call("create_user", {"name": "viewer"})["token"]
        refused = daemon.livedm("job", job["id"], "--log", env={"LIVEDM_TOKEN": viewer})
        assert refused.returncode == 1 and "Forbidden" in refused.stderr and "live data management" in refused.stderr
        refresh = daemon.call("update_all_sessions_datatype_sizes", ["P1"])
        not_a_hook = daemon.rpc("get_job_log", {"job_id": refresh})
        assert not_a_hook["error"]["code"] == -32001 and "only hook runs have a log" in not_a_hook["error"]["message"]
        finished_job(daemon, refresh)

        executable(script, "#!/bin/sh\necho fixed\n")  # the admin fixes the script and marks archiving again
        daemon.call("change_session_data_management_state", ["P1", "S1", "raw", "active"])
        daemon.call("change_session_data_management_state", ["P1", "S1", "raw", "archiving"])
        wait_until(lambda: daemon.call("get_session", ["P1", "S1"])["data_management"]["raw"]["alert"] is None
                   and daemon.call("get_session", ["P1", "S1"])["data_management"]["raw"]["hook"]["state"] == "done",
                   what="a run that succeeds to clear the alert")
    finally:
        daemon.stop()


def test_archiver_copies_verifies_and_marks_archived(tmp_path: Path, embedded_uri: str) -> None:
    archive_root = tmp_path / "archive"
    daemon = hook_daemon(tmp_path, HOOKS / "archive-copy.py", store=embedded_uri,
                         LIVEDM_ARCHIVE_ROOT=str(archive_root))
    try:
        tree = completed_session(daemon, tmp_path)
        daemon.call("change_session_data_management_state", ["P1", "S1", "raw", "archiving"])
        wait_until(lambda: status_of(daemon, "raw") == "archived", what="the archiver")
    finally:
        stop_when_idle(daemon)
    destination = archive_root / "P1" / "S1" / "raw"
    manifest = (destination / "MANIFEST.sha256").read_text().splitlines()
    assert len(manifest) == len(tree.paths_by_datatype["raw"])
    for movie in tree.paths_by_datatype["raw"]:
        copy = destination / movie.lstrip("/")
        assert copy.read_bytes() == Path(movie).read_bytes()
        assert f"{hashlib.sha256(copy.read_bytes()).hexdigest()}  {movie.lstrip('/')}" in manifest


def test_archiver_archives_the_movies_that_are_there_and_reports_the_missing(tmp_path: Path) -> None:
    archive_root = tmp_path / "archive"
    daemon = hook_daemon(tmp_path, HOOKS / "archive-copy.py", LIVEDM_ARCHIVE_ROOT=str(archive_root))
    try:
        tree = completed_session(daemon, tmp_path, exposures=4)
        gone, *kept = tree.paths_by_datatype["raw"]  # the first movie has two links: both lead nowhere now
        Path(gone).unlink()
        listing = daemon.call("get_datatype_file_paths", ["P1", "S1", "raw"])
        assert sorted(listing["raw"]) == sorted(kept) and listing["missing"] == [gone]
        daemon.call("change_session_data_management_state", ["P1", "S1", "raw", "archiving"])
        wait_until(lambda: status_of(daemon, "raw") == "archived", what="the archiver")
        job = finished_job(daemon, daemon.call("list_jobs", {"kind": "hook", "limit": 1})[0]["id"])
    finally:
        daemon.stop()
    destination = archive_root / "P1" / "S1" / "raw"
    assert (destination / "MISSING.txt").read_text() == f"{gone}\n"
    assert len((destination / "MANIFEST.sha256").read_text().splitlines()) == 3
    assert all((destination / movie.lstrip("/")).read_bytes() == Path(movie).read_bytes() for movie in kept)
    assert not (destination / gone.lstrip("/")).exists()
    assert job["state"] == "done"


def test_archiver_marks_nothing_when_every_movie_is_gone(tmp_path: Path) -> None:
    archive_root = tmp_path / "archive"
    daemon = hook_daemon(tmp_path, HOOKS / "archive-copy.py", LIVEDM_ARCHIVE_ROOT=str(archive_root))
    try:
        tree = completed_session(daemon, tmp_path, exposures=2)
        for movie in tree.paths_by_datatype["raw"]:
            Path(movie).unlink()
        daemon.call("change_session_data_management_state", ["P1", "S1", "raw", "archiving"])
        job = finished_job(daemon, wait_until(lambda: daemon.call("list_jobs", {"kind": "hook"}))[0]["id"])
        assert job["state"] == "failed" and "status 1" in job["error"]
        assert status_of(daemon, "raw") == "archiving"
    finally:
        daemon.stop()
    assert (archive_root / "P1" / "S1" / "raw" / "MISSING.txt").read_text().count("\n") == 2


def test_failing_hanging_and_flooding_hooks_never_block_or_change_state(tmp_path: Path, embedded_uri: str) -> None:
    script, session_file = tmp_path / "bad-hook.sh", tmp_path / "hung-session"
    script.write_text("#!/bin/sh\n"
                      "case \"$4\" in\n"
                      "  archiving) echo 'about to fail'; exit 3 ;;\n"
                      f"  archived) echo $$ > {session_file}; sleep 60 ;;\n"
                      "  active) head -c 50000000 /dev/zero | tr '\\0' x ;;\n"
                      "esac\n")
    script.chmod(0o755)
    daemon = hook_daemon(tmp_path, script, store=embedded_uri, LIVEDM_HOOK_TIMEOUT_S="3")
    try:
        completed_session(daemon, tmp_path)
        for status in ("archiving", "archived", "active"):
            daemon.call("change_session_data_management_state", ["P1", "S1", "particles", status])
        started = time.monotonic()
        while time.monotonic() - started < 2:  # the daemon answers while hooks fail, hang and flood
            t0 = time.monotonic()
            assert daemon.call("get_datatype_size", ["P1", "S1", "particles"]) > 0
            assert time.monotonic() - t0 < 1.0
            time.sleep(0.05)
        jobs = wait_until(lambda: (js := daemon.call("list_jobs", {"kind": "hook"})) and
                          all(j["state"] in ("done", "failed") for j in js) and js, timeout_s=30, what="hooks")
        by_status = {j["params"]["status"]: j for j in jobs}
        assert by_status["archiving"]["state"] == "failed" and "status 3" in by_status["archiving"]["error"]
        assert by_status["archived"]["state"] == "failed" and "timed out" in by_status["archived"]["error"]
        assert by_status["active"]["state"] == "done"
        assert status_of(daemon, "particles") == "active"  # the last change stands; failures changed nothing
        logs = {status: daemon.state_dir / "hook-logs" / f"P1_S1_particles_{job['id']}.log"
                for status, job in by_status.items()}
        assert 10_485_760 < logs["active"].stat().st_size < 10_485_760 + 1000  # hook_log_max_bytes: head and tail
        text = b"".join(log.read_bytes() for log in logs.values())
        assert b"about to fail" in text and b"exit status 3" in text and b"timed out, killed" in text
        assert f"=== [{50_000_000 - 10_485_760} bytes of output cut here: ".encode() in text
        runs = [e for e in daemon.call("get_audit_log", {}) if e["action"] == "hook_ran"]
        assert sorted((e["status"], e["exit_status"] == 0) for e in runs) == [
            ("active", True), ("archived", False), ("archiving", False)]
        assert session_members(int(session_file.read_text())) == [], "the hung hook's session was not killed"
    finally:
        daemon.stop()


def test_trigger_runs_the_hook_now_and_its_overrides_need_an_admin(tmp_path: Path, embedded_uri: str) -> None:
    other = executable(tmp_path / "other-hook.sh", "#!/bin/sh\necho \"other hook $*\"\n")
    seed_daemon = hook_daemon(tmp_path, HOOKS / "cryosparc-seed-example.sh", store=embedded_uri,
                              LIVEDM_HOOK_ALLOWED_SCRIPTS=str(other))
    try:
        trigger_as_admin_and_as_a_user(seed_daemon, tmp_path, other)
    finally:
        stop_when_idle(seed_daemon)


def trigger_as_admin_and_as_a_user(seed_daemon: Daemon, tmp_path: Path, other: Path) -> None:
    completed_session(seed_daemon, tmp_path)
    custom_log = seed_daemon.state_dir / "hook-logs" / "custom.log"  # an override stays in the hook log dir
    user = seed_daemon.call("create_user", {"name": "erin"})
    seed_daemon.call("set_user_data_management_permission", ["erin", True])
    as_erin = seed_daemon.livedm("rtpcli", f"trigger_live_data_management_script('P1', 'S1', 'metadata', "
                                 f"'active', '{other}')", env={"LIVEDM_TOKEN": user["token"]})
    assert as_erin.returncode == 1 and "need an admin" in as_erin.stderr
    job_id = seed_daemon.call("trigger_live_data_management_script", {
        "project_uid": "P1", "session_uid": "S1", "datatype": "metadata", "script_location": str(other),
        "script_log_path_abs": str(custom_log)})
    wait_until(lambda: seed_daemon.call("get_job", [job_id])["state"] == "done", what="the triggered hook")
    assert "other hook P1 S1 metadata active" in custom_log.read_text()  # status: the category's current one
    plain = seed_daemon.livedm("rtpcli", "trigger_live_data_management_script('P1', 'S1', 'metadata')",
                               env={"LIVEDM_TOKEN": user["token"]})
    assert plain.returncode == 0 and plain.stdout.strip().startswith("J")
    assert finished_job(seed_daemon, plain.stdout.strip())["state"] == "done"
