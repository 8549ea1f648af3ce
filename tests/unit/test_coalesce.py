"""Coalesced refreshes: fewer runs, but never an answer older than the question."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from livedm.server.coalesce import AsyncCoalescer, Coalescer


def test_callers_during_a_run_share_the_next_one_and_never_get_an_older_result() -> None:
    coalescer = Coalescer()
    runs: list[int] = []
    state = {"version": 0}
    started = threading.Event()

    def work() -> int:
        seen = state["version"]  # what this run's walk would see
        runs.append(seen)
        started.set()
        time.sleep(0.2)
        return seen

    with ThreadPoolExecutor(20) as pool:
        first = pool.submit(coalescer.run, "k", work)
        started.wait()
        state["version"] = 1  # a change after the first run began: later callers must see it
        later = [pool.submit(coalescer.run, "k", work) for _ in range(19)]
        assert first.result() == 0
        assert [f.result() for f in later] == [1] * 19
    assert runs == [0, 1], "twenty callers, two runs"


def test_an_error_reaches_every_caller_it_answers_and_the_key_is_forgotten() -> None:
    coalescer = Coalescer()

    def fails() -> None:
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        coalescer.run("k", fails)
    assert coalescer.run("k", lambda: 5) == 5
    assert coalescer._keys == {}


async def test_async_callers_share_runs_without_holding_threads() -> None:
    coalescer = AsyncCoalescer()
    runs = 0
    version = 0

    async def work() -> int:
        nonlocal runs
        runs += 1
        seen = version
        await asyncio.sleep(0.05)
        return seen

    first = asyncio.create_task(coalescer.run("k", work))
    await asyncio.sleep(0.01)
    version = 1
    rest = await asyncio.gather(*(coalescer.run("k", work) for _ in range(100)))
    assert await first == 0 and rest == [1] * 100
    assert runs == 2
    assert await coalescer.run("other", work) == 1 and runs == 3
