"""What /healthz checks, each within a deadline: a health check that waits on a dead database is no check.

The checks run on threads of their own, so they never queue behind API calls that wait on that same
database; a check that does not answer in time counts as failing, with the reason.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .store import Store, StoreUnavailable

PING_TIMEOUT_S = 1.0
GRACE_S = 0.3  # on top of a check's own timeout, before /healthz stops waiting for it


class HealthChecks:
    def __init__(self, state_dir: str, min_free_bytes: int) -> None:
        self.state_dir = state_dir
        self.min_free_bytes = min_free_bytes
        self._threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="healthz")

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _run(self, timeout_s: float, func: Any, *args: Any) -> Any:
        future = asyncio.get_running_loop().run_in_executor(self._threads, func, *args)
        return await asyncio.wait_for(future, timeout_s + GRACE_S)

    async def database(self, store: Store) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            await self._run(PING_TIMEOUT_S, store.ping, PING_TIMEOUT_S)
        except StoreUnavailable as exc:
            return {"ok": False, "error": str(exc)}
        except TimeoutError:
            return {"ok": False, "error": f"the database did not answer within {PING_TIMEOUT_S:g} s"}
        return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}

    async def state_dir_space(self) -> dict[str, Any]:
        state: dict[str, Any] = {"ok": False, "path": self.state_dir, "min_free_bytes": self.min_free_bytes}
        try:
            stats = await self._run(PING_TIMEOUT_S, os.statvfs, self.state_dir)
        except TimeoutError:
            return {**state, "error": f"the state dir's file system did not answer within {PING_TIMEOUT_S:g} s"}
        except OSError as exc:
            return {**state, "error": f"cannot read the state dir's free space: {exc.strerror}"}
        free_bytes = stats.f_bavail * stats.f_frsize
        state.update(ok=free_bytes >= self.min_free_bytes, free_bytes=free_bytes)
        if not state["ok"]:
            state["error"] = (f"the state dir's file system has {free_bytes} bytes free, less than "
                              f"state_min_free_bytes ({self.min_free_bytes}): free space there (hook logs, the "
                              "embedded database and the admin token live in it)")
        return state
