"""The schedule: each daemon's timer queues discovery passes and scheduled refreshes. The work itself
runs as jobs, and at most one of each kind is queued or running across every daemon on the database
(Queue.enqueue_single), so several daemons never double it. A pass is due when the last one finished
longer ago than its interval; an interval of 0 turns it off (it then runs only when asked)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from .config import Config
from .jobs import Queue
from .store import Store, StoreUnavailable

log = logging.getLogger(__name__)

TICK_S = 15.0
REFRESH_CHECKS_PER_INTERVAL = 6  # the refresh check (cheap: a query, one scandir per completed session)
MIN_REFRESH_CHECK_S = 60.0
SCHEDULED_JOBS_KEPT_S = 7 * 86400.0  # finished scheduled jobs are history only this long
LIVEDM = "livedm"


def _age_s(iso: str | None) -> float:
    if not iso:
        return float("inf")
    return time.time() - datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC).timestamp()


class Scheduler:
    def __init__(self, store: Store, queue: Queue, config: Config, tick_s: float = TICK_S) -> None:
        self.store = store
        self.queue = queue
        self.config = config
        intervals = [s for s in (config.discover_interval, config.refresh_interval) if s > 0]
        self.tick_s = min([tick_s, *intervals])  # a schedule shorter than the tick is kept

    def refresh_check_s(self) -> float:
        return max(MIN_REFRESH_CHECK_S, self.config.refresh_interval / REFRESH_CHECKS_PER_INTERVAL)

    def tick(self) -> list[str]:
        """Queue what is due; the ids of the jobs queued now."""
        queued: list[str] = []
        for kind, interval_s in (("discover", self.config.discover_interval),
                                 ("refresh_due", self.config.refresh_interval and self.refresh_check_s())):
            if interval_s <= 0:
                continue
            last = self.store.last_finished_job(kind)
            if last is not None and _age_s(last.get("finished_at")) < interval_s:
                continue
            job_id, new = self.queue.enqueue_single(kind, {}, LIVEDM)
            if new:
                queued.append(job_id)
        cutoff = datetime.fromtimestamp(time.time() - SCHEDULED_JOBS_KEPT_S, UTC).isoformat(timespec="milliseconds")
        self.store.prune_finished_jobs(("discover", "refresh_due"), cutoff.replace("+00:00", "Z"))
        return queued

    async def run(self) -> None:
        while True:
            try:
                queued = await asyncio.to_thread(self.tick)
                if queued:
                    log.debug("scheduled jobs queued: %s", ", ".join(queued))
            except StoreUnavailable as exc:
                log.warning("the schedule waits for the database: %s", exc)
            await asyncio.sleep(self.tick_s)
