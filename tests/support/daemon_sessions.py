"""A real livedmd in a test: one with the state-change hook on, a project with a completed session
S1 on disk, the status of one of S1's categories, a job once it has ended, stopping once its jobs have."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

from testkit.daemon import Daemon
from testkit.sessiontree import SessionTree, build_session_tree
from tests.support.waiting import wait_until

HOOK_ENABLE = "CRYOSPARC_LIVE_DATA_MANAGEMENT_SCRIPT_ENABLE"
HOOK_PATH = "CRYOSPARC_LIVE_DATA_MANAGEMENT_SCRIPT_PATH"


def hook_env(script: Path) -> dict[str, str]:
    """The environment that turns the hook on with `script`, as cryoSPARC's own variables name it."""
    return {HOOK_ENABLE: "true", HOOK_PATH: str(script)}


def hook_daemon(tmp_path: Path, script: Path, store: str | None = None, **env: str) -> Daemon:
    """A started livedmd (state dir tmp_path/state) whose hook is `script`. With `store` (a MongoDB URI,
    such as the session's embedded_uri) it keeps a new database there instead of starting an embedded store
    of its own: half of its start-up, for the tests to which the store makes no difference."""
    if store is not None:
        env = {"LIVEDM_MONGO_URI": store, "LIVEDM_MONGO_DB": "t_" + uuid.uuid4().hex[:12], **env}
    return Daemon(tmp_path / "state", env={**hook_env(script), **env}).start()


def completed_project(daemon: Daemon, project_dir: Path, exposures: int = 3,
                      title: str = "p") -> tuple[str, SessionTree]:
    """A project at project_dir with its session S1 on disk, marked completed (so measured); the project's uid."""
    tree = build_session_tree(project_dir, exposures=exposures)
    uid = daemon.call("create_project", [title, str(tree.project_dir)])["uid"]
    daemon.call("create_live_session", [uid, "s"])
    daemon.call("mark_session_completed", [uid, "S1"])
    return uid, tree


def completed_session(daemon: Daemon, tmp_path: Path, exposures: int = 3) -> SessionTree:
    """P1 (tmp_path/proj) with S1 on disk, marked completed, on a livedmd of the test's own."""
    uid, tree = completed_project(daemon, tmp_path / "proj", exposures)
    assert uid == "P1", f"{uid}: the livedmd was not new"
    return tree


def status_of(daemon: Daemon, datatype: str) -> str:
    return str(daemon.call("get_session", ["P1", "S1"])["data_management"][datatype]["status"])


def finished_job(daemon: Daemon, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    """The job once it is done or failed."""
    return dict(wait_until(lambda: (j := daemon.call("get_job", [job_id]))["state"] in ("done", "failed") and j,
                           timeout_s=timeout_s, what=f"job {job_id} to end"))


def idle(daemon: Daemon) -> bool:
    """No job is queued or running."""
    return not any(daemon.call("list_jobs", {"state": state}) for state in ("queued", "running"))


def stop_when_idle(daemon: Daemon, timeout_s: float = 30) -> int:
    """Stop livedmd once no job is queued or running. A hook still running when livedmd stops cannot call
    back (the client retries for seconds before it gives up), and livedmd's drain waits for it."""
    if daemon.process is not None and daemon.process.poll() is None:
        with contextlib.suppress(AssertionError, OSError):  # a test may have left it unable to answer
            wait_until(lambda: idle(daemon), timeout_s=timeout_s, what="its jobs to end")
    return daemon.stop()
