"""The durable job queue in MongoDB: enqueue, claim with a lease, heartbeat, progress, finish.

A job may run more than once (a worker dies, its lease expires, another takes it over), so every
kind of job is written to be safe to repeat. Writes after the claim name the owner: a worker that
lost its lease can no longer change the job.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .domain import now_iso
from .errors import invalid_params, not_found
from .store import Store

KINDS = ("delete", "hook", "refresh_sizes", "discover", "refresh_due")
STATES = ("queued", "running", "done", "failed")
MAX_LISTED = 500
PARKED = 1e18  # a queued job's not_before that is never due (finite: JSON stores have no infinity)
PROGRESS_EVERY_S = 0.5


class Released(Exception):
    """The job stops without an outcome (the worker shuts down or lost its lease); it runs again later."""


class JobFailed(Exception):
    """An expected failure: the job ends failed with this message (no traceback in the log)."""


class Retry(Exception):
    """A failure that may pass (the database went away, a file was busy): try again after a backoff."""


def public_job(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if k not in ("lease_until", "not_before", "created_ts")}


@dataclass
class Queue:
    store: Store
    lease_s: float
    max_attempts: int
    backoff_s: float = 2.0
    listeners: list[Any] = field(default_factory=list)  # called with no argument when a job is enqueued

    def enqueue(self, kind: str, params: dict[str, Any], actor: str, *, job_id: str | None = None,
                not_before: float = 0.0) -> str:
        job_id = job_id or self.new_id()
        self.store.insert_job({"id": job_id, "kind": kind, "params": params, "state": "queued", "attempts": 0,
                               "owner": None, "lease_until": 0.0, "not_before": not_before, "progress": {},
                               "result": None, "error": None, "created_by": actor, "created_at": now_iso(),
                               "created_ts": time.time(),
                               "started_at": None, "finished_at": None})
        for listener in self.listeners:
            listener()
        return job_id

    def enqueue_single(self, kind: str, params: dict[str, Any], actor: str) -> tuple[str, bool]:
        """Queue a job of which one at most is queued or running across every daemon on this database:
        (its id, True) or, when one already is, (that one's id, False). The new job is parked (never due)
        until it holds the marker, so no worker runs a job that lost."""
        job_id = self.enqueue(kind, params, actor, not_before=PARKED)
        holder = self.store.hold_single(kind, job_id)
        if holder is not None:
            self.store.delete_queued_job(job_id)
            # a holder still parked won the marker, but its daemon died before making it due: it is due now
            self.store.set_job_due(holder, 0.0, only_if_parked=PARKED)
            return holder, False
        self.store.set_job_due(job_id, 0.0)
        for listener in self.listeners:
            listener()
        return job_id, True

    def new_id(self) -> str:
        return f"J{self.store.next_number('jobs')}"

    def claim(self, owner: str) -> dict[str, Any] | None:
        """The next due job, now this owner's (started_at is the latest attempt's start)."""
        return self.store.claim_job(owner, time.time(), self.lease_s, started_at=now_iso())

    def heartbeat(self, job: dict[str, Any]) -> bool:
        return self.store.update_owned_job(job["id"], job["owner"], {"lease_until": time.time() + self.lease_s})

    def progress(self, job: dict[str, Any], progress: dict[str, Any]) -> None:
        if not self.store.update_owned_job(job["id"], job["owner"], {"progress": progress,
                                                                     "lease_until": time.time() + self.lease_s}):
            raise Released(f"job {job['id']} was taken over by another worker")

    def finish(self, job: dict[str, Any], result: Any) -> bool:
        return self.store.update_owned_job(job["id"], job["owner"], {
            "state": "done", "result": result, "error": None, "finished_at": now_iso(), "owner": None})

    def fail(self, job: dict[str, Any], error: str) -> bool:
        return self.store.update_owned_job(job["id"], job["owner"], {
            "state": "failed", "error": error, "finished_at": now_iso(), "owner": None})

    def retry_later(self, job: dict[str, Any], error: str) -> bool:
        """Back to the queue after an exponential backoff, or failed once the attempts are spent."""
        if job.get("attempts", 1) >= self.max_attempts:
            return self.fail(job, f"{error} (gave up after {job['attempts']} attempts)")
        delay_s = self.backoff_s * 2 ** (job.get("attempts", 1) - 1)
        return self.store.update_owned_job(job["id"], job["owner"], {
            "state": "queued", "owner": None, "error": error, "not_before": time.time() + delay_s})

    def release(self, job: dict[str, Any]) -> bool:
        """Give a running job back without counting the attempt (shutdown)."""
        return self.store.update_owned_job(job["id"], job["owner"], {
            "state": "queued", "owner": None, "not_before": 0.0, "attempts": max(0, job.get("attempts", 1) - 1)})

    def get(self, job_id: str) -> dict[str, Any]:
        if not isinstance(job_id, str) or not job_id.startswith("J"):
            raise invalid_params(f"job_id {job_id!r} is not a job id like 'J12'")
        job = self.store.get_job(job_id)
        if job is None:
            raise not_found(f"job {job_id} does not exist; `livedm jobs` shows recent jobs")
        return public_job(job)

    def list(self, kind: str | None, state: str | None, project_uid: str | None, *, limit: int) -> list[dict[str, Any]]:
        if kind is not None and kind not in KINDS:
            raise invalid_params(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        if state is not None and state not in STATES:
            raise invalid_params(f"state {state!r} is not one of {', '.join(STATES)}")
        if not 1 <= limit <= MAX_LISTED:
            raise invalid_params(f"limit must be 1-{MAX_LISTED}")
        return [public_job(j) for j in self.store.list_jobs(kind=kind, state=state, project_uid=project_uid,
                                                            limit=limit)]


@dataclass
class JobRun:
    """What a handler gets: the job, a way to report progress, and whether it must stop now."""

    job: dict[str, Any]
    queue: Queue
    stopping: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    _last_progress: float = 0.0

    @property
    def params(self) -> dict[str, Any]:
        return self.job["params"]

    def check(self) -> None:
        """Call between units of work: raises Released when the job must stop (shutdown, lease lost)."""
        if self.lost.is_set():
            raise Released("the lease was lost to another worker")
        if self.stopping.is_set():
            raise Released("livedmd is shutting down")

    def progress(self, force: bool = False, **fields: Any) -> None:
        self.check()
        now = time.monotonic()
        if force or now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            self.queue.progress(self.job, fields)
