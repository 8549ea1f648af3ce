"""The job queue's contract, on mongomock: one owner at a time, leases, backoff, release."""

from __future__ import annotations

import time

import pytest

from livedm.server.jobs import Queue, Released
from livedm.server.store import Store


@pytest.fixture
def queue(mock_store: Store) -> Queue:
    return Queue(mock_store, lease_s=30, max_attempts=2, backoff_s=0.05)


def test_a_job_is_claimed_by_one_owner_and_finished_only_by_it(queue: Queue) -> None:
    job_id = queue.enqueue("hook", {"x": 1}, "admin")
    job = queue.claim("a")
    assert job is not None and job["id"] == job_id and job["attempts"] == 1 and job["started_at"]
    assert queue.claim("b") is None  # held under a live lease
    intruder = {**job, "owner": "b"}
    assert not queue.finish(intruder, None)
    with pytest.raises(Released):
        queue.progress(intruder, {"done": 1})
    assert queue.finish(job, {"ok": True})
    assert queue.get(job_id)["state"] == "done" and queue.get(job_id)["result"] == {"ok": True}
    assert queue.claim("b") is None


def test_an_expired_lease_is_taken_over_and_the_old_owner_is_locked_out(queue: Queue, mock_store: Store) -> None:
    job_id = queue.enqueue("delete", {}, "admin")
    first = queue.claim("a")
    mock_store.db.jobs.update_one({"_id": job_id}, {"$set": {"lease_until": time.time() - 1}})  # a died
    second = queue.claim("b")
    assert second is not None and second["attempts"] == 2
    assert not queue.heartbeat(first) and not queue.finish(first, None)
    assert queue.heartbeat(second) and queue.finish(second, None)


def test_retry_backs_off_then_gives_up(queue: Queue) -> None:
    job_id = queue.enqueue("refresh_sizes", {}, "admin")
    job = queue.claim("a")
    assert queue.retry_later(job, "database went away")
    assert queue.claim("a") is None  # not due yet
    time.sleep(0.06)
    job = queue.claim("a")
    assert job is not None and job["attempts"] == 2
    assert queue.retry_later(job, "still away")  # attempts spent: failed
    failed = queue.get(job_id)
    assert failed["state"] == "failed" and "gave up after 2 attempts" in failed["error"]


def test_release_gives_the_job_back_without_counting_the_attempt(queue: Queue) -> None:
    job_id = queue.enqueue("hook", {}, "admin")
    assert queue.release(queue.claim("a"))
    again = queue.claim("b")
    assert again["id"] == job_id and again["attempts"] == 1


def test_listing_and_lookups_refuse_bad_values(queue: Queue) -> None:
    queue.enqueue("hook", {"project_uid": "P1"}, "admin")
    queue.enqueue("delete", {"project_uid": "P2"}, "admin")
    assert [j["kind"] for j in queue.list(None, None, "P2", limit=10)] == ["delete"]
    assert len(queue.list("hook", "queued", None, limit=10)) == 1
    for bad in ({"kind": "rm"}, {"state": "lost"}, {"limit": 0}):
        args = {"kind": None, "state": None, "project_uid": None, "limit": 10} | bad
        with pytest.raises(Exception, match=r"is not one of|limit"):
            queue.list(**args)
    with pytest.raises(Exception, match="does not exist"):
        queue.get("J999")
