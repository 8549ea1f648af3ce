"""A refresh answers once its figures and registry are stored and leaves the walk state (the next walk's
starting point) to the writer's thread (server/session_walks.py `measuring(behind=True)`). Attacked here: a
refresh of the same session meanwhile, a write that fails, a daemon that stops or dies before the write ends,
two walks of one session at once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from livedm.server import session_walks
from livedm.server.sessions import Sessions
from livedm.server.store import Store
from testkit.sessiontree import SessionTree, build_session_tree
from tests.support.config import make_config, service_on
from tests.support.walks import figures, measure, measured_session, registry, truth

JOIN_S = 20.0


@pytest.fixture
def measured(real_store: Store, tmp_path: Path) -> Iterator[tuple[Sessions, SessionTree]]:
    yield from measured_session(real_store, tmp_path, exposures=3)


def _dirty(store: Store) -> bool:
    walk_doc, _ = store.load_walk("P1/S1")
    assert walk_doc is not None
    return bool(walk_doc.get("dirty"))


def _figures_stored(service: Sessions) -> dict[str, tuple[int, int]]:
    categories = service.session("P1", "S1")["data_management"]
    return {dt: (c["size"], c["file_count"]) for dt, c in categories.items()}


def _blocking_headers(store: Store, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """The walk state's headers wait for `release`; `reached` says a write got there."""
    reached, release = threading.Event(), threading.Event()
    real = store.insert_walk_headers

    def insert_walk_headers(headers: list[dict[str, Any]]) -> bool:
        reached.set()
        assert release.wait(JOIN_S), "never released"
        return real(headers)

    monkeypatch.setattr(store, "insert_walk_headers", insert_walk_headers)
    return reached, release


def test_a_refresh_answers_before_its_walk_state_is_written_and_the_next_one_waits_for_it(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch) -> None:
    service, tree = measured
    (tree.session_path / "motioncorrected" / "new.mrc").write_bytes(b"n" * 4321)
    reached, release = _blocking_headers(service.store, monkeypatch)
    service.refresh_session("P1", "S1", full=True)  # answers while its headers wait
    assert reached.wait(JOIN_S)
    assert _figures_stored(service) == truth(tree), "the figures are stored before the answer"
    assert "S1/motioncorrected/new.mrc" in registry(service)["micrographs"], "so is the registry"
    assert _dirty(service.store), "the walk state is not written yet"

    walks_started: list[float] = []
    real_load = service.store.load_walk
    monkeypatch.setattr(service.store, "load_walk", lambda key: (walks_started.append(time.monotonic()),
                                                                 real_load(key))[1])
    (tree.session_path / "motioncorrected" / "newer.mrc").write_bytes(b"m" * 17)
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(service.refresh_session, "P1", "S1")
        time.sleep(0.3)
        assert walks_started == [], "the session's next walk waits for the last one's state"
        released_at = time.monotonic()
        release.set()
        second.result(JOIN_S)
    assert walks_started and walks_started[0] >= released_at
    assert service.walks.wait_written(JOIN_S)
    assert not _dirty(service.store)
    assert _figures_stored(service) == truth(tree)
    assert figures(measure(service, tree)) == truth(tree)
    assert not measure(service, tree).full, "the state written behind is the next walk's starting point"


def test_a_walk_state_that_cannot_be_written_is_logged_and_the_next_walk_is_full(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    service, tree = measured
    (tree.session_path / "motioncorrected" / "new.mrc").write_bytes(b"n" * 99)

    def full_disk(docs: list[dict[str, Any]]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(service.store, "insert_walk_chunks", full_disk)
    with caplog.at_level(logging.WARNING, logger=session_walks.__name__):
        answer = service.refresh_session("P1", "S1", full=True)  # the figures are answered all the same
        assert service.walks.wait_written(JOIN_S)
    assert answer["micrographs"]["file_count"] == truth(tree)["micrographs"][1]
    assert any("could not be written" in r.getMessage() and "No space left" in r.getMessage()
               for r in caplog.records), caplog.text
    assert _dirty(service.store)
    monkeypatch.undo()
    again = measure(service, tree)
    assert again.full, "a state left dirty is walked in full"
    assert figures(again) == truth(tree)


def test_a_failed_write_without_behind_raises_to_the_caller(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch) -> None:
    service, tree = measured

    def broken(docs: list[dict[str, Any]]) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(service.store, "insert_walk_chunks", broken)
    with pytest.raises(OSError, match="Input/output"):
        measure(service, tree, full=True)
    monkeypatch.undo()
    assert figures(measure(service, tree)) == truth(tree)


def test_stopping_waits_for_a_walk_state_being_written(measured: tuple[Sessions, SessionTree],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    service, _ = measured
    reached, release = _blocking_headers(service.store, monkeypatch)
    service.refresh_session("P1", "S1", full=True)
    assert reached.wait(JOIN_S)
    threading.Timer(0.3, release.set).start()
    started = time.monotonic()
    service.walks.close()  # the daemon stops
    assert 0.2 < time.monotonic() - started < session_walks.CLOSE_WRITES_S
    assert not _dirty(service.store), "the write finished before the stop"


def test_a_daemon_that_stops_or_dies_mid_write_leaves_the_state_dirty_and_the_next_daemon_walks_in_full(
        measured: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    service, tree = measured
    monkeypatch.setattr(session_walks, "CLOSE_WRITES_S", 0.2)
    real_headers = service.store.insert_walk_headers
    reached, release = _blocking_headers(service.store, monkeypatch)
    (tree.session_path / "motioncorrected" / "new.mrc").write_bytes(b"n" * 7)
    service.refresh_session("P1", "S1", full=True)
    assert reached.wait(JOIN_S)
    started = time.monotonic()
    service.walks.close()
    assert time.monotonic() - started < 5, "a stop does not wait for ever for a write"
    assert _dirty(service.store)
    # what a restart finds (the old writer is still stuck: as if the process had died)
    restarted = service_on(service.store, make_config(tmp_path / "restarted"))
    try:
        monkeypatch.setattr(service.store, "insert_walk_headers", real_headers)
        again = measure(restarted, tree)
        assert again.full and figures(again) == truth(tree)
        assert not _dirty(service.store)
    finally:
        release.set()
        restarted.walks.close()
    assert service.walks.wait_written(JOIN_S)
    assert service.walks._turns.held() == 0, "the stuck write gave its session's turn back when it ended"
    assert figures(measure(restarted, tree)) == truth(tree), "the old write, let go at last, spoilt nothing"


def test_two_walks_of_one_session_in_one_process_take_turns(measured: tuple[Sessions, SessionTree],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A full=False and a full=None refresh are not coalesced: they run one after the other, each one's walk
    state written before the next walk starts (two at once could leave headers pointing at chunks the other
    deleted)."""
    service, tree = measured
    store = service.store
    events: list[str] = []
    real_begin, real_finish = store.begin_walk_write, store.finish_walk_write

    def begin(*args: Any, **kwargs: Any) -> str:
        events.append("begin")
        time.sleep(0.1)  # room for the other walk to come in, were it let
        return real_begin(*args, **kwargs)

    def finish(*args: Any, **kwargs: Any) -> None:
        real_finish(*args, **kwargs)
        events.append("finish")

    monkeypatch.setattr(store, "begin_walk_write", begin)
    monkeypatch.setattr(store, "finish_walk_write", finish)
    (tree.session_path / "motioncorrected" / "new.mrc").write_bytes(b"n" * 5)
    barrier = threading.Barrier(2)

    def refresh(full: bool | None) -> dict[str, Any]:
        barrier.wait(JOIN_S)
        return service.refresh_session("P1", "S1", full=full)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(refresh, [False, None]))
    assert service.walks.wait_written(JOIN_S)
    assert events == ["begin", "finish", "begin", "finish"]
    assert _figures_stored(service) == truth(tree)
    assert service.walks._turns.held() == 0


def test_refreshes_of_other_sessions_wait_for_room_when_the_writer_falls_behind(
        real_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store slower than the walks: at most WRITES_PENDING_MAX walk states wait for the writer (each holds a
    whole walk in memory); the next refresh waits for room, and all are written once the store catches up."""
    service = service_on(real_store, make_config(tmp_path / "state"))
    try:
        projects = []
        for index in range(session_walks.WRITES_PENDING_MAX + 2):
            tree = build_session_tree(tmp_path / f"proj{index}", exposures=2)
            project = service.create_project(f"p{index}", str(tree.project_dir))["uid"]
            service.create_live_session(project, "s")
            projects.append((project, tree))
        reached, release = _blocking_headers(real_store, monkeypatch)
        answered: list[str] = []

        def refresh(project: str) -> None:
            service.refresh_session(project, "S1")
            answered.append(project)

        with ThreadPoolExecutor(len(projects)) as pool:
            running = [pool.submit(refresh, project) for project, _ in projects]
            assert reached.wait(JOIN_S)
            deadline = time.monotonic() + JOIN_S
            while len(answered) < session_walks.WRITES_PENDING_MAX and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)
            assert len(answered) == session_walks.WRITES_PENDING_MAX, "the others wait for room"
            release.set()
            for future in running:
                future.result(JOIN_S)
        assert service.walks.wait_written(JOIN_S)
        for project, tree in projects:
            walk_doc, headers = real_store.load_walk(f"{project}/S1")
            assert walk_doc is not None and not walk_doc["dirty"] and headers
            measured = service.walks.measure(project, "S1", service.session(project, "S1"), str(tree.project_dir),
                                             full=False)
            assert not measured.full
    finally:
        service.walks.close()
