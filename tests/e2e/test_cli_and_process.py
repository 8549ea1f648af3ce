"""The livedm client as a subprocess, and livedmd's life as a process: tokens, config errors, kill -9."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

from testkit.daemon import BIN, Daemon
from testkit.sessiontree import build_session_tree
from tests.support.daemon_sessions import completed_project


def test_rtpcli_output_and_exit_codes(shared_daemon: Daemon, tmp_path: Path) -> None:
    daemon = shared_daemon
    build_session_tree(tmp_path / "proj", exposures=1)
    made = daemon.livedm("rtpcli", f"create_project(title='p', project_dir='{tmp_path / 'proj'}')")
    assert made.returncode == 0
    uid = json.loads(made.stdout)["uid"]
    assert daemon.call("get_project", [uid])["project_dir"] == str(tmp_path / "proj")
    daemon.livedm("rtpcli", f"create_live_session('{uid}', 's')")
    size = daemon.livedm("rtpcli", f"update_session_datatype_sizes('{uid}', 'S1')")
    assert size.returncode == 0 and size.stdout.strip().isdigit()

    bad_string = daemon.livedm("rtpcli", f"get_datatype_size(project_uid='{uid}', project_uid='P2')")
    assert bad_string.returncode == 2 and "repeated" in bad_string.stderr and bad_string.stdout == ""
    unknown = daemon.livedm("rtpcli", "delete_everything()")
    assert unknown.returncode == 1 and "MethodNotFound" in unknown.stderr
    server_error = daemon.livedm("rtpcli", f"get_datatype_size('{uid}', 'S1', 'movies')")
    assert server_error.returncode == 1 and "InvalidParams" in server_error.stderr
    no_token = daemon.livedm("rtpcli", "list_projects()", env={"LIVEDM_TOKEN": "ldm_nope"})
    assert no_token.returncode == 1 and "Unauthenticated" in no_token.stderr
    unreachable = daemon.livedm("rtpcli", "list_projects()", env={"LIVEDM_URL": "http://127.0.0.1:9"})
    assert unreachable.returncode == 3 and "cannot reach livedmd" in unreachable.stderr


def test_token_file_and_people_commands(shared_daemon: Daemon, tmp_path: Path) -> None:
    daemon = shared_daemon
    uid, tree = completed_project(daemon, tmp_path / "proj", exposures=2, title="Apoferritin")
    env = {"LIVEDM_TOKEN": "", "LIVEDM_TOKEN_FILE": str(daemon.state_dir / "admin.token")}
    listing = daemon.livedm("ls", env=env)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:4] == ["UID", "TITLE", "STATUS", "RAW"]
    ours = lines.index(next(line for line in lines if line.split()[:2] == [uid, "Apoferritin"]))
    assert lines[ours + 1].startswith("  S1") and "completed" in lines[ours + 1]
    as_json = {p["uid"]: p for p in json.loads(daemon.livedm("--json", "ls", env=env).stdout)}
    assert as_json[uid]["sessions"][0]["data_management"]["raw"]["size"] == tree.bytes_by_datatype["raw"]
    me = daemon.livedm("whoami")
    assert me.returncode == 0 and me.stdout.startswith("admin (admin)")


def test_admin_token_is_private(shared_daemon: Daemon) -> None:
    daemon = shared_daemon
    mode = stat.S_IMODE(os.stat(daemon.state_dir / "admin.token").st_mode)
    assert mode == 0o600
    assert daemon.token.startswith("ldm_") and len(daemon.token) > 40


def test_a_bad_setting_stops_livedmd_naming_it(tmp_path: Path) -> None:
    done = subprocess.run([str(BIN / "livedmd"), "--state-dir", str(tmp_path), "--port", "http"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "setting 'port' (flag --port): bad value 'http'" in done.stderr
    env = {**os.environ, "LIVEDM_LAYOUT": "import_movies=film"}
    done = subprocess.run([str(BIN / "livedmd"), "--state-dir", str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2 and "LIVEDM_LAYOUT" in done.stderr


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def test_kill_9_leaves_no_orphan_store_and_the_next_start_works(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state").start()
    (tmp_path / "proj").mkdir()
    daemon.call("create_project", ["p", str(tmp_path / "proj")])
    assert daemon.process is not None
    children = _children_of(daemon.process.pid)
    assert len(children) == 1, "livedmd should own exactly one embedded store process"
    daemon.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(children[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(children[0]), "the embedded store outlived livedmd"
    daemon.start()
    assert [p["uid"] for p in daemon.call("list_projects")] == ["P1"]
    assert daemon.stop() == 0


def test_icli_gives_a_shell_with_the_servers_methods(shared_daemon: Daemon) -> None:
    daemon = shared_daemon
    script = "print('me:', cli.whoami()['name'])\nprint('has:', 'get_datatype_size' in dir(cli))\n"
    env = {**os.environ, "LIVEDM_URL": daemon.url, "LIVEDM_TOKEN": daemon.token}
    done = subprocess.run([str(BIN / "livedm"), "icli"], input=script, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "me: admin" in done.stdout and "has: True" in done.stdout


def test_user_and_audit_commands(daemon: Daemon, tmp_path: Path) -> None:
    added = daemon.livedm("user", "add", "alice")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1]
    assert token.startswith("ldm_")
    as_alice = daemon.livedm("whoami", env={"LIVEDM_TOKEN": token})
    assert "alice (user)" in as_alice.stdout and "may not" in as_alice.stdout
    refused = daemon.livedm("user", "list", env={"LIVEDM_TOKEN": token})
    assert refused.returncode == 1 and "Forbidden" in refused.stderr
    assert "alice may change" in daemon.livedm("user", "allow", "alice").stdout
    listing = daemon.livedm("user", "list").stdout
    assert any(line.split()[:3] == ["alice", "user", "yes"] for line in listing.splitlines())
    assert "revoked 1 token" in daemon.livedm("user", "revoke", "alice").stdout
    assert daemon.livedm("whoami", env={"LIVEDM_TOKEN": token}).returncode == 1
    audit = json.loads(daemon.livedm("--json", "audit").stdout)
    assert [e["action"] for e in audit] == ["tokens_revoked", "permission_changed", "user_created"]
    assert "permission_changed" in daemon.livedm("audit").stdout


def test_delete_jobs_and_progress_commands(shared_daemon: Daemon, tmp_path: Path) -> None:
    daemon = shared_daemon
    p1, tree = completed_project(daemon, tmp_path / "proj", exposures=3)
    dry = daemon.livedm("delete", p1, "S1", "particles", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.startswith("would delete 3 files")
    unconfirmed = daemon.livedm("delete", p1, "S1", "particles")  # no terminal, no --yes
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    assert all(Path(p).exists() for p in tree.paths_by_datatype["particles"])
    assert daemon.call("list_jobs", {"project_uid": p1}) == []
    done = daemon.livedm("delete", p1, "S1", "particles", "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted 3 files") and "particles is deleted" in done.stdout
    [job_id] = [j["id"] for j in daemon.call("list_jobs", {"project_uid": p1})]
    assert f"{job_id} delete done 3/3" in done.stderr  # progress shown while it ran
    assert not any(Path(p).exists() for p in tree.paths_by_datatype["particles"])
    listing = daemon.livedm("jobs", "--project", p1).stdout.splitlines()
    assert listing[0].split()[:3] == ["JOB", "KIND", "STATE"] and listing[1].split()[:3] == [job_id, "delete", "done"]
    job = json.loads(daemon.livedm("--json", "job", job_id, "--wait").stdout)
    assert job["result"]["deleted"] == 3
