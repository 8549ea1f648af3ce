"""Turns per key (a session): one holder at a time, the others wait. Unlike a lock per key kept for ever, a
key's lock is dropped when no one holds or waits for it (a facility has tens of thousands of sessions); unlike
an RLock, a turn may be given back by another thread than the one that took it (a walk's state written
behind it, on the writer's thread)."""

from __future__ import annotations

import threading
from collections.abc import Hashable


class Turns:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[Hashable, tuple[threading.Lock, int]] = {}  # key: (its lock, holders and waiters)

    def take(self, key: Hashable) -> None:
        """Blocks until `key` is free, then holds it until `give_back(key)`."""
        with self._lock:
            turn, users = self._keys.get(key) or (threading.Lock(), 0)
            self._keys[key] = (turn, users + 1)
        turn.acquire()

    def give_back(self, key: Hashable) -> None:
        with self._lock:
            turn, users = self._keys[key]
            if users == 1:
                del self._keys[key]
            else:
                self._keys[key] = (turn, users - 1)
        turn.release()

    def held(self) -> int:
        """Keys held or waited for now."""
        with self._lock:
            return len(self._keys)
