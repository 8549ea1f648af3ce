"""Unlinking a confirmed list with a few threads, one directory per thread at a time.

On local disks and network file systems most of an unlink is waiting (the journal, a round trip),
and the kernel serialises unlinks within a directory but not across directories: a few threads on
different directories overlap those waits (100k files on an ext4 disk: 0.55x the time of `rm -rf`;
one thread 1.2x). Where an unlink never waits (tmpfs) the threads only contend, and four cost about
a fifth more than one. Each thread has an Unlinker of its own, so no directory descriptor is shared
between threads (none can be closed, and its number reused, under another).

The caller bounds how many files may be deleted and not yet counted in a saved progress: a thread
takes a permit before each batch and the caller gives permits back once it has saved the batches'
counts (`saved`). With `permits` permits of `batch_files` files, a job killed at any moment has
deleted at most permits * batch_files files its saved counts do not know.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .unlinker import Outcome, Unlinker


@dataclass(frozen=True)
class Batch:
    """One finished batch: how many files it held, and what became of them."""

    files: int
    outcome: Outcome


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


class UnlinkPool:
    """One thread an unlinker (at most one a directory); the pool closes them."""

    def __init__(self, unlinkers: list[Unlinker], *, batch_files: int, permits: int) -> None:
        self.unlinkers = unlinkers
        self.batch_files = batch_files
        self._permits = threading.Semaphore(permits)
        self._stop = threading.Event()
        self._results: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._directories: Iterator[tuple[str, list[str]]] = iter(())

    def saved(self, batches: int) -> None:
        """The counts of this many finished batches are saved: their permits go back."""
        if batches:
            self._permits.release(batches)

    @contextmanager
    def unlinking(self, by_directory: dict[str, list[str]]) -> Iterator[Iterator[Batch]]:
        """The finished batches, as they come; leaving the block (done, or on an error) stops the threads
        after their current batch and waits for them."""
        self._directories = iter(by_directory.items())
        workers = [threading.Thread(target=self._work, args=(u,), name=f"unlink-{i}", daemon=True)
                   for i, u in enumerate(self.unlinkers[:max(1, len(by_directory))])]
        try:
            for worker in workers:
                worker.start()
            yield self._finished(len(workers))
        finally:
            self._stop.set()
            self._permits.release(len(workers))  # none waits for a permit it will never get
            for worker in workers:
                if worker.is_alive():
                    worker.join()
            for unlinker in self.unlinkers:
                unlinker.close()

    def _finished(self, running: int) -> Iterator[Batch]:
        while running:
            item = self._results.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, _Failed):
                raise item.error
            else:
                assert isinstance(item, Batch)
                yield item

    def _next_directory(self) -> tuple[str, list[str]] | None:
        with self._lock:
            return next(self._directories, None)

    def _work(self, unlinker: Unlinker) -> None:
        try:
            while not self._stop.is_set() and (directory := self._next_directory()) is not None:
                rel_dir, in_dir = directory
                names = unlinker.in_listing_order(rel_dir, in_dir)
                for start in range(0, len(names), self.batch_files):
                    self._permits.acquire()
                    if self._stop.is_set():
                        return
                    batch = names[start:start + self.batch_files]
                    self._results.put(Batch(len(batch), unlinker.unlink_batch(rel_dir, batch)))
        except BaseException as exc:  # the caller raises it
            self._results.put(_Failed(exc))
        finally:
            self._results.put(_DONE)
