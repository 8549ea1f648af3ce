"""Attacks on the walk state written behind a refresh (server/session_walks.py `measuring(behind=True)`) and the
per-session turns (server/turns.py): writes cancelled by a stop, a stop racing a refresh, a BaseException in
the registry's write, a restore while a write waits, two daemons on one store, and nothing left held after many
refreshes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from livedm.server import files, session_walks
from livedm.server.domain import DATATYPES
from livedm.server.sessions import Sessions
from livedm.server.store import Store
from testkit.sessiontree import SessionTree, build_session_tree
from tests.support.config import make_config, service_on
from tests.support.walks import LAYOUT, figures, measure, measured_session, registry, truth

JOIN_S = 20.0


@pytest.fixture
def measured(real_store: Store, tmp_path: Path) -> Iterator[tuple[Sessions, SessionTree]]:
    yield from measured_session(real_store, tmp_path, exposures=3)


def _walk_doc(store: Store, key: str = "P1/S1") -> dict[str, Any] | None:
    walk_doc, _ = store.load_walk(key)
    return walk_doc


def _blocking_first_headers(store: Store, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """The first walk state's headers wait for `release`; later ones go straight through."""
    reached, release = threading.Event(), threading.Event()
    real = store.insert_walk_headers
    calls = [0]

    def insert_walk_headers(headers: list[dict[str, Any]]) -> bool:
        calls[0] += 1
        if calls[0] == 1:
            reached.set()
            assert release.wait(JOIN_S), "never released"
        return real(headers)

    monkeypatch.setattr(store, "insert_walk_headers", insert_walk_headers)
    return reached, release


def _second_session(service: Sessions, tmp_path: Path) -> tuple[str, SessionTree]:
    tree = build_session_tree(tmp_path / "proj2", exposures=2)
    project = service.create_project("p2", str(tree.project_dir))["uid"]
    service.create_live_session(project, "s")
    return project, tree


def _in_time(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """fn's answer, failing (not hanging) when it does not come within JOIN_S."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(fn, *args, **kwargs).result(JOIN_S)
    finally:
        pool.shutdown(wait=False)


def test_a_write_cancelled_by_a_stop_gives_its_turn_and_room_back_and_its_session_is_walked_in_full_next(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    service, _ = measured
    project2, tree2 = _second_session(service, tmp_path)
    service.refresh_session(project2, "S1")
    assert service.walks.wait_written(JOIN_S)
    monkeypatch.setattr(session_walks, "CLOSE_WRITES_S", 0.3)
    reached, release = _blocking_first_headers(service.store, monkeypatch)
    try:
        service.refresh_session("P1", "S1", full=True)  # its write is stuck in the store
        assert reached.wait(JOIN_S)
        (tree2.session_path / "motioncorrected" / "new.mrc").write_bytes(b"x" * 77)
        service.refresh_session(project2, "S1")  # its write queues behind the stuck one
        service.walks.close()  # cancels the queued write
        assert service.walks._turns.held() == 1, "only the stuck write's session is still held"
        assert _walk_doc(service.store, f"{project2}/S1")["dirty"], "the cancelled write left it dirty"
        again = _in_time(service.walks.measure, project2, "S1", service.session(project2, "S1"),
                         str(tree2.project_dir), full=False)
        assert again.full
        assert figures(again) == _truth_of(tree2)
    finally:
        release.set()
    assert service.walks.wait_written(JOIN_S)
    assert service.walks._turns.held() == 0


def _truth_of(tree: SessionTree) -> dict[str, tuple[int, int]]:
    walked = files.walk_session(str(tree.project_dir), "S1", LAYOUT)
    return {dt: (walked[dt].size, walked[dt].present) for dt in DATATYPES}


def test_a_refresh_racing_a_stop_leaves_no_writer_or_pool_running_after_it(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """close() swaps the writer out, then waits for pending writes; a refresh answered meanwhile starts a new
    writer (and the walk pool lazily), which nothing shuts down: the stopped service keeps threads."""
    service, _ = measured
    project2, _ = _second_session(service, tmp_path)
    monkeypatch.setattr(session_walks, "CLOSE_WRITES_S", 2.0)
    reached, release = _blocking_first_headers(service.store, monkeypatch)
    service.refresh_session("P1", "S1", full=True)
    assert reached.wait(JOIN_S)
    closer = threading.Thread(target=service.walks.close)
    closer.start()
    time.sleep(0.2)  # close() is waiting for the stuck write
    service.refresh_session(project2, "S1")  # a refresh the RPC server still let in
    closer.join(JOIN_S)
    release.set()
    assert service.walks.wait_written(JOIN_S)
    leftover = [t.name for t in threading.enumerate() if t.name.startswith("walk-writer")]
    assert service.walks._writer is None, f"a writer outlives close(): {leftover}"


def test_a_base_exception_in_the_registry_write_gives_the_turn_back_and_leaves_the_state_dirty(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch) -> None:
    service, tree = measured
    (tree.session_path / "motioncorrected" / "new.mrc").write_bytes(b"n" * 31)
    real_swap = service.store.swap_scan

    def interrupted(*args: Any, **kwargs: Any) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(service.store, "swap_scan", interrupted)
    with pytest.raises(KeyboardInterrupt):
        service.refresh_session("P1", "S1", full=True)
    assert service.walks.wait_written(JOIN_S)
    assert service.walks._turns.held() == 0
    assert _walk_doc(service.store)["dirty"]
    monkeypatch.setattr(service.store, "swap_scan", real_swap)
    answer = _in_time(service.refresh_session, "P1", "S1")
    assert answer["micrographs"]["file_count"] == truth(tree)["micrographs"][1]
    assert "S1/motioncorrected/new.mrc" in registry(service)["micrographs"]
    assert all(c["status"] != "calculating" for c in service.session("P1", "S1")["data_management"].values())


def test_a_failure_in_the_walk_after_it_marked_the_state_dirty_gives_the_turn_back(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch) -> None:
    service, tree = measured
    real_clear = service.store.clear_walk

    def broken(key: str) -> None:
        real_clear(key)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(service.store, "clear_walk", broken)
    with pytest.raises(OSError):
        service.refresh_session("P1", "S1", full=True)
    assert service.walks._turns.held() == 0
    assert service.walks._write_room._value == session_walks.WRITES_PENDING_MAX  # type: ignore[attr-defined]
    monkeypatch.undo()
    again = _in_time(measure, service, tree)
    assert again.full and figures(again) == truth(tree)


@pytest.mark.parametrize("full", [True, False])
def test_a_restore_while_a_walk_state_waits_for_the_writer_leaves_the_next_walk_full_and_right(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch, full: bool) -> None:
    service, tree = measured
    store = service.store
    gate = threading.Event()
    reached = threading.Event()
    # the write waits before anything of it reaches the store
    real_write = service.walks._write_state

    def slow_write(walked: Any) -> None:
        reached.set()
        assert gate.wait(JOIN_S)
        real_write(walked)

    monkeypatch.setattr(service.walks, "_write_state", slow_write)
    (tree.session_path / "motioncorrected" / "new.mrc").write_bytes(b"n" * 1234)
    service.refresh_session("P1", "S1", full=full)
    assert reached.wait(JOIN_S)
    store._complete_switch("nobody")  # a restore switching its collections: every walk state cleared
    gate.set()
    assert service.walks.wait_written(JOIN_S)
    walk_doc = _walk_doc(store)
    assert walk_doc is None or walk_doc.get("dirty"), f"a state written over a restore is taken as clean: {walk_doc}"
    again = measure(service, tree)
    assert again.full and figures(again) == truth(tree)


def test_two_daemons_full_writes_interleaved_leave_a_registry_and_state_that_agree(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Daemon 1's walk state waits in the store; daemon 2 (another process on the same database) walks in full
    meanwhile (it finds the state dirty), a file having come; daemon 1's headers go in first and mark the
    state clean, daemon 2's then fail. The next incremental refresh must count and register each file once."""
    service, tree = measured
    store = service.store
    other = service_on(store, make_config(tmp_path / "daemon2"))
    real = store.insert_walk_headers
    go = [threading.Event(), threading.Event()]
    reached = [threading.Event(), threading.Event()]
    calls = [0]
    lock = threading.Lock()

    def insert_walk_headers(headers: list[dict[str, Any]]) -> bool:
        with lock:
            index = calls[0]
            calls[0] += 1
        if index < 2:
            reached[index].set()
            assert go[index].wait(JOIN_S)
        return real(headers)

    monkeypatch.setattr(store, "insert_walk_headers", insert_walk_headers)
    try:
        service.refresh_session("P1", "S1", full=True)
        assert reached[0].wait(JOIN_S)
        (tree.session_path / "motioncorrected" / "came.mrc").write_bytes(b"c" * 555)
        other.refresh_session("P1", "S1")
        assert reached[1].wait(JOIN_S)
        go[0].set()
        assert service.walks.wait_written(JOIN_S)
        go[1].set()
        assert other.walks.wait_written(JOIN_S)
        monkeypatch.setattr(store, "insert_walk_headers", real)
        after = measure(service, tree)
        assert figures(after) == truth(tree)
        after2 = measure(service, tree)
        assert figures(after2) == truth(tree)
        scanned = registry(service)
        for dt, paths in scanned.items():
            twice = sorted(p for p in set(paths) if paths.count(p) > 1)
            assert not twice, f"{dt}: registered twice: {twice}; the walk document: {_walk_doc(store)}"
        assert "S1/motioncorrected/came.mrc" in scanned["micrographs"]
        incremental = scanned
        measure(service, tree, full=True)
        assert registry(service) == incremental, "the incremental registry is what a full walk registers"
    finally:
        for event in go:
            event.set()
        other.walks.close()


def test_many_refreshes_leave_no_turn_write_or_room_held(
        measured: tuple[Sessions, SessionTree], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    service, tree = measured
    project2, _ = _second_session(service, tmp_path)
    with caplog.at_level(logging.WARNING, logger=session_walks.__name__), ThreadPoolExecutor(6) as pool:
        jobs = [pool.submit(service.refresh_session, project, "S1", full=full)
                for _ in range(5) for project in ("P1", project2) for full in (False, None, True)]
        for job in jobs:
            job.result(JOIN_S * 3)
    assert service.walks.wait_written(JOIN_S)
    assert service.walks._turns.held() == 0
    assert not service.walks._writes
    assert service.walks._write_room._value == session_walks.WRITES_PENDING_MAX  # type: ignore[attr-defined]
    assert not _walk_doc(service.store)["dirty"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert figures(measure(service, tree)) == truth(tree)


def test_close_then_refresh_again_restarts_the_writer_and_the_state_is_written(
        measured: tuple[Sessions, SessionTree]) -> None:
    service, tree = measured
    service.walks.close()
    service.walks.close()  # twice: no harm
    (tree.session_path / "motioncorrected" / "after.mrc").write_bytes(b"a" * 9)
    _in_time(service.refresh_session, "P1", "S1")
    assert service.walks.wait_written(JOIN_S)
    assert not _walk_doc(service.store)["dirty"]
    again = measure(service, tree)
    assert not again.full and figures(again) == truth(tree)


def test_one_sessions_slow_registry_write_does_not_hold_up_other_sessions_refreshes(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A session whose registry write is slow (a million paths rewritten, a busy store) must not hold the writer
    idle: were its walk state handed over before the registry was written (waiting there for it), the writes
    of other sessions would queue behind it, and once WRITES_PENDING_MAX were pending every other refresh in
    the process would wait after its walk, though the store is free."""
    service, _ = measured
    others = []
    for index in range(session_walks.WRITES_PENDING_MAX + 1):
        tree = build_session_tree(tmp_path / f"other{index}", exposures=1)
        project = service.create_project(f"o{index}", str(tree.project_dir))["uid"]
        service.create_live_session(project, "s")
        others.append(project)
    reached, release = threading.Event(), threading.Event()
    real_swap = service.store.swap_scan

    def slow_swap(project_uid: str, *args: Any, **kwargs: Any) -> bool:
        if project_uid == "P1":
            reached.set()
            assert release.wait(JOIN_S)
        return real_swap(project_uid, *args, **kwargs)

    monkeypatch.setattr(service.store, "swap_scan", slow_swap)
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(service.refresh_session, "P1", "S1", full=True)
        try:
            assert reached.wait(JOIN_S)
            answered = []
            for project in others:
                started = time.monotonic()
                try:
                    pool.submit(service.refresh_session, project, "S1").result(3.0)
                except TimeoutError:
                    break
                answered.append((project, round(time.monotonic() - started, 2)))
            assert len(answered) == len(others), (
                f"only {answered} of {others} answered while P1's registry was being written")
        finally:
            release.set()
        slow.result(JOIN_S)
    assert service.walks.wait_written(JOIN_S)


def test_a_registry_changed_under_an_incremental_walk_leaves_its_state_unwritten_and_dirty(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch) -> None:
    service, tree = measured
    (tree.session_path / "motioncorrected" / "new.mrc").write_bytes(b"n" * 12)
    monkeypatch.setattr(service.store, "append_scan_paths", lambda *args, **kwargs: False)
    service.refresh_session("P1", "S1")
    assert service.walks.wait_written(JOIN_S)
    assert _walk_doc(service.store)["dirty"], "a state the registry does not match is not marked clean"
    monkeypatch.undo()
    again = measure(service, tree)
    assert again.full and figures(again) == truth(tree)
    assert registry(service)["micrographs"].count("S1/motioncorrected/new.mrc") == 1


def test_figures_that_fail_to_be_stored_after_the_registry_leave_a_state_the_next_refresh_counts_right(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch) -> None:
    service, tree = measured
    (tree.session_path / "motioncorrected" / "new.mrc").write_bytes(b"n" * 12)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(service.store, "set_measures", broken)
    with pytest.raises(OSError):
        service.refresh_session("P1", "S1")
    assert service.walks.wait_written(JOIN_S)
    assert service.walks._turns.held() == 0
    monkeypatch.undo()
    answer = _in_time(service.refresh_session, "P1", "S1")
    assert answer["micrographs"]["file_count"] == truth(tree)["micrographs"][1]
    assert answer["micrographs"]["size"] == truth(tree)["micrographs"][0]
    assert registry(service)["micrographs"].count("S1/motioncorrected/new.mrc") == 1
    assert all(c["status"] != "calculating" for c in service.session("P1", "S1")["data_management"].values())
