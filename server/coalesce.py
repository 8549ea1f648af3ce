"""Coalescing of repeated work on one key (a session's refresh): a caller gets the result of a run that
started after it asked, never an older one, and callers that ask while a run goes on share the next.

Four hundred refreshes of one session asked at once cost two walks, not four hundred. The bookkeeping
is one Ledger per key; Coalescer serves threads, AsyncCoalescer the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any


@dataclass
class Ledger:
    """One key's callers and runs. Callers are numbered as they come; a finished run covers every
    caller that had come when it started."""

    arrivals: int = 0
    covered: int = 0
    outcome: tuple[bool, Any] = (True, None)  # (ok, result or exception) of the last run
    users: int = 0

    def arrive(self) -> int:
        self.arrivals += 1
        self.users += 1
        return self.arrivals

    def answered(self, caller: int) -> bool:
        """Did a run that started after this caller came finish already?"""
        return self.covered >= caller

    def settle(self, starting: int, outcome: tuple[bool, Any]) -> None:
        self.outcome = outcome
        self.covered = starting

    def leave(self) -> bool:
        """True when the last caller left: the key can go."""
        self.users -= 1
        return self.users == 0



def _result(outcome: tuple[bool, Any]) -> Any:
    ok, value = outcome
    if not ok:
        raise value
    return value


class Coalescer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[Hashable, tuple[Ledger, threading.Lock]] = {}

    def run(self, key: Hashable, work: Callable[[], Any]) -> Any:
        with self._lock:
            ledger, run_lock = self._keys.setdefault(key, (Ledger(), threading.Lock()))
            caller = ledger.arrive()
        try:
            with run_lock:
                if not ledger.answered(caller):
                    with self._lock:
                        starting = ledger.arrivals
                    try:
                        ledger.settle(starting, (True, work()))
                    except BaseException as exc:
                        ledger.settle(starting, (False, exc))
                outcome = ledger.outcome
        finally:
            with self._lock:
                if ledger.leave():
                    del self._keys[key]
        return _result(outcome)


class AsyncCoalescer:
    """The same on the event loop: waiting callers hold no thread, so a batch of many refreshes of one
    session queues no work behind the disk pool's few threads."""

    def __init__(self) -> None:
        self._keys: dict[Hashable, tuple[Ledger, asyncio.Lock]] = {}

    async def run(self, key: Hashable, work: Callable[[], Awaitable[Any]]) -> Any:
        ledger, run_lock = self._keys.setdefault(key, (Ledger(), asyncio.Lock()))
        caller = ledger.arrive()
        try:
            async with run_lock:
                if not ledger.answered(caller):
                    starting = ledger.arrivals
                    try:
                        ledger.settle(starting, (True, await work()))
                    except Exception as exc:
                        ledger.settle(starting, (False, exc))
                outcome = ledger.outcome
        finally:
            if ledger.leave():
                del self._keys[key]
        return _result(outcome)
