"""Attacks on the change feed's refreshes (a hostile local user or a careless admin): whatever the kernel
says or fails to say, an incremental refresh must count what a walk from scratch counts, never lose a file
and never count or register anything outside the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from livedm.server import files
from livedm.server.domain import DATATYPES
from livedm.server.session_walks import Measured
from livedm.server.sessions import Sessions
from livedm.server.store import Store
from testkit.sessiontree import SessionTree, build_session_tree
from tests.support.config import make_config, service_on

LAYOUT = make_config(Path("/nonexistent")).layout


@pytest.fixture
def measured(real_store: Store, tmp_path: Path) -> Iterator[tuple[Sessions, SessionTree]]:
    service = service_on(real_store, make_config(tmp_path / "state"))
    tree = build_session_tree(tmp_path / "proj", exposures=6)
    service.create_project("p", str(tree.project_dir))
    service.create_live_session("P1", "s")
    service.refresh_session("P1", "S1")
    yield service, tree
    service.walks.close()


def _measure(service: Sessions, tree: SessionTree, full: bool | None = False) -> Measured:
    return service.walks.measure("P1", "S1", service.session("P1", "S1"), str(tree.project_dir), full=full)


def _truth(tree: SessionTree) -> dict[str, tuple[int, int]]:
    walked = files.walk_session(str(tree.project_dir), "S1", LAYOUT)
    return {dt: (walked[dt].size, walked[dt].present) for dt in DATATYPES}


def _figures(measure: Measured) -> dict[str, tuple[int, int]]:
    return {dt: (t.size, t.present) for dt, t in measure.totals.items()}


def _registry(service: Sessions) -> dict[str, list[str]]:
    session = service.session("P1", "S1")
    scan = service.store.read_registry("P1", "S1", session.get("scan_gen"), sources=("scan",))["scan"]
    return {dt: sorted(paths) for dt, paths in scan.items()}


def _mc(tree: SessionTree) -> Path:
    return tree.session_path / "motioncorrected"


def _agrees_with_a_full_walk(service: Sessions, tree: SessionTree, measure: Measured) -> None:
    assert _figures(measure) == _truth(tree)
    incremental = _registry(service)
    _measure(service, tree, full=True)
    assert _registry(service) == incremental


def test_a_real_queue_overflow_forgets_tokens_of_directories_whose_events_it_dropped(
        measured: tuple[Sessions, SessionTree]) -> None:
    """The kernel queues up to fs.inotify.max_queued_events (16384) events, then one IN_Q_OVERFLOW, and drops
    the rest. motioncorrected/ had no names held when its file's event was dropped: its token must not be
    answered (with nothing) after the overflow, or the new file is never counted."""
    service, tree = measured
    feed = service.walks.feed()
    assert feed is not None
    with open("/proc/sys/fs/inotify/max_queued_events") as fh:
        limit = int(fh.read())
    thumbs = tree.session_path / "thumbnails"
    with feed._lock:  # the reader thread waits: the kernel's queue fills as a busy daemon's would
        feed._drain()
        for i in range(limit // 2 + 10):  # a busy neighbour: a watched directory churning names
            path = thumbs / f"churn_{i}.tmp"
            path.write_bytes(b"")
            path.unlink()
        (_mc(tree) / "dropped_by_the_kernel.mrc").write_bytes(b"d" * 4242)
    after = _measure(service, tree)
    assert _figures(after)["micrographs"] == _truth(tree)["micrographs"], "the new micrograph is counted"
    _agrees_with_a_full_walk(service, tree, after)
