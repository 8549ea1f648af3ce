"""Running on a lab server: data roots, /metrics, request and job logs (plain and JSON), no tokens in logs."""

from __future__ import annotations

import json
import re
import signal
import socket
import urllib.request
from pathlib import Path

from testkit.daemon import Daemon
from testkit.sessiontree import build_session_tree
from tests.support.waiting import wait_until


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{{{re.escape(wanted)}}} (\S+)$" if labels else rf"^{re.escape(name)} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{name} {labels} not in /metrics"
    return float(found.group(1))


def test_metrics_count_calls_errors_jobs_and_bytes(daemon: Daemon, tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "proj", exposures=2)
    daemon.call("create_project", ["p", str(tree.project_dir)])
    daemon.call("create_live_session", ["P1", "s"])
    daemon.call("mark_session_completed", ["P1", "S1"])
    for _ in range(3):
        daemon.call("get_datatype_size", ["P1", "S1", "raw"])
    daemon.livedm("rtpcli", "get_datatype_size('P1', 'S1', 'movies')")
    job = daemon.call("delete_live_datatype", {"project_uid": "P1", "session_uid": "S1", "datatype": "particles",
                                               "asynchronous": False})
    assert job["state"] == "done"
    text = urllib.request.urlopen(daemon.url + "/metrics", timeout=10).read().decode()
    assert metric(text, "livedm_requests_total", method="get_datatype_size", outcome="ok") == 3
    assert metric(text, "livedm_requests_total", method="get_datatype_size", outcome="-32602") == 1
    assert metric(text, "livedm_errors_total", code="-32602") == 1
    assert metric(text, "livedm_request_seconds_count", method="get_datatype_size") == 4
    assert metric(text, "livedm_jobs", kind="delete", state="done") == 1
    assert metric(text, "livedm_jobs", kind="hook", state="queued") == 0
    assert metric(text, "livedm_queue_oldest_age_seconds") == 0
    assert metric(text, "livedm_category_bytes", datatype="micrographs") == tree.bytes_by_datatype["micrographs"]
    assert metric(text, "livedm_category_bytes", datatype="particles") == 0


def test_one_log_line_per_request_and_job_and_never_a_token(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", env={"LIVEDM_LOG_FORMAT": "json"}).start()
    try:
        tree = build_session_tree(tmp_path / "proj", exposures=1)
        daemon.call("create_project", ["p", str(tree.project_dir)])
        daemon.call("create_live_session", ["P1", "s"])
        daemon.livedm("rtpcli", "list_projects()", env={"LIVEDM_TOKEN": "ldm_" + "x" * 43})  # a wrong token
        daemon.call("update_all_sessions_datatype_sizes", ["P1"])
        wait_until(lambda: "done" in daemon.log(), what="the job's log line")
        token = daemon.token
    finally:
        daemon.stop()
    lines = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    requests = [e["message"] for e in lines if e["logger"] == "livedm.requests"]
    assert any("user=admin" in m and "methods=create_project" in m for m in requests)
    assert any("user=-" in m and "errors=-32004" in m for m in requests)
    assert len(requests) == 4  # exactly one line per request
    assert any(e["logger"] == "livedm.server.worker" and "refresh_sizes" in e["message"] for e in lines)
    assert any(e["level"] == "info" and e["message"].startswith("data roots: ") for e in lines)
    raw = daemon.log()
    assert token not in raw and "ldm_xxxx" not in raw


def test_data_roots_bound_projects_and_deletions(tmp_path: Path) -> None:
    inside, outside = tmp_path / "data", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    daemon = Daemon(tmp_path / "state", env={"LIVEDM_DATA_ROOTS": str(inside)}).start()
    try:
        refused = daemon.livedm("rtpcli", f"create_project(title='x', project_dir='{outside}')")
        assert refused.returncode == 1 and "Forbidden" in refused.stderr and "data roots" in refused.stderr
        (inside / "link").symlink_to(outside)
        sneaky = daemon.livedm("rtpcli", f"create_project(title='x', project_dir='{inside / 'link'}')")
        assert sneaky.returncode == 1 and "is a symlink" in sneaky.stderr
        (inside / "hop").symlink_to(outside)  # a link higher up the path is resolved against the roots
        (outside / "proj").mkdir()
        hop = daemon.livedm("rtpcli", f"create_project(title='x', project_dir='{inside / 'hop' / 'proj'}')")
        assert hop.returncode == 1 and "Forbidden" in hop.stderr and "data roots" in hop.stderr
        tree = build_session_tree(inside / "proj", exposures=1)
        daemon.call("create_project", ["p", str(tree.project_dir)])
        assert "data roots: " + str(inside) in daemon.log()
    finally:
        daemon.stop()


def test_systemd_hears_ready_once_serving_and_stopping_on_sigterm(tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        daemon = Daemon(tmp_path / "state", env={"NOTIFY_SOCKET": address})
        daemon.start()
        assert sock.recv(100) == b"READY=1"
        health = json.loads(urllib.request.urlopen(daemon.url + "/healthz", timeout=5).read())
        assert health["status"] == "ok" and health["workers"]["alive"] == 2
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        assert sock.recv(100) == b"STOPPING=1"
        assert daemon.process.wait(30) == 0
        daemon.process = None


def test_backup_and_restore_round_trip(daemon: Daemon, tmp_path: Path) -> None:
    fresh = Daemon(tmp_path / "fresh-state").spawn()  # a new server with an empty database, starting meanwhile
    try:
        tree = build_session_tree(tmp_path / "proj", exposures=2)
        daemon.call("create_project", ["p", str(tree.project_dir)])
        daemon.call("create_live_session", ["P1", "s"])
        daemon.call("mark_session_completed", ["P1", "S1"])
        daemon.call("change_session_data_management_state", ["P1", "S1", "raw", "archived"])
        alice = daemon.call("create_user", {"name": "alice"})
        backup_file = tmp_path / "livedm.ndjson"
        as_user = daemon.livedm("admin", "backup", str(backup_file), env={"LIVEDM_TOKEN": alice["token"]})
        assert as_user.returncode == 1 and "need an admin" in as_user.stderr and not backup_file.exists()
        made = daemon.livedm("admin", "backup", str(backup_file))
        assert made.returncode == 0 and made.stdout.startswith("backed up "), made.stderr
        before = {m: daemon.call(m, p) for m, p in [("get_overview", []), ("list_users", []),
                                                   ("get_audit_log", {}), ("get_project_file_paths", ["P1"])]}
        before["get_overview"].pop("as_of")

        fresh.wait_ready()
        refused = fresh.livedm("admin", "restore", str(backup_file))
        assert refused.returncode == 2 and "--yes" in refused.stderr
        not_admin = fresh.livedm("admin", "restore", str(backup_file), "--yes",
                                 env={"LIVEDM_TOKEN": "ldm_" + "n" * 43})
        assert not_admin.returncode == 1 and "not valid" in not_admin.stderr
        broken = tmp_path / "broken.ndjson"
        broken.write_text(backup_file.read_text().splitlines()[0] + "\n{not json\n")
        assert fresh.livedm("admin", "restore", str(broken), "--yes").returncode == 1
        assert fresh.call("list_projects") == []  # a bad file changed nothing
        done = fresh.livedm("admin", "restore", str(backup_file), "--yes")
        assert done.returncode == 0 and "restored" in done.stdout, done.stderr
        old_admin = Daemon(fresh.state_dir, port=fresh.port)  # the backup's tokens are in force now
        old_admin.token_file = daemon.token_file
        after = {m: old_admin.call(m, p) for m, p in [("get_overview", []), ("list_users", []),
                                                     ("get_audit_log", {}), ("get_project_file_paths", ["P1"])]}
        after["get_overview"].pop("as_of")
        assert after == before
        as_alice = fresh.livedm("whoami", env={"LIVEDM_TOKEN": alice["token"]})
        assert as_alice.returncode == 0 and as_alice.stdout.startswith("alice")
        (tmp_path / "proj2").mkdir()
        assert old_admin.call("create_project", ["q", str(tmp_path / "proj2")])["uid"] == "P2"  # counters too
    finally:
        fresh.stop()
