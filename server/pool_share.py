"""One refresh's share of the process's walk pool: at most `limit` of its tasks queued or running at once.

The pool serves tasks first come, first served. A walk of a million files queues a round of hundreds of stat
batches at once, so a refresh of a small session that came just after it waited for the whole round (on a
cold network file system, minutes). Through a share, each refresh holds at most `limit` places in the pool's
queue, and each task that ends queues its refresh's next one behind whatever other refreshes queued
meanwhile: refreshes running at once take turns, and one alone still has every thread.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class PoolShare:
    def __init__(self, pool: ThreadPoolExecutor, limit: int) -> None:
        self.pool = pool
        self.limit = max(1, limit)
        self._lock = threading.Lock()
        self._in_pool = 0
        self._waiting: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """As ThreadPoolExecutor.submit; cancel() works until the task starts, as there."""
        future: Future[T] = Future()
        with self._lock:
            if self._in_pool >= self.limit:
                self._waiting.append((future, fn, args))
                return future
            self._in_pool += 1
        self._queue(future, fn, args)
        return future

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """The results in the order of `items`, as ThreadPoolExecutor.map."""
        futures = [self.submit(fn, item) for item in items]
        return (future.result() for future in futures)

    def _queue(self, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            queued = self.pool.submit(self._run, future, fn, args)
        except RuntimeError:  # the pool is shut down (the daemon stops): nothing of this share runs any more
            self._give_up(future)
            return
        # a task the pool cancels before it runs (shutdown with cancel_futures) is this future cancelled
        queued.add_done_callback(lambda done: self._give_up(future) if done.cancelled() else None)

    def _run(self, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
        finally:
            self._next()

    def _next(self) -> None:
        with self._lock:
            if not self._waiting:
                self._in_pool -= 1
                return
            following = self._waiting.popleft()
        self._queue(*following)

    def _give_up(self, future: Future[Any]) -> None:
        """This future and every one still waiting are cancelled: none of them will run."""
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
            self._in_pool -= 1  # its place: it never runs to give it back
        for cancelled in [future, *(entry[0] for entry in waiting)]:
            if cancelled.cancel():
                cancelled.set_running_or_notify_cancel()  # wakes wait() and as_completed() on it
