"""A short run of the load benchmark (testkit/load.py): two daemons on one database under mixed load,
one stopped by SIGTERM mid-way. No unexpected error, no lost or doubled update, nothing in flight lost, a clean exit."""

from __future__ import annotations

import asyncio
from pathlib import Path

from testkit.load import run_load


def test_two_daemons_under_load_with_a_sigterm(tmp_path: Path) -> None:
    result = asyncio.run(run_load(duration_s=10, clients=10, root=tmp_path))
    assert result["errors"] == 0, result["error_samples"]
    assert result["lost_updates"] == 0 and result["doubled_updates"] == 0
    assert result["in_flight_lost"] == 0
    assert result["sigterm_exit"] == 0 and result["sigterm_exit_s"] < 90
    assert result["deletion_jobs"] > 0 and result["deletion_jobs_not_done"] == 0
    assert result["deletions_audited"] == result["deletion_jobs"]
    assert result["outcomes"]["change_session_data_management_state"] > 0 and result["restarted"]
