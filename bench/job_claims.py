"""Job claims per second on the embedded store with 1, 2 and 4 workers (each claim, run of a no-op
job and finish is three round trips), beside the store's raw find_one_and_update rate in the same run."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid

import pymongo
from pymongo import ReturnDocument

from livedm.server.embedded import EmbeddedStore
from livedm.server.jobs import Queue
from livedm.server.store import Store
from livedm.server.worker import Workers

JOBS = 600


def raw_updates_per_s(store: Store, count: int = 2000) -> float:
    store.db.bench.insert_one({"_id": "c", "n": 0})
    started = time.perf_counter()
    for _ in range(count):
        store.db.bench.find_one_and_update({"_id": "c"}, {"$inc": {"n": 1}}, return_document=ReturnDocument.AFTER)
    return count / (time.perf_counter() - started)


async def drain(store: Store, workers: int) -> float:
    queue = Queue(store, lease_s=30, max_attempts=3)
    for i in range(JOBS):
        queue.enqueue("noop", {"i": i}, "bench", job_id=f"J{uuid.uuid4().hex}")
    pool = Workers(queue, {"noop": lambda run: None}, workers, poll_s=0.05)
    started = time.perf_counter()
    pool.start()
    while pool.completed < JOBS:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    await pool.stop(1)
    assert store.count_jobs("done") >= JOBS
    return JOBS / elapsed


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        embedded = EmbeddedStore(tmp)
        client = pymongo.MongoClient(embedded.start())
        try:
            baseline = raw_updates_per_s(Store(client, "raw"))
            figures = {}
            for workers in (1, 2, 4):
                store = Store(client, f"claims{workers}")
                store.ensure_indexes()
                figures[workers] = asyncio.run(drain(store, workers))
        finally:
            client.close()
            embedded.stop()
    shown = ", ".join(f"{n} worker{'s' if n > 1 else ''} {rate:.0f} jobs/s ({rate / baseline:.2f}x)"
                      for n, rate in figures.items())
    print(f"job claims: raw find_one_and_update {baseline:.0f} ops/s | claim+run+finish: {shown}")


if __name__ == "__main__":
    main()
