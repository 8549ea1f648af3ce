"""Discovery of a facility (500 projects x 10 Live sessions, metadata files only) by a real livedmd on
the embedded store: the first pass and an unchanged second pass, beside `find` listing the same
project.json files and `cat` reading them with workspaces.json (the least any pass must do).
Then, on 100 projects x 10 sessions with their files, the scheduled refresh after 1 % of the
sessions changed, against a full refresh of every session (the same daemon, the same run)."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from livedm.server.auth import Authenticator
from livedm.server.config import load
from livedm.server.embedded import EmbeddedStore
from livedm.server.services import Services
from livedm.server.store import Store
from testkit.cryosparc_tree import SessionSpec, build_cryosparc_project, build_facility
from testkit.daemon import Daemon

PROJECTS, SESSIONS = 500, 10
REFRESH_PROJECTS = 100


def wait_idle(daemon: Daemon, timeout_s: float = 1800) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(daemon.call("list_jobs", {"state": s, "limit": 1}) for s in ("queued", "running")):
            return
        time.sleep(0.05)
    raise TimeoutError("jobs still running")


def timed_job(daemon: Daemon, method: str, params: Any = None) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    job_id = daemon.call(method, params)
    while (job := daemon.call("get_job", [job_id]))["state"] not in ("done", "failed"):
        time.sleep(0.02)
    return time.perf_counter() - started, job


def discovery(root: Path) -> None:
    movies = root / "movies"
    movies.mkdir()
    started = time.perf_counter()
    build_facility(root / "data", PROJECTS, SESSIONS, movies_dir=movies)
    print(f"discovery: built {PROJECTS} projects x {SESSIONS} sessions (metadata only) in "
          f"{time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    found = subprocess.run(["find", str(root / "data"), "-maxdepth", "3", "-name", "project.json"],
                           check=True, capture_output=True, text=True).stdout.split()
    subprocess.run(["cat", *found, *(str(Path(p).with_name("workspaces.json")) for p in found)],
                   check=True, capture_output=True)
    baseline_s = time.perf_counter() - started
    daemon = Daemon(root / "state", env={"LIVEDM_DATA_ROOTS": str(root / "data")}).start()
    try:
        first_s, first = timed_job(daemon, "discover")
        assert first["state"] == "done" and first["result"]["counts"]["added"] == PROJECTS, first
        wait_idle(daemon)  # the refresh jobs the first pass queued
        second_s, second = timed_job(daemon, "discover")
        assert second["result"]["counts"]["unchanged"] == PROJECTS, second["result"]["counts"]
        print(f"discovery: first pass {first_s:.2f} s ({PROJECTS * SESSIONS} sessions added), unchanged second "
              f"pass {second_s:.3f} s = {second_s / first_s:.3f}x the first (target <= 0.1); find + cat of the "
              f"same files {baseline_s:.3f} s (second pass = {second_s / baseline_s:.1f}x that)")
    finally:
        daemon.stop()


def refresh(root: Path) -> None:
    """In process, on the embedded store: the same Sessions code the refresh jobs run."""
    movies = root / "movies"
    movies.mkdir()
    started = time.perf_counter()
    projects = [build_cryosparc_project(root / "data", f"P{n}", f"Project {n}",
                                        [SessionSpec(exposures=2) for _ in range(SESSIONS)], movies_dir=movies)
                for n in range(1, REFRESH_PROJECTS + 1)]
    sessions = REFRESH_PROJECTS * SESSIONS
    print(f"refresh: built {REFRESH_PROJECTS} projects x {SESSIONS} sessions with their files in "
          f"{time.perf_counter() - started:.1f} s")
    embedded = EmbeddedStore(root / "state")
    store = Store.connect(embedded.start(), "bench", selection_timeout_s=5)
    try:
        store.ensure_indexes()
        config = load({"state_dir": str(root / "state"), "data_roots": str(root / "data")}, environ={})
        services = Services.build(store, config, Authenticator(store, 2))
        services.queue.enqueue_single("discover", {}, "bench")
        asyncio.run(services.workers(1).run_until_idle())  # the pass, then every project's first measure
        started = time.perf_counter()
        for project in projects:
            services.sessions.refresh_project(project.uid, lambda **_: None)
        full_s = time.perf_counter() - started
        changed = projects[: max(1, sessions // 100 // SESSIONS)]  # 1 % of the sessions gain a micrograph
        for project in changed:
            for session in project.sessions.values():
                new = project.project_dir / session.session_dir / "motioncorrected" / "new_patch_aligned.mrc"
                new.write_bytes(b"x" * 1000)
        started = time.perf_counter()
        outcome = services.sessions.refresh_due(config.refresh_interval, lambda **_: None)
        due_s = time.perf_counter() - started
        assert outcome["refreshed"] == len(changed) * SESSIONS, outcome
        print(f"refresh: full refresh of {sessions} sessions {full_s:.2f} s; the scheduled refresh after 1 % "
              f"changed ({outcome['refreshed']} sessions measured, the rest checked) {due_s:.3f} s = "
              f"{due_s / full_s:.3f}x the full one")
    finally:
        store.close()
        embedded.stop()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        discovery(Path(tmp))
    with tempfile.TemporaryDirectory() as tmp:
        refresh(Path(tmp))
