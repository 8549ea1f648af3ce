"""Refreshes that run at once share the process's walk threads (server/pool_share.py): a small session's
refresh that comes while a large one walks is measured between the large one's tasks, not after all of them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from livedm.server import dirwalk
from livedm.server.sessions import Sessions
from livedm.server.store import Store
from testkit.sessiontree import build_session_tree
from tests.support.config import make_config, service_on


@pytest.fixture
def two_sessions(real_store: Store, tmp_path: Path) -> Iterator[Sessions]:
    """P1 S1: 400 micrographs in one directory; S2: the usual six exposures. Two walk threads."""
    service = service_on(real_store, make_config(tmp_path / "state", walk_threads="2"))
    project = tmp_path / "proj"
    build_session_tree(project, "S1", exposures=1)
    build_session_tree(project, "S2", exposures=6)
    bulk = project / "S1" / "motioncorrected"
    for i in range(400):
        (bulk / f"bulk_{i:04d}.mrc").write_bytes(b"x")
    service.create_project("p", str(project))
    service.create_live_session("P1", "large")
    service.create_live_session("P1", "small")
    yield service
    service.walks.close()


def test_a_small_refresh_is_measured_while_a_large_one_still_walks(two_sessions: Sessions,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    service = two_sessions
    monkeypatch.setattr(dirwalk, "STAT_BATCH", 5)  # S1's directory: 80 tasks
    real_stat_batch = dirwalk._stat_batch
    large_started = threading.Event()
    large_tasks_done = [0]

    def slow_in_s1(dir_fd: int, dir_path: str, *args: Any) -> Any:
        if not dir_path.endswith("/S1/motioncorrected"):
            return real_stat_batch(dir_fd, dir_path, *args)
        large_started.set()
        time.sleep(0.02)
        try:
            return real_stat_batch(dir_fd, dir_path, *args)
        finally:
            large_tasks_done[0] += 1

    monkeypatch.setattr(dirwalk, "_stat_batch", slow_in_s1)
    large = threading.Thread(target=lambda: service.refresh_session("P1", "S1", full=True))
    large.start()
    assert large_started.wait(10)
    service.refresh_session("P1", "S2", full=True)
    done_when_small_was = large_tasks_done[0]
    large.join(30)
    # straight on the pool, the small one waited for all (80 and some) of the large one's tasks queued before
    # its own; through shares, each of its few rounds waits for two of them
    assert large_tasks_done[0] > 80
    assert done_when_small_was <= large_tasks_done[0] // 2, \
        f"{done_when_small_was} of {large_tasks_done[0]} large tasks ran before the small refresh"
    sizes = service.get_session("P1", "S1")["data_management"]["micrographs"]
    assert sizes["file_count"] >= 400
