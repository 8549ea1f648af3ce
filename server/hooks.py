"""The state-change hook: the site's script, run as a job on every category state change.

`script project_uid session_uid datatype status`, no shell, its own session (every process of it
killed on timeout, at shutdown and when the script ends), its output appended to one log per session
with a header and a footer per run, capped at `hook_log_max_bytes` (head and tail kept). The script
gets an allow-listed environment with LIVEDM_URL and a LIVEDM_TOKEN of the `hook` user that is scoped
to the one category and expires with the run, so `livedm rtpcli
"change_session_data_management_state(...)"` inside it reaches this daemon.

A hook job's document is not trusted: whatever it says, the script run is the configured
`hook_path` (or, for an admin's override, one listed in `hook_allowed_scripts`), only while hooks
are enabled in this livedmd's configuration, and the log is a plain file in the hook log dir.

Nor is a script that another user could change: before it runs (and when an admin's trigger names an
override), the script, every directory and symbolic link on the way to it must be owned by root or
by livedmd's own user and not writable by group or others; a world-writable directory passes only
with its sticky bit (like /tmp), as then only an entry's owner may replace it (OpenSSH's StrictModes).
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import select
import shlex
import stat
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audit import Audit
from .auth import new_token, token_hash
from .config import Config
from .domain import CATEGORY_STATUSES, HOOK_USER, check_datatype, check_project_uid, check_session_uid, now_iso
from .errors import ApiError, conflict, forbidden, invalid_params, not_found
from .hook_logs import (
    LOG_DIR_MODE,
    CappedLog,
    LogRefused,
    open_for_append,
    override_name,
    read_piece,
    run_log_name,
)
from .jobs import JobFailed, JobRun, Queue
from .processes import die_with_parent, kill_session
from .store import Store, StoreUnavailable

log = logging.getLogger(__name__)

KILL_GRACE_S = 5.0
TOKEN_MARGIN_S = 30.0  # the hook token outlives the run's timeout by this much at most
DRAIN_S = 2.0  # after the run: how long output still held open by an escaped process is read
POLL_S = 0.2
READ_BYTES = 65536
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
MAX_SYMLINKS = 40  # as the kernel: more links on the way to a script is a loop

# What a hook script sees of livedmd's environment (besides PATH, LIVEDM_URL and LIVEDM_TOKEN):
# locale, time zone and identity; cryoSPARC's host and port (the seed's example prints them); the
# shipped archiver's destination. Nothing else: not the database URI, not NOTIFY_SOCKET.
HOOK_ENV_NAMES = frozenset({"LANG", "TZ", "HOME", "USER", "LOGNAME", "CRYOSPARC_MASTER_HOSTNAME",
                            "CRYOSPARC_BASE_PORT", "LIVEDM_ARCHIVE_ROOT"})
HOOK_ENV_PREFIXES = ("LC_",)

_REQUIRED_PARAMS = ("project_uid", "session_uid", "datatype", "status")
_OPTIONAL_PARAMS = ("script", "log_path")  # an admin's trigger overrides, checked again at run time


class HookFailed(JobFailed):
    pass


def ensure_hook_user(store: Store) -> None:
    """The user whose short-lived tokens hook scripts get: may change states, nothing else. Made at the first
    start, and put right at every start (an older livedm let an admin deny it, which failed every hook)."""
    account = {"role": "user", "live_data_management": True}
    if not store.insert_user({"name": HOOK_USER, **account, "created_at": now_iso()}):
        store.update_user(HOOK_USER, account)


@dataclass(frozen=True)
class HookParams:
    project_uid: str
    session_uid: str
    datatype: str
    status: str
    script: str | None = None
    log_path: str | None = None


def hook_params(params: Any) -> HookParams:
    """A hook job's params, checked as an API call's would be: the document in the queue is not trusted."""
    if not isinstance(params, dict):
        raise invalid_params("a hook job's params must be an object")
    unknown = sorted(set(params) - {*_REQUIRED_PARAMS, *_OPTIONAL_PARAMS})
    if unknown:
        raise invalid_params(f"a hook job has no params {', '.join(map(repr, unknown))}")
    for name in _REQUIRED_PARAMS:
        if not isinstance(params.get(name), str):
            raise invalid_params(f"a hook job's {name} must be a string")
    for name in _OPTIONAL_PARAMS:
        if not isinstance(params.get(name, ""), str):
            raise invalid_params(f"a hook job's {name} must be a string or absent")
    check_project_uid(params["project_uid"])
    check_session_uid(params["session_uid"])
    check_datatype(params["datatype"])
    if params["status"] not in CATEGORY_STATUSES:
        raise invalid_params(f"status {params['status']!r} is not one of {', '.join(CATEGORY_STATUSES)}")
    return HookParams(**params)


def log_name(config: Config, params: HookParams, job_id: str) -> str:
    """The run's log in the hook log dir: its own, named by the job, or the one an admin's override names."""
    if params.log_path is not None:
        return override_name(config, params.log_path)
    return run_log_name(params.project_uid, params.session_uid, params.datatype, job_id)


def hook_environment(environ: Mapping[str, str], url: str, token: str) -> dict[str, str]:
    """The hook's environment: the allow-listed names of `environ`, PATH with livedm's bin first, and
    how to call back (LIVEDM_URL, LIVEDM_TOKEN)."""
    env = {k: v for k, v in environ.items() if k in HOOK_ENV_NAMES or k.startswith(HOOK_ENV_PREFIXES)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH") or DEFAULT_PATH])
    env["LIVEDM_URL"] = url
    env["LIVEDM_TOKEN"] = token
    return env


def trusted_owners() -> frozenset[int]:
    """Who may own a hook script and everything on the way to it: root and livedmd's own user."""
    return frozenset({0, os.geteuid()})


def script_trust_problem(script: str, owners: frozenset[int]) -> str | None:
    """Why `script` may not run: another user than `owners` could change what it runs, or it is not a
    plain file; None when it may. What runs is the whole path as the kernel follows it: "/", every
    directory, every symbolic link and the file itself."""
    try:
        entries = list(_path_entries(script))
    except OSError as exc:
        return (f"hook script {script} cannot be checked: {exc.filename}: {exc.strerror}; fix hook_path "
                "(or hook_allowed_scripts) or put the script there")
    for entry, info in entries:
        problem = _entry_problem(entry, info, owners)
        if problem is not None:
            return f"hook script {script} could be changed by another user: {problem}"
    entry, info = entries[-1]
    if not stat.S_ISREG(info.st_mode):
        return (f"hook script {script} is not a plain file ({entry}); name an executable file in hook_path "
                "(or hook_allowed_scripts)")
    return None


def _path_entries(path: str) -> Iterator[tuple[str, os.stat_result]]:
    """Each entry the kernel passes on the way to `path`, with its lstat: "/", each directory, each
    symbolic link (then followed, as the kernel follows it) and last the file itself."""
    if not os.path.isabs(path):
        raise OSError(errno.EINVAL, "not an absolute path", path)
    here, todo, links = "/", deque(_names(path)), 0
    yield here, os.lstat(here)
    while todo:
        name = todo.popleft()
        if name == "..":  # to a directory already passed: `here` never holds a link
            here = os.path.dirname(here)
            continue
        entry = os.path.join(here, name)
        info = os.lstat(entry)
        yield entry, info
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            target = os.readlink(entry)
            todo.extendleft(reversed(_names(target)))
            here = "/" if os.path.isabs(target) else here
        else:
            here = entry


def _names(path: str) -> list[str]:
    return [name for name in path.split("/") if name not in ("", ".")]


def _entry_problem(entry: str, info: os.stat_result, owners: frozenset[int]) -> str | None:
    """What lets another user change `entry`, and the command that stops it; None if nothing does."""
    kind = "directory" if stat.S_ISDIR(info.st_mode) else "symbolic link" if stat.S_ISLNK(info.st_mode) else "file"
    if info.st_uid not in owners:
        allowed = " or ".join(_user_name(uid) for uid in sorted(owners))
        chown = "chown -h" if stat.S_ISLNK(info.st_mode) else "chown"
        return (f"the {kind} {entry} is owned by {_user_name(info.st_uid)}, not by {allowed}; run "
                f"`{chown} root {shlex.quote(entry)}` or move the script where only root can write")
    writers = [who for bit, who in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others")) if info.st_mode & bit]
    sticky = stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
    if writers and not stat.S_ISLNK(info.st_mode) and not sticky:
        return (f"the {kind} {entry} is writable by {' and '.join(writers)} (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); run `chmod go-w {shlex.quote(entry)}`")
    return None


def _user_name(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _exited(pid: int) -> bool:
    """Has the child ended? It is left unreaped (a zombie), so its pid, the session id, is not reused."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


class _OutputPipe:
    """The read end of the pipe the hook writes its stdout and stderr to."""

    def __init__(self, fd: int, sink: CappedLog) -> None:
        self.fd = fd
        self.sink = sink
        self.open = True
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)

    def pump(self, timeout_s: float) -> None:
        """Copy one chunk of output to the log, waiting at most `timeout_s` for it."""
        if not self.open:
            time.sleep(timeout_s)
            return
        if self.poller.poll(timeout_s * 1000):
            chunk = os.read(self.fd, READ_BYTES)
            if chunk:
                self.sink.feed(chunk)
            else:
                self.open = False

    def drain(self, timeout_s: float) -> None:
        """Read until every writer has closed the pipe, for at most `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self.open and (left_s := deadline - time.monotonic()) > 0:
            self.pump(min(POLL_S, left_s))


class Hooks:
    def __init__(self, config: Config, store: Store, queue: Queue, *, audit: Audit,
                 token_revoked: Callable[[str], None] = lambda _digest: None) -> None:
        self.config = config
        self.store = store
        self.queue = queue
        self.audit = audit
        self.token_revoked = token_revoked  # a run's token, gone, must stop working here at once (auth's cache)

    @property
    def enabled(self) -> bool:
        return self.config.hook_enable and bool(self.config.hook_path)

    def on_state_change(self, actor: str, project_uid: str, session_uid: str, *, datatype: str,
                        status: str) -> str | None:
        """Queue the hook for a state change; its job id, or None when the hook is off."""
        if not self.enabled:
            return None
        return self.queue.enqueue("hook", {"project_uid": project_uid, "session_uid": session_uid,
                                           "datatype": datatype, "status": status}, actor)

    def trigger(self, user: dict[str, Any], project_uid: str, session_uid: str, *, datatype: str, status: str | None,
                script_location: str | None, script_log_path_abs: str | None, current_status: str) -> str:
        check_project_uid(project_uid)
        check_session_uid(session_uid)
        check_datatype(datatype)
        if status is not None and status not in CATEGORY_STATUSES:
            raise invalid_params(f"status {status!r} is not one of {', '.join(CATEGORY_STATUSES)}")
        self._check_enabled()
        if (script_location or script_log_path_abs) and user.get("role") != "admin":
            raise forbidden("script_location and script_log_path_abs need an admin")
        params: dict[str, Any] = {"project_uid": project_uid, "session_uid": session_uid, "datatype": datatype,
                                  "status": status or current_status}
        if script_location is not None:
            script = self._script_for(script_location)
            problem = script_trust_problem(script, trusted_owners())
            if problem is not None:
                raise forbidden(problem)
            if script != self.config.hook_path:
                params["script"] = script
        if script_log_path_abs is not None:
            if os.path.islink(self.config.hook_logs / override_name(self.config, script_log_path_abs)):
                raise forbidden(f"script_log_path_abs {script_log_path_abs} is a symbolic link; livedmd never writes "
                                "through a link: name a plain file")
            params["log_path"] = script_log_path_abs
        return self.queue.enqueue("hook", params, user["name"])

    # --- what the configuration allows (checked when triggered and again when run) --------------

    def _check_enabled(self) -> None:
        if not self.config.hook_enable:
            raise conflict("the hook is disabled: set CRYOSPARC_LIVE_DATA_MANAGEMENT_SCRIPT_ENABLE=true (or "
                           "hook_enable) and restart livedmd")
        if not self.config.hook_path:
            raise conflict("no hook script is configured: set CRYOSPARC_LIVE_DATA_MANAGEMENT_SCRIPT_PATH (or "
                           "hook_path) and restart livedmd")

    def _script_for(self, requested: str | None) -> str:
        """The script to run: hook_path, or the hook_allowed_scripts entry an override names."""
        if requested is None:
            return self.config.hook_path
        if "\0" in requested or not os.path.isabs(requested):
            raise invalid_params("script_location must be an absolute path")
        wanted = os.path.normpath(requested)
        for script in (self.config.hook_path, *self.config.hook_allowed_scripts):
            if os.path.normpath(script) == wanted:
                return script
        raise forbidden(f"the script {requested} is neither hook_path nor listed in the hook_allowed_scripts "
                        "setting (LIVEDM_HOOK_ALLOWED_SCRIPTS); an admin adds it there and restarts livedmd")

    # --- the job ---------------------------------------------------------------------------------

    def run(self, run: JobRun) -> dict[str, Any]:
        try:
            self._check_enabled()
            params = hook_params(run.params)
            script = self._script_for(params.script)
            name = log_name(self.config, params, run.job["id"])
        except ApiError as exc:
            log.warning("hook job %s refused, nothing was run: %s", run.job.get("id"), exc.message)
            self._record(run, run.params, "failed", f"refused, nothing was run: {exc.message}")
            raise HookFailed(f"refused, nothing was run: {exc.message}") from None
        argv = [script, params.project_uid, params.session_uid, params.datatype, params.status]
        try:
            log_fd = open_for_append(self.config, name)
            try:
                outcome = self._run_logged(run, params, argv, log_fd=log_fd, log_path=self.config.hook_logs / name)
            finally:
                os.close(log_fd)
        except (HookFailed, LogRefused) as exc:
            self._record(run, run.params, "failed", str(exc))
            raise HookFailed(str(exc)) from None
        self._record(run, run.params, "done", None, exit_status=outcome["exit_status"])
        return outcome

    def _record(self, run: JobRun, params: Any, state: str, error: str | None, **extra: Any) -> None:
        """The category's last hook run, for the table: which job, for which status, and how it ended."""
        try:
            checked = hook_params(params)
        except ApiError:
            return  # not a category's hook (a crafted job): nothing to show it on
        try:
            self.store.set_category_hook(checked.project_uid, checked.session_uid, checked.datatype, {
                "job_id": run.job["id"], "status": checked.status, "state": state, "error": error,
                "finished_at": now_iso(), **extra})
        except StoreUnavailable as exc:  # the run is over: it is not run again for want of its record
            log.warning("hook job %s: its outcome is not shown on %s %s %s: %s", run.job["id"],
                        checked.project_uid, checked.session_uid, checked.datatype, exc)

    def read_log(self, job: dict[str, Any], *, offset: int | None, limit: int) -> dict[str, Any]:
        """A piece of a hook job's log (get_job_log): from `offset`, or its last `limit` bytes."""
        if job.get("kind") != "hook":
            raise not_found(f"job {job['id']} is a {job.get('kind')} job: only hook runs have a log")
        try:
            name = log_name(self.config, hook_params(job.get("params")), job["id"])
        except ApiError as exc:
            raise not_found(f"job {job['id']} names no log livedm would write ({exc.message})") from None
        return read_piece(self.config, name, offset=offset, limit=limit).public(job["id"])

    def _run_logged(self, run: JobRun, params: HookParams, argv: list[str], *, log_fd: int,
                    log_path: Path) -> dict[str, Any]:
        output = CappedLog(log_fd, self.config.hook_log_max_bytes)
        output.line(f"=== {now_iso()} job {run.job['id']} attempt {run.job['attempts']}: {' '.join(argv)}")
        problem = script_trust_problem(argv[0], trusted_owners())
        if problem is not None:
            output.line(f"=== refused, nothing was run: {problem}")
            log.warning("hook job %s refused, nothing was run: %s", run.job.get("id"), problem)
            raise HookFailed(f"refused, nothing was run: {problem}")
        if not os.access(argv[0], os.X_OK):
            output.line("=== cannot run: not an executable file")
            raise HookFailed(f"hook script {argv[0]} is not executable; run `chmod 0755 {shlex.quote(argv[0])}`")
        token = new_token()
        scope = {"project_uid": params.project_uid, "session_uid": params.session_uid, "datatype": params.datatype}
        self.store.insert_token(token_hash(token), HOOK_USER, now_iso(),
                                expires_at=time.time() + self.config.hook_timeout_s + TOKEN_MARGIN_S, scope=scope)
        try:
            outcome = self._execute(run, argv, output, token=token)
        finally:
            self.store.delete_token(token_hash(token))
            self.token_revoked(token_hash(token))
        outcome["log_path"] = str(log_path)
        self.audit.record(run.job.get("created_by", "?"), "hook_ran", project_uid=params.project_uid,
                          session_uid=params.session_uid, datatype=params.datatype, status=params.status,
                          job_id=run.job["id"], exit_status=outcome["exit_status"], timed_out=outcome["timed_out"])
        see = f"its log: `livedm job {run.job['id']} --log` ({log_path.name} in the hook log dir)"
        if outcome["timed_out"]:
            raise HookFailed(f"hook timed out after {self.config.hook_timeout_s:.0f} s and was killed; {see}")
        if outcome["exit_status"] != 0:
            raise HookFailed(f"hook exited with status {outcome['exit_status']}; {see}")
        return outcome

    def _execute(self, run: JobRun, argv: list[str], output: CappedLog, *, token: str) -> dict[str, Any]:
        started = time.monotonic()
        read_fd, write_fd = os.pipe()
        try:
            process = self._start(argv, write_fd, token)
        except OSError as exc:
            os.close(read_fd)
            output.line(f"=== cannot run: {exc.strerror}")
            raise HookFailed(f"hook script {argv[0]} cannot run: {exc.strerror}") from None
        finally:
            os.close(write_fd)
        pipe = _OutputPipe(read_fd, output)
        try:
            try:
                ending = self._wait_for_end(run, process, pipe)
            finally:  # whatever the ending: nothing of the hook's session outlives its run
                leftovers = kill_session(process.pid, KILL_GRACE_S)
            pipe.drain(DRAIN_S)
        finally:
            os.close(read_fd)
            returncode = _reap(process)
        duration_s = round(time.monotonic() - started, 3)
        output.finish()
        output.line(_footer(ending, returncode, duration_s, leftovers=leftovers))
        if ending == "stopped":
            run.check()  # raises Released
        return {"exit_status": returncode, "timed_out": ending == "timed_out", "duration_s": duration_s,
                "log_bytes_cut": output.cut_bytes, "log_error": output.error}

    def _start(self, argv: list[str], stdout_fd: int, token: str) -> subprocess.Popen[bytes]:
        self.config.hook_logs.mkdir(parents=True, exist_ok=True, mode=LOG_DIR_MODE)
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout_fd, stderr=subprocess.STDOUT,
                                env=hook_environment(os.environ, self.config.callback_url, token),
                                start_new_session=True, cwd=str(self.config.hook_logs), preexec_fn=die_with_parent)

    def _wait_for_end(self, run: JobRun, process: subprocess.Popen[bytes], pipe: _OutputPipe) -> str:
        """Copy output until the script exits, times out or must stop (shutdown, lease lost); which one."""
        deadline = time.monotonic() + self.config.hook_timeout_s
        while True:
            pipe.pump(POLL_S)
            if _exited(process.pid):
                return "exited"
            if time.monotonic() > deadline:
                return "timed_out"
            if run.stopping.is_set() or run.lost.is_set():
                return "stopped"


def _reap(process: subprocess.Popen[bytes]) -> int | None:
    try:
        return process.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:  # stuck in the kernel even after SIGKILL
        log.error("hook process %d did not end after SIGKILL", process.pid)
        return None


def _footer(ending: str, returncode: int | None, duration_s: float, *, leftovers: int) -> str:
    if ending == "stopped":
        return f"=== stopped after {duration_s} s: livedmd is shutting down; the hook runs again later"
    what = "timed out, killed" if ending == "timed_out" else f"exit status {returncode}"
    footer = f"=== {what} after {duration_s} s"
    if ending == "exited" and leftovers:
        footer += f" ({leftovers} process(es) it left running were killed)"
    return footer
