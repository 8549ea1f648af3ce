"""A realistic session tree measured through real livedmd processes, read back by `livedm rtpcli`
and by cryoSPARC's own CommandClient (cryosparc-tools 4.7)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryosparc.command import CommandClient, CommandError

from livedm.server.domain import DATATYPES
from testkit.daemon import Daemon
from testkit.sessiontree import build_session_tree


def rtpcli(daemon: Daemon, call: str) -> str:
    done = daemon.livedm("rtpcli", call)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_exact_bytes_per_datatype_through_rtpcli_and_cryosparc_tools(shared_daemon: Daemon, tmp_path: Path) -> None:
    daemon = shared_daemon
    tree1 = build_session_tree(tmp_path / "proj", "S1", exposures=6)
    tree2 = build_session_tree(tmp_path / "proj", "S2", exposures=3)
    p1 = json.loads(rtpcli(daemon, f"create_project(title='Apoferritin', project_dir='{tree1.project_dir}')"))["uid"]
    rtpcli(daemon, f"create_live_session(project_uid='{p1}', title='grid 1')")
    rtpcli(daemon, f"create_live_session('{p1}', 'grid 2')")
    total = rtpcli(daemon, f"update_session_datatype_sizes(project_uid='{p1}', session_uid='S1')")
    assert int(total) == tree1.total()
    for datatype in DATATYPES:
        size = rtpcli(daemon, f"get_datatype_size(project_uid = '{p1}', session_uid = 'S1', datatype = '{datatype}')")
        assert int(size) == tree1.bytes_by_datatype[datatype], datatype
    paths = json.loads(rtpcli(daemon, f"get_datatype_file_paths(project_uid='{p1}', session_uid='S1', datatype='raw')"))
    assert sorted(paths["raw"]) == sorted(tree1.paths_by_datatype["raw"])  # the movies, not the links

    cli = CommandClient(host="127.0.0.1", port=daemon.port, headers={"License-ID": daemon.token}, timeout=30)
    assert cli.update_session_datatype_sizes(project_uid=p1, session_uid="S2") == tree2.total()
    stats = cli.get_data_management_stats(p1)
    for datatype in DATATYPES:
        assert stats["S2"][datatype]["size"] == tree2.bytes_by_datatype[datatype]
        assert cli.get_datatype_size(p1, "S1", datatype) == tree1.bytes_by_datatype[datatype]
    files = cli.get_datatype_file_paths(project_uid=p1, session_uid="S2", datatype="particles")
    assert sorted(files["particles"]) == sorted(tree2.paths_by_datatype["particles"])
    project_files = cli.get_project_file_paths(p1)
    assert sorted(project_files["S1"]["metadata"]) == sorted(tree1.paths_by_datatype["metadata"])
    project = cli.get_project(p1)
    assert project["data_management"]["raw"]["size"] == tree1.bytes_by_datatype["raw"] + tree2.bytes_by_datatype["raw"]
    with pytest.raises(CommandError) as info:
        cli.get_datatype_size(p1, "S1", "movies")
    assert info.value.code == -32602


def error_of(call: Callable[[], object]) -> CommandError:
    with pytest.raises(CommandError) as info:
        call()
    return info.value


def test_cryosparc_tools_can_call_every_method(daemon: Daemon, tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "proj", exposures=2)
    extra = tree.project_dir / "gain" / "gain_ref.mrc"
    extra.parent.mkdir()
    extra.write_bytes(b"g" * 999)
    cli = CommandClient(host="127.0.0.1", port=daemon.port, headers={"License-ID": daemon.token}, timeout=30)
    calls = {
        "system.describe": lambda: cli.__getattribute__("system.describe")(),
        "whoami": lambda: cli.whoami(),
        "create_project": lambda: cli.create_project(title="p", project_dir=str(tree.project_dir)),
        "list_projects": lambda: cli.list_projects(),
        "get_overview": lambda: cli.get_overview(),
        "get_project": lambda: cli.get_project("P1"),
        "create_live_session": lambda: cli.create_live_session(project_uid="P1", title="s"),
        "list_sessions": lambda: cli.list_sessions("P1"),
        "get_session": lambda: cli.get_session("P1", "S1"),
        "start_session": lambda: cli.start_session("P1", "S1"),
        "pause_session": lambda: cli.pause_session("P1", "S1"),
        "scan_session": lambda: cli.scan_session("P1", "S1"),
        "register_files": lambda: cli.register_files("P1", "S1", "metadata", [str(extra)]),
        "get_datatype_file_paths": lambda: cli.get_datatype_file_paths("P1", "S1", "micrographs"),
        "get_datatype_size": lambda: cli.get_datatype_size("P1", "S1", "metadata"),
        "update_session_datatype_sizes": lambda: cli.update_session_datatype_sizes("P1", "S1"),
        "get_data_management_stats": lambda: cli.get_data_management_stats("P1"),
        "get_project_file_paths": lambda: cli.get_project_file_paths("P1"),
        "mark_session_completed": lambda: cli.mark_session_completed("P1", "S1"),
        "change_session_data_management_state": lambda: cli.change_session_data_management_state(
            project_uid="P1", session_uid="S1", datatype="particles", status="archiving"),
        "get_audit_log": lambda: cli.get_audit_log(project_uid="P1"),
        "create_user": lambda: cli.create_user(name="operator"),
        "list_users": lambda: cli.list_users(),
        "issue_token": lambda: cli.issue_token("operator"),
        "set_user_data_management_permission": lambda: cli.set_user_data_management_permission("operator", True),
        "revoke_token": lambda: cli.revoke_token(user="operator"),
        "set_user_role": lambda: cli.set_user_role(user="operator", role="admin"),
        "remove_user": lambda: cli.remove_user("operator"),
        "delete_live_datatype": lambda: cli.delete_live_datatype("P1", "S1", "particles", None, None, False),
        "update_all_sessions_datatype_sizes": lambda: cli.update_all_sessions_datatype_sizes("P1"),
        "get_job": lambda: cli.get_job("J1"),
        "get_job_log": lambda: error_of(lambda: cli.get_job_log("J1")),  # J1 deletes: only hook runs have a log
        "list_jobs": lambda: cli.list_jobs(),
        "discover": lambda: cli.discover(dry_run=True),
        "get_discovery_report": lambda: cli.get_discovery_report(),
        "get_all_sessions_in_project": lambda: cli.get_all_sessions_in_project("P1"),
        "trigger_live_data_management_script": lambda: error_of(
            lambda: cli.trigger_live_data_management_script("P1", "S1", "particles")),  # the hook is off here
    }
    assert set(calls) == set(cli._endpoints), "a method was added: call it here too"
    results = {name: call() for name, call in calls.items()}
    assert results["get_datatype_size"] == tree.bytes_by_datatype["metadata"] + 999
    assert results["mark_session_completed"]["status"] == "completed"
    assert results["discover"]["dry_run"] is True and results["get_discovery_report"]["job_id"] is None
    assert [s["session_uid"] for s in results["get_all_sessions_in_project"]] == ["S1"]
    assert results["update_session_datatype_sizes"] == tree.total() + 999
    assert results["change_session_data_management_state"]["particles"]["status"] == "archiving"
    assert results["revoke_token"]["revoked"] == 2
    assert results["set_user_role"]["role"] == "admin"
    assert results["remove_user"] == {"user": "operator", "removed": True, "tokens_revoked": 0}
    assert results["delete_live_datatype"]["state"] == "done"
    assert results["delete_live_datatype"]["result"]["bytes_freed"] == tree.bytes_by_datatype["particles"]
    assert "hook is disabled" in str(results["trigger_live_data_management_script"])
    assert "only hook runs have a log" in str(results["get_job_log"])


def test_restart_on_the_same_state_dir_keeps_everything(daemon: Daemon, tmp_path: Path) -> None:
    tree = build_session_tree(tmp_path / "proj", exposures=3)
    daemon.call("create_project", ["p", str(tree.project_dir)])
    daemon.call("create_live_session", ["P1", "s"])
    daemon.call("mark_session_completed", ["P1", "S1"])
    before = daemon.call("list_projects"), daemon.call("get_session", ["P1", "S1"])
    token = daemon.token
    assert daemon.stop() == 0
    daemon.start()
    assert daemon.token == token
    assert (daemon.call("list_projects"), daemon.call("get_session", ["P1", "S1"])) == before
    assert daemon.call("get_datatype_size", ["P1", "S1", "particles"]) == tree.bytes_by_datatype["particles"]
    (tmp_path / "proj2").mkdir()
    assert daemon.call("create_project", ["q", str(tmp_path / "proj2")])["uid"] == "P2"


def test_livedm_refresh_full_sees_a_file_rewritten_in_place(shared_daemon: Daemon, tmp_path: Path) -> None:
    """An incremental refresh reuses unchanged directories; `livedm refresh --full` stats every file."""
    daemon = shared_daemon
    tree = build_session_tree(tmp_path / "proj", "S1", exposures=3)
    project_uid = daemon.call("create_project", ["in place", str(tree.project_dir)])["uid"]
    daemon.call("create_live_session", [project_uid, "s"])
    daemon.call("update_session_datatype_sizes", [project_uid, "S1"])
    micrograph = Path(tree.paths_by_datatype["micrographs"][0])
    with open(micrograph, "ab") as fh:
        fh.write(b"a" * 1234)
    expected = tree.bytes_by_datatype["micrographs"] + 1234

    def refreshed(*flags: str) -> int:
        done = daemon.livedm("refresh", project_uid, "S1", *flags, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"S1": tree.total() + (1234 if flags else 0)}
        return int(daemon.call("get_datatype_size", [project_uid, "S1", "micrographs"]))

    assert refreshed() == expected - 1234
    assert refreshed("--full") == expected
    assert daemon.call("update_session_datatype_sizes", {"project_uid": project_uid, "session_uid": "S1",
                                                         "full": True}) == tree.total() + 1234


def test_a_daemon_killed_mid_measure_shows_no_category_calculating_after_restart(tmp_path: Path) -> None:
    """kill -9 while a refresh walks: the categories it set calculating must not stay so (they block marking
    and deleting) until the six-hour repair: with the embedded store no one else can be measuring at start."""
    daemon = Daemon(tmp_path / "state").spawn()  # starts while the files are made
    tree = build_session_tree(tmp_path / "proj", exposures=2)
    bulk = tree.session_path / "motioncorrected" / "bulk"
    bulk.mkdir()
    for i in range(30_000):
        (bulk / f"m{i:05d}.mrc").write_bytes(b"m")
    daemon.wait_ready()
    daemon.call("create_project", ["p", str(tree.project_dir)])
    daemon.call("create_live_session", ["P1", "s"])
    daemon.call("mark_session_completed", ["P1", "S1"])
    daemon.call("change_session_data_management_state", ["P1", "S1", "metadata", "archived"])
    def refresh() -> None:
        with contextlib.suppress(Exception):  # its daemon is killed under it
            daemon.call("update_session_datatype_sizes", ["P1", "S1", True], timeout_s=60)

    refreshing = threading.Thread(target=refresh, daemon=True)
    refreshing.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        categories = daemon.call("get_session", ["P1", "S1"])["data_management"]
        if categories["micrographs"]["status"] == "calculating":
            break
    else:
        pytest.fail("never saw the refresh calculating")
    assert daemon.process is not None
    os.kill(daemon.process.pid, signal.SIGKILL)
    daemon.process.wait()
    daemon.process = None
    refreshing.join(10)
    daemon.start()
    try:
        statuses = {dt: c["status"] for dt, c in daemon.call("get_session", ["P1", "S1"])["data_management"].items()}
        assert "calculating" not in statuses.values(), statuses
        assert statuses["metadata"] == "archived" and statuses["micrographs"] == "active", statuses
        daemon.call("update_session_datatype_sizes", ["P1", "S1", True], timeout_s=60)
        sizes = daemon.call("get_session", ["P1", "S1"])["data_management"]["micrographs"]
        assert sizes["file_count"] == 30_000 + len(tree.paths_by_datatype["micrographs"])
    finally:
        daemon.stop()
