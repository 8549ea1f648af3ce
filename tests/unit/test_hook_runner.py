"""The hook job in-process, on mongomock: a job document from the queue runs only what livedmd's own
configuration allows, its log is confined and capped, its environment and token are narrow."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from livedm.server.audit import Audit
from livedm.server.auth import token_hash
from livedm.server.config import Config
from livedm.server.hooks import (
    HOOK_USER,
    TOKEN_MARGIN_S,
    CappedLog,
    HookFailed,
    Hooks,
    hook_environment,
    hook_params,
)
from livedm.server.jobs import JobRun, Queue
from livedm.server.store import Store
from tests.conftest import make_config

GOOD = {"project_uid": "P1", "session_uid": "S1", "datatype": "particles", "status": "archiving"}


def marker_script(path: Path, marker: Path, body: str = "") -> Path:
    path.write_text(f"#!/bin/sh\necho \"$@\" >> {marker}\n{body}")
    path.chmod(0o755)
    return path


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    """The configured hook, an allowed override, an attacker's script, and the marker files they write."""
    paths = {name: tmp_path / f"{name}.ran" for name in ("hook", "allowed", "evil")}
    paths["hook_script"] = marker_script(tmp_path / "hook.sh", paths["hook"])
    paths["allowed_script"] = marker_script(tmp_path / "allowed.sh", paths["allowed"])
    paths["evil_script"] = marker_script(tmp_path / "evil.sh", paths["evil"])
    return paths


def hooks_for(store: Store, tmp_path: Path, site: dict[str, Path], enable: bool = True, **flags: Any) -> Hooks:
    config: Config = make_config(tmp_path / "state", hook_enable="true" if enable else "false",
                                 hook_path=str(site["hook_script"]),
                                 hook_allowed_scripts=str(site["allowed_script"]), **flags)
    return Hooks(config, store, Queue(store, lease_s=30, max_attempts=1), Audit(store))


def run_crafted(hooks: Hooks, params: Any) -> dict[str, Any]:
    """Write a hook job document straight into the jobs collection, as a local attacker with database
    access would, claim it like a worker and run it."""
    hooks.store.insert_job({"id": "J900", "kind": "hook", "params": params, "state": "queued", "attempts": 0,
                            "owner": None, "lease_until": 0.0, "not_before": 0.0, "progress": {}, "result": None,
                            "error": None, "created_by": "mallory", "created_at": "2026-01-01T00:00:00Z",
                            "created_ts": 0.0, "started_at": None, "finished_at": None})
    job = hooks.queue.claim("test-worker")
    assert job is not None and job["id"] == "J900"
    return hooks.run(JobRun(job, hooks.queue))


def nothing_ran(site: dict[str, Path]) -> bool:
    return not any(site[name].exists() for name in ("hook", "allowed", "evil"))


# --- finding 1: the queue never names what runs ---------------------------------------------------

@pytest.mark.parametrize("enable", [False, True])
def test_a_crafted_job_naming_its_own_script_runs_nothing(mock_store: Store, tmp_path: Path,
                                                          site: dict[str, Path], enable: bool) -> None:
    hooks = hooks_for(mock_store, tmp_path, site, enable=enable)
    with pytest.raises(HookFailed) as failed:
        run_crafted(hooks, {**GOOD, "script": str(site["evil_script"])})
    expected = "hook_allowed_scripts" if enable else "the hook is disabled"
    assert str(failed.value).startswith("refused, nothing was run: ") and expected in str(failed.value)
    assert nothing_ran(site)
    assert mock_store.db.tokens.count_documents({"user": HOOK_USER}) == 0


def test_with_hooks_disabled_even_the_configured_script_does_not_run(mock_store: Store, tmp_path: Path,
                                                                      site: dict[str, Path]) -> None:
    hooks = hooks_for(mock_store, tmp_path, site, enable=False)
    with pytest.raises(HookFailed, match="the hook is disabled"):
        run_crafted(hooks, dict(GOOD))
    assert nothing_ran(site)


def test_a_job_runs_the_configured_script_or_an_allowed_one(mock_store: Store, tmp_path: Path,
                                                            site: dict[str, Path]) -> None:
    hooks = hooks_for(mock_store, tmp_path, site)
    assert run_crafted(hooks, dict(GOOD))["exit_status"] == 0
    assert site["hook"].read_text() == "P1 S1 particles archiving\n"
    mock_store.db.jobs.delete_many({})
    assert run_crafted(hooks, {**GOOD, "script": str(site["allowed_script"])})["exit_status"] == 0
    assert site["allowed"].read_text() == "P1 S1 particles archiving\n"
    assert not site["evil"].exists()


@pytest.mark.parametrize("params", [
    {**GOOD, "project_uid": "P1; touch /tmp/x"},
    {**GOOD, "session_uid": "../S1"},
    {**GOOD, "datatype": "everything"},
    {**GOOD, "status": "--help"},
    {**GOOD, "status": 3},
    {**GOOD, "project_uid": ["P1"]},
    {**GOOD, "argv": ["/bin/sh", "-c", "touch /tmp/x"]},
    {**GOOD, "script": 7},
    {k: v for k, v in GOOD.items() if k != "datatype"},
    ["P1", "S1", "particles", "archiving"],
])
def test_a_malformed_job_document_fails_and_runs_nothing(mock_store: Store, tmp_path: Path,
                                                         site: dict[str, Path], params: Any) -> None:
    hooks = hooks_for(mock_store, tmp_path, site)
    with pytest.raises(HookFailed, match=r"^refused, nothing was run: "):
        run_crafted(hooks, params)
    assert nothing_ran(site)
    assert not (tmp_path / "state" / "hook-logs").exists()


def test_hook_params_accept_exactly_the_api_shapes() -> None:
    assert hook_params({**GOOD, "script": "/a", "log_path": "/b"}).script == "/a"
    assert hook_params(dict(GOOD)).log_path is None


# --- finding 2: the log stays a plain file in the log dir -----------------------------------------

def test_a_job_naming_a_log_outside_the_log_dir_is_refused(mock_store: Store, tmp_path: Path,
                                                           site: dict[str, Path]) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    hooks = hooks_for(mock_store, tmp_path, site)
    for log_path in (str(victim), str(hooks.config.hook_logs / ".." / "victim.txt"), "relative.log"):
        mock_store.db.jobs.delete_many({})
        with pytest.raises(HookFailed, match="refused, nothing was run"):
            run_crafted(hooks, {**GOOD, "log_path": log_path})
    assert victim.read_text() == "precious\n"
    assert nothing_ran(site)


def test_a_symlink_planted_as_the_log_is_refused_not_followed(mock_store: Store, tmp_path: Path,
                                                              site: dict[str, Path]) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    hooks = hooks_for(mock_store, tmp_path, site)
    hooks.config.hook_logs.mkdir(parents=True)
    (hooks.config.hook_logs / "P1_S1.log").symlink_to(victim)
    with pytest.raises(HookFailed, match="is a symbolic link"):
        run_crafted(hooks, dict(GOOD))
    assert victim.read_text() == "precious\n"
    assert nothing_ran(site)


def test_logs_are_created_private(mock_store: Store, tmp_path: Path, site: dict[str, Path]) -> None:
    hooks = hooks_for(mock_store, tmp_path, site)
    run_crafted(hooks, dict(GOOD))
    assert (hooks.config.hook_logs / "P1_S1.log").stat().st_mode & 0o777 == 0o600


# --- finding 3: an allow-listed environment -------------------------------------------------------

def test_the_environment_is_built_from_the_allow_list_only() -> None:
    environ = {"PATH": "/usr/bin", "HOME": "/home/svc", "LANG": "C.UTF-8", "LC_TIME": "en_GB.UTF-8",
               "TZ": "UTC", "USER": "svc", "LOGNAME": "svc", "CRYOSPARC_MASTER_HOSTNAME": "em1",
               "LIVEDM_MONGO_URI": "mongodb://u:secret@db/", "NOTIFY_SOCKET": "/run/systemd/notify",
               "LIVEDM_TOKEN_FILE": "/state/admin.token", "LIVEDM_TOKEN": "the-admins", "AWS_SECRET_ACCESS_KEY": "x",
               "LD_PRELOAD": "/tmp/evil.so", "PYTHONPATH": "/tmp"}
    env = hook_environment(environ, "http://127.0.0.1:39070", "ldm_hook")
    assert set(env) == {"PATH", "HOME", "LANG", "LC_TIME", "TZ", "USER", "LOGNAME", "CRYOSPARC_MASTER_HOSTNAME",
                        "LIVEDM_URL", "LIVEDM_TOKEN"}
    assert env["LIVEDM_TOKEN"] == "ldm_hook" and env["LIVEDM_URL"] == "http://127.0.0.1:39070"
    assert env["PATH"].endswith(":/usr/bin") and os.path.isfile(env["PATH"].split(":")[0] + "/livedm")


# --- finding 4: a scoped token that lives as long as the run --------------------------------------

def test_the_hook_token_is_scoped_to_its_category_and_gone_after_the_run(mock_store: Store, tmp_path: Path,
                                                                         site: dict[str, Path]) -> None:
    token_file, go = tmp_path / "token", tmp_path / "go"
    marker_script(site["hook_script"], site["hook"],
                  f"echo \"$LIVEDM_TOKEN\" > {token_file}.tmp && mv {token_file}.tmp {token_file}\n"
                  f"i=0; while [ ! -e {go} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done\n")
    hooks = hooks_for(mock_store, tmp_path, site, hook_timeout_s="60")
    outcome: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: outcome.update(run_crafted(hooks, dict(GOOD))))
    started = time.time()
    runner.start()
    deadline = time.monotonic() + 10
    while not token_file.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    row = mock_store.db.tokens.find_one({"_id": token_hash(token_file.read_text().strip())})
    go.touch()
    runner.join(20)
    assert row is not None and row["user"] == HOOK_USER
    assert row["scope"] == {"project_uid": "P1", "session_uid": "S1", "datatype": "particles"}
    assert started + 60 < row["expires_at"] <= time.time() + 60 + TOKEN_MARGIN_S
    assert outcome["exit_status"] == 0
    assert mock_store.db.tokens.count_documents({}) == 0


# --- finding 5: the capped log --------------------------------------------------------------------

def test_capped_log_keeps_head_and_tail_and_says_what_was_cut(tmp_path: Path) -> None:
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    data = bytes(i % 251 for i in range(1_000_003))
    sink = CappedLog(fd, 1000)
    for start in range(0, len(data), 4093):
        sink.feed(data[start:start + 4093])
    sink.finish()
    os.close(fd)
    note = (f"\n=== [{len(data) - 1000} bytes of output cut here: a run keeps its first and last 1000 bytes "
            "in all (hook_log_max_bytes)]\n").encode()
    assert path.read_bytes() == data[:500] + note + data[-500:]
    assert sink.cut_bytes == len(data) - 1000


def test_capped_log_keeps_short_output_whole(tmp_path: Path) -> None:
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sink = CappedLog(fd, 1000)
    for chunk in (b"a" * 400, b"b" * 300, b"c" * 300):
        sink.feed(chunk)
    sink.finish()
    sink.line("=== footer")
    os.close(fd)
    assert path.read_bytes() == b"a" * 400 + b"b" * 300 + b"c" * 300 + b"\n=== footer\n"
    assert sink.cut_bytes == 0
