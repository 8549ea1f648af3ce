"""Several livedmd processes on one database share the job queue: each job runs exactly once."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

from livedm.server.embedded import EmbeddedStore
from testkit.daemon import Daemon, start_together
from testkit.sessiontree import build_session_tree
from tests.support.daemon_sessions import hook_env
from tests.support.hook_scripts import executable
from tests.support.waiting import wait_until

JOBS = 200


def test_two_daemons_run_each_of_200_jobs_once(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "db")
    uri = store.start()
    script = executable(tmp_path / "hook.sh", "#!/bin/sh\nexit 0\n")
    env = {"LIVEDM_MONGO_URI": uri, **hook_env(script), "LIVEDM_HOOK_LOG_DIR": str(tmp_path / "logs"),
           "LIVEDM_WORKERS": "3", "LIVEDM_MAX_BATCH_CALLS": str(JOBS)}
    first, second = Daemon(tmp_path / "a", env=env), Daemon(tmp_path / "b", env=env)
    start_together(first, second)
    try:
        tree = build_session_tree(tmp_path / "proj", exposures=1)
        first.call("create_project", ["p", str(tree.project_dir)])
        first.call("create_live_session", ["P1", "s"])
        batch = [{"jsonrpc": "2.0", "method": "trigger_live_data_management_script",
                  "params": ["P1", "S1", "particles", "archived"], "id": i} for i in range(JOBS)]
        request = urllib.request.Request(first.url + "/api", data=json.dumps(batch).encode(),
                                         headers={"Authorization": f"Bearer {first.token}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            job_ids = [r["result"] for r in json.loads(response.read())]
        assert len(set(job_ids)) == JOBS
        jobs = wait_until(lambda: (js := first.call("list_jobs", {"kind": "hook", "limit": 500})) and
                          sum(j["state"] == "done" for j in js) == JOBS and js, timeout_s=120, what="200 jobs")
        assert all(j["attempts"] == 1 for j in jobs)
        started = {}
        for daemon in (first, second):
            for job_id in re.findall(r"job (J\d+) \(hook\) started", daemon.log()):
                assert job_id not in started, f"{job_id} ran twice"
                started[job_id] = daemon
        assert set(started) == set(job_ids)
        assert sum(d is second for d in started.values()) > 0, "the second daemon took no job"
        for job_id in job_ids:  # each run wrote its own log, once
            log = (tmp_path / "logs" / f"P1_S1_particles_{job_id}.log").read_text()
            assert re.findall(r"=== \S+ job (J\d+) attempt", log) == [job_id]
        assert len(list((tmp_path / "logs").iterdir())) == JOBS
    finally:
        first.stop()
        second.stop()
        store.stop()


def test_a_worker_only_process_runs_what_an_api_process_queues(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "db")
    uri = store.start()
    api = Daemon(tmp_path / "api", env={"LIVEDM_MONGO_URI": uri, "LIVEDM_WORKERS": "0"})
    worker = Daemon(tmp_path / "worker", env={"LIVEDM_MONGO_URI": uri}, args=["--worker-only"])
    start_together(api, worker)
    try:
        trees = [build_session_tree(tmp_path / "proj", f"S{i}", exposures=i) for i in (1, 2)]
        api.call("create_project", ["p", str(trees[0].project_dir)])
        for i in (1, 2):
            api.call("create_live_session", ["P1", f"s{i}"])
        job_id = api.call("update_all_sessions_datatype_sizes", ["P1"])
        job = wait_until(lambda: (j := api.call("get_job", [job_id]))["state"] == "done" and j, what="the worker")
        assert job["result"] == {"S1": trees[0].total(), "S2": trees[1].total()}
        assert job["progress"] == {"done": 2, "total": 2}
        assert f"job {job_id} (refresh_sizes) started" in worker.log()
        assert "started by" not in api.log()
        assert worker.stop() == 0
    finally:
        api.stop()
        if worker.process is not None:
            worker.stop()
        store.stop()
