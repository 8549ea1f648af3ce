"""The hook job in-process, on mongomock: a job document from the queue runs only what livedmd's own
configuration allows, its log is confined and capped, its environment and token are narrow."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from livedm.server.audit import Audit
from livedm.server.auth import token_hash
from livedm.server.config import Config
from livedm.server.errors import FORBIDDEN, ApiError
from livedm.server.hooks import (
    HOOK_USER,
    TOKEN_MARGIN_S,
    CappedLog,
    HookFailed,
    Hooks,
    hook_environment,
    hook_params,
    script_trust_problem,
    trusted_owners,
)
from livedm.server.jobs import JobRun, Queue
from livedm.server.store import Store, StoreUnavailable
from tests.support.config import make_config
from tests.support.hook_scripts import (
    OTHER,
    changeable,
    marker_script,
    needs_root,
    open_dir,
    owned_by_other,
    plain_script,
    private_dir,
    sticky_dir,
    writable,
)

GOOD = {"project_uid": "P1", "session_uid": "S1", "datatype": "particles", "status": "archiving"}


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
    return Hooks(config, store, Queue(store, lease_s=30, max_attempts=1), audit=Audit(store))


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


def test_a_run_records_its_outcome_on_its_category(mock_store: Store, tmp_path: Path,
                                                   site: dict[str, Path]) -> None:
    mock_store.insert_session({"project_uid": "P1", "uid": "S1", "data_management": {
        "particles": {"status": "archiving", "prev_status": "active", "size": 1, "file_count": 1, "updated_at": None}}})
    hooks = hooks_for(mock_store, tmp_path, site)
    run_crafted(hooks, dict(GOOD))
    hook = mock_store.get_session("P1", "S1")["data_management"]["particles"]["hook"]
    assert {k: hook[k] for k in ("job_id", "status", "state", "error", "exit_status")} == {
        "job_id": "J900", "status": "archiving", "state": "done", "error": None, "exit_status": 0}
    mock_store.db.jobs.delete_many({})
    site["hook_script"].write_text("#!/bin/sh\nexit 4\n")
    with pytest.raises(HookFailed, match="exited with status 4"):
        run_crafted(hooks, dict(GOOD))
    hook = mock_store.get_session("P1", "S1")["data_management"]["particles"]["hook"]
    assert hook["state"] == "failed" and "exited with status 4" in hook["error"]


def test_a_run_whose_outcome_cannot_be_recorded_is_not_run_again(mock_store: Store, tmp_path: Path,
                                                                  site: dict[str, Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(*args: Any, **kwargs: Any) -> bool:
        raise StoreUnavailable("the database does not answer")

    monkeypatch.setattr(mock_store, "set_category_hook", unavailable)
    hooks = hooks_for(mock_store, tmp_path, site)
    assert run_crafted(hooks, dict(GOOD))["exit_status"] == 0  # done, not a Retry
    mock_store.db.jobs.delete_many({})
    site["hook_script"].write_text("#!/bin/sh\nexit 4\n")
    with pytest.raises(HookFailed):  # failed, not a Retry
        run_crafted(hooks, dict(GOOD))


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
    (hooks.config.hook_logs / "P1_S1_particles_J900.log").symlink_to(victim)
    with pytest.raises(HookFailed, match="is a symbolic link"):
        run_crafted(hooks, dict(GOOD))
    assert victim.read_text() == "precious\n"
    assert nothing_ran(site)


def test_logs_are_created_private(mock_store: Store, tmp_path: Path, site: dict[str, Path]) -> None:
    hooks = hooks_for(mock_store, tmp_path, site)
    run_crafted(hooks, dict(GOOD))
    assert (hooks.config.hook_logs / "P1_S1_particles_J900.log").stat().st_mode & 0o777 == 0o600


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


# --- finding 6: a script another user could change does not run (OpenSSH's StrictModes) ----------

SHIPPED_HOOKS = Path(__file__).resolve().parents[2] / "hooks"
NOT_CHECKABLE = "; fix hook_path (or hook_allowed_scripts) or put the script there"


def script_owned_by_other(base: Path) -> tuple[Path, str]:
    script = plain_script(base / "hooks")
    os.chown(script, OTHER, OTHER)
    return script, owned_by_other(script)


def script_writable_by_all(base: Path) -> tuple[Path, str]:
    script = plain_script(base / "hooks", mode=0o777)
    return script, writable(script, 0o777)


def script_writable_by_group(base: Path) -> tuple[Path, str]:
    script = plain_script(base / "hooks", mode=0o775)
    return script, writable(script, 0o775, by="group")


def directory_writable_by_all(base: Path) -> tuple[Path, str]:
    script = plain_script(open_dir(base / "open"))
    return script, writable(base / "open", 0o777, kind="directory")


def directory_owned_by_other(base: Path) -> tuple[Path, str]:
    script = plain_script(base / "theirs")
    os.chown(base / "theirs", OTHER, OTHER)
    return script, owned_by_other(base / "theirs", kind="directory")


def others_script_in_a_sticky_dir(base: Path) -> tuple[Path, str]:
    script = plain_script(sticky_dir(base / "sticky"))
    os.chown(script, OTHER, OTHER)
    return script, owned_by_other(script)


def others_directory_in_a_sticky_dir(base: Path) -> tuple[Path, str]:
    script = plain_script(sticky_dir(base / "sticky") / "theirs")
    os.chown(base / "sticky" / "theirs", OTHER, OTHER)
    return script, owned_by_other(base / "sticky" / "theirs", kind="directory")


def link_in_an_open_dir_to_a_good_script(base: Path) -> tuple[Path, str]:
    good = plain_script(base / "hooks")
    link = open_dir(base / "open") / "hook.sh"
    link.symlink_to(good)
    return link, writable(base / "open", 0o777, kind="directory")


def link_owned_by_other(base: Path) -> tuple[Path, str]:
    plain_script(base / "hooks")
    link = base / "hooks" / "link.sh"
    link.symlink_to("hook.sh")
    os.lchown(link, OTHER, OTHER)
    return link, owned_by_other(link, kind="symbolic link")


def good_link_to_a_script_in_an_open_dir(base: Path) -> tuple[Path, str]:
    plain_script(open_dir(base / "open"))
    link = private_dir(base / "hooks") / "hook.sh"
    link.symlink_to("../open/hook.sh")
    return link, writable(base / "open", 0o777, kind="directory")


@needs_root
@pytest.mark.parametrize("layout", [
    script_owned_by_other, script_writable_by_all, script_writable_by_group, directory_writable_by_all,
    directory_owned_by_other, others_script_in_a_sticky_dir, others_directory_in_a_sticky_dir,
    link_in_an_open_dir_to_a_good_script, link_owned_by_other, good_link_to_a_script_in_an_open_dir,
], ids=lambda layout: layout.__name__)
def test_a_script_another_user_could_change_is_named_with_its_fix(
        tmp_path: Path, layout: Callable[[Path], tuple[Path, str]]) -> None:
    script, problem = layout(tmp_path)
    assert script_trust_problem(str(script), trusted_owners()) == changeable(script, problem)


def test_scripts_only_root_or_livedmd_can_change_pass(tmp_path: Path) -> None:
    in_0755 = plain_script(tmp_path / "hooks")
    in_our_dir_under_a_sticky_one = plain_script(sticky_dir(tmp_path / "sticky") / "ours")
    link = private_dir(tmp_path / "links") / "hook.sh"
    link.symlink_to("../links/./../hooks/hook.sh")
    for script in (in_0755, in_our_dir_under_a_sticky_one, link, *sorted(SHIPPED_HOOKS.iterdir())):
        assert script_trust_problem(str(script), trusted_owners()) is None, script


@needs_root
def test_livedmd_own_user_may_own_the_script_and_its_directory(tmp_path: Path) -> None:
    script = plain_script(tmp_path / "hooks")
    os.chown(tmp_path / "hooks", OTHER, OTHER)
    os.chown(script, OTHER, OTHER)
    assert script_trust_problem(str(script), frozenset({0, OTHER})) is None  # OTHER as livedmd's user


def test_a_script_that_cannot_be_checked_is_refused(tmp_path: Path) -> None:
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    missing, loop = tmp_path / "missing.sh", tmp_path / "loop1"
    assert script_trust_problem(str(missing), trusted_owners()) == (
        f"hook script {missing} cannot be checked: {missing}: No such file or directory{NOT_CHECKABLE}")
    assert script_trust_problem(str(loop), trusted_owners()) == (
        f"hook script {loop} cannot be checked: {loop}: Too many levels of symbolic links{NOT_CHECKABLE}")
    assert script_trust_problem("hook.sh", trusted_owners()) == (
        f"hook script hook.sh cannot be checked: hook.sh: not an absolute path{NOT_CHECKABLE}")
    assert script_trust_problem(str(tmp_path), trusted_owners()) == (
        f"hook script {tmp_path} is not a plain file ({tmp_path}); name an executable file in hook_path "
        "(or hook_allowed_scripts)")


def make_changeable(how: str, script: Path) -> str:
    """Let another user change what `script` runs, `how`; the problem livedmd names."""
    if how == "script owned by nobody":
        os.chown(script, OTHER, OTHER)
        return owned_by_other(script)
    if how == "script mode 0777":
        script.chmod(0o777)
        return writable(script, 0o777)
    script.parent.chmod(0o777)
    return writable(script.parent, 0o777, kind="directory")


CHANGEABLE = ["script owned by nobody", "script mode 0777", "directory mode 0777"]


@needs_root
@pytest.mark.parametrize("how", CHANGEABLE)
def test_a_hook_another_user_could_change_fails_the_job_runs_nothing_and_says_so_in_the_log(
        mock_store: Store, tmp_path: Path, site: dict[str, Path], how: str) -> None:
    script = site["hook_script"] = marker_script(plain_script(tmp_path / "hooks"), site["hook"])
    refusal = changeable(script, make_changeable(how, script))
    hooks = hooks_for(mock_store, tmp_path, site)
    with pytest.raises(HookFailed) as failed:
        run_crafted(hooks, dict(GOOD))
    assert str(failed.value) == f"refused, nothing was run: {refusal}"
    assert nothing_ran(site)
    assert mock_store.db.tokens.count_documents({}) == 0
    assert [e for e in mock_store.find_audit(limit=10) if e["action"] == "hook_ran"] == []
    header, line = (hooks.config.hook_logs / "P1_S1_particles_J900.log").read_text().splitlines()
    assert header.startswith("=== ") and header.endswith(f" job J900 attempt 1: {script} P1 S1 particles archiving")
    assert line == f"=== refused, nothing was run: {refusal}"


def test_an_override_another_user_could_change_is_refused_when_triggered_and_when_run(
        mock_store: Store, tmp_path: Path, site: dict[str, Path]) -> None:
    allowed = site["allowed_script"]
    allowed.chmod(0o777)
    refusal = changeable(allowed, writable(allowed, 0o777))
    hooks = hooks_for(mock_store, tmp_path, site)
    admin = {"name": "admin", "role": "admin"}
    with pytest.raises(ApiError) as refused:
        hooks.trigger(admin, "P1", "S1", datatype="particles", status=None, script_location=str(allowed),
                      script_log_path_abs=None, current_status="active")
    assert (refused.value.code, refused.value.message) == (FORBIDDEN, refusal)
    assert mock_store.db.jobs.count_documents({}) == 0
    with pytest.raises(HookFailed) as failed:
        run_crafted(hooks, {**GOOD, "script": str(allowed)})
    assert str(failed.value) == f"refused, nothing was run: {refusal}"
    assert nothing_ran(site)


def test_a_good_script_in_a_0755_dir_or_in_our_own_dir_under_tmp_runs(
        mock_store: Store, tmp_path: Path, site: dict[str, Path]) -> None:
    assert (os.stat("/tmp").st_uid, stat.S_IMODE(os.stat("/tmp").st_mode)) == (0, 0o1777)  # sticky, all may write
    under_tmp = Path(tempfile.mkdtemp(prefix="livedm-hook-", dir="/tmp"))
    try:
        site["hook_script"] = marker_script(plain_script(private_dir(tmp_path / "hooks")), site["hook"])
        site["allowed_script"] = marker_script(under_tmp / "allowed.sh", site["allowed"])
        hooks = hooks_for(mock_store, tmp_path, site)
        assert run_crafted(hooks, dict(GOOD))["exit_status"] == 0
        mock_store.db.jobs.delete_many({})
        assert run_crafted(hooks, {**GOOD, "script": str(site["allowed_script"])})["exit_status"] == 0
    finally:
        shutil.rmtree(under_tmp)
    assert site["hook"].read_text() == site["allowed"].read_text() == "P1 S1 particles archiving\n"
