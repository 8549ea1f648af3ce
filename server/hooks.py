"""The state-change hook: the site's script, run as a job on every category state change.

`script project_uid session_uid datatype status`, no shell, its own process group (killed whole on
timeout), stdout and stderr appended to one log per session with a header and a footer per run. The
script gets LIVEDM_URL and a short-lived LIVEDM_TOKEN of the `hook` user, which may change states,
so `livedm rtpcli "change_session_data_management_state(...)"` inside it reaches this daemon.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .audit import Audit
from .auth import new_token, token_hash
from .config import Config
from .domain import CATEGORY_STATUSES, check_datatype, check_project_uid, check_session_uid, now_iso
from .embedded import die_with_parent
from .errors import conflict, forbidden, invalid_params
from .jobs import JobFailed, Queue
from .store import Store
from .worker import JobRun

log = logging.getLogger(__name__)

HOOK_USER = "hook"
KILL_GRACE_S = 5.0


class HookFailed(JobFailed):
    pass


def ensure_hook_user(store: Store) -> None:
    """The user whose short-lived tokens hook scripts get: may change states, nothing else."""
    store.insert_user({"name": HOOK_USER, "role": "user", "live_data_management": True, "created_at": now_iso()})


class Hooks:
    def __init__(self, config: Config, store: Store, queue: Queue, audit: Audit) -> None:
        self.config = config
        self.store = store
        self.queue = queue
        self.audit = audit

    @property
    def enabled(self) -> bool:
        return self.config.hook_enable and bool(self.config.hook_path)

    def log_path(self, project_uid: str, session_uid: str) -> str:
        return str(self.config.hook_logs / f"{project_uid}_{session_uid}.log")

    def on_state_change(self, actor: str, project_uid: str, session_uid: str, datatype: str,
                        status: str) -> str | None:
        """Queue the hook for a state change; its job id, or None when the hook is off."""
        if not self.enabled:
            return None
        return self.queue.enqueue("hook", {
            "project_uid": project_uid, "session_uid": session_uid, "datatype": datatype, "status": status,
            "script": self.config.hook_path, "log_path": self.log_path(project_uid, session_uid)}, actor)

    def trigger(self, user: dict[str, Any], project_uid: str, session_uid: str, datatype: str, status: str | None,
                script_location: str | None, script_log_path_abs: str | None, current_status: str) -> str:
        check_project_uid(project_uid)
        check_session_uid(session_uid)
        check_datatype(datatype)
        if status is not None and status not in CATEGORY_STATUSES:
            raise invalid_params(f"status {status!r} is not one of {', '.join(CATEGORY_STATUSES)}")
        if not self.config.hook_enable:
            raise conflict("the hook is disabled: set CRYOSPARC_LIVE_DATA_MANAGEMENT_SCRIPT_ENABLE=true (or "
                           "hook_enable) and restart livedmd")
        if (script_location or script_log_path_abs) and user.get("role") != "admin":
            raise forbidden("script_location and script_log_path_abs need an admin")
        script = script_location or self.config.hook_path
        for name, path in (("script_location", script), ("script_log_path_abs", script_log_path_abs)):
            if path is not None and not os.path.isabs(path):
                raise invalid_params(f"{name} must be an absolute path")
        if not script:
            raise conflict("no hook script is configured (CRYOSPARC_LIVE_DATA_MANAGEMENT_SCRIPT_PATH)")
        return self.queue.enqueue("hook", {
            "project_uid": project_uid, "session_uid": session_uid, "datatype": datatype,
            "status": status or current_status, "script": script,
            "log_path": script_log_path_abs or self.log_path(project_uid, session_uid)}, user["name"])

    # --- the job ---------------------------------------------------------------------------------

    def run(self, run: JobRun) -> dict[str, Any]:
        p = run.params
        argv = [p["script"], p["project_uid"], p["session_uid"], p["datatype"], p["status"]]
        log_path = Path(p["log_path"])
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if not (os.path.isfile(argv[0]) and os.access(argv[0], os.X_OK)):
            self._log_line(log_path, f"=== {now_iso()} hook {' '.join(argv)}: cannot run: not an executable file")
            raise HookFailed(f"hook script {argv[0]} is not an executable file")
        token = new_token()
        self.store.insert_token(token_hash(token), HOOK_USER, now_iso(),
                                expires_at=time.time() + self.config.hook_timeout_s + 60)
        try:
            outcome = self._execute(run, argv, log_path, token)
        finally:
            self.store.delete_token(token_hash(token))
        self.audit.record(run.job["created_by"], "hook_ran", project_uid=p["project_uid"],
                          session_uid=p["session_uid"], datatype=p["datatype"], status=p["status"],
                          job_id=run.job["id"], exit_status=outcome["exit_status"], timed_out=outcome["timed_out"])
        if outcome["timed_out"]:
            raise HookFailed(f"hook timed out after {self.config.hook_timeout_s:.0f} s and was killed; see {log_path}")
        if outcome["exit_status"] != 0:
            raise HookFailed(f"hook exited with status {outcome['exit_status']}; see {log_path}")
        return outcome

    def _environment(self, token: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "LIVEDM_TOKEN_FILE"}
        env.update({"LIVEDM_URL": self.config.callback_url, "LIVEDM_TOKEN": token,
                    "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "/usr/bin:/bin")])})
        return env

    def _execute(self, run: JobRun, argv: list[str], log_path: Path, token: str) -> dict[str, Any]:
        started = time.monotonic()
        timed_out = stopped = False
        with open(log_path, "ab") as log_file:
            log_file.write(f"=== {now_iso()} job {run.job['id']} attempt {run.job['attempts']}: "
                           f"{' '.join(argv)}\n".encode())
            log_file.flush()
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                       env=self._environment(token), start_new_session=True,
                                       cwd=str(log_path.parent), preexec_fn=die_with_parent)
            while True:
                try:
                    process.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if time.monotonic() - started > self.config.hook_timeout_s:
                    timed_out = True
                elif run.stopping.is_set() or run.lost.is_set():
                    stopped = True
                if timed_out or stopped:
                    _kill_group(process)
                    break
            duration_s = round(time.monotonic() - started, 3)
            if stopped:
                log_file.write(f"=== stopped after {duration_s} s: livedmd is shutting down; the hook runs again "
                               "later\n".encode())
            else:
                what = "timed out, killed" if timed_out else f"exit status {process.returncode}"
                log_file.write(f"=== {what} after {duration_s} s\n".encode())
        if stopped:
            run.check()  # raises Released
        return {"exit_status": process.returncode, "timed_out": timed_out, "duration_s": duration_s,
                "log_path": str(log_path)}

    @staticmethod
    def _log_line(path: Path, line: str) -> None:
        with open(path, "a") as fh:
            fh.write(line + "\n")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
