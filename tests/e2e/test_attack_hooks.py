"""Attacks on the state-change hook against real livedmd processes (issue 8: the hook layer of item 1,
items 11 and 12, and the low ones about hook logs and grandchildren). Each performs the attack and
shows that nothing ran, nothing outside the hook log dir changed, and nothing is left running."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

from livedm.server.embedded import EmbeddedStore
from testkit.daemon import Daemon
from tests.support.daemon_sessions import (
    HOOK_ENABLE,
    HOOK_PATH,
    completed_session,
    finished_job,
    hook_daemon,
    hook_env,
    status_of,
)
from tests.support.hook_scripts import (
    OTHER,
    changeable,
    executable,
    marker_script,
    needs_root,
    open_dir,
    owned_by_other,
    private_dir,
    writable,
)
from tests.support.waiting import wait_until


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def live_session_members(session_id: int) -> list[int]:
    """Processes (zombies aside) in the session `session_id`, read from /proc without livedm's code."""
    members = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[3] == str(session_id) and fields[0] != "Z":
            members.append(int(entry))
    return members


def crafted_job(job_id: str, params: Any) -> dict[str, Any]:
    """A hook job document as a local attacker with write access to the database would insert it."""
    return {"_id": job_id, "id": job_id, "kind": "hook", "params": params, "state": "queued", "attempts": 0,
            "owner": None, "lease_until": 0.0, "not_before": 0.0, "progress": {}, "result": None, "error": None,
            "created_by": "admin", "created_at": "2026-01-01T00:00:00.000Z", "created_ts": 0.0,
            "started_at": None, "finished_at": None}


@pytest.fixture
def shared_store(tmp_path: Path) -> Iterator[str]:
    """A database the test can write to directly, as the attacker could before the store was locked."""
    store = EmbeddedStore(tmp_path / "db")
    yield store.start()
    store.stop()


# --- item 1, hook layer: the queue never names what runs ----------------------------------------

@pytest.mark.parametrize("enable", ["false", "true"])
def test_a_hook_job_written_into_the_database_runs_only_what_the_config_allows(
        tmp_path: Path, shared_store: str, enable: str) -> None:
    evil_marker, hook_marker, victim = tmp_path / "evil.ran", tmp_path / "hook.ran", tmp_path / "victim.txt"
    evil = marker_script(tmp_path / "evil.sh", evil_marker, f"echo owned >> {victim}\n")
    hook = marker_script(tmp_path / "hook.sh", hook_marker)
    victim.write_text("precious\n")
    daemon = Daemon(tmp_path / "state", env={"LIVEDM_MONGO_URI": shared_store, HOOK_ENABLE: enable,
                                             HOOK_PATH: str(hook)}).start()
    client: pymongo.MongoClient = pymongo.MongoClient(shared_store)
    try:
        good = {"project_uid": "P1", "session_uid": "S1", "datatype": "particles", "status": "archived"}
        attacks = {
            "J9001": {**good, "script": str(evil)},
            "J9002": {**good, "script": "/bin/sh"},
            "J9003": {**good, "project_uid": f"P1; {evil}"},
            "J9004": {**good, "argv": [str(evil)]},
            "J9005": {**good, "log_path": str(victim)},
            "J9006": {**good, "script": str(evil), "log_path": str(tmp_path / "state" / "hook-logs" / "x.log")},
        }
        client["livedm"]["jobs"].insert_many([crafted_job(job_id, p) for job_id, p in attacks.items()])
        jobs = {job_id: finished_job(daemon, job_id) for job_id in attacks}
    finally:
        client.close()
        daemon.stop()
    assert {job_id: job["state"] for job_id, job in jobs.items()} == dict.fromkeys(attacks, "failed")
    for job in jobs.values():
        assert job["error"].startswith("refused, nothing was run: "), job
    if enable == "false":
        assert all("the hook is disabled" in job["error"] for job in jobs.values())
    else:
        assert "hook_allowed_scripts" in jobs["J9001"]["error"] and "hook_allowed_scripts" in jobs["J9002"]["error"]
        assert "not a project uid" in jobs["J9003"]["error"] and "'argv'" in jobs["J9004"]["error"]
        assert "hook log dir" in jobs["J9005"]["error"]
    assert not evil_marker.exists() and not hook_marker.exists()
    assert victim.read_text() == "precious\n"


# --- low: script_log_path_abs and symlinks in the log dir ---------------------------------------

def test_trigger_refuses_scripts_not_allowed_and_logs_outside_the_log_dir(tmp_path: Path, embedded_uri: str) -> None:
    hook_marker, evil_marker, victim = tmp_path / "hook.ran", tmp_path / "evil.ran", tmp_path / "victim.txt"
    victim.write_text("precious\n")
    evil = marker_script(tmp_path / "evil.sh", evil_marker)
    allowed = marker_script(tmp_path / "allowed.sh", tmp_path / "allowed.ran")
    daemon = hook_daemon(tmp_path, marker_script(tmp_path / "hook.sh", hook_marker), store=embedded_uri,
                         LIVEDM_HOOK_ALLOWED_SCRIPTS=str(allowed))
    try:
        completed_session(daemon, tmp_path, exposures=1)
        logs = daemon.state_dir / "hook-logs"
        logs.mkdir(exist_ok=True)
        (logs / "planted.log").symlink_to(victim)
        base = {"project_uid": "P1", "session_uid": "S1", "datatype": "metadata"}
        refusals = [
            ({"script_location": str(evil)}, -32002, "hook_allowed_scripts"),
            ({"script_location": "/bin/sh"}, -32002, "hook_allowed_scripts"),
            ({"script_location": "evil.sh"}, -32602, "absolute path"),
            ({"script_log_path_abs": str(victim)}, -32002, "hook_log_dir"),
            ({"script_log_path_abs": str(logs / ".." / "admin.token")}, -32002, "hook_log_dir"),
            ({"script_log_path_abs": str(logs)}, -32002, "hook_log_dir"),
            ({"script_log_path_abs": "hook.log"}, -32602, "absolute path"),
            ({"script_log_path_abs": str(logs / "planted.log")}, -32002, "symbolic link"),
            ({"script_location": str(allowed), "script_log_path_abs": "/etc/x.log"}, -32002, "hook_log_dir"),
        ]
        for override, code, words in refusals:
            error = daemon.rpc("trigger_live_data_management_script", {**base, **override})["error"]
            assert error["code"] == code and words in error["message"], (override, error)
        assert daemon.call("list_jobs", {"kind": "hook"}) == []
        ok = daemon.call("trigger_live_data_management_script", {
            **base, "script_location": str(allowed), "script_log_path_abs": str(logs / "custom.log")})
        assert finished_job(daemon, ok)["state"] == "done"
    finally:
        daemon.stop()
    assert (tmp_path / "allowed.ran").read_text() == "P1 S1 metadata active\n"
    assert "allowed.sh P1 S1 metadata active" in (logs / "custom.log").read_text()
    assert not evil_marker.exists() and not hook_marker.exists()
    assert victim.read_text() == "precious\n"


def test_a_symlink_planted_as_a_sessions_hook_log_is_not_followed(tmp_path: Path, embedded_uri: str) -> None:
    hook_marker, victim = tmp_path / "hook.ran", tmp_path / "victim.txt"
    victim.write_text("precious\n")
    daemon = hook_daemon(tmp_path, marker_script(tmp_path / "hook.sh", hook_marker), store=embedded_uri)
    try:
        completed_session(daemon, tmp_path, exposures=1)
        logs = daemon.state_dir / "hook-logs"
        logs.mkdir(exist_ok=True)
        for number in (1, 2, 3):  # the run's log, named by its job (the first jobs of this daemon)
            (logs / f"P1_S1_particles_J{number}.log").symlink_to(victim)
        daemon.call("change_session_data_management_state", ["P1", "S1", "particles", "archiving"])
        [job] = wait_until(lambda: [j for j in daemon.call("list_jobs", {"kind": "hook"})
                                    if j["state"] in ("done", "failed")], what="the hook job")
    finally:
        daemon.stop()
    assert job["state"] == "failed" and "is a symbolic link" in job["error"], job
    assert victim.read_text() == "precious\n"
    assert not hook_marker.exists()
    assert (logs / f"P1_S1_particles_{job['id']}.log").is_symlink()


# --- medium: a hook script another user could change (OpenSSH's StrictModes) ---------------------

@needs_root
def test_a_hook_script_another_user_could_change_is_refused_and_runs_nothing(tmp_path: Path,
                                                                              shared_store: str) -> None:
    hooks, opened = private_dir(tmp_path / "hooks"), open_dir(tmp_path / "open")
    under_tmp = Path(tempfile.mkdtemp(prefix="livedm-hook-", dir="/tmp"))  # ours, below /tmp's sticky bit
    scripts = {"nobodys": hooks / "nobodys.sh", "mode-0777": hooks / "mode-0777.sh", "open-dir": opened / "hook.sh",
               "good": hooks / "good.sh", "under-tmp": under_tmp / "hook.sh"}
    markers = {name: tmp_path / f"{name}.ran" for name in scripts}
    for name, script in scripts.items():
        marker_script(script, markers[name])
    os.chown(scripts["nobodys"], OTHER, OTHER)
    scripts["mode-0777"].chmod(0o777)
    refusals = {"nobodys": changeable(scripts["nobodys"], owned_by_other(scripts["nobodys"])),
                "mode-0777": changeable(scripts["mode-0777"], writable(scripts["mode-0777"], 0o777)),
                "open-dir": changeable(scripts["open-dir"], writable(opened, 0o777, kind="directory"))}
    allowed = ":".join(str(scripts[name]) for name in ("mode-0777", "open-dir", "good", "under-tmp"))
    daemon = Daemon(tmp_path / "state", env={"LIVEDM_MONGO_URI": shared_store, HOOK_ENABLE: "true",
                                             HOOK_PATH: str(scripts["nobodys"]),
                                             "LIVEDM_HOOK_ALLOWED_SCRIPTS": allowed}).start()
    client: pymongo.MongoClient = pymongo.MongoClient(shared_store)
    try:
        completed_session(daemon, tmp_path, exposures=1)
        daemon.call("change_session_data_management_state", ["P1", "S1", "particles", "archiving"])  # hook_path
        base = {"project_uid": "P1", "session_uid": "S1", "datatype": "particles"}
        triggered = {name: daemon.rpc("trigger_live_data_management_script",
                               {**base, "script_location": str(scripts[name])}) for name in scripts}
        crafted = {"J9201": "mode-0777", "J9202": "open-dir"}  # overrides that never passed a trigger
        client["livedm"]["jobs"].insert_many([crafted_job(job_id, {**base, "status": "archiving",
                                                                    "script": str(scripts[name])})
                                              for job_id, name in crafted.items()])
        jobs = wait_until(lambda: len(js := daemon.call("list_jobs", {"kind": "hook"})) == 5 and
                          all(j["state"] in ("done", "failed") for j in js) and js, what="the five hook runs")
    finally:
        client.close()
        daemon.stop()
        shutil.rmtree(under_tmp)
    assert {name: reply.get("error", {}).get("code") for name, reply in triggered.items()} == {
        "nobodys": -32002, "mode-0777": -32002, "open-dir": -32002, "good": None, "under-tmp": None}
    assert {name: triggered[name]["error"]["message"] for name in refusals} == refusals
    by_script = {j["params"].get("script", str(scripts["nobodys"])): j for j in jobs}
    assert {name: (by_script[str(script)]["state"], by_script[str(script)]["error"])
            for name, script in scripts.items()} == {
        "nobodys": ("failed", f"refused, nothing was run: {refusals['nobodys']}"),
        "mode-0777": ("failed", f"refused, nothing was run: {refusals['mode-0777']}"),
        "open-dir": ("failed", f"refused, nothing was run: {refusals['open-dir']}"),
        "good": ("done", None), "under-tmp": ("done", None)}
    assert {name: marker.exists() and marker.read_text() for name, marker in markers.items()} == {
        "nobodys": False, "mode-0777": False, "open-dir": False,
        "good": "P1 S1 particles archiving\n", "under-tmp": "P1 S1 particles archiving\n"}
    log = "".join(p.read_text() for p in (daemon.state_dir / "hook-logs").glob("P1_S1_particles_J*.log"))
    assert sorted(line for line in log.splitlines() if "refused" in line) == sorted(
        f"=== refused, nothing was run: {refusal}" for refusal in refusals.values())


# --- item 11: the hook's environment and token --------------------------------------------------

def notify_socket() -> tuple[socket.socket, str]:
    """A datagram socket for NOTIFY_SOCKET (livedmd tells systemd it is ready through it)."""
    path = os.path.join(tempfile.mkdtemp(prefix="ldm-"), "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    return sock, path


def test_the_hook_sees_only_the_allow_listed_environment(tmp_path: Path) -> None:
    dump = tmp_path / "environment.json"
    script = executable(tmp_path / "dump-env.py", f"#!{sys.executable}\nimport json, os\n"
                        f"open({str(dump)!r}, 'w').write(json.dumps(dict(os.environ)))\n")
    sock, notify_path = notify_socket()
    daemon = Daemon(tmp_path / "state")
    kept = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8", "LC_TIME": "C.UTF-8", "TZ": "UTC",
            "USER": "livedm", "LOGNAME": "livedm", "CRYOSPARC_MASTER_HOSTNAME": "em-master",
            "LIVEDM_ARCHIVE_ROOT": str(tmp_path / "archive")}
    secrets = {"LIVEDM_SECRET_TEST": "1", "NOTIFY_SOCKET": notify_path, "AWS_SECRET_ACCESS_KEY": "k",
               "LIVEDM_TOKEN_FILE": str(daemon.token_file), "PYTHONPATH": str(tmp_path), "LD_PRELOAD": ""}
    daemon.env = {**kept, **secrets, "LIVEDM_DATA_ROOTS": str(tmp_path), HOOK_ENABLE: "true", HOOK_PATH: str(script)}
    daemon.start()
    try:
        completed_session(daemon, tmp_path, exposures=1)
        job_id = daemon.call("trigger_live_data_management_script", ["P1", "S1", "metadata"])
        assert finished_job(daemon, job_id)["state"] == "done"
    finally:
        daemon.stop()
        sock.close()
        shutil.rmtree(os.path.dirname(notify_path))
    environment = json.loads(dump.read_text())
    assert set(environment) == {*kept, "LIVEDM_URL", "LIVEDM_TOKEN"}
    assert {k: environment[k] for k in kept if k != "PATH"} == {k: v for k, v in kept.items() if k != "PATH"}
    assert environment["PATH"] == f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    assert environment["LIVEDM_URL"] == daemon.url and environment["LIVEDM_TOKEN"] != daemon.token


def test_the_hook_token_may_change_only_its_category_and_dies_with_the_run(tmp_path: Path,
                                                                           embedded_uri: str) -> None:
    tokens, results = tmp_path / "tokens", tmp_path / "results"
    script = marker_script(tmp_path / "hook.sh", tmp_path / "hook.ran", (
        f"echo \"$LIVEDM_TOKEN\" >> {tokens}\n"
        "[ \"$4\" = archiving ] || exit 0\n"
        "livedm rtpcli \"delete_live_datatype(project_uid='P1', session_uid='S1', datatype='particles', "
        "asynchronous=False)\"\n"
        f"echo \"delete=$?\" >> {results}\n"
        "livedm rtpcli \"change_session_data_management_state('P1', 'S1', 'metadata', 'archived')\"\n"
        f"echo \"other=$?\" >> {results}\n"
        "livedm rtpcli \"issue_token('admin')\"\n"
        f"echo \"admin=$?\" >> {results}\n"
        "livedm rtpcli \"change_session_data_management_state('P1', 'S1', '$3', 'archived')\"\n"
        f"echo \"own=$?\" >> {results}\n"))
    daemon = hook_daemon(tmp_path, script, store=embedded_uri)
    try:
        tree = completed_session(daemon, tmp_path, exposures=1)
        daemon.call("change_session_data_management_state", ["P1", "S1", "micrographs", "archiving"])
        wait_until(lambda: status_of(daemon, "micrographs") == "archived", what="the hook's own change")
        wait_until(lambda: len(js := daemon.call("list_jobs", {"kind": "hook"})) == 2 and
                   all(j["state"] == "done" for j in js), what="both hook runs")
        assert results.read_text().split() == ["delete=1", "other=1", "admin=1", "own=0"]
        assert {k: status_of(daemon, k) for k in ("particles", "metadata")} == {"particles": "active",
                                                                                "metadata": "active"}
        assert all(Path(p).exists() for p in tree.paths_by_datatype["particles"])
        hook_tokens = tokens.read_text().split()
        assert len(hook_tokens) == 2
        for token in hook_tokens:  # gone once its run ended (after the auth cache's few seconds)
            wait_until(lambda t=token: daemon.rpc("whoami", [], token=t).get("error", {}).get("code") == -32004,
                       timeout_s=15, what="the hook token to be revoked")
    finally:
        daemon.stop()


# --- item 12: the log cap -----------------------------------------------------------------------

def test_a_flooding_hook_keeps_head_and_tail_within_the_cap(tmp_path: Path, embedded_uri: str) -> None:
    cap = 65536
    script = executable(tmp_path / "flood.sh",
                        "#!/bin/sh\necho HEAD-MARK\nhead -c 50000000 /dev/zero | tr '\\0' x\necho\necho TAIL-MARK\n")
    daemon = hook_daemon(tmp_path, script, store=embedded_uri, LIVEDM_HOOK_LOG_MAX_BYTES=str(cap))
    try:
        completed_session(daemon, tmp_path, exposures=1)
        job = finished_job(daemon, daemon.call("trigger_live_data_management_script", ["P1", "S1", "raw"]), 120)
        runs = [e for e in daemon.call("get_audit_log", {}) if e["action"] == "hook_ran"]
    finally:
        daemon.stop()
    output_bytes = len("HEAD-MARK\n") + 50_000_000 + len("\nTAIL-MARK\n")
    assert job["state"] == "done" and job["result"]["exit_status"] == 0
    assert job["result"]["log_bytes_cut"] == output_bytes - cap
    assert [(e["exit_status"], e["timed_out"]) for e in runs] == [(0, False)]
    log = (daemon.state_dir / "hook-logs" / f"P1_S1_raw_{job['id']}.log").read_bytes()
    assert cap < len(log) <= cap + 400
    header, rest = log.split(b"\n", 1)
    assert header.startswith(b"=== ") and f"job {job['id']} attempt 1: {script} P1 S1 raw active".encode() in header
    kept = re.fullmatch(rb"HEAD-MARK\n(x+)\n=== \[(\d+) bytes of output cut here: [^\n]*\]\n(x+)\nTAIL-MARK\n"
                        rb"=== exit status 0 after [0-9.]+ s\n", rest)
    assert kept is not None, rest[:200] + b" ... " + rest[-200:]
    assert len(kept[1]) + len(kept[3]) == cap - len("HEAD-MARK\n") - len("\nTAIL-MARK\n")
    assert int(kept[2]) == output_bytes - cap
    assert sum(f.stat().st_size for f in daemon.state_dir.rglob("*") if f.is_file()) < 20_000_000


# --- low: a double-forked grandchild ------------------------------------------------------------

def grandchild_script(tmp_path: Path, session_file: Path) -> Path:
    """Records its session id (its pid: it leads its own session), double-forks a sleeper, then hangs."""
    return executable(tmp_path / "double-fork.sh",
                      f"#!/bin/sh\necho $$ > {session_file}.tmp && mv {session_file}.tmp {session_file}\n"
                      "(sleep 300 &)\nsleep 300\n")


def test_a_double_forked_grandchild_dies_with_the_timed_out_hook(tmp_path: Path, embedded_uri: str) -> None:
    session_file = tmp_path / "session"
    daemon = hook_daemon(tmp_path, grandchild_script(tmp_path, session_file), store=embedded_uri,
                         LIVEDM_HOOK_TIMEOUT_S="3")
    try:
        completed_session(daemon, tmp_path, exposures=1)
        job_id = daemon.call("trigger_live_data_management_script", ["P1", "S1", "metadata"])
        wait_until(session_file.exists, what="the hook to start")
        session_id = int(session_file.read_text())
        members = wait_until(lambda: len(m := live_session_members(session_id)) == 3 and m,
                             what="the shell, its sleep and the orphaned grandchild")
        job = finished_job(daemon, job_id)
        assert job["state"] == "failed" and "timed out" in job["error"]
        assert live_session_members(session_id) == []
        assert not [pid for pid in members if _alive(pid)]
    finally:
        daemon.stop()


def test_a_hook_running_at_shutdown_leaves_no_process_behind(tmp_path: Path) -> None:
    session_file = tmp_path / "session"
    script = grandchild_script(tmp_path, session_file)
    daemon = Daemon(tmp_path / "state", env=hook_env(script), args=["--drain-s", "1"]).start()
    try:
        completed_session(daemon, tmp_path, exposures=1)
        daemon.call("trigger_live_data_management_script", ["P1", "S1", "metadata"])
        wait_until(session_file.exists, what="the hook to start")
        session_id = int(session_file.read_text())
        wait_until(lambda: len(live_session_members(session_id)) == 3, what="the hook's three processes")
    finally:
        assert daemon.stop(signal.SIGTERM) == 0
    deadline = time.monotonic() + 5
    while live_session_members(session_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_session_members(session_id) == []
