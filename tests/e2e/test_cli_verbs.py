"""The everyday verbs of the livedm client, run as a subprocess against a real livedmd: what they print,
what they change, and what they say when they cannot."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

from testkit.daemon import BIN, Daemon
from testkit.sessiontree import build_session_tree
from tests.support.daemon_sessions import completed_session
from tests.support.terminal import livedm_at_terminal


def test_user_role_and_remove(daemon: Daemon) -> None:
    token = daemon.livedm("user", "add", "hana").stdout.strip().splitlines()[-1]
    as_hana = {"LIVEDM_TOKEN": token}
    promoted = daemon.livedm("user", "role", "hana", "admin")
    assert promoted.returncode == 0 and promoted.stdout.strip() == "hana is an admin"
    assert daemon.livedm("user", "list", env=as_hana).returncode == 0  # an admin now
    demoted = daemon.livedm("user", "role", "--json", "hana", "user")
    assert demoted.returncode == 0 and json.loads(demoted.stdout)["role"] == "user"
    bad_role = daemon.livedm("user", "role", "hana", "root")
    assert bad_role.returncode == 2 and "invalid choice: 'root'" in bad_role.stderr

    last = daemon.livedm("user", "role", "admin", "user")
    assert last.returncode == 1 and "Conflict" in last.stderr and "livedm user add NAME --admin" in last.stderr
    hook = daemon.livedm("user", "deny", "hook")
    assert hook.returncode == 1 and "Forbidden" in hook.stderr and "livedm's own account" in hook.stderr
    assert "hook" not in daemon.livedm("user", "list").stdout.split()

    unasked = daemon.livedm("user", "remove", "hana")  # no terminal to ask at, no --yes
    assert unasked.returncode == 2 and "--yes" in unasked.stderr
    mistyped = livedm_at_terminal(daemon, "user", "remove", "hana", typed="hanna")
    assert mistyped.returncode == 2 and "nothing was done" in mistyped.stderr
    assert daemon.livedm("whoami", env=as_hana).returncode == 0
    removed = livedm_at_terminal(daemon, "user", "remove", "hana", typed="hana")
    assert removed.returncode == 0, removed.stderr
    assert "Type hana to confirm" in removed.stdout and "removed hana (1 token(s) revoked)" in removed.stdout
    gone = daemon.livedm("whoami", env=as_hana)
    assert gone.returncode == 1 and "Unauthenticated" in gone.stderr
    again = daemon.livedm("user", "remove", "hana", "--yes")
    assert again.returncode == 1 and "NotFound" in again.stderr and "livedm user list" in again.stderr
    audit = daemon.livedm("audit").stdout
    assert "user_removed" in audit and "user=hana" in audit and "role_changed" in audit


def test_delete_asks_for_the_project_and_the_session(daemon: Daemon, tmp_path: Path) -> None:
    tree = completed_session(daemon, tmp_path, exposures=2)
    only_the_session = livedm_at_terminal(daemon, "delete", "P1", "S1", "particles", typed="S1")
    assert only_the_session.returncode == 2 and "Type P1 S1 to confirm" in only_the_session.stdout
    assert "nothing was done" in only_the_session.stderr
    assert all(Path(p).exists() for p in tree.paths_by_datatype["particles"])
    done = livedm_at_terminal(daemon, "delete", "P1", "S1", "particles", typed="P1 S1")
    assert done.returncode == 0, done.stderr
    assert "deleted 2 files" in done.stdout
    assert not any(Path(p).exists() for p in tree.paths_by_datatype["particles"])


def test_project_and_session_verbs(daemon: Daemon, tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "apoferritin", exposures=2)
    added = daemon.livedm("project", "add", "Apoferritin", str(tree.project_dir))
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == (f"P1 'Apoferritin' at {tree.project_dir}; add a session: "
                                    "livedm session add P1 TITLE")
    nowhere = daemon.livedm("project", "add", "Nowhere", str(tmp_path / "nowhere"))
    assert nowhere.returncode == 1 and nowhere.stderr.startswith("livedm: ") and "nowhere" in nowhere.stderr
    (tmp_path / "trpv1").mkdir()
    as_json = daemon.livedm("project", "add", "--json", "TRPV1", str(tmp_path / "trpv1"))
    assert json.loads(as_json.stdout)["uid"] == "P2"

    session = daemon.livedm("session", "add", "P1", "grid 1")
    assert session.returncode == 0 and session.stdout.strip() == "P1 S1 'grid 1' (paused) in S1"
    no_project = daemon.livedm("session", "add", "P9", "grid")
    assert no_project.returncode == 1 and "NotFound" in no_project.stderr and "`livedm ls`" in no_project.stderr
    in_dir = json.loads(daemon.livedm("--json", "session", "add", "P2", "grid 2", "--dir", "live/grid2").stdout)
    assert (in_dir["uid"], in_dir["session_dir"], in_dir["status"]) == ("S1", "live/grid2", "paused")

    assert daemon.livedm("session", "start", "P1", "S1").stdout.strip() == "P1 S1 is running"
    again = daemon.livedm("session", "start", "P1", "S1")
    assert again.returncode == 1 and "Conflict" in again.stderr and "already running" in again.stderr
    paused = daemon.livedm("session", "pause", "P1", "S1")
    assert paused.stdout.startswith("P1 S1 is paused; measured: ")
    too_early = daemon.livedm("mark", "P1", "S1", "micrographs", "archiving")
    assert too_early.returncode == 1 and "`livedm session complete P1 S1`" in too_early.stderr
    completed = json.loads(daemon.livedm("session", "complete", "P1", "S1", "--json").stdout)
    assert completed["status"] == "completed"
    assert completed["data_management"]["particles"]["size"] == tree.bytes_by_datatype["particles"]
    no_session = daemon.livedm("session", "complete", "P1", "S7")
    assert no_session.returncode == 1 and "`livedm ls P1` shows its sessions" in no_session.stderr


def test_mark_and_files(daemon: Daemon, tmp_path: Path) -> None:
    tree = completed_session(daemon, tmp_path, exposures=3)
    marked = daemon.livedm("mark", "P1", "S1", "micrographs", "archiving")
    assert marked.returncode == 0 and marked.stdout.strip() == "micrographs of P1 S1 is archiving"
    assert daemon.call("get_session", ["P1", "S1"])["data_management"]["micrographs"]["status"] == "archiving"
    deleted = daemon.livedm("mark", "--json", "P1", "S1", "raw", "deleted")
    assert json.loads(deleted.stdout)["raw"]["status"] == "deleted"
    thumbnails = daemon.livedm("mark", "P1", "S1", "thumbnails", "archived")
    assert thumbnails.returncode == 2 and "invalid choice: 'thumbnails'" in thumbnails.stderr
    bad_status = daemon.livedm("mark", "P1", "S1", "raw", "missing")
    assert bad_status.returncode == 2 and "invalid choice: 'missing'" in bad_status.stderr
    viewer = daemon.call("create_user", {"name": "viewer"})["token"]
    refused = daemon.livedm("mark", "P1", "S1", "particles", "archived", env={"LIVEDM_TOKEN": viewer})
    assert refused.returncode == 1 and "Forbidden" in refused.stderr and "livedm user allow NAME" in refused.stderr

    lines = daemon.livedm("files", "P1", "S1", "particles")
    assert lines.returncode == 0 and sorted(lines.stdout.splitlines()) == sorted(tree.paths_by_datatype["particles"])
    gone, *kept = tree.paths_by_datatype["raw"]
    Path(gone).unlink()
    movies = daemon.livedm("files", "P1", "S1", "raw", env={"LIVEDM_TOKEN": viewer})  # a read: anyone may
    assert sorted(movies.stdout.splitlines()) == sorted(kept)
    assert movies.stderr.startswith("1 raw file(s) left out: their link leads nowhere") and gone in movies.stderr
    as_json = json.loads(daemon.livedm("files", "P1", "S1", "raw", "--json").stdout)
    assert sorted(as_json["raw"]) == sorted(kept) and as_json["missing"] == [gone]
    thumbs = daemon.livedm("files", "P1", "S1", "thumbnails")
    assert thumbs.returncode == 2 and "invalid choice" in thumbs.stderr
    unknown = daemon.livedm("files", "P1", "S9", "raw")
    assert unknown.returncode == 1 and "NotFound" in unknown.stderr


def test_a_delete_dry_run_needs_no_permission(daemon: Daemon, tmp_path: Path) -> None:
    tree = completed_session(daemon, tmp_path, exposures=2)
    viewer = {"LIVEDM_TOKEN": daemon.call("create_user", {"name": "viewer"})["token"]}
    dry = daemon.livedm("delete", "P1", "S1", "particles", "--dry-run", env=viewer)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would delete 2 files")
    refused = daemon.livedm("delete", "P1", "S1", "particles", "--yes", env=viewer)
    assert refused.returncode == 1 and "Forbidden" in refused.stderr and "livedm user allow NAME" in refused.stderr
    assert all(Path(p).exists() for p in tree.paths_by_datatype["particles"])


def test_json_and_local_anywhere_and_times_say_their_zone(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    daemon.call("create_project", ["p", str(tmp_path / "proj")])
    created = daemon.call("get_project", ["P1"])["created_at"]
    for argv in (["--json", "ls", "P1"], ["ls", "--json", "P1"], ["ls", "P1", "--json"]):
        assert json.loads(daemon.livedm(*argv).stdout)[0]["uid"] == "P1", argv
    utc = daemon.livedm("ls").stdout.splitlines()
    assert "CREATED (UTC)" in utc[0] and "MEASURED (UTC)" in utc[0]
    moment = datetime.fromisoformat(created.replace("Z", "+00:00"))
    assert moment.strftime("%Y-%m-%d %H:%M") in utc[1]
    tokyo = daemon.livedm("ls", "--local", env={"TZ": "Asia/Tokyo"}).stdout.splitlines()
    assert "CREATED (JST)" in tokyo[0] and "(UTC)" not in tokyo[0]
    assert (moment + timedelta(hours=9)).strftime("%Y-%m-%d %H:%M") in tokyo[1]
    daemon.call("create_user", {"name": "ivan"})  # an audit entry
    daemon.call("update_all_sessions_datatype_sizes", ["P1"])  # a job
    assert "WHEN (JST)" in daemon.livedm("--local", "audit", env={"TZ": "Asia/Tokyo"}).stdout.splitlines()[0]
    assert "WHEN (UTC)" in daemon.livedm("audit").stdout.splitlines()[0]
    assert "CREATED (UTC)" in daemon.livedm("jobs").stdout.splitlines()[0]
    assert "CREATED (UTC)" in daemon.livedm("user", "list").stdout.splitlines()[0]


def test_ls_into_a_pipe_closed_early_ends_quietly(daemon: Daemon, tmp_path: Path) -> None:
    """`livedm ls | head -n 2`: the reader goes while ls still writes. The pipe is cut to one page, so the
    table (60 rows of ~300 characters) cannot fit in it whatever the timing."""
    (tmp_path / "proj").mkdir()
    daemon.call("create_project", ["p", str(tmp_path / "proj")])
    batch = [{"jsonrpc": "2.0", "method": "create_live_session", "params": ["P1", "a long title " * 15], "id": n}
             for n in range(60)]
    request = urllib.request.Request(daemon.url + "/api", data=json.dumps(batch).encode(), headers={
        "Authorization": f"Bearer {daemon.token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert all("result" in reply for reply in json.loads(response.read()))
    env = {**os.environ, "LIVEDM_URL": daemon.url, "LIVEDM_TOKEN": daemon.token}
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
    ls = subprocess.Popen([str(BIN / "livedm"), "ls"], env=env, stdout=write_fd, stderr=subprocess.PIPE)
    os.close(write_fd)
    head = b""
    while head.count(b"\n") < 2:
        chunk = os.read(read_fd, 256)
        assert chunk, "ls ended before two lines"
        head += chunk
    os.close(read_fd)
    _, stderr = ls.communicate(timeout=60)
    assert head.startswith(b"UID")
    assert stderr == b""  # no BrokenPipeError trace
    assert ls.returncode in (-signal.SIGPIPE, 128 + signal.SIGPIPE)  # as a program ended by SIGPIPE (shell: 141)


def test_ls_searches_and_filters_on_the_server(daemon: Daemon, tmp_path: Path) -> None:
    for name in ("krios", "glacios"):
        (tmp_path / name).mkdir()
        daemon.call("create_project", [name.title(), str(tmp_path / name)])
    daemon.call("create_live_session", ["P1", "grid 1 apoferritin"])
    daemon.call("create_live_session", ["P1", "grid 2 (spike)"])
    daemon.call("create_live_session", ["P2", "grid 3 apoferritin"])
    daemon.call("start_session", ["P2", "S1"])
    found = daemon.livedm("ls", "--search", "APOFERRITIN")
    assert found.returncode == 0, found.stderr
    rows = [line.split()[0] for line in found.stdout.splitlines()[1:]]
    assert rows == ["P1", "S1", "P2", "S1"]
    running = json.loads(daemon.livedm("ls", "--json", "--search", "apoferritin", "--status", "running").stdout)
    assert [(p["uid"], [s["uid"] for s in p["sessions"]]) for p in running] == [("P2", ["S1"])]
    literal = json.loads(daemon.livedm("ls", "P1", "--search", "(spike)", "--json").stdout)
    assert [s["title"] for s in literal[0]["sessions"]] == ["grid 2 (spike)"]
    nothing = daemon.livedm("ls", "--category-status", "deleted")
    assert nothing.returncode == 0 and nothing.stdout.strip() == "Nothing matches."
    wrong = daemon.livedm("ls", "--status", "archived")
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr


def test_ls_shows_a_session_whose_directory_never_existed_as_never_measured_not_0_b(daemon: Daemon,
                                                                                    tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "proj", exposures=2)
    daemon.call("create_project", ["p", str(tree.project_dir)])
    daemon.call("create_live_session", ["P1", "measured"])  # S1: its directory is there
    daemon.call("create_live_session", ["P1", "not yet"])  # S2: none yet
    for session_uid in ("S1", "S2"):
        daemon.call("update_session_datatype_sizes", ["P1", session_uid])
    rows = {line.split()[0]: line.split() for line in daemon.livedm("ls", "P1").stdout.splitlines()[1:]}
    # a "-" per category, and for LAST PAUSED and COMPLETED (neither has happened to either session)
    assert rows["S2"][-1] == "never" and "B" not in rows["S2"] and rows["S2"].count("-") == 5 + 2
    assert rows["S1"].count("-") == 2 and "KiB" in rows["S1"]
