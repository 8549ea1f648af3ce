"""A bounded pool of threads for disk work that API calls ask for (walking and sizing sessions, file
lists). Apart from asyncio's default pool, which every other call, the store and the job heartbeats
use: a flood of refreshes waits its turn here and never starves them."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from .coalesce import AsyncCoalescer

T = TypeVar("T")
P = ParamSpec("P")


class DiskPool:
    def __init__(self, threads: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="disk")
        self._coalescer = AsyncCoalescer()

    async def run(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(work, *args, **kwargs))

    async def run_coalesced(self, key: Hashable, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like run(), but callers asking for the same key while it runs share the next run."""
        return await self._coalescer.run(key, lambda: self.run(work, *args, **kwargs))

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
