"""The job runner itself: burst mode, release on shutdown, a lease lost to another worker, retries
with backoff, and a store that goes away."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest

from livedm.server.jobs import JobFailed, JobRun, Queue, Retry
from livedm.server.store import Store, StoreUnavailable
from livedm.server.worker import Workers


@pytest.fixture
def queue(mock_store: Store) -> Queue:
    return Queue(mock_store, lease_s=0.3, max_attempts=3, backoff_s=0.05)


def state(queue: Queue, job_id: str) -> dict[str, Any]:
    return queue.get(job_id)


async def test_burst_mode_runs_what_is_queued_and_stops(queue: Queue) -> None:
    seen: list[str] = []
    workers = Workers(queue, {"echo": lambda run: seen.append(run.params["n"]) or run.params["n"]}, count=0)
    ids = [queue.enqueue("echo", {"n": str(i)}, "t") for i in range(3)]
    assert await workers.run_until_idle() == 3
    assert seen == ["0", "1", "2"]
    assert [(state(queue, i)["state"], state(queue, i)["result"]) for i in ids] == [("done", "0"), ("done", "1"),
                                                                                 ("done", "2")]
    assert await workers.run_until_idle() == 0


async def test_failures_end_failed_with_their_message(queue: Queue) -> None:
    def fails(run: JobRun) -> None:
        raise JobFailed("the disk said no")

    workers = Workers(queue, {"bad": fails}, count=0)
    job_id = queue.enqueue("bad", {}, "t")
    await workers.run_until_idle()
    job = state(queue, job_id)
    assert (job["state"], job["error"], job["attempts"]) == ("failed", "the disk said no", 1)


async def test_a_passing_failure_is_retried_with_backoff_then_given_up(queue: Queue) -> None:
    attempts: list[float] = []

    def flaky(run: JobRun) -> None:
        attempts.append(time.monotonic())
        raise Retry("busy")

    workers = Workers(queue, {"flaky": flaky}, count=0)
    job_id = queue.enqueue("flaky", {}, "t")
    assert await workers.run_until_idle() == 1  # the retry is not due yet
    assert state(queue, job_id)["state"] == "queued"
    while state(queue, job_id)["state"] == "queued":
        await asyncio.sleep(0.02)
        await workers.run_until_idle()
    job = state(queue, job_id)
    assert job["state"] == "failed" and "gave up after 3 attempts" in job["error"]
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(attempts) == 3 and gaps[0] >= 0.05 and gaps[1] >= 0.1  # backoff doubles


async def test_a_store_outage_in_a_job_is_retried_not_failed(queue: Queue) -> None:
    calls = 0

    def needs_store(run: JobRun) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreUnavailable("the database does not answer")
        return "ok"

    workers = Workers(queue, {"db": needs_store}, count=0)
    job_id = queue.enqueue("db", {}, "t")
    await workers.run_until_idle()
    assert state(queue, job_id)["state"] == "queued"
    await asyncio.sleep(0.06)
    await workers.run_until_idle()
    assert (state(queue, job_id)["state"], state(queue, job_id)["attempts"]) == ("done", 2)


async def test_claiming_goes_on_after_the_store_comes_back(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    real_claim = queue.claim
    outages = iter([True, True, False])

    def claim(owner: str) -> dict[str, Any] | None:
        if next(outages, False):
            raise StoreUnavailable("the database does not answer")
        return real_claim(owner)

    monkeypatch.setattr(queue, "claim", claim)
    done = threading.Event()
    workers = Workers(queue, {"echo": lambda run: done.set()}, count=1, poll_s=0.02)
    queue.enqueue("echo", {}, "t")
    workers.start()
    try:
        await asyncio.wait_for(asyncio.to_thread(done.wait), 5)
    finally:
        await workers.stop(drain_s=1)
    assert workers.alive() == 0


async def test_shutdown_releases_a_running_job_without_counting_the_attempt(queue: Queue) -> None:
    started = threading.Event()

    def long(run: JobRun) -> None:
        started.set()
        while True:
            run.check()  # raises Released once livedmd stops
            time.sleep(0.01)

    workers = Workers(queue, {"long": long}, count=1, poll_s=0.02)
    job_id = queue.enqueue("long", {}, "t")
    workers.start()
    await asyncio.to_thread(started.wait, 5)
    await workers.stop(drain_s=0.1)
    job = state(queue, job_id)
    assert (job["state"], job["owner"], job["attempts"]) == ("queued", None, 0)


async def test_a_lease_lost_to_another_worker_stops_the_job_and_its_writes(queue: Queue, mock_store: Store) -> None:
    started, stopped = threading.Event(), threading.Event()

    def slow(run: JobRun) -> str:
        started.set()
        try:
            while True:
                run.check()
                time.sleep(0.01)
        finally:
            stopped.set()

    workers = Workers(queue, {"slow": slow}, count=1, poll_s=0.02)
    job_id = queue.enqueue("slow", {}, "t")
    workers.start()
    try:
        await asyncio.to_thread(started.wait, 5)
        # another worker takes the job over, as after a lease that ran out
        assert mock_store.update_owned_job(job_id, state(queue, job_id)["owner"], {"owner": "other:1"})
        await asyncio.wait_for(asyncio.to_thread(stopped.wait), 5)  # the next heartbeat notices
        await asyncio.sleep(0.05)
        job = state(queue, job_id)
        assert (job["state"], job["owner"]) == ("running", "other:1"), "the first worker changed nothing after"
    finally:
        await workers.stop(drain_s=0.2)
