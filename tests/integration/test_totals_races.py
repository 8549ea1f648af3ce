"""Sessions of one project measured at once by many writers, on the real wire-protocol store: the project's
totals end equal to its sessions' sums, with no writer's figures lost to another's older sum."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pymongo

from livedm.server.store import Store
from testkit.facility import fill

WRITERS, ROUNDS = 8, 15


def test_concurrent_measures_of_one_project_end_with_the_right_totals(real_store: Store, embedded_uri: str) -> None:
    fill(real_store, projects=1, sessions_per_project=WRITERS)

    def measure(writer: int) -> None:
        client: pymongo.MongoClient = pymongo.MongoClient(embedded_uri)  # a daemon of its own
        store = Store(client, real_store.db.name)
        try:
            for n in range(ROUNDS):
                store.set_measures("P1", f"S{writer + 1}", {
                    "particles": {"size": 1000 * writer + n, "file_count": n, "updated_at": "2026-03-01T00:00:00Z"}})
        finally:
            client.close()

    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(measure, range(WRITERS)))
    project = real_store.get_project("P1")
    assert project is not None
    assert project["totals"] == real_store.sum_project_sessions("P1")
    assert project["totals"]["data_management"]["particles"] == {
        "size": sum(1000 * w + ROUNDS - 1 for w in range(WRITERS)), "file_count": WRITERS * (ROUNDS - 1)}
    assert project["totals_version"] == project["sessions_version"], "the last number drawn wrote last"
