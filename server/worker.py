"""Workers: claim jobs from the queue, run their handlers in threads, keep their leases alive.

On shutdown: stop claiming, give running jobs `drain_s` to finish, then ask them to stop at their
next safe point and release them to the queue (another worker, or the next start, resumes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from .errors import ApiError
from .jobs import JobFailed, JobRun, Queue, Released, Retry
from .store import StoreUnavailable

log = logging.getLogger(__name__)

Handler = Callable[[JobRun], Any]


class Workers:
    def __init__(self, queue: Queue, handlers: dict[str, Handler], count: int, *, poll_s: float = 1.0,
                 maintenance: Callable[[], Any] | None = None, maintenance_every_s: float = 30.0) -> None:
        self.queue = queue
        self.handlers = handlers
        self.count = count
        self.poll_s = poll_s
        self.maintenance = maintenance
        self.maintenance_every_s = maintenance_every_s
        self.owner_prefix = f"{socket.gethostname()}:{os.getpid()}"
        self.closing = False
        self.running: dict[str, JobRun] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.completed = 0

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue.listeners.append(self._wake_soon)
        self._tasks = [asyncio.create_task(self._work(i), name=f"worker-{i}") for i in range(self.count)]
        if self.maintenance is not None and self.count:
            self._tasks.append(asyncio.create_task(self._maintain(), name="maintenance"))

    def _wake_soon(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._wake.set)

    def alive(self) -> int:
        return sum(1 for t in self._tasks if not t.done() and t.get_name().startswith("worker-"))

    async def stop(self, drain_s: float) -> None:
        self.closing = True
        self._wake.set()
        if self._wake_soon in self.queue.listeners:
            self.queue.listeners.remove(self._wake_soon)
        workers = [t for t in self._tasks if t.get_name().startswith("worker-")]
        _done, pending = await asyncio.wait(workers, timeout=drain_s) if workers else (set(), set())
        if pending:
            log.info("releasing %d running job(s) for another worker", len(self.running))
            for run in self.running.values():
                run.stopping.set()
            await asyncio.wait(pending, timeout=10)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def run_until_idle(self) -> int:
        """Run queued jobs in this process, one at a time, until none is due; how many ran. arq's burst
        mode: for tests and for one-shot processing, without starting the workers' tasks."""
        owner = f"{self.owner_prefix}:burst"
        ran = 0
        while (job := await asyncio.to_thread(self.queue.claim, owner)) is not None:
            await self._run(job)
            ran += 1
        return ran

    async def _maintain(self) -> None:
        while not self.closing:
            try:
                await asyncio.to_thread(self.maintenance)  # type: ignore[arg-type]
            except Exception:
                log.exception("job maintenance failed; trying again later")
            await asyncio.sleep(self.maintenance_every_s)

    async def _work(self, index: int) -> None:
        owner = f"{self.owner_prefix}:{index}"
        while not self.closing:
            self._wake.clear()  # before claiming: an enqueue from now on wakes us
            try:
                job = await asyncio.to_thread(self.queue.claim, owner)
            except StoreUnavailable as exc:
                log.warning("cannot claim jobs (%s); retrying", exc)
                job = None
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                continue
            await self._run(job)

    async def _run(self, job: dict[str, Any]) -> None:
        run = JobRun(job, self.queue)
        self.running[job["id"]] = run
        beat = asyncio.create_task(self._heartbeat(run))
        log.info("job %s (%s) started by %s, attempt %d", job["id"], job["kind"], job["owner"], job["attempts"])
        try:
            handler = self.handlers[job["kind"]]
            result = await asyncio.to_thread(handler, run)
        except Released as exc:
            await asyncio.to_thread(self.queue.release, job)
            log.info("job %s released: %s", job["id"], exc)
        except (Retry, StoreUnavailable) as exc:
            await self._safely(self.queue.retry_later, job, str(exc))
            log.warning("job %s will be retried: %s", job["id"], exc)
        except (ApiError, JobFailed) as exc:
            message = exc.message if isinstance(exc, ApiError) else str(exc)
            await self._safely(self.queue.fail, job, message)
            log.warning("job %s failed: %s", job["id"], message)
        except Exception as exc:
            log.exception("job %s failed", job["id"])
            await self._safely(self.queue.fail, job, f"{type(exc).__name__}: {exc}")
        else:
            await self._safely(self.queue.finish, job, result)
            log.info("job %s done", job["id"])
        finally:
            beat.cancel()
            self.running.pop(job["id"], None)
            self.completed += 1

    async def _safely(self, action: Callable[..., Any], *args: Any) -> None:
        try:
            await asyncio.to_thread(action, *args)
        except StoreUnavailable as exc:  # the lease expires and the job is taken over
            log.warning("could not record the outcome of a job (%s); it will run again", exc)

    async def _heartbeat(self, run: JobRun) -> None:
        interval_s = self.queue.lease_s / 3
        while True:
            await asyncio.sleep(interval_s)
            try:
                if not await asyncio.to_thread(self.queue.heartbeat, run.job):
                    run.lost.set()
                    return
            except StoreUnavailable as exc:
                log.warning("heartbeat of job %s failed: %s", run.job["id"], exc)
