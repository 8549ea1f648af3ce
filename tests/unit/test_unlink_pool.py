"""The unlink pool: every file once, each directory on one thread at a time, permits bounding what
is deleted and not yet saved, and its threads stopped and unlinkers closed however the caller leaves."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from livedm.server import files
from livedm.server.unlink_pool import UnlinkPool
from livedm.server.unlinker import Outcome, Unlinker, by_directory


def tree(root: Path, directories: int, per_directory: int) -> list[str]:
    rels = [f"S1/extract/d{d}/p{i}.mrc" for d in range(directories) for i in range(per_directory)]
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * 3)
    return rels


def unlinkers(project: Path, count: int) -> list[Unlinker]:
    return [Unlinker(str(project), files.dir_pin(str(project))) for _ in range(count)]


def open_fds() -> set[str]:
    """The process's descriptors: what a test opened and left is in the set after and not before. (Their
    count is no measure: another test's change feed, dropped unclosed, closes its own when collected.)"""
    return set(os.listdir("/proc/self/fd"))


def test_every_file_goes_once_and_everything_is_closed(tmp_path: Path) -> None:
    rels = tree(tmp_path, 7, 5)
    before = open_fds()
    pool = UnlinkPool(unlinkers(tmp_path, 3), batch_files=2, permits=100)
    total = Outcome()
    files_seen = 0
    with pool.unlinking(by_directory(rels)) as batches:
        for batch in batches:
            files_seen += batch.files
            total.deleted += batch.outcome.deleted
            total.freed += batch.outcome.freed
    assert (files_seen, total.deleted, total.freed) == (35, 35, 105)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
    assert open_fds() - before == set()  # the three unlinkers' own descriptors are closed too
    assert not [t for t in threading.enumerate() if t.name.startswith("unlink-")]


def test_a_directory_is_never_on_two_threads_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rels = tree(tmp_path, 4, 6)
    busy: dict[str, int] = {}
    overlaps: list[str] = []
    lock = threading.Lock()
    real = Unlinker.unlink_batch

    def batch(self: Unlinker, rel_dir: str, names: Sequence[str]) -> Outcome:
        with lock:
            if busy.get(rel_dir):
                overlaps.append(rel_dir)
            busy[rel_dir] = busy.get(rel_dir, 0) + 1
        time.sleep(0.002)
        try:
            return real(self, rel_dir, names)
        finally:
            with lock:
                busy[rel_dir] -= 1

    monkeypatch.setattr(Unlinker, "unlink_batch", batch)
    with UnlinkPool(unlinkers(tmp_path, 4), batch_files=2, permits=100).unlinking(by_directory(rels)) as batches:
        assert sum(b.files for b in batches) == 24
    assert overlaps == []


def test_without_saved_counts_the_threads_stop_at_the_permits(tmp_path: Path) -> None:
    rels = tree(tmp_path, 3, 10)
    pool = UnlinkPool(unlinkers(tmp_path, 3), batch_files=2, permits=4)
    with pool.unlinking(by_directory(rels)) as batches:
        first = [next(batches) for _ in range(4)]
        time.sleep(0.2)  # time enough for the threads to go on, had they permits
        assert sum(1 for _ in tmp_path.rglob("*.mrc")) == 30 - 4 * 2
        pool.saved(len(first))
        for _ in batches:
            pool.saved(1)
    assert not any(tmp_path.rglob("*.mrc"))


def test_an_error_in_a_thread_reaches_the_caller_and_stops_the_others(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rels = tree(tmp_path, 4, 4)
    real = Unlinker.unlink_batch

    def batch(self: Unlinker, rel_dir: str, names: Sequence[str]) -> Outcome:
        if rel_dir.endswith("d2"):
            raise ValueError("boom")
        return real(self, rel_dir, names)

    monkeypatch.setattr(Unlinker, "unlink_batch", batch)
    before = open_fds()
    pool = UnlinkPool(unlinkers(tmp_path, 2), batch_files=1, permits=100)
    with pytest.raises(ValueError, match="boom"), pool.unlinking(by_directory(rels)) as batches:
        for _ in batches:
            pass
    assert (tmp_path / "S1/extract/d2/p0.mrc").exists()
    assert open_fds() - before == set()
    assert not [t for t in threading.enumerate() if t.name.startswith("unlink-")]


def test_a_caller_that_stops_early_stops_the_threads_after_their_batch(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rels = tree(tmp_path, 4, 50)
    real = Unlinker.unlink_batch

    def slow(self: Unlinker, rel_dir: str, names: Sequence[str]) -> Outcome:
        time.sleep(0.01)
        return real(self, rel_dir, names)

    monkeypatch.setattr(Unlinker, "unlink_batch", slow)
    pool = UnlinkPool(unlinkers(tmp_path, 4), batch_files=5, permits=1000)
    with pytest.raises(RuntimeError, match="released"), pool.unlinking(by_directory(rels)) as batches:
        next(batches)
        raise RuntimeError("released")
    left = sum(1 for _ in tmp_path.rglob("*.mrc"))
    time.sleep(0.1)
    assert sum(1 for _ in tmp_path.rglob("*.mrc")) == left >= 200 - 4 * 5 * 2  # a batch or two a thread
    assert not [t for t in threading.enumerate() if t.name.startswith("unlink-")]
