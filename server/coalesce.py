"""Coalescing of repeated work on one key (a session's refresh): a caller gets the result of a run that
started after it asked, never an older one, and callers that ask while a run goes on share the next.

Four hundred refreshes of one session asked at once cost two walks, not four hundred.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Key:
    run_lock: threading.Lock = field(default_factory=threading.Lock)
    arrivals: int = 0  # callers so far; a caller's number is its place in line
    covered: int = 0  # callers whose request the last finished run answers (it started after they came)
    outcome: tuple[bool, Any] = (True, None)  # (ok, result or exception) of the last run
    users: int = 0


class Coalescer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[Hashable, _Key] = {}

    def run(self, key: Hashable, work: Callable[[], Any]) -> Any:
        with self._lock:
            entry = self._keys.setdefault(key, _Key())
            entry.arrivals += 1
            entry.users += 1
            mine = entry.arrivals
        try:
            with entry.run_lock:
                if entry.covered < mine:  # no finished run started after this caller came: run one
                    with self._lock:
                        starting = entry.arrivals
                    try:
                        entry.outcome = (True, work())
                    except BaseException as exc:
                        entry.outcome = (False, exc)
                    entry.covered = starting
                ok, value = entry.outcome
        finally:
            with self._lock:
                entry.users -= 1
                if entry.users == 0:
                    del self._keys[key]
        if not ok:
            raise value
        return value


@dataclass
class _AsyncKey:
    run_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    arrivals: int = 0
    covered: int = 0
    outcome: tuple[bool, Any] = (True, None)
    users: int = 0


class AsyncCoalescer:
    """The same, for API calls on the event loop: waiting callers hold no thread, so a batch of many
    refreshes of one session queues no work behind the disk pool's few threads."""

    def __init__(self) -> None:
        self._keys: dict[Hashable, _AsyncKey] = {}

    async def run(self, key: Hashable, work: Callable[[], Awaitable[Any]]) -> Any:
        entry = self._keys.setdefault(key, _AsyncKey())
        entry.arrivals += 1
        entry.users += 1
        mine = entry.arrivals
        try:
            async with entry.run_lock:
                if entry.covered < mine:
                    starting = entry.arrivals
                    try:
                        entry.outcome = (True, await work())
                    except Exception as exc:
                        entry.outcome = (False, exc)
                    entry.covered = starting
                ok, value = entry.outcome
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._keys[key]
        if not ok:
            raise value
        return value
