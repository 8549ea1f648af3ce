"""Several livedmd processes on one database share the job queue: each job runs exactly once."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

from livedm.server.embedded import EmbeddedStore
from tests.e2e.test_hooks import wait_until
from tests.support.daemon import Daemon
from tests.support.sessiontree import build_session_tree

JOBS = 200


def test_two_daemons_run_each_of_200_jobs_once(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "db")
    uri = store.start()
    script = tmp_path / "hook.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    env = {"LIVEDM_MONGO_URI": uri, "CRYOSPARC_LIVE_DATA_MANAGEMENT_SCRIPT_ENABLE": "true",
           "CRYOSPARC_LIVE_DATA_MANAGEMENT_SCRIPT_PATH": str(script), "LIVEDM_HOOK_LOG_DIR": str(tmp_path / "logs"),
           "LIVEDM_WORKERS": "3"}
    first = Daemon(tmp_path / "a", env=env).start()
    second = Daemon(tmp_path / "b", env=env).start()
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
        headers = re.findall(r"=== \S+ job (J\d+) attempt", (tmp_path / "logs" / "P1_S1.log").read_text())
        assert sorted(headers) == sorted(job_ids)
    finally:
        first.stop()
        second.stop()
        store.stop()
