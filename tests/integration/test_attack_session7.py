"""Attacks on this session's changes to the full walk (server/session_walks.py, server/pool_share.py): the walk
pool shut down mid-refresh, a walk that raises mid-way, two full refreshes of one session at once."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from livedm.server import dirwalk, session_walks, walk_docs
from livedm.server.sessions import Sessions
from livedm.server.store import Store
from testkit.sessiontree import SessionTree
from tests.support.config import make_config, service_on
from tests.support.walks import figures, measure, measured_session, registry, truth

JOIN_S = 20


@pytest.fixture
def one_thread(real_store: Store, tmp_path: Path) -> Iterator[tuple[Sessions, SessionTree]]:
    """A session walked once, on a service whose walk pool has as few threads as the machine allows."""
    yield from measured_session(real_store, tmp_path, exposures=4, walk_threads="1")


def _in_thread(target: Any) -> tuple[threading.Thread, list[BaseException | None]]:
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_pool_shut_down_while_the_walk_state_is_packed_does_not_hang_the_refresh(
        one_thread: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch) -> None:
    """SessionWalks.close (the daemon stops) while a full refresh's walk state waits to be packed in the pool
    behind other refreshes' tasks: close waits CLOSE_WRITES_S for it, then shuts the pool down, which cancels
    those tasks (shutdown(cancel_futures=True) never notifies concurrent.futures.wait()). The refresh must end
    (with an error), not hang for ever and keep the process from exiting."""
    service, tree = one_thread
    walks = service.walks
    release = threading.Event()
    real_begin = service.store.begin_walk_write
    real_update = walks._update_registry
    monkeypatch.setattr(session_walks, "CLOSE_WRITES_S", 0.2)

    def begin(*args: Any, **kwargs: Any) -> Any:
        pool = walks.pool()
        for _ in range(pool._max_workers):  # other refreshes' tasks hold every walk thread
            pool.submit(release.wait, JOIN_S)
        return real_begin(*args, **kwargs)

    def update_registry(*args: Any, **kwargs: Any) -> Any:
        walks.close()  # the walk state's packing is still queued: cancelled by the shutdown
        release.set()
        return real_update(*args, **kwargs)

    monkeypatch.setattr(service.store, "begin_walk_write", begin)
    monkeypatch.setattr(walks, "_update_registry", update_registry)
    thread, outcome = _in_thread(lambda: measure(service, tree, full=True))
    thread.join(JOIN_S)
    release.set()
    assert not thread.is_alive(), "the refresh hangs on a future the pool shutdown cancelled"
    assert outcome and outcome[0] is not None  # it stops with an error: the daemon is stopping
    walk_doc, _ = service.store.load_walk("P1/S1")
    assert walk_doc is not None and walk_doc["dirty"], "a walk state not written stays marked dirty"


def test_the_refresh_after_a_pool_shut_down_mid_refresh_is_right(
        one_thread: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool shut down while the walk's own tasks wait in its share: the walk stops, and the next full
    refresh (a new pool) measures and registers what a walk from scratch finds."""
    service, tree = one_thread
    walks = service.walks
    real_list = type(walks).pool
    calls: list[int] = []

    def closing_pool(self: Any) -> Any:
        pool = real_list(self)
        calls.append(1)
        if len(calls) == 1:
            walks.close()  # shut down before the walk queues anything: its share gives up at once
        return pool

    monkeypatch.setattr(type(walks), "pool", closing_pool)
    thread, outcome = _in_thread(lambda: measure(service, tree, full=True))
    thread.join(JOIN_S)
    assert not thread.is_alive(), "a walk on a shut-down pool hangs"
    assert outcome and outcome[0] is not None
    monkeypatch.undo()
    assert figures(measure(service, tree, full=True)) == truth(tree)
    assert figures(measure(service, tree)) == truth(tree)
    assert registry(service) == registry(service)  # readable, not damaged


def _scan_docs_not_current(service: Sessions) -> int:
    session = service.session("P1", "S1")
    return service.store.db.registry.count_documents(
        {"key": "P1/S1", "source": "scan", "gen": {"$ne": session.get("scan_gen")}})


def _consistent(service: Sessions, tree: SessionTree) -> None:
    """What an incremental refresh counts and registers is what a walk from scratch finds, before and after a
    file goes; no registry document of a losing generation is left."""
    assert _scan_docs_not_current(service) == 0
    listed = registry(service)
    victim = next(p for p in sorted((tree.session_path / "extract").rglob("*")) if p.is_file())
    victim.unlink()
    assert figures(measure(service, tree)) == truth(tree)
    after = registry(service)
    rel = str(victim.relative_to(tree.project_dir))
    assert rel not in after["particles"], "the registry still lists a file gone after the refresh that saw it go"
    assert sum(map(len, after.values())) == sum(map(len, listed.values())) - 1
    assert figures(measure(service, tree, full=True)) == truth(tree)
    assert registry(service) == after
    assert _scan_docs_not_current(service) == 0


def test_two_full_refreshes_of_one_session_at_once_leave_it_consistent(
        one_thread: tuple[Sessions, SessionTree]) -> None:
    service, tree = one_thread
    def together(barrier: threading.Barrier) -> Any:
        return lambda: (barrier.wait(), measure(service, tree, full=True))

    for _ in range(3):
        barrier = threading.Barrier(2, timeout=JOIN_S)
        runs = [_in_thread(together(barrier)) for _ in range(2)]
        for thread, _ in runs:
            thread.join(JOIN_S)
            assert not thread.is_alive()
        for _, outcome in runs:
            assert outcome == [None], outcome
    _consistent(service, tree)


def test_a_full_refresh_that_clears_the_walk_state_under_another_ones_chunks_leaves_it_consistent(
        one_thread: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two livedmd on one MongoDB (in one process, walks of a session take turns): A writes its chunks; B (same
    session, full) clears the walk state, A's chunks with it; A's headers go in first, pointing at chunks that
    are gone, and A marks the state clean; B, whose registry write lost to A's, writes no state. The next
    refreshes must still count and register what a walk from scratch finds."""
    service, tree = one_thread
    store = service.store
    other = service_on(store, make_config(tmp_path / "other-state", walk_threads="1"))
    a_chunks_in, b_cleared, a_headers_in = threading.Event(), threading.Event(), threading.Event()
    names: dict[int, str] = {}
    inserted: list[tuple[str, bool]] = []
    real_clear, real_headers, real_chunks = store.clear_walk, store.insert_walk_headers, store.insert_walk_chunks

    def who() -> str:
        return names.get(threading.get_ident(), "")

    def clear_walk(key: str) -> None:
        if who() == "B":
            a_chunks_in.wait(JOIN_S)
            real_clear(key)
            b_cleared.set()
        else:
            real_clear(key)

    def insert_walk_chunks(docs: list[dict[str, Any]]) -> None:
        if who() == "B":
            a_headers_in.wait(JOIN_S)
        real_chunks(docs)
        if who() == "A" and docs:
            a_chunks_in.set()

    def insert_walk_headers(headers: list[dict[str, Any]]) -> bool:
        if who() == "A":
            b_cleared.wait(JOIN_S)
            try:
                inserted.append(("A", real_headers(headers)))
                return inserted[-1][1]
            finally:
                a_headers_in.set()
        inserted.append(("B", real_headers(headers)))
        return inserted[-1][1]

    monkeypatch.setattr(store, "clear_walk", clear_walk)
    monkeypatch.setattr(store, "insert_walk_chunks", insert_walk_chunks)
    monkeypatch.setattr(store, "insert_walk_headers", insert_walk_headers)

    for daemon, name in ((service, "A"), (other, "B")):  # each one's walk state is written on its writer's thread
        def write_state(*args: Any, _real: Any = daemon.walks._write_state, _name: str = name) -> Any:
            names[threading.get_ident()] = _name
            return _real(*args)

        monkeypatch.setattr(daemon.walks, "_write_state", write_state)

    def named(name: str, daemon: Sessions) -> Any:
        def run() -> Any:
            names[threading.get_ident()] = name
            return measure(daemon, tree, full=True)
        return run

    try:
        a_thread, a_outcome = _in_thread(named("A", service))
        b_thread, b_outcome = _in_thread(named("B", other))
        for thread in (a_thread, b_thread):
            thread.join(JOIN_S * 3)
            assert not thread.is_alive()
    finally:
        other.walks.close()
    assert a_outcome == [None] and b_outcome == [None], (a_outcome, b_outcome)
    # B's registry write found A's generation in place of the one it started from: B leaves its walk state
    # unwritten, and A's finish does not mark it clean over B's clearing (B began writing after A)
    assert inserted == [("A", True)], "the interleaving this test is about"
    walk_doc, headers = store.load_walk("P1/S1")
    chunk_ids = [c for h in headers for c in h["chunks"]]
    assert walk_doc is not None and walk_doc.get("dirty") and chunk_ids
    assert store.load_walk_chunks(chunk_ids) is None, "A's headers point at chunks B cleared"
    monkeypatch.undo()
    _consistent(service, tree)


def _project_fds(tree: SessionTree) -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(tree.project_dir)):
                out.add(f"{fd}:{target}")
    return out


def _walk_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("walk"))


@pytest.mark.parametrize("where", ["stat", "compress", "pack"])
def test_a_full_walk_that_raises_mid_way_through_its_share_leaves_nothing_behind(
        one_thread: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """One of the walk's tasks on the pool raises (a stat batch, a run's compression, a directory's chunks):
    the refresh fails at once (no hang), holds no directory open, starts no threads beyond the pool's, and the
    next refreshes count and register what a walk from scratch finds."""
    service, tree = one_thread
    monkeypatch.setattr(session_walks, "SAVE_BATCH_DOCS", 1)  # chunks go in before the failure
    calls: list[int] = []

    def failing(real: Any) -> Any:
        def task(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 2:
                raise OSError(5, "Input/output error")
            return real(*args, **kwargs)
        return task

    if where == "stat":
        monkeypatch.setattr(dirwalk, "_stat_batch", failing(dirwalk._stat_batch))
    elif where == "compress":
        monkeypatch.setattr(walk_docs, "compressed", failing(walk_docs.compressed))
    else:
        monkeypatch.setattr(walk_docs, "chunk_docs", failing(walk_docs.chunk_docs))
    fds = _project_fds(tree)
    threads = max(_walk_threads(), service.walks.pool()._max_workers)
    thread, outcome = _in_thread(lambda: measure(service, tree, full=True))
    thread.join(JOIN_S)
    assert not thread.is_alive(), "the refresh hangs after a task raised"
    assert outcome and isinstance(outcome[0], OSError), outcome
    assert len(calls) >= 2
    assert _project_fds(tree) <= fds, "a directory stays open"
    assert _walk_threads() <= threads
    monkeypatch.undo()
    _consistent(service, tree)
