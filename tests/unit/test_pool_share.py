"""A refresh's share of the walk pool (server/pool_share.py): results and errors as the pool gives them, never
more than its limit in the pool, refreshes that run at once taking turns, cancelling, and a pool shut down
under it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, ThreadPoolExecutor, wait

import pytest

from livedm.server.pool_share import PoolShare


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(4)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


def test_results_and_errors_come_back_as_from_the_pool(pool: ThreadPoolExecutor) -> None:
    share = PoolShare(pool, 2)
    assert list(share.map(lambda n: n * n, range(50))) == [n * n for n in range(50)]

    def fail(n: int) -> int:
        raise ValueError(f"no {n}")

    failed = [share.submit(fail, n) for n in range(10)]
    for n, future in enumerate(failed):
        with pytest.raises(ValueError, match=f"no {n}"):
            future.result(timeout=5)
    assert share.submit(lambda: "after the failures").result(timeout=5) == "after the failures"


def test_no_more_than_the_limit_is_in_the_pool_at_once(pool: ThreadPoolExecutor) -> None:
    share = PoolShare(pool, 2)
    lock = threading.Lock()
    running, most = [0], [0]

    def task() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1

    wait([share.submit(task) for _ in range(30)], timeout=10)
    assert most[0] == 2  # the pool has four threads: without the share, four would run


def test_a_small_refresh_is_not_queued_behind_all_of_a_large_one() -> None:
    """Two threads; a large walk queues 60 tasks, then a small one queues 2. Through shares, the small one's
    run after at most the large one's few already in the pool; straight on the pool, after all 60."""
    executor = ThreadPoolExecutor(2)
    try:
        large, small = PoolShare(executor, 2), PoolShare(executor, 2)
        order: list[str] = []
        lock = threading.Lock()

        def task(name: str) -> None:
            time.sleep(0.005)
            with lock:
                order.append(name)

        large_done = [large.submit(task, "large") for _ in range(60)]
        small_done = [small.submit(task, "small") for _ in range(2)]
        wait(small_done + large_done, timeout=20)
    finally:
        executor.shutdown(wait=True)
    last_small = max(i for i, name in enumerate(order) if name == "small")
    assert order[:last_small].count("large") <= 6, order


def test_a_task_cancelled_while_waiting_never_runs_and_the_others_still_do(pool: ThreadPoolExecutor) -> None:
    share = PoolShare(pool, 1)
    gate = threading.Event()
    ran: list[int] = []
    first = share.submit(gate.wait, 5)
    waiting = [share.submit(ran.append, n) for n in range(5)]
    assert waiting[2].cancel()
    gate.set()
    wait([first, *waiting], timeout=5)
    assert ran == [0, 1, 3, 4]
    with pytest.raises(CancelledError):
        waiting[2].result()


def test_a_pool_shut_down_under_a_share_leaves_no_future_waiting_for_ever() -> None:
    """The daemon stops while a refresh walks: its tasks not yet run end cancelled, so the walk stops too."""
    executor = ThreadPoolExecutor(1)
    share = PoolShare(executor, 3)
    gate = threading.Event()
    started = share.submit(gate.wait, 5)
    rest = [share.submit(time.sleep, 0) for _ in range(10)]
    executor.shutdown(wait=False, cancel_futures=True)
    gate.set()
    _, not_done = wait([started, *rest], timeout=5)
    assert not not_done
    assert started.result() is True
    assert all(future.cancelled() for future in rest)
