"""Attacks on this session's changes to the full walk (server/session_walks.py, server/pool_share.py): the walk
pool shut down mid-refresh, a walk that raises mid-way, two full refreshes of one session at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from livedm.server.sessions import Sessions
from livedm.server.store import Store
from testkit.sessiontree import SessionTree, build_session_tree
from tests.support.config import make_config, service_on
from tests.support.walks import figures, measure, registry, truth

JOIN_S = 20


@pytest.fixture
def one_thread(real_store: Store, tmp_path: Path) -> Iterator[tuple[Sessions, SessionTree]]:
    """A session walked once, on a service whose walk pool has as few threads as the machine allows."""
    service = service_on(real_store, make_config(tmp_path / "state", walk_threads="1"))
    tree = build_session_tree(tmp_path / "proj", exposures=4)
    service.create_project("p", str(tree.project_dir))
    service.create_live_session("P1", "s")
    service.refresh_session("P1", "S1")
    yield service, tree
    service.walks.close()


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


def test_a_pool_shut_down_while_the_registry_write_is_queued_does_not_hang_the_refresh(
        one_thread: tuple[Sessions, SessionTree], monkeypatch: pytest.MonkeyPatch) -> None:
    """SessionWalks.close (the daemon stops) while a full refresh's registry write waits in the pool behind
    other refreshes' tasks: shutdown(cancel_futures=True) leaves that future CANCELLED, never notified, and
    concurrent.futures.wait() on it returns only for CANCELLED_AND_NOTIFIED or FINISHED: the refresh must end
    (with an error), not hang for ever and keep the process from exiting."""
    service, tree = one_thread
    walks = service.walks
    release = threading.Event()
    real_begin = service.store.begin_walk_write
    real_save_all = walks._save_all

    def begin(*args: Any, **kwargs: Any) -> Any:
        pool = walks.pool()
        for _ in range(pool._max_workers):  # other refreshes' tasks hold every walk thread
            pool.submit(release.wait, JOIN_S)
        return real_begin(*args, **kwargs)

    def save_all(*args: Any, **kwargs: Any) -> Any:
        walks.close()  # the registry write is still queued: cancelled by the shutdown
        release.set()
        return real_save_all(*args, **kwargs)

    monkeypatch.setattr(service.store, "begin_walk_write", begin)
    monkeypatch.setattr(walks, "_save_all", save_all)
    thread, outcome = _in_thread(lambda: measure(service, tree, full=True))
    thread.join(JOIN_S)
    release.set()
    assert not thread.is_alive(), "the refresh hangs in wait() on a future the pool shutdown cancelled"
    assert outcome and outcome[0] is not None  # it stops with an error: the daemon is stopping


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
